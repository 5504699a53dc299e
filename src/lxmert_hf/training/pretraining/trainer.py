"""The `Trainer` of LXMERT pre-training: each objective's loss logged apart, image question answering switched on
from a given epoch, and a held-out evaluation of every objective (losses and accuracies) that does not depend on
how the split is batched over processes or on what was drawn before it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import EvalPrediction

from lxmert_hf.files import write_json_atomic
from lxmert_hf.losses import IGNORE_INDEX
from lxmert_hf.modeling_pretraining import OBJECTIVES
from lxmert_hf.training.trainer import _replaced

__all__ = ["PRETRAIN_ANSWERS", "PretrainingTrainer", "objective_statistics", "pretraining_metrics"]

# Beside each saved model: the answers of its QA head, which the task recipes' `--pretrain_answers` transplants.
PRETRAIN_ANSWERS = "pretrain_answers.json"
# Per example and objective: the loss's sum and count, the predictions right and made.
_STATISTICS = ("loss_sum", "loss_count", "correct", "predicted")
# How the accuracies are named in reports (the feature regression has none).
ACCURACY_NAMES = {
    "lm": "masked_lm_accuracy", "matched": "matching_accuracy", "obj": "object_accuracy",
    "attr": "attribute_accuracy", "qa": "qa_accuracy",
}  # fmt: skip


def _right_of(logits: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: how many counted targets the arg-max of `logits` gets right, and how many are counted."""
    right = (logits.argmax(-1) == targets) & counted
    return right.flatten(1).sum(1).float(), counted.flatten(1).sum(1).float()


