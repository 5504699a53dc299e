"""Building the model and the `Trainer` of a recipe, and the final report of a fine-tuning run, for any of the
recipes' tasks ([`~lxmert_hf.training.tasks.Task`])."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import CONFIG_NAME, AutoTokenizer, EarlyStoppingCallback, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lxmert_hf.data.tokens import TOKENIZER_FILES, check_vocabulary
from lxmert_hf.files import write_text_atomic
from lxmert_hf.locations import cache_first_file, locate
from lxmert_hf.losses import IGNORE_INDEX
from lxmert_hf.metrics import logits_to_answer_ids
from lxmert_hf.model_card import evaluation_of_step, trainer_model_card
from lxmert_hf.training.arguments import DataArguments, ModelArguments, RecipeTrainingArguments
from lxmert_hf.training.provenance import RunRecord
from lxmert_hf.training.speed import HostCheckedCollator, host_value_check
from lxmert_hf.training.tasks import VQA, Task, get_task, question_column
from lxmert_hf.validation import values_checked_on_host

logger = logging.getLogger(__name__)


class RecipeTrainer(Trainer):
    """
    The recipes' `transformers.Trainer`, for any of their tasks. Every saved model, the final one and each
    `checkpoint-N`, is a self-describing folder: besides the config (answer vocabulary, `visual_features`) and the
    tokenizer (`processing_class`), a `README.md` model card ([`lxmert_hf.model_card.trainer_model_card`]): the
    results of the saved weights in percent (the evaluation of that step; for the final model, the best
    checkpoint's when it was loaded at the end, then the report given to `save_metrics("eval", ...)`),
    hyper-parameters, base model, data, the install line and the command that trained it. `push_to_hub` publishes
    the same card. Only the main process writes it.

    The loss of a step is the mean over the questions that the model's loss counts (`counted_in_loss`: for the
    softmax loss, those with a target) in the whole global batch, however it is split over processes and
    gradient-accumulation steps: the Trainer's `num_items_in_batch` counts those questions, not label entries.

    A training step reads nothing back from the device (with `logging_nan_inf_filter` off, the default on a GPU):
    the values the model's forward pass checks (token ids, boxes, finite regions, labels) are checked on each
    training batch on the host as it is collated ([`~lxmert_hf.training.speed.HostValueCheck`]) and skipped in
    the forward pass ([`~lxmert_hf.validation.values_checked_on_host`]).

    Args:
        run_record ([`~lxmert_hf.training.provenance.RunRecord`], *optional*): the command and the data the cards
            name.
        task ([`~lxmert_hf.training.tasks.Task`] or `str`, *optional*, defaults to VQA): the task its reports and
            cards are about.
        args, kwargs: those of `transformers.Trainer`.

    Example:
        ```python
        >>> from lxmert_hf.training import VQATrainer
        >>> trainer = VQATrainer(model, args, train_dataset=train, processing_class=tokenizer)  # doctest: +SKIP
        >>> trainer.push_to_hub(dataset_name="vqa_v2")  # doctest: +SKIP
        ```
    """

    def __init__(self, *args, run_record: RunRecord | None = None, task: Task | str = VQA, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = get_task(task)
        # The library's models decline `num_items_in_batch` for transformers' own Trainer, which would count label
        # entries; this Trainer counts the items their loss counts (`_get_num_items_in_batch`), so it hands it over.
        if hasattr(self.accelerator.unwrap_model(self.model), "counted_in_loss"):
            self.model_accepts_loss_kwargs = True
        self.run_record = run_record or RunRecord()
        self._report: dict[str, float] | None = None

    def get_train_dataloader(self):
        # The training batches' values are checked on the host as they are collated (in the data loader's workers,
        # ahead of the step), so that the forward pass need not wait on the device to check them.
        check = host_value_check(self.accelerator.unwrap_model(self.model, keep_torch_compile=False))
        self._checked_on_host = check is not None
        if check is None:
            return super().get_train_dataloader()
        with _replaced(self, data_collator=HostCheckedCollator(self.data_collator, check)):
            return super().get_train_dataloader()

    def training_step(self, model, inputs, num_items_in_batch=None):
        checked = values_checked_on_host() if getattr(self, "_checked_on_host", False) else contextlib.nullcontext()
        with checked:
            return super().training_step(model, inputs, num_items_in_batch)

    def _get_num_items_in_batch(self, batch_samples: list, device) -> torch.Tensor | int | None:
        # transformers counts the entries of `labels` other than -100, which for soft scores are all the answers of
        # every question. Hand it one label per question instead, -100 for those the model's loss leaves out; it
        # then sums them over the step and gathers them from the processes as for any model.
        counted_in_loss = getattr(self.accelerator.unwrap_model(self.model), "counted_in_loss", None)
        if counted_in_loss is None or not batch_samples or "labels" not in batch_samples[0]:
            return super()._get_num_items_in_batch(batch_samples, device)
        per_question = [
            {"labels": torch.where(counted_in_loss(batch["labels"]), 0, IGNORE_INDEX)} for batch in batch_samples
        ]
        return super()._get_num_items_in_batch(per_question, device)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            self._write_card(Path(output_dir if output_dir is not None else self.args.output_dir))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer uploads `output_dir` once it holds the checkpoint's weights: the checkpoint's card goes too.
        card = Path(checkpoint_folder) / "README.md"
        if self.is_world_process_zero() and card.is_file():
            write_text_atomic(Path(self.args.output_dir) / "README.md", card.read_text(encoding="utf-8"))
        super()._push_from_checkpoint(checkpoint_folder)

    def save_metrics(self, split: str, metrics: dict[str, float], combined: bool = True) -> None:
        super().save_metrics(split, metrics, combined)
        if split == "eval" and self.is_world_process_zero():
            self._report = dict(metrics)  # the final report of the model in `output_dir`, saved before
            if (Path(self.args.output_dir) / CONFIG_NAME).is_file():
                self._write_card(Path(self.args.output_dir))

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
        os.makedirs(self.args.output_dir, exist_ok=True)
        self._write_card(Path(self.args.output_dir), dataset=name, model_name=model_name)

    def _write_card(self, folder: Path, dataset: str | None = None, model_name: str | None = None) -> None:
        card = trainer_model_card(
            self, dataset=dataset or self.run_record.dataset, model_name=model_name, metrics=self._results_of(folder),
            dataset_name=None if dataset else self.run_record.dataset_name, dataset_split=self.run_record.eval_split,
            command=self.run_record.command, task=self.task.name,
        )  # fmt: skip
        write_text_atomic(folder / "README.md", str(card))

    def _results_of(self, folder: Path) -> dict[str, float]:
        """The evaluation of the weights saved in `folder`: a checkpoint's are those of its step."""
        state = self.state
        if folder.name == f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}":
            return evaluation_of_step(state.log_history, state.global_step)
        if self._report is not None and folder == Path(self.args.output_dir):
            return self._report
        best_loaded = self.args.load_best_model_at_end and state.best_model_checkpoint is not None
        return evaluation_of_step(state.log_history, state.best_global_step if best_loaded else state.global_step)


