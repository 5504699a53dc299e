"""Self-describing checkpoints and the Hub: model cards with model-index metadata, the description of the region
features a checkpoint expects, atomic checkpoint folders, and pushing (from a model or from the `Trainer`).

A checkpoint folder written here holds everything needed to use it: `config.json` (the answer vocabulary in
`id2label`, the head's loss, and in `visual_features` the detector and preprocessing its features came from), the
weights as safetensors, the tokenizer, and a `README.md` model card.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers import Trainer

from lxmert_hf.submission import write_text_atomic

logger = logging.getLogger(__name__)

LIBRARY_NAME = "lxmert-hf"
PIPELINE_TAG = "visual-question-answering"
# The Visual Genome Faster R-CNN whose features LXMERT was pre-trained and fine-tuned on.
LXMERT_DETECTOR = "unc-nlp/frcnn-vg-finetuned"
BOX_FORMAT = "x1 / width, y1 / height, x2 / width, y2 / height"
# Trainer metrics that describe the run, not the model.
RUN_METRICS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step")
HYPERPARAMETERS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
    "warmup_steps", "lr_scheduler_type", "weight_decay", "max_grad_norm", "optim", "seed",
)  # fmt: skip


def describe_visual_features(detector: str | None = LXMERT_DETECTOR, config=None, **notes: Any) -> dict[str, Any]:
    """
    Describe where a checkpoint's region features come from, for `config.visual_features`.

    [`VQAPipeline`] reads it to load the same detector, with the same settings, when it is given a picture.

    Args:
        detector (`str`, *optional*, defaults to `"unc-nlp/frcnn-vg-finetuned"`): folder or Hub id of the
            [`RegionFeatureExtractor`]; `None` when the features did not come from a detector (the toy world).
        config ([`RegionFeatureExtractorConfig`], *optional*): the detector settings; defaults to the `"lxmert"`
            preset. Settings that differ from the preset are stored as `overrides`.
        notes: anything else worth recording (`source="..."`, `num_boxes=36`, ...).

    Example:
        ```python
        >>> from lxmert_hf import RegionFeatureExtractorConfig
        >>> from lxmert_hf.hub import describe_visual_features
        >>> config = RegionFeatureExtractorConfig.from_preset("lxmert", max_boxes=50, min_boxes=10)
        >>> described = describe_visual_features("unc-nlp/frcnn-vg-finetuned", config)
        >>> described["preset"], described["overrides"]
        ('lxmert', {'min_boxes': 10, 'max_boxes': 50})
        ```
    """
    from lxmert_hf.detection.config import ARCHITECTURE_FIELDS, RegionFeatureExtractorConfig

    described: dict[str, Any] = {"detector": None if detector is None else str(detector)}
    if detector is not None:
        config = config if config is not None else RegionFeatureExtractorConfig()
        preset = RegionFeatureExtractorConfig.from_preset(config.preset).to_dict()
        fixed = {"preset", *ARCHITECTURE_FIELDS, "pixel_mean", "pixel_std", "input_format"}
        described["preset"] = config.preset
        described["overrides"] = {k: v for k, v in config.to_dict().items() if k not in fixed and v != preset[k]}
        described["feature_dim"] = 2048
        described["max_boxes"] = config.max_boxes
    described["boxes"] = BOX_FORMAT
    described.update(notes)
    return described


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
        metrics (`Mapping[str, float]`, *optional*): evaluation results, e.g. `{"vqa_accuracy": 0.72}`.
        hyperparameters (`Mapping`, *optional*): training settings listed in the card.
        description (`str`, *optional*): a paragraph put under the title.

    Example:
        ```python
        >>> from lxmert_hf import LxmertVQAConfig
        >>> from lxmert_hf.hub import model_card
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"])
        >>> card = model_card(config, dataset="vqa_v2", dataset_split="minival", metrics={"vqa_accuracy": 0.7})
        >>> card.data.eval_results[0].metric_value
        0.7
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
    data = ModelCardData(
        library_name=LIBRARY_NAME, pipeline_tag=PIPELINE_TAG, license=license, language="en",
        base_model=base_model, datasets=[dataset] if dataset else None, tags=["lxmert", "vqa", *tags],
        metrics=sorted({r.metric_type for r in results}) or None, model_name=model_name or "LXMERT for VQA",
        eval_results=results or None,
    )  # fmt: skip
    title = model_name or "LXMERT for VQA"
    body = _card_body(config, title, repo_id, description, metrics, hyperparameters, dataset)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


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


def save_checkpoint(
    model,
    save_directory: str | os.PathLike,
    *,
    tokenizer=None,
    card: ModelCard | None = None,
    overwrite: bool = False,
) -> Path:
    """
    Write `model` (safetensors and config), its `tokenizer` and a model card into `save_directory`, atomically:
    everything is written into a temporary folder beside it that then takes its place, so the folder is either
    complete or absent (an existing one is replaced only with `overwrite=True`).

    Example:
        ```python
        >>> import tempfile
        >>> from lxmert_hf import LxmertForVQA, LxmertVQAConfig
        >>> from lxmert_hf.hub import save_checkpoint
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"], hidden_size=32, num_attention_heads=2,
        ...     intermediate_size=64, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=50)
        >>> folder = save_checkpoint(LxmertForVQA(config), f"{tempfile.mkdtemp()}/checkpoint")
        >>> sorted(p.name for p in folder.iterdir())
        ['README.md', 'config.json', 'model.safetensors']
        ```
    """
    target = Path(save_directory)
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it, or choose a new folder.")
    if tokenizer is None:
        logger.warning("No tokenizer given: the checkpoint at %s will need one passed when it is loaded.", target)
    if any(label.startswith("LABEL_") for label in model.config.id2label.values()):
        logger.warning("The answer vocabulary is unnamed (LABEL_i); load the model with `answers=` first.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        write_text_atomic(staging / "README.md", str(card if card is not None else model_card(model.config)))
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def replace_folder(staging: Path, target: Path) -> None:
    """Move the complete folder `staging` to `target`, replacing what is there; on failure `target` is kept."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, retired / target.name)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(retired / target.name, target)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def push_to_hub(
    model,
    repo_id: str,
    *,
    tokenizer=None,
    card: ModelCard | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    local_dir: str | os.PathLike | None = None,
):
    """
    Upload `model` with its tokenizer and model card to the Hub repo `repo_id` (created if needed) as one commit.

    With `dry_run=True` nothing is uploaded: the folder that would be is written to `local_dir` (default: a new
    temporary folder) and its path returned, to check before publishing. Otherwise returns the commit info.

    Example:
        ```python
        >>> from lxmert_hf.hub import push_to_hub
        >>> push_to_hub(model, "me/lxmert-vqa", tokenizer=tokenizer, private=True)  # doctest: +SKIP
        ```
    """
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ValueError(f"`repo_id` must read 'name' or 'owner/name', got {repo_id!r}.")
    card = card if card is not None else model_card(model.config, repo_id=repo_id)
    if dry_run:
        folder = Path(local_dir) if local_dir is not None else Path(tempfile.mkdtemp()) / repo_id.split("/")[-1]
        save_checkpoint(model, folder, tokenizer=tokenizer, card=card, overwrite=local_dir is not None)
        logger.info("Dry run: %s holds what would be pushed to %s.", folder, repo_id)
        return folder
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_checkpoint(model, Path(scratch) / "checkpoint", tokenizer=tokenizer, card=card)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message or "Upload LXMERT VQA checkpoint",
            revision=revision, create_pr=create_pr,
        )  # fmt: skip