def _answer_scores(logits: torch.Tensor, inputs: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the score of the predicted answer in the question's label (the original's QA accuracy; without
    the label, 1 when it is the drawn answer `ans`), and 1 for each question counted."""
    counted = inputs["ans"] != IGNORE_INDEX
    predicted = logits.argmax(-1)
    if inputs.get("qa_label_ids") is None:
        return ((predicted == inputs["ans"]) & counted).float(), counted.float()
    hits = (inputs["qa_label_ids"] == predicted.unsqueeze(1)).float() * inputs["qa_scores"].float()
    return hits.sum(1) * counted, counted.float()


def _accuracy_counts(name: str, outputs, inputs: Mapping) -> tuple[torch.Tensor, torch.Tensor] | None:
    if name == "lm" and inputs.get("labels") is not None:
        return _right_of(outputs.prediction_logits, inputs["labels"], inputs["labels"] != IGNORE_INDEX)
    if name == "matched" and inputs.get("matched_label") is not None:
        matched = inputs["matched_label"].unsqueeze(1)
        return _right_of(outputs.cross_relationship_score.unsqueeze(1), matched, torch.ones_like(matched).bool())
    if name == "qa" and inputs.get("ans") is not None and outputs.question_answering_score is not None:
        return _answer_scores(outputs.question_answering_score, inputs)
    scores = outputs.visual_prediction_scores or {}
    if name in ("obj", "attr") and name in scores and name in (inputs.get("obj_labels") or {}):
        ids, confidences = inputs["obj_labels"][name]
        # The masked regions the detector labelled: what masked object prediction is asked to recover.
        counted = confidences > 0
        if inputs.get("masked_regions") is not None:
            counted = counted & inputs["masked_regions"].bool()
        return _right_of(scores[name], ids, counted)
    return None


def objective_statistics(outputs, inputs: Mapping) -> torch.Tensor:
    """
    What each example of a batch adds to each objective's held-out loss and accuracy: `[B, 4 x len(OBJECTIVES)]`,
    for each objective of [`~lxmert_hf.modeling_pretraining.OBJECTIVES`] in order, the loss's sum and count, and
    the predictions right and counted (masked word pieces, the matching label, masked regions' object and attribute
    labels; for questions, the score of the predicted answer in their label, as the original evaluates QA; zeros
    where an objective is off or has no accuracy).
    """
    batch = outputs.cross_relationship_score.shape[0]
    zeros = outputs.cross_relationship_score.new_zeros(batch, dtype=torch.float32)
    columns = []
    for name in OBJECTIVES:
        sums, counts = (outputs.example_losses or {}).get(name, (zeros, zeros))
        correct, predicted = _accuracy_counts(name, outputs, inputs) or (zeros, zeros)
        columns += [sums.float(), counts.float(), correct, predicted]
    return torch.stack(columns, 1)


class _Totals:
    """The running sums of [`objective_statistics`] over an evaluation, and the metrics they give."""

    def __init__(self):
        self.totals = np.zeros(len(OBJECTIVES) * len(_STATISTICS))

    def __call__(self, prediction: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        statistics = prediction.predictions
        statistics = statistics.detach().cpu().numpy() if torch.is_tensor(statistics) else np.asarray(statistics)
        self.totals += statistics.reshape(-1, self.totals.size).sum(0)
        if not compute_result:
            return {}
        metrics = self.metrics()
        self.totals[:] = 0
        return metrics

    def metrics(self) -> dict[str, float]:
        metrics = {}
        for index, name in enumerate(OBJECTIVES):
            loss_sum, loss_count, correct, predicted = self.totals[index * 4 : index * 4 + 4]
            if loss_count:
                metrics[f"{name}_loss"] = float(loss_sum / loss_count)
            if predicted and name in ACCURACY_NAMES:
                metrics[ACCURACY_NAMES[name]] = float(100.0 * correct / predicted)
        return metrics


def pretraining_metrics() -> _Totals:
    """The `compute_metrics` of a pre-training evaluation (`batch_eval_metrics`): each objective's loss over the
    whole held-out split (`<objective>_loss`) and, in percent, `masked_lm_accuracy`, `matching_accuracy`,
    `object_accuracy`, `attribute_accuracy` and `qa_accuracy`."""
    return _Totals()


class PretrainingTrainer(Trainer):
    """
    The `Trainer` of `recipes/pretrain.py`, for [`~lxmert_hf.modeling_pretraining.LxmertForPreTrainingWithLosses`].

    - Logs each objective's mean training loss since the last log (`lm_loss`, `matched_loss`, `obj_loss`,
      `attr_loss`, `feat_loss`, `qa_loss`) beside the total `loss`, averaged over processes.
    - Trains image question answering from epoch `qa_from_epoch` (the paper: 10 of 20); before it, no answer
      counts in the loss (and `qa_loss` is not logged).
    - Evaluates with the collator's draws seeded by each batch's examples (`fixed_draws`, with the run's seed), so
      that two evaluations of one model agree, and reports every objective's held-out loss and accuracy
      ([`pretraining_metrics`]).
    - Saves `pretrain_answers.json`, the answers of the QA head, beside every saved model.

    Example:
        ```python
        >>> trainer = PretrainingTrainer(model, args, train_dataset=train, data_collator=collate,  # doctest: +SKIP
        ...                              qa_answers=answers, qa_from_epoch=10)
        >>> trainer.train()  # doctest: +SKIP
        ```
    """

    def __init__(self, *args, qa_answers: Sequence[str] | None = None, qa_from_epoch: float = 0.0, **kwargs):
        kwargs.setdefault("compute_metrics", pretraining_metrics())
        super().__init__(*args, **kwargs)
        self.qa_answers = list(qa_answers) if qa_answers is not None else None
        self.qa_from_epoch = qa_from_epoch
        # The model averages each objective over the whole global batch, from the counts this Trainer hands it.
        self.model_accepts_loss_kwargs = True
        self._objective_sums: dict[str, torch.Tensor] = {}
        self._objective_steps = 0.0

    @property
    def qa_on(self) -> bool:
        """Whether the QA loss counts at this point of training."""
        return (self.state.epoch or 0.0) >= self.qa_from_epoch

    def _get_num_items_in_batch(self, batch_samples: list, device) -> torch.Tensor | None:
        # One count per objective, summed over the step's micro-batches and gathered from every process.
        if not batch_samples:
            return None
        model = self.accelerator.unwrap_model(self.model)
        counts = sum(model.objective_counts(batch).to(device) for batch in batch_samples)
        if not self.qa_on:
            counts[OBJECTIVES.index("qa")] = 0.0
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
        return counts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and not self.qa_on and inputs.get("ans") is not None:
            inputs = {**inputs, "ans": torch.full_like(inputs["ans"], IGNORE_INDEX)}
        outputs = model(**inputs, num_items_in_batch=num_items_in_batch)
        # Normalized by the global counts, each process's loss is its share of the global batch's; DDP averages
        # the gradients over processes, which this undoes (as the Trainer does for its own models).
        scale = self.accelerator.num_processes if num_items_in_batch is not None else 1
        if model.training:
            self._add_objective_losses(outputs.losses, scale)
        loss = outputs.loss * scale
        return (loss, outputs) if return_outputs else loss

    def _add_objective_losses(self, losses: Mapping[str, torch.Tensor], scale: int) -> None:
        for name, loss in losses.items():
            if name == "qa" and not self.qa_on:
                continue
            self._objective_sums[name] = self._objective_sums.get(name, 0.0) + loss.detach().float() * scale
        # A micro-batch is this share of an optimizer step.
        self._objective_steps += 1.0 / getattr(self, "current_gradient_accumulation_steps", 1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Every process logs at the same steps (the Trainer gathers the total loss there): gather ours too. A step's
        # micro-batch losses add up to its loss; the log shows their mean per optimizer step since the last log.
        if "loss" in logs and self._objective_sums and self._objective_steps > 0:
            for name in (name for name in OBJECTIVES if name in self._objective_sums):
                mean = self._objective_sums[name] / self._objective_steps
                logs[f"{name}_loss"] = round(float(nested_gather(mean, self.args.parallel_mode).mean()), 4)
            self._objective_sums, self._objective_steps = {}, 0.0
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        loss = outputs.loss.detach() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        return loss, objective_statistics(outputs, inputs), inputs["matched_label"]

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        fixed = dataclasses.replace(self.data_collator, fixed_draws=True, seed=self.args.seed)
        with _replaced(self, data_collator=fixed), _replaced(self.args, batch_eval_metrics=True):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save and self.qa_answers is not None:
            folder = Path(output_dir if output_dir is not None else self.args.output_dir)
            os.makedirs(folder, exist_ok=True)
            write_json_atomic(folder / PRETRAIN_ANSWERS, self.qa_answers)