# The name of the recipes' Trainer when VQA was their only task.
VQATrainer = RecipeTrainer


def build_model(
    model_args: ModelArguments,
    answers: Sequence[str] | None,
    tokenizer,
    visual_features: Mapping[str, Any] | None = None,
    task: Task | str = VQA,
):
    """A new model of the task ([`~lxmert_hf.training.tasks.Task.model_class`]) of the requested size, or one
    loaded from `model_name_or_path`; for a task with an answer vocabulary, one classifying `answers`.

    With `pretrain_answers` the classifier starts from the pre-training QA head; the model's
    `answer_head_transplant` then says how many answers were transplanted and how many set to zero.
    `visual_features`, what made the training data's region features (a feature store's
    [`~lxmert_hf.data.FeatureStore.extractor`]), becomes `config.visual_features`, so that every checkpoint names
    the detector that answers about pictures; without it, a loaded model keeps its own.
    """
    model = _new_or_pretrained(model_args, answers, tokenizer, get_task(task))
    if visual_features is not None:
        model.config.visual_features = copy.deepcopy(dict(visual_features))
    return model


def _new_or_pretrained(model_args: ModelArguments, answers: Sequence[str] | None, tokenizer, task: Task):
    options = {"attention_backend": model_args.attention_backend, "pad_token_id": tokenizer.pad_token_id}
    if task.label_kind == "answers":
        options["head_loss"] = model_args.head_loss
    dropout = {"hidden_dropout_prob": model_args.dropout, "attention_probs_dropout_prob": model_args.dropout}
    if model_args.model_name_or_path:
        source = str(locate(model_args.model_name_or_path, what="--model_name_or_path"))
        return task.load_model(source, answers, {**options, **dropout}, model_args.pretrain_answers)
    sizes = {
        name: getattr(model_args, name)
        for name in (
            "hidden_size", "num_attention_heads", "intermediate_size", "l_layers", "x_layers", "r_layers",
            "initializer_range",
        )
    }  # fmt: skip
    return task.new_model({"vocab_size": len(tokenizer), **sizes, **options, **dropout}, answers)


