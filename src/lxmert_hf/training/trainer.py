"""Building the model and the `Trainer` of a recipe, and the final report of a fine-tuning run."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, EvalPrediction, Trainer

from lxmert_hf.configuration import LxmertVQAConfig
from lxmert_hf.data.collator import VQADataCollator
from lxmert_hf.files import write_text_atomic
from lxmert_hf.locations import locate
from lxmert_hf.model_card import trainer_model_card
from lxmert_hf.modeling import LxmertForVQA
from lxmert_hf.training.arguments import DataArguments, ModelArguments, VQATrainingArguments

logger = logging.getLogger(__name__)


class VQATrainer(Trainer):
    """
    A `transformers.Trainer` whose `push_to_hub` publishes this library's model card
    ([`lxmert_hf.model_card.trainer_model_card`]: metrics as model-index results, hyper-parameters, the region
    features the model expects) instead of the generic one. `save_model` already writes the config with the answer
    vocabulary and the tokenizer (`processing_class`).

    `push_to_hub(dataset_name=...)` (or `dataset=`) names the training data in the card.

    Example:
        ```python
        >>> from lxmert_hf.training import VQATrainer
        >>> trainer = VQATrainer(model, args, train_dataset=train, processing_class=tokenizer)  # doctest: +SKIP
        >>> trainer.push_to_hub(dataset_name="vqa_v2")  # doctest: +SKIP
        ```
    """

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        dataset_name: str | None = None,
    ) -> None:
        if not self.is_world_process_zero():
            return
        name = dataset_name or (dataset[0] if isinstance(dataset, list) and dataset else dataset)
        card = trainer_model_card(self, dataset=name, model_name=model_name)
        os.makedirs(self.args.output_dir, exist_ok=True)
        write_text_atomic(Path(self.args.output_dir) / "README.md", str(card))


def build_model(model_args: ModelArguments, answers: Sequence[str], tokenizer) -> LxmertForVQA:
    """A new `LxmertForVQA` of the requested size, or one loaded from `model_name_or_path` for `answers`."""
    options = {
        "head_loss": model_args.head_loss,
        "attention_backend": model_args.attention_backend,
        "pad_token_id": tokenizer.pad_token_id,
    }
    dropout = {"hidden_dropout_prob": model_args.dropout, "attention_probs_dropout_prob": model_args.dropout}
    if model_args.model_name_or_path:
        source = str(locate(model_args.model_name_or_path, what="--model_name_or_path"))
        return LxmertForVQA.from_pretrained(
            source, answers=list(answers), pretrain_answers=model_args.pretrain_answers,
            **options, **dropout,
        )  # fmt: skip
    sizes = {
        name: getattr(model_args, name)
        for name in (
            "hidden_size", "num_attention_heads", "intermediate_size", "l_layers", "x_layers", "r_layers",
            "initializer_range",
        )
    }  # fmt: skip
    config = LxmertVQAConfig.from_answers(answers, vocab_size=len(tokenizer), **sizes, **options, **dropout)
    return LxmertForVQA(config)


def load_tokenizer(model_args: ModelArguments, default: str | None):
    """The tokenizer named by the arguments, else the model's, else `default` (the toy world's)."""
    name = model_args.tokenizer_name or model_args.model_name_or_path or default
    if name is None:
        raise ValueError("No tokenizer: pass `--tokenizer_name` (e.g. unc-nlp/lxmert-base-uncased).")
    what = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    return AutoTokenizer.from_pretrained(locate(name, what=what).name_or_path)


def soft_score_accuracy(eval_prediction: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` for the Trainer: the mean soft score of the arg-max answer (VQA accuracy, 0..1).

    The labels are the soft scores of every answer of the vocabulary, so the score of the predicted answer is its
    VQA accuracy (answers outside the vocabulary can never be predicted, and score 0).
    """
    logits = (
        eval_prediction.predictions[0]
        if isinstance(eval_prediction.predictions, tuple)
        else eval_prediction.predictions
    )
    scores = np.asarray(eval_prediction.label_ids)
    predicted = np.asarray(logits).argmax(-1)
    return {"vqa_accuracy": float(scores[np.arange(len(predicted)), predicted].mean())}


def build_trainer(model, tokenizer, training_args: VQATrainingArguments, data_args: DataArguments, train, evaluation):
    """The HF `Trainer` of a VQA recipe (its `push_to_hub` writes this library's model card)."""
    return VQATrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=VQADataCollator(tokenizer, max_question_length=data_args.max_question_length),
        processing_class=tokenizer,
        compute_metrics=soft_score_accuracy,
    )


def final_report(trainer: Trainer, evaluation, data_args: DataArguments) -> dict[str, float]:
    """Evaluate the final model on `evaluation`: overall and per answer type, then the same with the visual
    features zeroed (a question-only baseline). Returns metrics with the `eval_` prefix."""
    metrics = _scores("eval", trainer, evaluation)
    if data_args.question_only_baseline:
        collator = trainer.data_collator
        trainer.data_collator = dataclasses.replace(collator, zero_visual_inputs=True)
        try:
            metrics.update(_scores("eval_question_only", trainer, evaluation))
        finally:
            trainer.data_collator = collator
    return metrics


def _scores(prefix: str, trainer: Trainer, evaluation) -> dict[str, float]:
    output = trainer.predict(evaluation, metric_key_prefix=prefix)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    scores = np.asarray(output.label_ids)[np.arange(len(logits)), np.asarray(logits).argmax(-1)]
    metrics = {f"{prefix}_vqa_accuracy": float(scores.mean())}
    types = np.asarray(evaluation["answer_type"])
    for kind in sorted(set(types.tolist()) - {""}):
        key = kind.replace("/", "_").replace(" ", "_")
        metrics[f"{prefix}_vqa_accuracy_{key}"] = float(scores[types == kind].mean())
    return metrics


def format_report(metrics: dict[str, float]) -> str:
    """A table of accuracy overall and per answer type, model next to the question-only baseline."""
    rows = [("overall", "")] + [
        (key.removeprefix("eval_vqa_accuracy_"), "_" + key.removeprefix("eval_vqa_accuracy_"))
        for key in sorted(metrics)
        if key.startswith("eval_vqa_accuracy_")
    ]
    lines = [f"{'answer type':<12} {'LXMERT':>8} {'question only':>14}", "-" * 36]
    for name, suffix in rows:
        model = metrics.get(f"eval_vqa_accuracy{suffix}", float("nan"))
        blind = metrics.get(f"eval_question_only_vqa_accuracy{suffix}", float("nan"))
        lines.append(f"{name:<12} {model:>8.3f} {blind:>14.3f}")
    return "\n".join(lines)


def answer_examples(trainer: Trainer, evaluation, count: int) -> str:
    """Answer the first `count` questions of `evaluation` and show them next to their ground truth."""
    if count <= 0:
        return ""
    subset = evaluation.select(range(min(count, len(evaluation))))
    output = trainer.predict(subset, metric_key_prefix="examples")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    id2label = trainer.model.config.id2label
    lines = []
    for example, row in zip(subset, np.asarray(logits), strict=True):
        truth = max(set(example["answers"]), key=example["answers"].count) if example["answers"] else "?"
        lines.append(f"Q: {example['question']}\n   predicted: {id2label[int(row.argmax())]!r}   truth: {truth!r}")
    return "\n".join(lines)
