"""Peak memory and time of one training step of LxmertForVQA, with and without activation (gradient) checkpointing.

Each variant runs in a fresh process: it builds the model, then measures the rise of the process's peak resident
memory (VmHWM on Linux, else `ru_maxrss`) over one forward and backward pass, and its time. The rise includes the
gradients (as large as the weights); what checkpointing saves is the activations kept for the backward pass. On a
CUDA device the peak is `torch.cuda.max_memory_allocated` instead. The ratio is to the run without checkpointing,
measured in the same invocation.

Run:
    ```bash
    PYTHONPATH=src python benchmarks/activation_checkpointing.py [--batch-size 64] [--device cpu|cuda] [--small]
    ```
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time


def peak_mib() -> float:
    """The process's peak resident memory so far, in MiB (VmHWM: unlike `ru_maxrss`, not inherited over exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_step(checkpointing: bool, batch_size: int, device: str, small: bool) -> dict:
    import torch

    from lxmert_hf import LxmertForVQA, LxmertVQAConfig

    torch.manual_seed(0)
    sizes = {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128} if small else {}
    config = LxmertVQAConfig.from_answers(
        [str(i) for i in range(3129)], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **sizes
    )
    model = LxmertForVQA(config).to(device).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    inputs = {
        "input_ids": torch.randint(5, 1000, (batch_size, 20)),
        "attention_mask": torch.ones(batch_size, 20, dtype=torch.long),
        "visual_feats": torch.rand(batch_size, 36, 2048),
        "visual_pos": torch.rand(batch_size, 36, 4),
        "labels": torch.rand(batch_size, 3129),
    }
    inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = peak_mib()
    start = time.perf_counter()
    model(**inputs).loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    after = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_mib()
    return {"growth_mib": after - before, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64, help="questions per step (default 64)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--small", action="store_true", help="hidden size 64 instead of LXMERT-base (a quick check)")
    parser.add_argument("--variant", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(one_step(args.variant == "on", args.batch_size, args.device, args.small)))
        return
    results = {}
    for variant in ("off", "on"):
        command = [sys.executable, __file__, "--variant", variant, "--batch-size", str(args.batch_size)]
        command += ["--device", args.device] + (["--small"] if args.small else [])
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    size = "hidden 64" if args.small else "LXMERT-base"
    shape = f"batch {args.batch_size} (20 tokens, 36 regions x 2048), 3,129 answers"
    print(f"# activation checkpointing: {size}, {shape},")
    print(f"# fp32 on {args.device}; {datetime.date.today()}, Python {platform.python_version()}, load average {load}")
    print("| checkpointing | memory growth, forward + backward (MiB) | vs off | time (s) | vs off |")
    print("|---|---:|---:|---:|---:|")
    base = results["off"]
    for variant, result in results.items():
        print(
            f"| {variant} | {result['growth_mib']:,.0f} | {result['growth_mib'] / base['growth_mib']:.2f}x "
            f"| {result['seconds']:.1f} | {result['seconds'] / base['seconds']:.2f}x |"
        )


if __name__ == "__main__":
    main()
