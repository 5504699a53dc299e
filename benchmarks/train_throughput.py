"""Training throughput of the VQA recipe's path (prepared directory -> feature store -> collator -> `RecipeTrainer`)
on synthetic data of LXMERT-base shapes, for each speed option on its own, the defaults, and transformers'
`LxmertForQuestionAnswering` in eager fp32 (the baseline).

Builds a prepared VQA directory once (a feature store of `--num-images` images x 36 regions x 2048 features written
with `FeatureStoreWriter`, official-format questions of up to 20 tokens and a 3,129-answer vocabulary, prepared with
`prepare_vqa`), then trains each row with the recipe's own functions (`parse_args`, `load_splits`, `build_model`,
`build_trainer`): the options are the recipe's flags. Prints one table from one run: step time, samples/s, the
ratio against the baseline of the same batch size, and model FLOP utilisation (MFU: training FLOPs per sample from
the config, 3 x the forward's multiply-adds x 2, at `max_question_length` tokens and 36 regions, about 31 GFLOP for
LXMERT-base, against the device's dense bf16 peak from a small table or `--peak-tflops`; blank on the CPU unless
given). The last row of each batch size is the data path alone: the batches the default row's data loader makes
(store reads, collation, host-side checks, pinned copies) without the model, so that it is visible whether data or
compute bounds a step.

Rows are measured in turns: each round trains every row for `--warmup` + `--steps` steps, in an order rotating from
round to round, and the median of the rounds' times of the `--steps` steps is reported; drift in the machine's load
hits every row alike.

    python benchmarks/train_throughput.py                                  # a CUDA GPU: batch 32, 128, 256
    python benchmarks/train_throughput.py --model-size small --batch-sizes 8 16 --num-images 64 --rows baseline \
        faithful default static_shapes fused_adamw no_sync               # a quick look on the CPU

The weights are random (no download): only the shapes matter for speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertTokenizerFast, LxmertConfig, LxmertForQuestionAnswering, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from lxmert_hf.data import prepare_vqa
from lxmert_hf.data.store import FeatureStoreWriter
from lxmert_hf.training import build_model, build_trainer, load_splits, load_tokenizer, parse_args
from lxmert_hf.training.data import max_regions

NUM_ANSWERS, REGIONS, FEAT_DIM, WORDS = 3129, 36, 2048, 20
MODEL_SIZES = {
    "base": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "l_layers": 9, "x_layers": 5,
             "r_layers": 5},
    "small": {"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024, "l_layers": 2, "x_layers": 2,
              "r_layers": 2},
    "tiny": {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128, "l_layers": 1, "x_layers": 1,
             "r_layers": 1},
}  # fmt: skip
# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity), by a name `torch.cuda.get_device_name` contains.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}
# Every speed option at its slowest: the rows of single levers add one option to these.
ALL_OFF = [
    "--precision", "fp32", "--static_shapes", "false", "--torch_compile", "false", "--optim", "adamw_torch",
    "--dataloader_num_workers", "0", "--dataloader_pin_memory", "false", "--logging_nan_inf_filter", "true",
]  # fmt: skip
ROWS = {
    "baseline": ("transformers LxmertForQuestionAnswering, fp32 eager", ALL_OFF),
    "faithful": ("LxmertForVQA, every option off (fp32 eager)", ALL_OFF),
    "default": ("LxmertForVQA, the recipe's defaults on this device", []),
    "bf16": ("+ bf16 autocast", [*ALL_OFF, "--precision", "bf16"]),
    "static_shapes": ("+ static shapes", [*ALL_OFF, "--static_shapes", "true"]),
    "compile": ("+ torch.compile", [*ALL_OFF, "--torch_compile", "true"]),
    "fused_adamw": ("+ fused AdamW", [*ALL_OFF, "--optim", "adamw_torch_fused"]),
    "no_sync": ("+ no loss read-back (NaN filter off)", [*ALL_OFF, "--logging_nan_inf_filter", "false"]),
    "loader": ("+ 4 loader workers, pinned memory", [*ALL_OFF, "--dataloader_num_workers", "4",
                                                     "--dataloader_pin_memory", "true"]),
    # Levers that work together: compile sees one shape only with static shapes; CUDA graphs replay its kernels.
    "static_compile": ("+ static shapes + torch.compile", [*ALL_OFF, "--static_shapes", "true",
                                                          "--torch_compile", "true"]),
    "cuda_graphs": ("the defaults + CUDA graphs (--torch_compile_mode reduce-overhead)",
                    ["--torch_compile_mode", "reduce-overhead"]),
}  # fmt: skip


# -- synthetic prepared directory ------------------------------------------------------------------------------------
def build_prepared(workdir: Path, num_images: int, questions_per_image: int) -> Path:
    """A prepared VQA directory of LXMERT-base shapes, and its tokenizer in `workdir / "tokenizer"`."""
    prepared = workdir / "prepared"
    if prepared.is_dir():
        return prepared
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", *words]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocabulary)}).save_pretrained(workdir / "tokenizer")
    with FeatureStoreWriter(workdir / "features") as writer:
        for index in range(num_images):
            x1, y1 = rng.uniform(0, 300, REGIONS), rng.uniform(0, 200, REGIONS)
            writer.add({
                "image_id": f"COCO_train2014_{index:012d}", "image_width": 640, "image_height": 480,
                "boxes": np.stack([x1, y1, x1 + 300, y1 + 250], axis=1),
                "visual_feats": rng.random((REGIONS, FEAT_DIM), dtype=np.float32),
            })  # fmt: skip
    answers = [f"answer {i}" for i in range(NUM_ANSWERS)]
    questions, annotations = [], []
    for image in range(num_images):
        for k in range(questions_per_image):
            qid = image * 100 + k
            length = int(rng.integers(4, WORDS + 4))  # some longer than 20 tokens: truncated, as real ones are
            text = " ".join(rng.choice(words, length)) + " ?"
            questions.append({"image_id": image, "question": text, "question_id": qid})
            given = [answers[i] for i in rng.integers(0, NUM_ANSWERS, 10)]
            annotations.append({
                "question_id": qid, "image_id": image, "answer_type": "other", "question_type": "what",
                "multiple_choice_answer": given[0],
                "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(given, 1)],
            })  # fmt: skip
    header = {"data_subtype": "train2014", "data_type": "mscoco"}
    (workdir / "questions.json").write_text(json.dumps({**header, "questions": questions}))
    (workdir / "annotations.json").write_text(json.dumps({**header, "annotations": annotations}))
    prepare_vqa(
        prepared, features_dir=workdir / "features", vocabulary=answers, train_questions=workdir / "questions.json",
        train_annotations=workdir / "annotations.json", cache_dir=workdir / "cache", progress=False,
    )  # fmt: skip
    return prepared


# -- models and trainers ---------------------------------------------------------------------------------------------
class ReferenceVQA(torch.nn.Module):
    """transformers' `LxmertForQuestionAnswering` trained with the paper's loss (sigmoid BCE on the soft scores,
    summed over answers), the loss of every row, so that only the model and the options differ."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.model = LxmertForQuestionAnswering(config)
        self.config = self.model.config

    def forward(self, labels: torch.Tensor | None = None, **inputs) -> dict[str, torch.Tensor]:
        inputs.pop("num_items_in_batch", None)
        logits = self.model(**inputs).question_answering_score
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        return {"loss": loss.sum(-1).mean(), "logits": logits}


