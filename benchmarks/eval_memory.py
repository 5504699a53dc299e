"""Peak memory of the recipe's evaluation on a VQA v2 val-sized eval set: kept whole versus streamed.

Writes a synthetic eval split of 215,000 questions over 3,129 answers (the annotators' answers of
`benchmarks/metrics.py`, as `answers`, `answer_type` and sparse soft-score labels, densified per batch as the
prepared splits are) and evaluates it, each variant in a fresh process, with the recipe's Trainer (`build_trainer`:
collator, official VQA accuracy per answer type). The model only reads its answer off a one-region feature and
returns logits of the real shape [batch, 3,129], so the evaluation loop and the metric are measured, not a model.

Variants, each measured in the same run:

* everything kept: the Trainer's defaults, every question's logits and soft-score labels kept to the end;
* ids + labels kept: what the recipe did before (`preprocess_logits_for_metrics=logits_to_answer_ids`): one
  answer id per question, but every label vector;
* streamed: the recipe now (`batch_eval_metrics=True`): each batch reduced to one answer id per question;
* streamed final report: `final_report`, its two passes (with the regions, then zeroed).

Printed: the peak resident memory (RSS high-water mark) of each process, its growth during evaluation (over the
high-water mark just before), and both as ratios against "ids + labels kept". The figures of every variant must be
identical. The streamed evaluation grows by a few batches in flight (labels and logits of 4,096 questions are 50 MB
each) whatever the number of questions, plus 8 bytes per question for the kept answer ids; the final report's growth
also holds the annotators' answers it reads to build its metric (about 210 MB for 215,000 questions; the other rows
read them before the measurement). The Trainer concatenates kept batches one by one (each step copies all it holds),
so the kept variants take time quadratic in the number of batches: the default eval batch of 4,096 keeps them to a
minute or two each (the whole run: about 5 minutes on 2 cores); the batch size changes the peaks only by a few
batches' worth. A variant is skipped when the machine has too little memory available for it (about 3 and 2 copies
of 2.7 GB for the two kept variants).

    ```bash
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/eval_memory.py [--questions 215000] [--batch-size 4096]
    ```
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUM_ANSWERS = 3129
VARIANTS = {
    "everything": "everything kept (Trainer defaults)",
    "ids_labels": "ids + labels kept (previous recipe)",
    "streamed": "streamed (batch_eval_metrics)",
    "report": "streamed final report (2 passes)",
}
BASELINE = "ids_labels"
# Copies of the [questions, answers] float32 matrix a variant holds at its peak: kept logits and labels, and the
# concatenation's new copy of one of them.
MATRIX_COPIES = {"everything": 3, "ids_labels": 2, "streamed": 0, "report": 0}


# -- the eval split ------------------------------------------------------------------------------------------------
def write_split(folder: Path, count: int) -> None:
    """The eval split as `datasets` files: annotators' answers, answer types, sparse soft scores, the model's
    answer id, and the answer vocabulary (`answers.json`)."""
    import datasets

    from lxmert_hf.answers import soft_scores

    # The VQA accuracy benchmark's synthetic questions.
    spec = importlib.util.spec_from_file_location("metrics_benchmark", Path(__file__).resolve().parent / "metrics.py")
    metrics_benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metrics_benchmark)
    data = metrics_benchmark.make_questions(count)
    frequent = list(dict.fromkeys(data["predictions"] + [a for answers in data["gt_answers"] for a in answers]))
    vocabulary = (frequent + [f"answer {index}" for index in range(NUM_ANSWERS)])[:NUM_ANSWERS]
    label2id = {answer: index for index, answer in enumerate(vocabulary)}
    scores = [soft_scores(answers) for answers in data["gt_answers"]]
    split = datasets.Dataset.from_dict({
        "input_ids": [[2, 5, 6, 7, 3]] * count,
        "answers": data["gt_answers"],
        "answer_type": data["answer_types"],
        "label_answers": [list(score) for score in scores],
        "label_scores": [list(score.values()) for score in scores],
        "answer_id": [label2id[prediction] for prediction in data["predictions"]],
    })  # fmt: skip
    split.save_to_disk(str(folder / "split"))
    (folder / "answers.json").write_text(json.dumps(vocabulary))


def load_split(folder: Path):
    """The split with its regions and dense labels made per batch (as the feature join does), and its answers."""
    import datasets

    from lxmert_hf.answers import encode_soft_labels

    answers = json.loads((folder / "answers.json").read_text())
    label2id = {answer: index for index, answer in enumerate(answers)}

    def join(batch: dict) -> dict:
        count = len(batch["answer_id"])
        feats = np.zeros((count, 1, 4), dtype=np.float32)
        feats[:, 0, 0] = batch["answer_id"]  # exact: ids < 2**24
        return {
            "input_ids": batch["input_ids"],
            "visual_feats": feats,
            "visual_pos": np.zeros((count, 1, 4), dtype=np.float32),
            "labels": encode_soft_labels(batch["label_answers"], batch["label_scores"], label2id),
        }

    columns = ["input_ids", "label_answers", "label_scores", "answer_id"]
    return datasets.load_from_disk(str(folder / "split")).with_transform(join, columns=columns), answers


def make_model(answers: list[str]):
    import torch

    from lxmert_hf import LxmertVQAConfig

    class ReadAnswerer(torch.nn.Module):
        """Logits [batch, answers] with the answer its first region names ahead, and a loss as cheap as can be."""

        def __init__(self):
            super().__init__()
            self.config = LxmertVQAConfig.from_answers(answers, hidden_size=32, num_attention_heads=2)
            self.bias = torch.nn.Parameter(torch.zeros(len(answers)))

        def forward(self, visual_feats, labels=None, **inputs):
            ids = visual_feats[:, 0, 0].long()
            logits = self.bias.expand(len(ids), -1).clone()
            logits[torch.arange(len(ids)), ids] += 1.0
            loss = None if labels is None else -(logits * labels).sum() / len(ids)
            return {"loss": loss, "logits": logits}

    return ReadAnswerer()


# -- one variant, in its own process ---------------------------------------------------------------------------
def run_variant(variant: str, folder: Path, batch_size: int) -> dict:
    import torch
    from transformers import BertTokenizer

    from lxmert_hf.metrics import logits_to_answer_ids
    from lxmert_hf.training import DataArguments, VQATrainingArguments, build_trainer, final_report

    torch.set_num_threads(1)
    evaluation, answers = load_split(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "it"]
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(words)})
    args = VQATrainingArguments(
        output_dir=str(folder / variant), use_cpu=True, per_device_eval_batch_size=batch_size, disable_tqdm=True,
        batch_eval_metrics=variant in ("streamed", "report"),
    )  # fmt: skip
    data_args = DataArguments()
    trainer = build_trainer(make_model(answers), tokenizer, args, data_args, None, evaluation)
    trainer.preprocess_logits_for_metrics = None if variant == "everything" else logits_to_answer_ids
    gc.collect()
    peak_before = _peak_rss_mb()
    start = time.perf_counter()
    if variant == "report":
        metrics = final_report(trainer, evaluation, data_args)
    else:
        metrics = {k: v for k, v in trainer.evaluate().items() if k.startswith("eval_vqa_")}
    seconds = time.perf_counter() - start
    return {"peak_mb": _peak_rss_mb(), "peak_before_mb": peak_before, "seconds": seconds, "metrics": metrics}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _available_gb() -> float:
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) / 2**20


# -- driver ------------------------------------------------------------------------------------------------------
def measure(variant: str, folder: Path, args: argparse.Namespace) -> dict | str:
    needed = MATRIX_COPIES[variant] * args.questions * NUM_ANSWERS * 4 / 2**30 + 2
    if needed > _available_gb():
        return f"skipped: needs about {needed:.1f} GB, {_available_gb():.1f} GB available"
    command = [sys.executable, __file__, "--run-variant", variant, "--workdir", str(folder)]
    command += ["--batch-size", str(args.batch_size), "--questions", str(args.questions)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    output = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def print_table(args: argparse.Namespace, results: dict[str, dict | str]) -> None:
    import torch
    import transformers

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"Evaluation memory: {args.questions:,} synthetic questions, {NUM_ANSWERS:,} answers, eval batch "
        f"{args.batch_size:,}, one process on the CPU"
    )
    print(
        f"{datetime.date.today()}, Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {os.cpu_count()} CPUs (load average {load})"
    )
    measured = {variant: result for variant, result in results.items() if isinstance(result, dict)}
    first = next(iter(measured.values()))["metrics"]
    same = all(
        {k: v for k, v in result["metrics"].items() if "question_only" not in k} == first
        for result in measured.values()
    )
    verdict = "yes" if same else "NO"
    print(f"eval figures: vqa_accuracy {first['eval_vqa_accuracy']}; identical in every variant: {verdict}")
    print()
    baseline = measured.get(BASELINE)
    print("| variant | peak RSS (MB) | growth in evaluation (MB) | peak vs previous | growth vs previous | time (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for variant, result in results.items():
        if not isinstance(result, dict):
            print(f"| {VARIANTS[variant]} | {result} | | | | |")
            continue
        growth = max(result["peak_mb"] - result["peak_before_mb"], 0.0)
        ratios = ["-", "-"]
        if baseline:
            base_growth = max(baseline["peak_mb"] - baseline["peak_before_mb"], 1e-9)
            ratios = [f"{result['peak_mb'] / baseline['peak_mb']:.2f}x", f"{growth / base_growth:.3f}x"]
        print(
            f"| {VARIANTS[variant]} | {result['peak_mb']:,.0f} | {growth:,.0f} | {ratios[0]} | {ratios[1]} | "
            f"{result['seconds']:.1f} |"
        )
    if not same:
        raise SystemExit("the variants' figures differ")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=215_000, help="eval questions (VQA v2 val: 214,354)")
    parser.add_argument("--batch-size", type=int, default=4096, help="eval batch size")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--run-variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_variant:
        print(json.dumps(run_variant(args.run_variant, args.workdir, args.batch_size)))
        return
    with tempfile.TemporaryDirectory() as folder:
        write_split(Path(folder), args.questions)
        results = {variant: measure(variant, Path(folder), args) for variant in args.variants}
    print_table(args, results)


if __name__ == "__main__":
    main()
