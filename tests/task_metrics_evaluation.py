"""`Trainer.evaluate` with the GQA and NLVR2 metrics, streamed (`batch_eval_metrics=True`) and accumulated, on eval
sets whose last batch is partial, with models whose outputs do not depend on how examples are batched: one process,
two processes and either path must then report exactly the same figures.

Imported by `test_task_metrics.py`; run under `accelerate launch` as a script, it writes its figures to a JSON file:

    accelerate launch --multi_gpu --num_processes 2 tests/task_metrics_evaluation.py WORK_DIR RESULT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from lxmert_hf.metrics import gqa_compute_metrics, logits_to_answer_ids, nlvr2_compute_metrics

GQA_ANSWERS = ["yes", "no", "t-shirt", "taking a photo", "left", "2"]
STRUCTURAL_TYPES = ["query", "verify", "logical", "choose", "compare"]
# 11 examples, 2 per process and batch: one process ends on a batch of 1, two processes on a global batch of
# 3 + 1 repeated example that the gathering must drop.
NUM_EXAMPLES = 11
BATCH_SIZE = 2


class FeatureClassifier(torch.nn.Module):
    """Answers with its input features as the logits: elementwise, so exact in any batch."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, features, labels=None):
        logits = features * self.scale
        if labels is None:
            return {"logits": logits}
        if labels.ndim == 1:  # NLVR2: class ids
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}
        return {"loss": torch.nn.functional.binary_cross_entropy_with_logits(logits, labels), "logits": logits}


class Examples(torch.utils.data.Dataset):
    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features, self.labels = torch.from_numpy(features), torch.from_numpy(labels)

    def __len__(self):
        return len(self.features)

    def __getitem__(self, index):
        return {"features": self.features[index], "labels": self.labels[index]}


def gqa_eval_set(count: int = NUM_EXAMPLES, seed: int = 0) -> dict:
    """Features (the logits the model will give), soft-score labels, gold answers (one outside the vocabulary)
    and structural types."""
    rng = np.random.default_rng(seed)
    gold = [str(answer) for answer in rng.choice([*GQA_ANSWERS, "purple"], count)]
    features = rng.standard_normal((count, len(GQA_ANSWERS))).astype(np.float32)
    labels = np.zeros_like(features)
    for row, answer in enumerate(gold):
        if answer in GQA_ANSWERS:
            labels[row, GQA_ANSWERS.index(answer)] = 1.0
            if rng.random() < 0.6:  # right more often than by chance
                features[row, GQA_ANSWERS.index(answer)] += 4.0
    types = [str(kind) for kind in rng.choice(STRUCTURAL_TYPES, count)]
    return {"features": features, "labels": labels, "gt_answers": gold, "structural_types": types}


def nlvr2_eval_set(count: int = NUM_EXAMPLES, seed: int = 0) -> dict:
    """Features (logits over false/true), class labels and official identifiers, 2 to 4 image pairs a sentence."""
    rng = np.random.default_rng(seed)
    identifiers = []
    sentence = 0
    while len(identifiers) < count:
        pairs = int(rng.integers(2, 5))
        identifiers += [f"dev-{100 + sentence // 2}-{pair}-{sentence % 2}" for pair in range(pairs)]
        sentence += 1
    identifiers = identifiers[:count]
    labels = rng.integers(0, 2, count)
    features = rng.standard_normal((count, 2)).astype(np.float32)
    features[np.arange(count), labels] += np.where(rng.random(count) < 0.7, 3.0, 0.0).astype(np.float32)
    return {"features": features, "labels": labels.astype(np.int64), "identifiers": identifiers}


def compute_metrics_of(task: str, eval_set: dict):
    if task == "gqa":
        return gqa_compute_metrics(eval_set["gt_answers"], GQA_ANSWERS, eval_set["structural_types"])
    return nlvr2_compute_metrics(eval_set["identifiers"])


def evaluate_all(work_dir: Path) -> dict:
    """The figures of each task, streamed and accumulated."""
    results = {}
    for task, eval_set in (("gqa", gqa_eval_set()), ("nlvr2", nlvr2_eval_set())):
        for streamed in (True, False):
            args = TrainingArguments(
                output_dir=str(work_dir / task), per_device_eval_batch_size=BATCH_SIZE, use_cpu=True, report_to=[],
                batch_eval_metrics=streamed, disable_tqdm=True,
            )  # fmt: skip
            trainer = Trainer(
                model=FeatureClassifier(),
                args=args,
                eval_dataset=Examples(eval_set["features"], eval_set["labels"]),
                compute_metrics=compute_metrics_of(task, eval_set),
                preprocess_logits_for_metrics=logits_to_answer_ids,
            )
            metrics = trainer.evaluate()
            name = "streamed" if streamed else "accumulated"
            results.setdefault(task, {})[name] = {k: v for k, v in metrics.items() if k.startswith(f"eval_{task}_")}
    return results


if __name__ == "__main__":
    from accelerate import PartialState

    figures = evaluate_all(Path(sys.argv[1]))
    state = PartialState()
    if state.is_main_process:
        Path(sys.argv[2]).write_text(json.dumps({**figures, "processes": state.num_processes}))
    state.destroy_process_group()