def load_tokenizer(model_args: ModelArguments, default: str | None):
    """The tokenizer named by the arguments, else the model's, else `default` (the toy world's)."""
    name = model_args.tokenizer_name or model_args.model_name_or_path or default
    if name is None:
        raise ValueError("No tokenizer: pass `--tokenizer_name` (e.g. unc-nlp/lxmert-base-uncased).")
    what = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    location = locate(name, what=what)
    hub_kwargs = cache_first_file(location, TOKENIZER_FILES, what)
    tokenizer = AutoTokenizer.from_pretrained(location.name_or_path, **hub_kwargs)
    return check_vocabulary(tokenizer, f"{name} holds none; pass --tokenizer_name (e.g. unc-nlp/lxmert-base-uncased).")


def build_compute_metrics(
    evaluation, id2label, metric_for_best_model: str | None = "vqa_accuracy", task: Task | str = VQA
):
    """The `compute_metrics` of a recipe on `evaluation`: the task's official metric in percent, overall and per
    answer (or structural) type ([`~lxmert_hf.training.tasks.Task.build_metrics`]).

    For VQA it is the official VQA accuracy ([`~lxmert_hf.metrics.vqa_compute_metrics`], `vqa_accuracy`), which
    needs the annotators' answers of every eval question. Splits prepared from LXMERT's JSON files keep only soft
    scores; they get the mean soft score of the predicted answers instead
    ([`~lxmert_hf.metrics.vqa_soft_score_compute_metrics`], `vqa_soft_score`), as does
    `metric_for_best_model="vqa_soft_score"`.
    """
    return get_task(task).build_metrics(evaluation, id2label, metric_for_best_model)


def build_trainer(
    model,
    tokenizer,
    training_args: RecipeTrainingArguments,
    data_args: DataArguments,
    train,
    evaluation,
    run_record: RunRecord | None = None,
    task: Task | str = VQA,
    num_regions: int | None = None,
):
    """The HF `Trainer` of a recipe of `task`: its collator and metric, and every model it saves carries this
    library's model card, naming what `run_record` records (the command, the data); it stops early when
    `training_args.early_stopping_patience` is set. With `training_args.static_shapes`, the collator pads questions
    to `--max_question_length` and regions to `num_regions` (the store's most per image,
    [`~lxmert_hf.training.data.max_regions`]; default: the most in each batch)."""
    task = get_task(task)
    callbacks = []
    if (patience := getattr(training_args, "early_stopping_patience", None)) is not None:
        callbacks.append(EarlyStoppingCallback(patience, training_args.early_stopping_threshold))
    metric = training_args.metric_for_best_model
    return RecipeTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=task.collator_class(
            tokenizer,
            max_question_length=data_args.max_question_length,
            static_shapes=bool(getattr(training_args, "static_shapes", False)),
            num_regions=num_regions,
        ),
        processing_class=tokenizer,
        compute_metrics=build_compute_metrics(evaluation, model.config.id2label, metric, task),
        preprocess_logits_for_metrics=logits_to_answer_ids,
        run_record=run_record,
        callbacks=callbacks,
        task=task,
    )


