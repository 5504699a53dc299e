"""Training-step time of LxmertForVQA against transformers' LxmertForQuestionAnswering, at LXMERT-base shapes.

Prints one table from one run: seconds per step (forward, backward, AdamW step) and samples/s for each model and
batch size, with the ratio of step time against the first row of the same batch size. Rows are measured in turns
(round-robin, the order rotating every step) so that drift in the machine's load and allocator state hit every
row alike; the median over steps is reported.

    python benchmarks/train_step.py                 # CPU, batch 8 and 32
    python benchmarks/train_step.py --device cuda   # on a GPU; adds bf16 autocast rows

The weights are random (no download); only the shapes matter for speed: 20 tokens, 36 regions x 2048, 3,129
answers, 9/5/5 layers, hidden size 768.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from transformers import LxmertConfig, LxmertForQuestionAnswering

from lxmert_hf import LxmertForVQA, LxmertVQAConfig

NUM_ANSWERS = 3129
WORDS, REGIONS, FEAT_DIM = 20, 36, 2048


ROWS = {
    "transformers": "transformers LxmertForQuestionAnswering",
    "eager": "LxmertForVQA eager",
    "sdpa": "LxmertForVQA sdpa",
}


def make_models(device: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    reference = LxmertForQuestionAnswering(LxmertConfig(num_qa_labels=NUM_ANSWERS))
    answers = [f"answer {i}" for i in range(NUM_ANSWERS)]
    # The paper's loss on every row, so that only the model differs.
    eager = LxmertForVQA(LxmertVQAConfig.from_answers(answers, attention_backend="eager", head_loss="bce"))
    sdpa = LxmertForVQA(LxmertVQAConfig.from_answers(answers, attention_backend="sdpa", head_loss="bce"))
    # Same weights everywhere, so that only the computation differs.
    state = reference.state_dict()
    for model in (eager, sdpa):
        model.load_state_dict(state, strict=True)  # the same module names as transformers' model
    return {
        "transformers LxmertForQuestionAnswering": reference,
        "LxmertForVQA eager": eager,
        "LxmertForVQA sdpa": sdpa,
    }


def make_batch(batch_size: int, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch_size)
    scores = torch.zeros(batch_size, NUM_ANSWERS)
    scores[torch.arange(batch_size), torch.randint(0, NUM_ANSWERS, (batch_size,), generator=generator)] = 1.0
    batch = {
        "input_ids": torch.randint(1000, 30000, (batch_size, WORDS), generator=generator),
        "attention_mask": torch.ones(batch_size, WORDS, dtype=torch.long),
        "token_type_ids": torch.zeros(batch_size, WORDS, dtype=torch.long),
        "visual_feats": torch.rand(batch_size, REGIONS, FEAT_DIM, generator=generator),
        "visual_pos": torch.rand(batch_size, REGIONS, 4, generator=generator),
        "scores": scores,
    }
    return {k: v.to(device) for k, v in batch.items()}


def step_fn(name: str, model: torch.nn.Module, optimizer, batch: dict, autocast: bool, device: str):
    inputs = {k: v for k, v in batch.items() if k != "scores"}
    context = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
        if autocast
        else contextlib.nullcontext()
    )

    def run() -> None:
        with context:
            if name.startswith("transformers"):
                logits = model(**inputs).question_answering_score
                # The paper's loss, the same for every row: sigmoid BCE summed over answers.
                loss = (
                    torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["scores"]) * NUM_ANSWERS
                )
            else:
                loss = model(**inputs, labels=batch["scores"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(rows: list[tuple[str, callable]], steps: int, warmup: int, device: str) -> dict[str, float]:
    for _, run in rows:
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for step in range(steps):
        # The order rotates every step, so that no row always runs right after the same other one.
        shift = step % len(rows)
        for name, run in rows[shift:] + rows[:shift]:
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bf16_supported(device: str) -> bool:
    """bf16 autocast is worth measuring where the hardware has bf16 arithmetic."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        help="Models to time (the first is the baseline of the ratios).")  # fmt: skip
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="Add bf16 autocast rows (default: on GPUs that support bf16).")  # fmt: skip
    args = parser.parse_args()
    built = make_models(args.device)
    models = {ROWS[row]: built[ROWS[row]].to(args.device).train() for row in args.rows}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, model in models.items()}
    use_bf16 = bf16_supported(args.device) if args.bf16 is None else args.bf16
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}")
    print("| batch | model | s/step | samples/s | ratio vs first row |\n|---:|---|---:|---:|---:|")
    for batch_size in args.batch_sizes:
        batch = make_batch(batch_size, args.device)
        rows = [
            (name, step_fn(name, model, optimizers[name], batch, False, args.device)) for name, model in models.items()
        ]
        if use_bf16 and "LxmertForVQA sdpa" in models:
            name = "LxmertForVQA sdpa"
            rows.append(
                (f"{name} + bf16 autocast", step_fn(name, models[name], optimizers[name], batch, True, args.device))
            )
        medians = measure(rows, args.steps, args.warmup, args.device)
        first = next(iter(medians.values()))
        for name, seconds in medians.items():
            print(f"| {batch_size} | {name} | {seconds:.3f} | {batch_size / seconds:.1f} | {seconds / first:.3f} |")


if __name__ == "__main__":
    main()
