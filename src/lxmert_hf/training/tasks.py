"""The fine-tuning tasks of the recipes, each a small declarative [`Task`]: which model, collator and metric it
uses, the paper's hyper-parameters, the split it is evaluated on, how its report and examples read, and its toy
world. `recipes/<task>.py` hands one of [`TASKS`] to [`~lxmert_hf.training.recipe.run_recipe`]; a new task is one
more `Task` and one short recipe file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

from lxmert_hf.configuration import LxmertVQAConfig
from lxmert_hf.configuration_nlvr2 import LxmertNLVR2Config
from lxmert_hf.data.collator import NLVR2DataCollator, VQADataCollator
from lxmert_hf.metrics import (
    gqa_compute_metrics,
    nlvr2_compute_metrics,
    vqa_compute_metrics,
    vqa_soft_score_compute_metrics,
)
from lxmert_hf.metrics.trainer import answer_type_key
from lxmert_hf.metrics.vqa import ANSWER_TYPES
from lxmert_hf.modeling import LxmertForVQA
from lxmert_hf.modeling_nlvr2 import LxmertForNLVR2

__all__ = ["GQA", "NLVR2", "TASKS", "VQA", "Task", "get_task"]


@dataclasses.dataclass(frozen=True)
class Task:
    """
    A fine-tuning task of the recipes: everything that differs from one task to another, as data.

    Args:
        name (`str`): the task's name: that of its recipe (`recipes/<name>.py`), its toy settings
            (`recipes/configs/<name>_toy.yaml`), the task a prepared directory records, and the prefix of its
            metrics (`<name>_accuracy`).
        title (`str`): how reports and cards name it (`"GQA"`).
        model_class (`type`): the model it fine-tunes; `new_model(config_options, answers)` builds one of it from
            scratch and `load_model(source, answers, options, pretrain_answers)` from a checkpoint.
        collator_class (`type`): the data collator of its examples (takes the tokenizer, `max_question_length`,
            `static_shapes` and `num_regions`).
        label_kind (`"answers"` or `"classes"`): `"answers"`: a classifier over the prepared directory's answer
            vocabulary (`label2ans.json`; `--head_loss` and `--pretrain_answers` apply); `"classes"`: a fixed set of
            classes the model's config names (NLVR2's false / true).
        metric (`str`): the official metric, which picks the best checkpoint (`gqa_accuracy`). Every metric of a
            task is named `<name>_...`.
        build_metrics (`Callable`): `build_metrics(evaluation, id2label, metric_for_best_model)` -> the Trainer's
            `compute_metrics` on the eval split, in percent, with keys `<name>_...`.
        eval_splits (`tuple[str]`): the splits it is evaluated on, by preference: the first the data has.
        defaults (`Mapping`): the paper's hyper-parameters of the task, over the arguments' dataclass defaults.
        baseline (`str`): what the blind baseline (regions zeroed) is called in reports (`"question only"`).
        group (`str`): what the rows of its report's breakdown are (`"answer type"`).
        describe_example (`Callable`): `describe_example(example, predicted)` -> the lines showing one eval
            example, with the model's answer, next to its truth.
        row_names (`Mapping`): how a row's metric-key suffix is shown (`{"yes_no": "yes/no"}`).
        overall_row (`str`): the name of the official metric's row (`"overall"`; NLVR2: `"accuracy"`).
        extra_metrics (`tuple[str]`): further metrics reported as rows of their own (NLVR2's consistency).
        fallback_metric (`tuple[str, str]`, *optional*): a metric reported, with its title, when the official one
            cannot be computed (VQA's soft score on LXMERT's JSON files).
        toy_world (`str`): the toy world it runs with no `--dataset` (`prepare_toy(..., task=toy_world)`).
        example_columns (`tuple[str, str]`): the columns the examples shown vary over first, then second (VQA:
            one of each answer type, each about another image).

    Example:
        ```python
        >>> from lxmert_hf.training.tasks import TASKS
        >>> nlvr2 = TASKS["nlvr2"]
        >>> nlvr2.model_class.__name__, nlvr2.collator_class.__name__, nlvr2.metric, nlvr2.eval_splits
        ('LxmertForNLVR2', 'NLVR2DataCollator', 'nlvr2_accuracy', ('valid', 'dev'))
        >>> nlvr2.defaults["learning_rate"], nlvr2.baseline, nlvr2.recipe
        (5e-05, 'sentence only', 'recipes/nlvr2.py')
        ```
    """

    name: str
    title: str
    model_class: type
    new_model: Callable[..., Any]
    load_model: Callable[..., Any]
    collator_class: type
    label_kind: Literal["answers", "classes"]
    metric: str
    build_metrics: Callable[..., Callable]
    eval_splits: tuple[str, ...]
    defaults: Mapping[str, Any]
    baseline: str
    group: str
    describe_example: Callable[[Mapping[str, Any], str], str]
    row_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    overall_row: str = "overall"
    extra_metrics: tuple[str, ...] = ()
    fallback_metric: tuple[str, str] | None = None
    toy_world: str = "vqa"
    example_columns: tuple[str, str] = ("answer_type", "image_id")

    @property
    def baseline_key(self) -> str:
        """The metric prefix of the blind baseline: `question_only` or `sentence_only`."""
        return self.baseline.replace(" ", "_")

    @property
    def recipe(self) -> str:
        """The recipe's path in the repository."""
        return f"recipes/{self.name}.py"

    @property
    def report_title(self) -> str:
        return f"{self.title} {self.metric.removeprefix(f'{self.name}_')}, %"


# -- models ---------------------------------------------------------------------------------------------------------
def _new_answer_model(config_options: Mapping[str, Any], answers: Sequence[str]) -> LxmertForVQA:
    return LxmertForVQA(LxmertVQAConfig.from_answers(answers, **config_options))


def _load_answer_model(
    source: str, answers: Sequence[str], options: Mapping[str, Any], pretrain_answers: str | None
) -> LxmertForVQA:
    return LxmertForVQA.from_pretrained(source, answers=list(answers), pretrain_answers=pretrain_answers, **options)


def _new_pair_model(config_options: Mapping[str, Any], answers: None) -> LxmertForNLVR2:
    return LxmertForNLVR2(LxmertNLVR2Config(**config_options))


def _load_pair_model(source: str, answers: None, options: Mapping[str, Any], pretrain_answers: None) -> LxmertForNLVR2:
    # The encoder of any LXMERT layout (the original's --loadLXMERT); the pair classifier starts new.
    return LxmertForNLVR2.from_pretrained(source, **options)


# -- metrics --------------------------------------------------------------------------------------------------------
def question_column(evaluation, name: str) -> list | None:
    """A question column of an eval split, or `None` when it has none; read past the feature join (a column read
    through it would read the regions of every image)."""
    if name not in evaluation.column_names:
        return None
    return evaluation.with_format(None)[name][:]


def vqa_metrics(evaluation, id2label, metric_for_best_model: str | None = "vqa_accuracy"):
    """The `compute_metrics` of the VQA recipe on `evaluation`: percentages, overall and per answer type.

    It is the official VQA accuracy ([`~lxmert_hf.metrics.vqa_compute_metrics`], `vqa_accuracy`), which needs the
    annotators' answers of every eval question. Splits prepared from LXMERT's JSON files keep only soft scores; they
    get the mean soft score of the predicted answers instead ([`~lxmert_hf.metrics.vqa_soft_score_compute_metrics`],
    `vqa_soft_score`), as does `metric_for_best_model="vqa_soft_score"`.
    """
    selected = (metric_for_best_model or "").removeprefix("eval_")
    answers = question_column(evaluation, "answers")
    answer_types = question_column(evaluation, "answer_type")
    if answers is not None and all(answers) and not selected.startswith("vqa_soft_score"):
        return vqa_compute_metrics(answers, id2label, answer_types)
    if selected.startswith("vqa_accuracy"):
        raise ValueError(
            f"`metric_for_best_model` is {metric_for_best_model!r}, the official VQA accuracy, which needs the "
            "annotators' answers of every eval question, but the eval split lacks them (LXMERT's JSON files keep "
            "only soft scores): pass `--metric_for_best_model vqa_soft_score` (the mean soft score of the "
            "predicted answers), or evaluate on a split prepared from the official annotation files."
        )
    return vqa_soft_score_compute_metrics(answer_types)


def gqa_metrics(evaluation, id2label, metric_for_best_model: str | None = "gqa_accuracy"):
    """The `compute_metrics` of the GQA recipe on `evaluation`: the official GQA accuracy (exact match), in percent,
    overall and per structural type when the questions carry it (the official balanced files do;
    [`~lxmert_hf.metrics.gqa_compute_metrics`])."""
    types = question_column(evaluation, "answer_type")
    return gqa_compute_metrics(
        question_column(evaluation, "answer"), id2label, types if types and all(types) else None
    )


def nlvr2_metrics(evaluation, id2label, metric_for_best_model: str | None = "nlvr2_accuracy"):
    """The `compute_metrics` of the NLVR2 recipe on `evaluation`: the official accuracy and consistency (the share
    of sentences right on every image pair), in percent ([`~lxmert_hf.metrics.nlvr2_compute_metrics`])."""
    return nlvr2_compute_metrics(question_column(evaluation, "identifier"))


# -- examples -------------------------------------------------------------------------------------------------------
def describe_question(example: Mapping[str, Any], predicted: str) -> str:
    """A question, its type, the model's answer and the most common ground-truth answer."""
    answers = example.get("answers") or []
    truth = max(set(answers), key=answers.count) if answers else "?"
    about = f"   ({example['answer_type']})" if example.get("answer_type") else ""
    return f"Q: {example['question']}{about}\n   predicted: {predicted!r}   truth: {truth!r}"


def describe_statement(example: Mapping[str, Any], predicted: str) -> str:
    """An NLVR2 statement, its identifier (which names its image pair), the model's verdict and the truth."""
    truth = {1: "true", 0: "false"}.get(example.get("label"), "?")
    about = f"   ({example['identifier']})" if example.get("identifier") else ""
    return f"S: {example['question']}{about}\n   predicted: {predicted!r}   truth: {truth!r}"


# -- the tasks ------------------------------------------------------------------------------------------------------
VQA = Task(
    name="vqa",
    title="VQA",
    model_class=LxmertForVQA,
    new_model=_new_answer_model,
    load_model=_load_answer_model,
    collator_class=VQADataCollator,
    label_kind="answers",
    metric="vqa_accuracy",
    build_metrics=vqa_metrics,
    eval_splits=("minival",),
    # The original run/vqa_finetune.bash: --batchSize 32 --optim bert --lr 5e-5 --epochs 4 (the dataclass defaults).
    defaults=MappingProxyType(
        {"learning_rate": 5e-5, "output_dir": "outputs/vqa", "metric_for_best_model": "vqa_accuracy"}
    ),
    baseline="question only",
    group="answer type",
    row_names=MappingProxyType({answer_type_key(kind): kind for kind in ANSWER_TYPES}),
    fallback_metric=("vqa_soft_score", "VQA soft score, % (no annotators' answers)"),
    toy_world="vqa",
    describe_example=describe_question,
)

GQA = Task(
    name="gqa",
    title="GQA",
    model_class=LxmertForVQA,
    new_model=_new_answer_model,
    load_model=_load_answer_model,
    collator_class=VQADataCollator,
    label_kind="answers",
    metric="gqa_accuracy",
    build_metrics=gqa_metrics,
    # The original trains on train + valid and evaluates on testdev (run/gqa_finetune.bash: --valid testdev).
    eval_splits=("testdev", "val", "valid"),
    # run/gqa_finetune.bash: --batchSize 32 --optim bert --lr 1e-5 --epochs 4.
    defaults=MappingProxyType(
        {"learning_rate": 1e-5, "output_dir": "outputs/gqa", "metric_for_best_model": "gqa_accuracy"}
    ),
    baseline="question only",
    group="structural type",
    toy_world="gqa",
    describe_example=describe_question,
)

NLVR2 = Task(
    name="nlvr2",
    title="NLVR2",
    model_class=LxmertForNLVR2,
    new_model=_new_pair_model,
    load_model=_load_pair_model,
    collator_class=NLVR2DataCollator,
    label_kind="classes",
    metric="nlvr2_accuracy",
    build_metrics=nlvr2_metrics,
    # run/nlvr2_finetune.bash: --train train --valid valid (the official dev split, named valid by LXMERT).
    eval_splits=("valid", "dev"),
    # run/nlvr2_finetune.bash: --batchSize 32 --optim bert --lr 5e-5 --epochs 4.
    defaults=MappingProxyType(
        {"learning_rate": 5e-5, "output_dir": "outputs/nlvr2", "metric_for_best_model": "nlvr2_accuracy"}
    ),
    baseline="sentence only",
    group="metric",
    overall_row="accuracy",
    extra_metrics=("nlvr2_consistency",),
    toy_world="nlvr2",
    describe_example=describe_statement,
    # A true and a false statement, each another sentence.
    example_columns=("label", "question"),
)

TASKS: Mapping[str, Task] = MappingProxyType({task.name: task for task in (VQA, GQA, NLVR2)})


def get_task(task: Task | str) -> Task:
    """The [`Task`] named `task` (or `task` itself).

    Example:
        ```python
        >>> from lxmert_hf.training.tasks import get_task
        >>> task = get_task("gqa")
        >>> task.metric, task.eval_splits, task.defaults["learning_rate"]
        ('gqa_accuracy', ('testdev', 'val', 'valid'), 1e-05)
        ```
    """
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; the recipes know {sorted(TASKS)}.")
    return TASKS[task]