def final_report(trainer: Trainer, evaluation, data_args: DataArguments) -> dict[str, float]:
    """Evaluate the final model on `evaluation` with the metric of [`build_compute_metrics`] (the task's official
    metric, in percent; the official VQA accuracy for VQA): overall and per answer type, then the same with the
    visual features zeroed (the question-only baseline; sentence-only for NLVR2). Returns metrics with the `eval_`
    prefix, e.g. `eval_vqa_accuracy_yes_no` and `eval_question_only_vqa_accuracy_yes_no`.

    Both passes stream, whatever `batch_eval_metrics` says: only the predicted answer id (or its soft score) of each
    question is kept, never the logits or soft-score labels of the whole split."""
    task = _task_of(trainer)
    compute_metrics = build_compute_metrics(
        evaluation, trainer.model.config.id2label, trainer.args.metric_for_best_model, task
    )
    metrics = _scores("eval", trainer, evaluation, compute_metrics, task)
    if data_args.question_only_baseline:
        blind = dataclasses.replace(trainer.data_collator, zero_visual_inputs=True)
        with _replaced(trainer, data_collator=blind):
            metrics.update(_scores(f"eval_{task.baseline_key}", trainer, evaluation, compute_metrics, task))
    return metrics


def _task_of(trainer: Trainer) -> Task:
    return getattr(trainer, "task", None) or VQA


def _scores(prefix: str, trainer: Trainer, evaluation, compute_metrics, task: Task) -> dict[str, float]:
    """The metrics of one streamed pass: the Trainer's own evaluation loop with `batch_eval_metrics`, which hands
    each batch, gathered across processes and without the last batch's padding, to `compute_metrics` and keeps
    nothing else (`trainer.predict` would keep every prediction and label)."""
    with _replaced(trainer, compute_metrics=compute_metrics), _replaced(trainer.args, batch_eval_metrics=True):
        # A test dataloader: with persistent workers, `get_eval_dataloader` hands back the cached eval loader,
        # whose collator does not zero the regions.
        output = trainer.evaluation_loop(
            trainer.get_test_dataloader(evaluation), description="Evaluation", prediction_loss_only=False,
            metric_key_prefix=prefix,
        )  # fmt: skip
    trainer.control = trainer.callback_handler.on_predict(trainer.args, trainer.state, trainer.control, output.metrics)
    # Only the metric's figures: the loop adds the loss and timings under the same prefix.
    return {name: value for name, value in output.metrics.items() if name.startswith(f"{prefix}_{task.name}_")}


@contextlib.contextmanager
def _replaced(owner, **attributes):
    """Set attributes of `owner` for the duration of the block, then restore them."""
    saved = {name: getattr(owner, name) for name in attributes}
    for name, value in attributes.items():
        setattr(owner, name, value)
    try:
        yield owner
    finally:
        for name, value in saved.items():
            setattr(owner, name, value)


def _predict(trainer: Trainer, dataset, prefix: str):
    """`trainer.predict` without the Trainer's `compute_metrics`, which knows the answers of the whole eval split
    only (and would refuse a subset)."""
    with _replaced(trainer, compute_metrics=None):
        return trainer.predict(dataset, metric_key_prefix=prefix)


