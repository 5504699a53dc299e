"""Pre-training step time of the library's recipe path against calling transformers' `LxmertForPreTraining`
directly, with the same batch, at LXMERT-base shapes.

Prints one table from one run: seconds per step (forward, backward, AdamW step) and samples/s for each row, with
the ratio of step time against the first row of the same batch size. Rows:

- `transformers LxmertForPreTraining`: `model(**batch).loss.backward()`, the baseline;
- `recipe path`: what `recipes/pretrain.py` runs for a step: the Trainer's count of each objective's items, then
  `PretrainingTrainer.compute_loss` on `LxmertForPreTrainingWithLosses` (each objective's loss apart, divided by
  its count, the QA switch, the per-objective sums it logs), then the same backward and AdamW step.

Rows are measured in turns (round-robin, the order rotating every step), so that drift in the machine's load hits
every row alike; the median over steps is reported. The batch is made once by `PretrainingDataCollator` (masked
words and regions, swapped sentences, sampled answers) from generated sentences and regions; collating it is timed
apart (`collate`, not part of the step: the data loader does it ahead of the step).

    python benchmarks/pretrain_step.py                                 # CPU, batch 32
    python benchmarks/pretrain_step.py --device cuda --batch-sizes 256 # on a GPU

The weights are random (no download): 9/5/5 layers, hidden size 768, 30,522 word pieces, 20 tokens, 36 regions x
2,048, 9,500 answers, 1,600 object and 400 attribute labels.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from transformers import BertTokenizer, LxmertConfig, LxmertForPreTraining

from lxmert_hf.data import PretrainingDataCollator
from lxmert_hf.modeling_pretraining import LxmertForPreTrainingWithLosses
from lxmert_hf.training.pretraining import PretrainingTrainer, PretrainingTrainingArguments

WORDS, REGIONS, FEAT_DIM = 20, 36, 2048
NUM_ANSWERS, NUM_OBJECTS, NUM_ATTRIBUTES = 9500, 1600, 400


def make_tokenizer(vocab_size: int) -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{index}" for index in range(vocab_size - 5))]
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)})


def make_examples(batch_size: int, vocab_size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    examples = []
    for index in range(batch_size):
        words = rng.integers(0, vocab_size - 5, rng.integers(6, WORDS - 2))
        answers = rng.integers(0, NUM_ANSWERS, 2)
        examples.append({
            "sentence_id": f"s{index}", "image_id": f"img{index // 2}",
            "sentence": " ".join(f"w{word}" for word in words),
            "visual_feats": rng.random((REGIONS, FEAT_DIM), dtype=np.float32),
            "visual_pos": rng.random((REGIONS, 4), dtype=np.float32),
            "object_ids": rng.integers(0, NUM_OBJECTS, REGIONS), "object_scores": rng.random(REGIONS),
            "attribute_ids": rng.integers(0, NUM_ATTRIBUTES, REGIONS), "attribute_scores": rng.random(REGIONS),
            "is_question": bool(index % 2), "qa_label_ids": answers.tolist(), "qa_scores": [1.0, 0.5],
        })  # fmt: skip
    return examples


def to_device(value, device: str):
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(to_device(item, device) for item in value)
    return value.to(device) if torch.is_tensor(value) else value


def make_rows(batch: dict, device: str) -> dict:
    torch.manual_seed(0)
    config = LxmertConfig(num_qa_labels=NUM_ANSWERS, num_object_labels=NUM_OBJECTS, num_attr_labels=NUM_ATTRIBUTES)
    reference = LxmertForPreTraining(config).to(device).train()
    ours = LxmertForPreTrainingWithLosses(config).to(device).train()
    ours.load_state_dict(reference.state_dict())  # same weights: only the computation differs
    arguments = PretrainingTrainingArguments(
        output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=device == "cpu", eval_strategy="no"
    )
    trainer = PretrainingTrainer(model=ours, args=arguments, qa_from_epoch=0.0)
    plain = {key: value for key, value in batch.items() if key != "masked_regions"}

    def step(model, loss_of):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def run() -> None:
            loss_of(model).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    return {
        "transformers LxmertForPreTraining": step(reference, lambda model: model(**plain).loss),
        "recipe path (PretrainingTrainer)": step(ours, lambda model: recipe_loss(trainer, model, batch)),
    }


def recipe_loss(trainer: PretrainingTrainer, model, batch: dict) -> torch.Tensor:
    """A training step's loss as the Trainer computes it: each objective's items counted over the step's batches
    (here one), then `compute_loss` with those counts."""
    counts = trainer._get_num_items_in_batch([batch], next(model.parameters()).device)
    return trainer.compute_loss(model, batch, num_items_in_batch=counts)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(rows: dict, steps: int, warmup: int, device: str) -> dict[str, float]:
    for run in rows.values():
        for _ in range(warmup):
            run()
    names = list(rows)
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(steps):
        shift = step % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            rows[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def collate_time(collate, examples: list[dict], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        collate(examples)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    vocab_size = LxmertConfig().vocab_size
    collate = PretrainingDataCollator(make_tokenizer(vocab_size), seed=0)
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}")
    print("| batch | row | s/step | samples/s | ratio vs first row |\n|---:|---|---:|---:|---:|")
    for batch_size in args.batch_sizes:
        examples = make_examples(batch_size, vocab_size)
        batch = to_device(collate(examples), args.device)
        times = measure(make_rows(batch, args.device), args.steps, args.warmup, args.device)
        baseline = next(iter(times.values()))
        for name, seconds in times.items():
            print(f"| {batch_size} | {name} | {seconds:.4f} | {batch_size / seconds:.1f} | {seconds / baseline:.3f} |")
        seconds = collate_time(collate, examples)
        row = "collate (data loader, not in the step)"
        print(f"| {batch_size} | {row} | {seconds:.4f} | {batch_size / seconds:.1f} | - |")


if __name__ == "__main__":
    main()
