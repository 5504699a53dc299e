"""The model card of a checkpoint: what it says and how it is rendered to the `README.md` of a checkpoint folder.

A card is built from the checkpoint's config (answers, head loss, the region features it expects), and optionally
its evaluation metrics, training hyper-parameters and data ([`model_card`]), or from all of these as a `Trainer`
holds them after training ([`trainer_model_card`]). The metadata block (task, library, base model, datasets, and
the metrics as `model-index` results) is what the Hub shows and indexes; the body says how to use the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from lxmert_hf.configuration import BOX_FORMAT
from lxmert_hf.locations import locate

__all__ = [
    "HYPERPARAMETERS",
    "LIBRARY_NAME",
    "PIPELINE_TAG",
    "RUN_METRICS",
    "base_model_of",
    "model_card",
    "trainer_model_card",
]

LIBRARY_NAME = "lxmert-hf"
PIPELINE_TAG = "visual-question-answering"
DEFAULT_TITLE = "LXMERT for VQA"
# Trainer metrics that describe the run, not the model.
RUN_METRICS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step")
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
) -> ModelCard:
    r"""
    Write the model card of a checkpoint: metadata for the Hub (task, library, base model, datasets, and the
    metrics as `model-index` results) and a body saying how to use it, what it answers and what it was fed.

    Args:
        config ([`LxmertVQAConfig`]): the checkpoint's config (answers, head loss, `visual_features`).
        model_name (`str`, *optional*): the title; defaults to `"LXMERT for VQA"`.
        repo_id (`str`, *optional*): the Hub repo, shown in the usage example.
        base_model (`str`, *optional*): the Hub id it was fine-tuned from.
        dataset (`str`, *optional*): the Hub id or short name of the training data (e.g. `"vqa_v2"`).
        dataset_name / dataset_split (`str`, *optional*): how the evaluation data is shown, and its split.
        metrics (`Mapping[str, float]`, *optional*): evaluation results, e.g. `{"vqa_accuracy": 72.5}` (percent).
        hyperparameters (`Mapping`, *optional*): training settings listed in the card.
        description (`str`, *optional*): a paragraph put under the title.

    Example:
        ```python
        >>> from lxmert_hf import LxmertVQAConfig
        >>> from lxmert_hf.model_card import model_card
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"])
        >>> card = model_card(config, dataset="vqa_v2", dataset_split="minival", metrics={"vqa_accuracy": 72.5})
        >>> card.data.eval_results[0].metric_value
        72.5
        ```
    """
    metrics = dict(metrics or {})
    results = [
        EvalResult(
            task_type=PIPELINE_TAG, dataset_type=dataset or "custom", dataset_name=dataset_name or dataset or "custom",
            dataset_split=dataset_split, metric_type="accuracy" if "accuracy" in name else name,
            metric_name=name, metric_value=float(value),
        )
        for name, value in metrics.items()
    ]  # fmt: skip
    title = model_name or DEFAULT_TITLE
    data = ModelCardData(
        library_name=LIBRARY_NAME, pipeline_tag=PIPELINE_TAG, license=license, language="en",
        base_model=base_model, datasets=[dataset] if dataset else None, tags=["lxmert", "vqa", *tags],
        metrics=sorted({r.metric_type for r in results}) or None, model_name=title, eval_results=results or None,
    )  # fmt: skip
    body = _card_body(config, title, repo_id, description, metrics, hyperparameters, dataset)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def trainer_model_card(trainer, dataset: str | None = None, model_name: str | None = None) -> ModelCard:
    """
    The model card of a `transformers.Trainer`'s model: the last evaluation's metrics (without the run's own,
    [`RUN_METRICS`]), the training hyper-parameters ([`HYPERPARAMETERS`] and the total batch size), and the Hub
    repo the model was loaded from as its base model.

    Example:
        ```python
        >>> from lxmert_hf.model_card import trainer_model_card
        >>> trainer.train()  # doctest: +SKIP
        >>> trainer_model_card(trainer, dataset="vqa_v2").save("README.md")  # doctest: +SKIP
        ```
    """
    args = trainer.args
    evaluations = [entry for entry in trainer.state.log_history if any(k.startswith("eval_") for k in entry)]
    last = evaluations[-1] if evaluations else {}
    metrics = {k.removeprefix("eval_"): v for k, v in last.items() if k.startswith("eval_") and k not in RUN_METRICS}
    hyperparameters = {name: getattr(args, name) for name in HYPERPARAMETERS if hasattr(args, name)}
    hyperparameters["total_train_batch_size"] = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    )
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    name = model_name or args.hub_model_id or Path(args.output_dir).name
    return model_card(
        model.config, model_name=name, repo_id=args.hub_model_id, base_model=base_model_of(model.config),
        dataset=dataset, metrics=metrics, hyperparameters=hyperparameters,
        dataset_split="evaluation" if metrics else None,
    )  # fmt: skip


def base_model_of(config) -> str | None:
    """
    The Hub repo a model was loaded from (`config._name_or_path`), or `None` when it was built from a config or
    loaded from a local folder: a card's `base_model` must name a Hub repo.

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
        return locate(source).repo_id
    except FileNotFoundError:  # a local folder that has since moved
        return None


def _card_body(config, title, repo_id, description, metrics, hyperparameters, dataset) -> str:
    answers = config.answers
    head = "softmax probabilities" if config.head_loss == "softmax" else "independent sigmoids (BCE head)"
    lines = [f"# {title}", "", description or "LXMERT with an answer classifier, for visual question answering.", ""]
    lines += ["## Usage", "", "```python", "from lxmert_hf import VQAPipeline", "",
              f'pipe = VQAPipeline.from_pretrained("{repo_id or "path/to/checkpoint"}")',
              'pipe("picture.jpg", question="What is on the table?", top_k=5)', "```", ""]  # fmt: skip
    lines += [f"The classifier scores {len(answers)} answers (e.g. {', '.join(map(repr, answers[:5]))}); scores are "
              f"{head}.", ""]  # fmt: skip
    lines += ["## Region features", "", *_features_lines(config.visual_features), ""]
    if dataset or hyperparameters:
        lines += ["## Training", ""]
        lines += [f"Data: `{dataset}`.", ""] if dataset else []
        lines += [f"- {key}: {value}" for key, value in (hyperparameters or {}).items()] + [""]
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()] + [""]
    return "\n".join(lines)


def _features_lines(described: Mapping[str, Any] | None) -> list[str]:
    if not described:
        return ["Not recorded: pass precomputed features of the kind the model was trained on."]
    if not described.get("detector"):
        return [f"Not from a detector ({described.get('source', 'precomputed features')}); pass such features."]
    lines = [f"Detector `{described['detector']}`, preset `{described.get('preset')}`"]
    if described.get("overrides"):
        lines[0] += f", settings {described['overrides']}"
    lines[0] += f"; boxes normalized as {described.get('boxes', BOX_FORMAT)}. The pipeline loads it for pictures."
    return lines