def recipe_argv(prepared: Path, output_dir: Path, size: str, batch_size: int, options: list[str]) -> list[str]:
    sizes = [item for name, value in MODEL_SIZES[size].items() for item in (f"--{name}", str(value))]
    return [
        "--dataset", str(prepared), "--eval_split", "train", "--output_dir", str(output_dir), *sizes,
        "--head_loss", "bce", "--per_device_train_batch_size", str(batch_size), "--eval_strategy", "no",
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--logging_steps", "1000000", "--seed", "0",
        "--max_steps", "1", "--disable_tqdm", "true", *options,
    ]  # fmt: skip


def make_trainer(row: str, argv: list[str], prepared: Path, workdir: Path, size: str, splits: dict):
    model_args, data_args, training_args = parse_args(argv)
    tokenizer = load_tokenizer(model_args, default=str(workdir / "tokenizer"))
    key = (data_args.max_question_length,)
    if key not in splits:
        splits[key] = load_splits(prepared, "train", "train", tokenizer, data_args.max_question_length)
    train, evaluation, answers = splits[key]
    torch.manual_seed(0)
    if row == "baseline":
        config = LxmertConfig(num_qa_labels=len(answers), visual_feat_dim=FEAT_DIM, **MODEL_SIZES[size])
        model = ReferenceVQA(config)
    else:
        model = build_model(model_args, answers, tokenizer)
    num_regions = max_regions(prepared) if training_args.static_shapes else None
    trainer = build_trainer(model, tokenizer, training_args, data_args, train, evaluation, num_regions=num_regions)
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