def format_report(metrics: dict[str, float], task: Task | str = VQA) -> str:
    """A table of the task's official metric (percent) overall and per answer (or structural) type, and its other
    metrics (NLVR2's consistency), model next to the blind baseline (question-only; sentence-only for NLVR2). For
    VQA, the soft score when the report of [`final_report`] holds no official accuracy. Answer types are named as
    the official tool and `lxmert-hf evaluate` name them (`yes/no`), not by their metric keys (`..._yes_no`)."""
    task = get_task(task)
    name, title = task.metric, task.report_title
    if task.fallback_metric and f"eval_{task.fallback_metric[0]}" in metrics and f"eval_{name}" not in metrics:
        name, title = task.fallback_metric
    groups = [key.removeprefix(f"eval_{name}_") for key in sorted(metrics) if key.startswith(f"eval_{name}_")]
    rows = [(task.overall_row, name, ""), *((task.row_names.get(kind, kind), name, f"_{kind}") for kind in groups)]
    rows += [(extra.removeprefix(f"{task.name}_"), extra, "") for extra in task.extra_metrics]
    width = max(12, len(task.group), *(len(label) for label, _, _ in rows))
    blind_width = max(14, len(task.baseline))
    lines = [
        title,
        f"{task.group:<{width}} {'LXMERT':>8} {task.baseline:>{blind_width}}",
        "-" * (width + blind_width + 10),
    ]
    for label, metric, suffix in rows:
        model = metrics.get(f"eval_{metric}{suffix}", float("nan"))
        blind = metrics.get(f"eval_{task.baseline_key}_{metric}{suffix}", float("nan"))
        lines.append(f"{label:<{width}} {model:>8.2f} {blind:>{blind_width}.2f}")
    return "\n".join(lines)


def answer_examples(trainer: Trainer, evaluation, count: int) -> str:
    """Answer `count` examples of `evaluation` and show them next to their ground truth, as the trainer's task
    shows them ([`~lxmert_hf.training.tasks.Task.describe_example`]): one of each answer type (NLVR2: of each
    truth value) first, each about another image (NLVR2: sentence) when the split allows ([`example_questions`])."""
    if count <= 0:
        return ""
    task = _task_of(trainer)
    subset = evaluation.select(example_questions(evaluation, count, *task.example_columns))
    predictions = _predict(trainer, subset, "examples").predictions
    predictions = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
    # Answer ids when the Trainer reduces the logits for its metrics (`logits_to_answer_ids`), else the logits.
    answer_ids = predictions if predictions.ndim == 1 else predictions.argmax(-1)
    id2label = trainer.model.config.id2label
    described = [
        task.describe_example(example, id2label[int(answer_id)])
        for example, answer_id in zip(subset, answer_ids, strict=True)
    ]
    return "\n".join(described)


def example_questions(
    evaluation, count: int, kind_column: str = "answer_type", image_column: str = "image_id"
) -> list[int]:
    """The indices of `count` questions of `evaluation` that show a model at its most varied: in split order, first
    one of each answer type (`kind_column`) about an image (`image_column`) not shown yet, then one of each type
    left, then further images, then any question.

    Example:
        ```python
        >>> import datasets
        >>> from lxmert_hf.training.trainer import example_questions
        >>> split = datasets.Dataset.from_dict({
        ...     "image_id": ["a", "a", "a", "b", "b", "c"],
        ...     "answer_type": ["yes/no", "number", "other", "yes/no", "other", "yes/no"]})
        >>> example_questions(split, 3)  # yes/no about a, other about b; no number about another image than a
        [0, 4, 1]
        ```
    """
    size = len(evaluation)
    kinds = question_column(evaluation, kind_column) or [""] * size
    images = question_column(evaluation, image_column) or list(range(size))
    chosen: list[int] = []
    for new_kind, new_image in ((True, True), (True, False), (False, True), (False, False)):
        shown_kinds = {kinds[index] for index in chosen}
        shown_images = {images[index] for index in chosen}
        for index in range(size):
            if len(chosen) == count:
                return chosen
            if index in chosen or (new_kind and kinds[index] in shown_kinds):
                continue
            if new_image and images[index] in shown_images:
                continue
            chosen.append(index)
            shown_kinds.add(kinds[index])
            shown_images.add(images[index])
    return chosen
