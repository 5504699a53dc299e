"""Throughput of `lxmert-hf predict` against the model alone, on a synthetic prepared VQA split of LXMERT-base shapes.

Builds the prepared directory of `train_throughput.py` (a feature store of 36 regions x 2048 per image, questions of
up to 20 tokens, 3,129 answers) and a random `LxmertForVQA` saved with its tokenizer, then answers every question of
the split in three ways, measured in turns (the order rotating each round; the median round is reported):

- the model alone: the batches collated and moved to the device beforehand, only the forward pass and the argmax
  timed (the floor);
- `predict_answers` (the library function behind `lxmert-hf predict`) on the prepared split, with each
  `--num-workers`: store reads, tokenization, collation, copies and the answers' lookup included;
- the whole `lxmert-hf predict` command in a fresh process, with its start-up, the checkpoint's loading and the
  submission file (once per round; `--no-cli` leaves it out).

The table gives questions/s and the overhead over the model alone. The weights are random (no download): only the
shapes matter for speed.

    python benchmarks/predict.py                                        # CUDA when present, else the CPU
    python benchmarks/predict.py --device cpu --model-size small --num-images 100 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
import transformers
from train_throughput import MODEL_SIZES, build_prepared

from lxmert_hf import LxmertForVQA, LxmertVQAConfig
from lxmert_hf.data import VQADataCollator, load_answer_vocabulary, load_prepared
from lxmert_hf.predict import predict_answers

SPLIT = "train"
SOURCE = Path(__file__).resolve().parents[1] / "src"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="base")
    parser.add_argument("--num-images", type=int, default=400, help="images of the split (default 400)")
    parser.add_argument("--questions-per-image", type=int, default=5, help="questions per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="questions per forward pass (default 64)")
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0, 4], help="loader processes to time")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every row (default 3)")
    parser.add_argument("--no-cli", action="store_true", help="leave out the whole-command row")
    return parser


def build_checkpoint(workdir: Path, prepared: Path, size: str) -> Path:
    """A random `LxmertForVQA` with the prepared answers and the synthetic tokenizer, saved as a checkpoint."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "tokenizer")
    answers = load_answer_vocabulary(prepared).answers
    torch.manual_seed(0)
    config = LxmertVQAConfig.from_answers(
        answers, visual_feat_dim=2048, vocab_size=len(tokenizer), **MODEL_SIZES[size]
    )
    checkpoint = workdir / "checkpoint"
    LxmertForVQA(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    return checkpoint


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_alone(model: LxmertForVQA, batches: list[dict], device: torch.device) -> float:
    """Seconds for the forward passes and argmaxes of batches already on the device."""
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(**batch).logits.argmax(dim=-1)
    synchronize(device)
    return time.perf_counter() - start


def library_path(model, tokenizer, prepared: Path, device: torch.device, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    answers = predict_answers(
        model, tokenizer, load_prepared(prepared, SPLIT), batch_size=batch_size, device=device,
        num_workers=workers, progress=False,
    )  # fmt: skip
    synchronize(device)
    if not answers:
        raise RuntimeError("predict_answers answered nothing")
    return time.perf_counter() - start


def whole_command(checkpoint: Path, prepared: Path, output: Path, device: torch.device, batch_size: int) -> float:
    command = [
        sys.executable, "-m", "lxmert_hf_cli", "predict", "--model", str(checkpoint), "--prepared", str(prepared),
        "--split", SPLIT, "--output", str(output), "--batch-size", str(batch_size), "--device", str(device),
        "--no-progress",
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": path}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if device.type == "auto":
        device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        prepared = build_prepared(workdir, args.num_images, args.questions_per_image)
        checkpoint = build_checkpoint(workdir, prepared, args.model_size)
        model = LxmertForVQA.from_pretrained(checkpoint).to(device).eval()
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        dataset = load_prepared(prepared, SPLIT)
        collator = VQADataCollator(tokenizer, max_question_length=20)
        examples = [dataset[i] for i in range(len(dataset))]
        batches = [
            {key: value.to(device) for key, value in collator(examples[i : i + args.batch_size]).items()
             if key in ("input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_pos",
                        "visual_attention_mask")}
            for i in range(0, len(examples), args.batch_size)
        ]  # fmt: skip
        rows = {"the model alone (batches on the device)": lambda: model_alone(model, batches, device)}
        for workers in args.num_workers:
            rows[f"predict_answers, {workers} loader workers"] = lambda w=workers: library_path(
                model, tokenizer, prepared, device, args.batch_size, w
            )
        if not args.no_cli:
            output = workdir / "answers.json"
            rows["lxmert-hf predict, whole command"] = lambda: whole_command(
                checkpoint, prepared, output, device, args.batch_size
            )
        for timed in rows.values():  # warm-up: caches, allocator, cuDNN choices
            timed()
        seconds: dict[str, list[float]] = {name: [] for name in rows}
        names = list(rows)
        for round_index in range(args.rounds):
            for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
                seconds[name].append(rows[name]())
        print_table(args, device, len(examples), {name: statistics.median(times) for name, times in seconds.items()})


def print_table(args: argparse.Namespace, device: torch.device, questions: int, seconds: dict[str, float]) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"# predict: {questions} questions, LXMERT-{args.model_size} shapes (36 regions x 2048, 3,129 answers), "
        f"batch {args.batch_size}, device {device} ({name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, median of {args.rounds} rounds, load average {load}"
    )
    print("| path | seconds | questions/s | overhead over the model alone |")
    print("|---|---:|---:|---:|")
    floor = next(iter(seconds.values()))
    for row, value in seconds.items():
        print(f"| {row} | {value:.3f} | {questions / value:,.0f} | {100 * (value / floor - 1):+.0f}% |")


if __name__ == "__main__":
    main()
