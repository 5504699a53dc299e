"""The model card of a checkpoint: what it says and how it is rendered to the `README.md` of a checkpoint folder.

A card is built from the checkpoint's config (answers, head loss, the region features it expects), and optionally
its evaluation metrics, training hyper-parameters, data and the command that trained it ([`model_card`]), or from
all of these as a `Trainer` holds them ([`trainer_model_card`]). The metadata block (task, library, base model,
datasets, and the metrics as `model-index` results) is what the Hub shows and indexes; the body says how to install
and use the model, and how it was made. Metrics are percentages, as the official evaluation tools print them.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from lxmert_hf.configuration import BOX_FORMAT
from lxmert_hf.locations import locate

__all__ = [
    "HYPERPARAMETERS",
    "LIBRARY_NAME",
    "PIPELINE_TAG",
    "RUN_METRICS",
    "base_model_of",
    "evaluation_of_step",
    "install_line",
    "model_card",
    "trainer_model_card",
]

LIBRARY_NAME = "lxmert-hf"
DISTRIBUTION = "lxmert-hf"
PIPELINE_TAG = "visual-question-answering"
DEFAULT_TITLE = "LXMERT for {task}"
# Trainer metrics that describe the run, not the model.
RUN_METRICS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step")
# Results of the blind baselines (visual features zeroed: question-only, sentence-only for NLVR2): shown in the
# card, not claimed as the model's.
BASELINE_PREFIX = ("question_only_", "sentence_only_")
# The training arguments a card lists.
HYPERPARAMETERS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
    "warmup_steps", "lr_scheduler_type", "weight_decay", "max_grad_norm", "optim", "seed",
)  # fmt: skip


def model_card(
    config,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    dataset_name: str | None = None,
    dataset_split: str | None = None,
    metrics: Mapping[str, float] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    description: str | None = None,
    license: str | None = "apache-2.0",
    tags: Sequence[str] = (),
    command: str | None = None,
    task: str = "vqa",
) -> ModelCard:
    r"""
    Write the model card of a checkpoint: metadata for the Hub (task, library, base model, datasets, and the
    metrics as `model-index` results) and a body saying how to use it, what it answers and what it was fed.

    Args:
        config ([`LxmertVQAConfig`]): the checkpoint's config (answers, head loss, `visual_features`).
        model_name (`str`, *optional*): the title; defaults to `"LXMERT for VQA"`.
        repo_id (`str`, *optional*): the Hub repo, shown in the usage example.
        base_model (`str`, *optional*): the Hub id it was fine-tuned from.
        dataset (`str`, *optional*): the Hub id or short name of the training data (e.g. `"vqa_v2"`), never a
            local path.
        dataset_name / dataset_split (`str`, *optional*): how the evaluation data is shown, and its split.
        metrics (`Mapping[str, float]`, *optional*): evaluation results in percent, e.g. `{"vqa_accuracy": 72.5}`;
            those of the question-only baseline (`question_only_*`) are shown, not listed as the model's results.
        hyperparameters (`Mapping`, *optional*): training settings listed in the card.
        description (`str`, *optional*): a paragraph put under the title.
        command (`str`, *optional*): the shell command that trained the model, shown under the install line.
        task (`str`, *optional*, defaults to `"vqa"`): the task it was fine-tuned for (`"vqa"`, `"gqa"`,
            `"nlvr2"`), tagged and named in the default title.

    Example:
        ```python
        >>> from lxmert_hf import LxmertVQAConfig
        >>> from lxmert_hf.model_card import model_card
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"])
        >>> card = model_card(config, dataset="vqa_v2", dataset_split="minival", metrics={"vqa_accuracy": 72.5})
        >>> card.data.eval_results[0].metric_name, card.data.eval_results[0].metric_value
        ('vqa_accuracy (%)', 72.5)
        ```
    """
    _check_not_local(dataset, "dataset")
    metrics = {name: float(value) for name, value in (metrics or {}).items()}
    results = [
        EvalResult(
            task_type=PIPELINE_TAG, dataset_type=dataset or "custom", dataset_name=dataset_name or dataset or "custom",
            dataset_split=dataset_split, metric_type="accuracy" if "accuracy" in name else name,
            metric_name=f"{name} (%)", metric_value=value,
        )
        for name, value in metrics.items() if not name.startswith(BASELINE_PREFIX)
    ]  # fmt: skip
    title = model_name or DEFAULT_TITLE.format(task=task.upper())
    data = ModelCardData(
        library_name=LIBRARY_NAME, pipeline_tag=PIPELINE_TAG, license=license, language="en",
        base_model=base_model, datasets=[dataset] if dataset else None, tags=["lxmert", task, *tags],
        metrics=sorted({r.metric_type for r in results}) or None, model_name=title, eval_results=results or None,
    )  # fmt: skip
    body = _card_body(config, title, repo_id, description, metrics, hyperparameters, dataset_name or dataset, command)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def trainer_model_card(
    trainer,
    dataset: str | None = None,
    model_name: str | None = None,
    *,
    metrics: Mapping[str, float] | None = None,
    dataset_name: str | None = None,
    dataset_split: str | None = None,
    command: str | None = None,
    task: str = "vqa",
) -> ModelCard:
    """
    The model card of a `transformers.Trainer`'s model: its evaluation metrics (percent; by default the last
    evaluation of the trainer's state, without the run's own metrics, [`RUN_METRICS`]), the training
    hyper-parameters ([`HYPERPARAMETERS`] and the total batch size), the Hub repo the model was loaded from as its
    base model ([`base_model_of`]), the `command` that trained it, and the `task` it was fine-tuned for (see
    [`model_card`]).

    Example:
        ```python
        >>> from lxmert_hf.model_card import trainer_model_card
        >>> trainer.train()  # doctest: +SKIP
        >>> trainer_model_card(trainer, dataset="vqa_v2").save("README.md")  # doctest: +SKIP
        ```
    """
    args = trainer.args
    if metrics is None:
        evaluations = [entry for entry in trainer.state.log_history if any(k.startswith("eval_") for k in entry)]
        metrics = evaluations[-1] if evaluations else {}
    metrics = {key.removeprefix("eval_"): value for key, value in metrics.items() if _is_model_result(key)}
    # Enums (scheduler, optimizer) as the values their flags take.
    hyperparameters = {name: getattr(getattr(args, name), "value", getattr(args, name)) for name in HYPERPARAMETERS
                       if hasattr(args, name)}  # fmt: skip
    hyperparameters["total_train_batch_size"] = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    )
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    name = model_name or args.hub_model_id or Path(args.output_dir).name
    return model_card(
        model.config, model_name=name, repo_id=args.hub_model_id, base_model=base_model_of(model.config),
        dataset=dataset, dataset_name=dataset_name, metrics=metrics, hyperparameters=hyperparameters,
        dataset_split=(dataset_split or "evaluation") if metrics else None, command=command, task=task,
    )  # fmt: skip


def evaluation_of_step(log_history: Sequence[Mapping[str, Any]], step: int | None) -> dict[str, float]:
    """
    The evaluation a `Trainer` logged at `step` (its `eval_*` entries), or `{}` when it did not evaluate then: the
    results of the weights of that step, for the card of the checkpoint saved at that step.

    Example:
        ```python
        >>> from lxmert_hf.model_card import evaluation_of_step
        >>> history = [{"loss": 1.0, "step": 2}, {"eval_vqa_accuracy": 61.5, "step": 2}, {"loss": 0.5, "step": 4}]
        >>> evaluation_of_step(history, 2), evaluation_of_step(history, 4)
        ({'eval_vqa_accuracy': 61.5, 'step': 2}, {})
        ```
    """
    matches = [entry for entry in log_history if entry.get("step") == step and any(map(_is_model_result, entry))]
    return dict(matches[-1]) if matches else {}


def _is_model_result(key: str) -> bool:
    return key.startswith("eval_") and key not in RUN_METRICS


def install_line() -> str:
    """
    The `pip install` line of the library version in use, for a card's reproduction section.

    Example:
        ```python
        >>> from lxmert_hf.model_card import install_line
        >>> install_line().startswith('pip install "lxmert-hf')
        True
        ```
    """
    try:
        return f'pip install "{DISTRIBUTION}=={importlib.metadata.version(DISTRIBUTION)}"'
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return f'pip install "{DISTRIBUTION}"'


def base_model_of(config) -> str | None:
    """
    The Hub repo a model was loaded from (`config._name_or_path`). A model loaded from a local folder has the base
    model that folder's own card (`README.md`) names, if any; one built from a config has none. Never a local path:
    a card's `base_model` must name a Hub repo.

    Example:
        ```python
        >>> from lxmert_hf import LxmertVQAConfig
        >>> from lxmert_hf.model_card import base_model_of
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"])
        >>> config.name_or_path = "unc-nlp/lxmert-base-uncased"
        >>> base_model_of(config), base_model_of(LxmertVQAConfig.from_answers(["yes", "no"]))
        ('unc-nlp/lxmert-base-uncased', None)
        ```
    """
    source = getattr(config, "_name_or_path", "") or ""
    if not source:
        return None
    try:
        location = locate(source)
    except FileNotFoundError:  # a local folder that has since moved
        return None
    return location.repo_id if not location.is_local else _card_base_model(location.path)


def _card_base_model(folder: Path) -> str | None:
    card = folder / "README.md"
    if not card.is_file():
        return None
    named = ModelCard.load(card).data.base_model
    named = named[0] if isinstance(named, list) and len(named) == 1 else named
    return named if isinstance(named, str) and _is_repo_id(named) else None


def _is_repo_id(text: str) -> bool:
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return not Path(text).expanduser().exists()


def _check_not_local(name: str | None, what: str) -> None:
    """A card is published: it names Hub repos and data by name, never a folder of the machine that wrote it."""
    if not name:
        return
    try:
        local = locate(name, what=what).is_local
    except FileNotFoundError:  # not a path, not a repo id: a plain name
        return
    if local:
        raise ValueError(
            f"`{what}` {name!r} is a local path; a model card names the Hub id of the data (or a short name such "
            "as 'vqa_v2'), never a folder of this machine."
        )


def _card_body(config, title, repo_id, description, metrics, hyperparameters, dataset, command) -> str:
    lines = [f"# {title}", ""]
    lines += (
        _pair_usage(repo_id, description) if _is_pair_model(config) else _answer_usage(config, repo_id, description)
    )
    lines += ["## Region features", "", *_features_lines(config.visual_features), ""]
    if dataset or hyperparameters or command:
        lines += ["## Training", ""]
        lines += [f"Data: `{dataset}`.", ""] if dataset else []
        lines += ["Trained with:", "", "```bash", install_line(), command, "```", ""] if command else []
        lines += [f"- {key}: {value}" for key, value in (hyperparameters or {}).items()] + [""]
    if metrics:
        lines += ["## Results", "", "| metric | % |", "|---|---:|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in metrics.items()] + [""]
    return "\n".join(lines)


def _is_pair_model(config) -> bool:
    return getattr(config, "model_type", None) == "lxmert_nlvr2"


def _answer_usage(config, repo_id: str | None, description: str | None) -> list[str]:
    answers = config.answers
    head = "softmax probabilities" if config.head_loss == "softmax" else "independent sigmoids (BCE head)"
    lines = [description or "LXMERT with an answer classifier, for visual question answering.", ""]
    lines += ["## Usage", "", "```bash", install_line(), "```", "",
              "```python", "from lxmert_hf import VQAPipeline", "",
              f'pipe = VQAPipeline.from_pretrained("{repo_id or "path/to/checkpoint"}")',
              'pipe("picture.jpg", question="What is on the table?", top_k=5)', "```", ""]  # fmt: skip
    lines += [f"The classifier scores {len(answers)} answers (e.g. {', '.join(map(repr, answers[:5]))}); scores are "
              f"{head}.", ""]  # fmt: skip
    return lines


def _pair_usage(repo_id: str | None, description: str | None) -> list[str]:
    lines = [description or "LXMERT that tells whether a sentence is true of a pair of images (NLVR2).", ""]
    lines += ["## Usage", "", "```bash", install_line(), "```", "",
              "```python", "from lxmert_hf import NLVR2Pipeline", "",
              f'pipe = NLVR2Pipeline.from_pretrained("{repo_id or "path/to/checkpoint"}")',
              'pipe({"images": ["left.jpg", "right.jpg"], "sentence": "The left image has more dogs."})', "```",
              ""]  # fmt: skip
    lines += ["Each sentence is read with each image, one LXMERT pass per image; the two pooled outputs, joined, are "
              "classified as true or false (softmax probabilities).", ""]  # fmt: skip
    return lines


def _features_lines(described: Mapping[str, Any] | None) -> list[str]:
    if not described:
        return ["Not recorded: pass precomputed features of the kind the model was trained on."]
    if not described.get("detector"):
        return [f"Not from a detector ({described.get('source', 'precomputed features')}); pass such features."]
    detector = f"detector `{described['detector']}`, preset `{described.get('preset')}`"
    if described.get("overrides"):
        detector += f", settings {described['overrides']}"
    line = f"Made by {described['source']}, which the {detector} reproduces" if described.get("source") else detector
    line = line[0].upper() + line[1:]
    line = f"{line}; boxes normalized as {described.get('boxes', BOX_FORMAT)}. The pipeline loads it for pictures."
    if described.get("regions") == "given":
        line += " Its regions were given boxes (e.g. annotated ones), not detected; the pipeline detects its own."
    return [line]