def trainer_model_card(trainer: Trainer, dataset: str | None = None, model_name: str | None = None) -> ModelCard:
    """The model card of a `Trainer`'s model: the last evaluation's metrics and the training hyper-parameters."""
    args = trainer.args
    evaluations = [entry for entry in trainer.state.log_history if any(k.startswith("eval_") for k in entry)]
    last = evaluations[-1] if evaluations else {}
    metrics = {k.removeprefix("eval_"): v for k, v in last.items() if k.startswith("eval_") and k not in RUN_METRICS}
    hyperparameters = {name: getattr(args, name) for name in HYPERPARAMETERS if hasattr(args, name)}
    hyperparameters["total_train_batch_size"] = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    )
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    source = getattr(model.config, "_name_or_path", "") or ""
    base_model = source if source.count("/") == 1 and not Path(source).exists() else None
    name = model_name or args.hub_model_id or Path(args.output_dir).name
    return model_card(
        model.config, model_name=name, repo_id=args.hub_model_id, base_model=base_model, dataset=dataset,
        metrics=metrics, hyperparameters=hyperparameters, dataset_split="evaluation" if metrics else None,
    )  # fmt: skip


class VQATrainer(Trainer):
    """
    A `transformers.Trainer` whose `push_to_hub` publishes this library's model card (metrics as model-index
    results, hyper-parameters, the region features the model expects) instead of the generic one. `save_model`
    already writes the config with the answer vocabulary and the tokenizer (`processing_class`).

    `push_to_hub(dataset_name=...)` (or `dataset=`) names the training data in the card.

    Example:
        ```python
        >>> from lxmert_hf.hub import VQATrainer
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
