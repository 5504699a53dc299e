"""Self-describing checkpoints and the Hub: the description of the region features a checkpoint expects, writing
a checkpoint folder atomically, and pushing it to the Hub.

A checkpoint folder written here holds everything needed to use it: `config.json` (the answer vocabulary in
`id2label`, the head's loss, and in `visual_features` the detector and preprocessing its features came from), the
weights as safetensors, the tokenizer, and a `README.md` model card ([`lxmert_hf.model_card`]). The folder is in
transformers' `LxmertForQuestionAnswering` layout, so transformers alone loads it. Saved for a pipeline
(`custom_pipeline=True`, as [`VQAPipeline.save_pretrained`] does) it also names [`VQAPipeline`] in `custom_pipelines`
with the small module [`lxmert_hf.pipeline.lxmert_hf_pipeline`], so that `transformers.pipeline(model=folder,
trust_remote_code=True)` builds it where lxmert_hf is installed. The `Trainer` that writes the same card into
every model it saves, and pushes it, is [`lxmert_hf.training.VQATrainer`].
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard

from lxmert_hf.configuration import BOX_FORMAT
from lxmert_hf.files import atomic_directory, write_json_atomic, write_text_atomic
from lxmert_hf.locations import HUB_PREFIX
from lxmert_hf.model_card import model_card

__all__ = [
    "BOTTOM_UP_ATTENTION",
    "BOX_FORMAT",
    "LXMERT_DETECTOR",
    "describe_bottom_up_features",
    "describe_visual_features",
    "push_to_hub",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

# The Visual Genome Faster R-CNN whose features LXMERT was pre-trained and fine-tuned on.
LXMERT_DETECTOR = "unc-nlp/frcnn-vg-finetuned"
# The task a folder saved for a pipeline declares in `custom_pipelines`: the Hub's name for it, not the registered
# "lxmert-vqa" (a task a folder declares needs `trust_remote_code=True`, even where the package registered it).
CUSTOM_PIPELINE_TASK = "visual-question-answering"
# The extractor that wrote the feature TSVs LXMERT was trained and evaluated on; the detector above with the `lxmert`
# preset reproduces it.
BOTTOM_UP_ATTENTION = (
    "bottom-up-attention (Anderson et al., 2018): Caffe Faster R-CNN with a ResNet-101 backbone trained on Visual "
    "Genome, 36 regions of 2048-d features per image"
)


def describe_visual_features(detector: str | None = LXMERT_DETECTOR, config=None, **notes: Any) -> dict[str, Any]:
    """
    Describe where a checkpoint's region features come from, for `config.visual_features`.

    [`VQAPipeline`] reads it to load the same detector, with the same settings, when it is given a picture.

    Args:
        detector (`str`, *optional*, defaults to `"unc-nlp/frcnn-vg-finetuned"`): folder or Hub id of the
            [`RegionFeatureExtractor`]; `None` when the features did not come from a detector (the toy world).
        config ([`RegionFeatureExtractorConfig`], *optional*): the detector settings; defaults to the `"lxmert"`
            preset (the Caffe extraction that made LXMERT's own features). Settings that differ from the preset are
            stored as `overrides`.
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
        described["feature_dim"] = config.feature_dim
        described["max_boxes"] = config.max_boxes
    described["boxes"] = BOX_FORMAT
    described.update(notes)
    return described


def describe_bottom_up_features() -> dict[str, Any]:
    """
    Describe the features of LXMERT's own feature TSVs: made by the original bottom-up-attention extractor
    ([`BOTTOM_UP_ATTENTION`], named in `source`), which the library's detector [`LXMERT_DETECTOR`] with the
    `"lxmert"` preset reproduces (so that [`VQAPipeline`] answers about pictures with it).

    Example:
        ```python
        >>> from lxmert_hf.hub import describe_bottom_up_features
        >>> described = describe_bottom_up_features()
        >>> described["detector"], described["preset"], described["feature_dim"], described["max_boxes"]
        ('unc-nlp/frcnn-vg-finetuned', 'lxmert', 2048, 36)
        ```
    """
    return describe_visual_features(LXMERT_DETECTOR, source=BOTTOM_UP_ATTENTION)


def save_checkpoint(
    model,
    save_directory: str | os.PathLike,
    *,
    tokenizer=None,
    card: ModelCard | None = None,
    overwrite: bool = False,
    max_shard_size: int | str | None = "50GB",
    custom_pipeline: bool = False,
) -> Path:
    """
    Write `model` (safetensors and config), its `tokenizer` and a model card into `save_directory`, atomically:
    everything is written into a temporary folder beside it that then takes its place, so the folder is either
    complete or absent (an existing one is replaced only with `overwrite=True`).

    Weights larger than `max_shard_size` (`"5GB"`, `"200MB"` or bytes) are split into shards with an index, as
    transformers does. `custom_pipeline=True` adds what `transformers.pipeline(model=folder, trust_remote_code=True)`
    needs to build a [`VQAPipeline`] (see the module docstring).

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
    if tokenizer is None:
        logger.warning("No tokenizer given: the checkpoint at %s will need one passed when it is loaded.", target)
    if any(label.startswith("LABEL_") for label in model.config.id2label.values()):
        logger.warning("The answer vocabulary is unnamed (LABEL_i); load the model with `answers=` first.")
    with atomic_directory(target, overwrite=overwrite) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if custom_pipeline:
            write_custom_pipeline(staging)
        write_text_atomic(staging / "README.md", str(card if card is not None else model_card(model.config)))
    return target


def write_custom_pipeline(folder: Path) -> None:
    """Declare [`VQAPipeline`] in `folder/config.json` (`custom_pipelines`) and write the module it names.

    transformers' pipeline loader resolves `impl` by copying that module out of the folder and importing it, and
    `pt` by name from `transformers`: the module only imports the installed lxmert_hf's `VQAPipeline`, and the model
    class is `AutoModelForVisualQuestionAnswering`, which importing lxmert_hf maps to [`LxmertForVQA`].
    """
    from lxmert_hf.pipeline import lxmert_hf_pipeline

    module = Path(lxmert_hf_pipeline.__file__)
    config = json.loads((folder / "config.json").read_text())
    config["custom_pipelines"] = {
        CUSTOM_PIPELINE_TASK: {
            "impl": f"{module.stem}.VQAPipeline",
            "pt": ["AutoModelForVisualQuestionAnswering"],
            "type": "multimodal",
        }
    }
    write_json_atomic(folder / "config.json", config, indent=2)
    write_text_atomic(folder / module.name, module.read_text())


def push_to_hub(
    model,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: Sequence[str] | None = None,
    tokenizer=None,
    card: ModelCard | None = None,
    dry_run: bool = False,
    local_dir: str | os.PathLike | None = None,
    custom_pipeline: bool = False,
):
    """
    Upload `model` with its tokenizer and model card to the Hub repo `repo_id` (`owner/name`, or
    `hf-hub:owner/name`; created if needed) as one commit.

    The arguments are those of transformers' `push_to_hub` (`commit_message`, `commit_description`, `private`,
    `token`, `revision`, `create_pr`, `max_shard_size`, `tags`: added to the card's tags), plus `tokenizer`, `card`
    (default: [`lxmert_hf.model_card.model_card`] of the config) and `custom_pipeline` (see [`save_checkpoint`]).
    With `dry_run=True` nothing is uploaded: the folder that would be is written to `local_dir` (default: a new
    temporary folder) and its path returned, to check before publishing. Otherwise returns the commit info.

    Example:
        ```python
        >>> from lxmert_hf.hub import push_to_hub
        >>> push_to_hub(model, "me/lxmert-vqa", tokenizer=tokenizer, private=True, tags=["gqa"])  # doctest: +SKIP
        ```
    """
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ValueError(f"`repo_id` must read 'name' or 'owner/name', got {repo_id!r}.")
    if isinstance(tags, str):
        tags = [tags]
    repo_id = repo_id.removeprefix(HUB_PREFIX)
    card = _tagged(card if card is not None else model_card(model.config, repo_id=repo_id), tags or ())
    saving = dict(tokenizer=tokenizer, card=card, max_shard_size=max_shard_size, custom_pipeline=custom_pipeline)
    if dry_run:
        folder = Path(local_dir) if local_dir is not None else Path(tempfile.mkdtemp()) / repo_id.split("/")[-1]
        save_checkpoint(model, folder, overwrite=local_dir is not None, **saving)
        logger.info("Dry run: %s holds what would be pushed to %s.", folder, repo_id)
        return folder
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_checkpoint(model, Path(scratch) / "checkpoint", **saving)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message or "Upload LXMERT VQA checkpoint",
            commit_description=commit_description, revision=revision, create_pr=create_pr,
        )  # fmt: skip


def _tagged(card: ModelCard, tags: Sequence[str]) -> ModelCard:
    """`card` with `tags` added to its metadata (each once), as transformers' `push_to_hub(tags=...)` does."""
    known = list(card.data.tags or [])
    card.data.tags = known + [tag for tag in dict.fromkeys(tags) if tag not in known]
    return card