# -- timing ----------------------------------------------------------------------------------------------------------
def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """The time of the steps after the first `warmup` of a `train()` call (the device waited on at both ends)."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.seconds = warmup, steps, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.seconds, self._start = None, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            synchronize()
            self._start = time.perf_counter()
        elif state.global_step == self.warmup + self.steps:
            synchronize()
            self.seconds = time.perf_counter() - self._start


def time_rows(trainers: dict, warmup: int, steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each trainer, measured in turns."""
    timers = {name: StepTimer(warmup, steps) for name in trainers}
    for name, trainer in trainers.items():
        trainer.add_callback(timers[name])
        trainer.args.max_steps = warmup + steps
    times: dict[str, list[float]] = {name: [] for name in trainers}
    names = list(trainers)
    for turn in range(rounds):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            # A new optimizer and schedule each round, as a run starts with (the last round's ended at zero).
            trainers[name].optimizer, trainers[name].lr_scheduler = None, None
            trainers[name].train()
            times[name].append(timers[name].seconds / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def data_path_rate(trainer, batches: int, warmup: int = 3) -> float:
    """Samples/s of the trainer's training data loader alone (store reads, collation, copies; no model)."""
    loader = trainer.get_train_dataloader()
    iterator, seen = iter(loader), 0
    for index in range(warmup + batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        if index == warmup - 1:
            synchronize()
            start = time.perf_counter()
        elif index >= warmup:
            seen += len(batch["input_ids"])
    synchronize()
    return seen / (time.perf_counter() - start)


# -- FLOPs -----------------------------------------------------------------------------------------------------------
def train_flops_per_sample(sizes: dict, words: int, regions: int, feat_dim: int, answers: int) -> float:
    """Training FLOPs of one question (forward x 3: the backward costs twice the forward), counting the matrix
    products: projections and feed-forwards of every layer, attention scores and mixing, the region-feature
    projection and the answer head."""
    h, inter = sizes["hidden_size"], sizes["intermediate_size"]

    def attention(queries: int, keys: int) -> float:  # Q and output on the queries, K and V on the keys, two bmm
        return 2 * (2 * queries * h * h + 2 * keys * h * h + 2 * queries * keys * h)

    def layer(tokens: int) -> float:  # a self-attention layer with its feed-forward
        return attention(tokens, tokens) + 2 * 2 * tokens * h * inter

    cross = attention(words, regions) + attention(regions, words) + layer(words) + layer(regions)
    forward = (
        sizes["l_layers"] * layer(words) + sizes["r_layers"] * layer(regions) + sizes["x_layers"] * cross
        + 2 * regions * (feat_dim + 4) * h + 2 * h * h + 2 * (h * 2 * h + 2 * h * answers)
    )  # fmt: skip
    return 3 * forward


def peak_tflops(given: float | None) -> float | None:
    if given is not None:
        return given
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


# -- driver ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        help="Rows to time; the baseline is always timed first.")  # fmt: skip
    parser.add_argument("--model-size", choices=MODEL_SIZES, default="base")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--questions-per-image", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="Steps before timing (compilation, worker start).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--peak-tflops", type=float, default=None,
        help="The device's peak for MFU (default: its dense bf16 peak from a table; none on the CPU).",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None, help="Where the synthetic data is (re)used.")
    args = parser.parse_args(argv)
    rows = ["baseline", *(row for row in args.rows if row != "baseline")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="train_throughput_"))
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = build_prepared(workdir, args.num_images, args.questions_per_image)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = peak_tflops(args.peak_tflops)
    flops = train_flops_per_sample(MODEL_SIZES[args.model_size], WORDS, REGIONS, FEAT_DIM, NUM_ANSWERS)
    print(f"device: {device}, torch {torch.__version__}, model {args.model_size}, {flops / 1e9:.1f} GFLOP per "
          f"training sample, peak {peak or '-'} TFLOP/s, {args.num_images * args.questions_per_image} questions, "
          f"{args.steps} steps x {args.rounds} rounds after {args.warmup} warm-up steps")  # fmt: skip
    print(f"command: python {' '.join(sys.argv)}")
    print("| batch | row | ms/step | samples/s | vs baseline | MFU % |\n|---:|---|---:|---:|---:|---:|")
    splits: dict = {}
    for batch_size in args.batch_sizes:
        trainers = {
            row: make_trainer(
                row, recipe_argv(prepared, workdir / "out" / row, args.model_size, batch_size, ROWS[row][1]),
                prepared, workdir, args.model_size, splits,
            )
            for row in rows
        }  # fmt: skip
        seconds = time_rows(trainers, args.warmup, args.steps, args.rounds)
        for row in rows:
            rate = batch_size / seconds[row]
            mfu = f"{100 * rate * flops / (peak * 1e12):.1f}" if peak else ""
            ratio = seconds["baseline"] / seconds[row]
            print(f"| {batch_size} | {ROWS[row][0]} | {1000 * seconds[row]:.1f} | {rate:.1f} | {ratio:.2f}x | {mfu} |")
        data_trainer = trainers.get("default") or next(iter(trainers.values()))
        rate = data_path_rate(data_trainer, max(8, args.steps))
        print(f"| {batch_size} | data path alone (the default's loader, no model) | | {rate:.1f} | | |")
        del trainers
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
