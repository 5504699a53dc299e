"""The recipe's evaluation (`build_trainer`, `trainer.evaluate`, `final_report`, `answer_examples`) on a small eval
split, with a model whose answers do not depend on how questions are batched: the figures of one process, two
processes or the accumulate-everything path must then be exactly equal.

Imported by `test_training.py`; run under `accelerate launch` as a script, it writes its figures to a JSON file:

    accelerate launch --multi_gpu --num_processes 2 tests/streamed_evaluation.py WORK_DIR RESULT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
import vqa_helpers as vh

from lxmert_hf import LxmertVQAConfig
from lxmert_hf.answers import encode_soft_labels, soft_scores
from lxmert_hf.training import (
    DataArguments,
    VQATrainingArguments,
    answer_examples,
    build_trainer,
    final_report,
)

ANSWERS = ["yes", "no", "2", "3", "red", "blue"]
# 11 questions, 2 per process and batch: one process ends on a batch of 1, two processes on a global batch of
# 3 + 1 repeated question that the gathering must drop.
NUM_QUESTIONS = 11
BATCH_SIZE = 2
METRICS = ("vqa_accuracy", "vqa_soft_score")


class FirstRegionAnswerer(torch.nn.Module):
    """Answers with its first region's features as the logits: elementwise, so exact in any batch."""

    def __init__(self, answers: list[str]):
        super().__init__()
        self.config = LxmertVQAConfig.from_answers(answers, **vh.SIZES, visual_feat_dim=len(answers))
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, visual_feats, labels=None, **inputs):
        logits = visual_feats[:, 0] * self.scale
        loss = None if labels is None else torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return {"loss": loss, "logits": logits}


def eval_split(count: int = NUM_QUESTIONS, seed: int = 0) -> datasets.Dataset:
    """Questions with disagreeing annotators (so normalization matters), answer types and soft-score labels."""
    rng = np.random.default_rng(seed)
    label2id = {answer: index for index, answer in enumerate(ANSWERS)}
    rows = []
    for _ in range(count):
        dominant, other = (str(answer) for answer in rng.choice(ANSWERS, 2, replace=False))
        agreeing = int(rng.integers(1, 8))
        answers = [dominant] * agreeing + ["Two" if dominant == "2" else f"{dominant}."] * 2 + [other] * (8 - agreeing)
        scores = soft_scores(answers)
        rows.append({
            "question": "what color is the cube ?",
            "input_ids": [2, 5, 6, 7, 8, 9, 10, 3],
            "answers": answers,
            "answer_type": "number" if dominant in {"2", "3"} else "yes/no" if dominant in {"yes", "no"} else "other",
            "visual_feats": rng.standard_normal((2, len(ANSWERS))).astype(np.float32),
            "visual_pos": np.tile(np.array([0.1, 0.1, 0.6, 0.6], dtype=np.float32), (2, 1)),
            "labels": encode_soft_labels([list(scores)], [list(scores.values())], label2id)[0],
        })  # fmt: skip
    return datasets.Dataset.from_list(rows)


def evaluate_all(work_dir: Path) -> dict:
    """Every figure the recipe reports, streamed, and the Trainer's accumulate-everything figures to compare."""
    evaluation = eval_split()
    results = {}
    for metric in METRICS:
        args = VQATrainingArguments(
            output_dir=str(work_dir / metric), use_cpu=True, per_device_eval_batch_size=BATCH_SIZE,
            metric_for_best_model=metric,
        )  # fmt: skip
        model = FirstRegionAnswerer(ANSWERS)
        trainer = build_trainer(model, vh.tokenizer(), args, DataArguments(), None, evaluation)
        streamed = _figures(trainer.evaluate())
        report = final_report(trainer, evaluation, DataArguments())
        trainer.args.batch_eval_metrics = False
        accumulated = _figures(trainer.evaluate())
        results[metric] = {"streamed": streamed, "report": report, "accumulated": accumulated}
    results["examples"] = answer_examples(trainer, evaluation, 3)
    return results


def _figures(metrics: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in metrics.items() if name.startswith("eval_vqa_")}


if __name__ == "__main__":
    from accelerate import PartialState

    figures = evaluate_all(Path(sys.argv[1]))
    state = PartialState()
    if state.is_main_process:
        Path(sys.argv[2]).write_text(json.dumps({**figures, "processes": state.num_processes}))
    state.destroy_process_group()
