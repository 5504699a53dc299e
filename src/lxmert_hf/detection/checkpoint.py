"""Reading and writing detector checkpoints: the published layout and the library's own safetensors layout.

Published layout (`unc-nlp/frcnn-vg-finetuned`): `config.yaml` (detectron2-style settings) and
`pytorch_model.bin` (a pickled state dict of 640 entries). Own layout: `config.json`, `model.safetensors` and,
when the class names are known, `vocab.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from lxmert_hf.files import atomic_directory, atomic_path, write_json_atomic
from lxmert_hf.locations import HubUnavailableError, first_hub_file, hub_file, locate
from lxmert_hf.torch_files import load_torch_file

HUB_CONFIG_NAME = "config.yaml"
HUB_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.json"
CONFIG_FORMAT = "lxmert_hf.region_feature_extractor"
CONFIG_VERSION = 1
_EXPECTED = (
    f"expected {CONFIG_NAME} + {WEIGHTS_NAME} (save_pretrained) or {HUB_CONFIG_NAME} + {HUB_WEIGHTS_NAME} (the "
    "published unc-nlp/frcnn-vg-finetuned layout)"
)

# Structural settings of the published config.yaml that this implementation hard-codes: (section, key, value).
SUPPORTED_STRUCTURE = (
    ("resnets", "depth", 101),
    ("resnets", "num_groups", 1),
    ("resnets", "width_per_group", 64),
    ("resnets", "stride_in_1x1", True),
    ("resnets", "out_features", ["res4"]),
    ("model", "max_pool", True),
    ("roi_box_head", "res5halve", False),
    ("roi_box_head", "pooler_resolution", 14),
    ("roi_box_head", "cls_agnostic_bbox_reg", False),
    ("roi_box_head", "attr", True),
    ("anchor_generator", "offset", 0),
)


@dataclass
class CheckpointFiles:
    """Local paths of one checkpoint's files; `layout` is `"hub"` (published) or `"native"` (own)."""

    layout: str
    config: Path
    weights: Path
    vocab: Path | None = None


def resolve_checkpoint(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> CheckpointFiles:
    """Find the files of a local checkpoint folder or download them from a Hub repo (cached by huggingface_hub).

    Which of the two `name_or_path` names follows [`lxmert_hf.locations.locate`] (`hf-hub:owner/name` forces
    the Hub)."""
    location = locate(name_or_path, what="detector")
    if location.is_local:
        if not location.path.is_dir():
            raise ValueError(f"{location.path} is a file; pass the folder that holds the checkpoint files.")
        return _local_files(location.path)
    return _hub_files(location.repo_id, hub_kwargs)


def _hub_files(repo_id: str, hub_kwargs: dict[str, Any]) -> CheckpointFiles:
    try:
        found = first_hub_file(repo_id, (CONFIG_NAME, HUB_CONFIG_NAME), "detector", **hub_kwargs)
    except FileNotFoundError as error:
        if isinstance(error, HubUnavailableError):
            raise
        raise ValueError(str(error)) from None
    if found is None:
        raise ValueError(f"Hub repo {repo_id!r} holds no detector checkpoint: {_EXPECTED}.")
    layout = "native" if found[0] == CONFIG_NAME else "hub"
    weights_name = WEIGHTS_NAME if layout == "native" else HUB_WEIGHTS_NAME
    weights = hub_file(repo_id, weights_name, "detector", **hub_kwargs)
    if weights is None:
        raise ValueError(f"Hub repo {repo_id!r} has {found[0]} but no {weights_name}: {_EXPECTED}.")
    vocab = hub_file(repo_id, VOCAB_NAME, "detector", **hub_kwargs) if layout == "native" else None
    return CheckpointFiles(layout, Path(found[1]), Path(weights), Path(vocab) if vocab else None)


def _local_files(path: Path) -> CheckpointFiles:
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        vocab = path / VOCAB_NAME
        return CheckpointFiles("native", path / CONFIG_NAME, path / WEIGHTS_NAME, vocab if vocab.is_file() else None)
    if (path / HUB_CONFIG_NAME).is_file() and (path / HUB_WEIGHTS_NAME).is_file():
        return CheckpointFiles("hub", path / HUB_CONFIG_NAME, path / HUB_WEIGHTS_NAME)
    raise ValueError(f"{path} holds no detector checkpoint: {_EXPECTED}.")


def read_hub_config(path: Path) -> dict[str, Any]:
    """
    Read a published `config.yaml` and return the settings bound to its weights (architecture, pixel statistics,
    channel order). Its test-time settings are not taken: they are those of the `"transformers-demo"` preset.
    """
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a detector config.yaml (expected a mapping of sections).")
    raw = {str(key).lower(): value for key, value in raw.items()}
    for section, key, expected in SUPPORTED_STRUCTURE:
        value = (raw.get(section) or {}).get(key, expected)
        if value != expected:
            raise ValueError(
                f"{path}: {section}.{key} = {value!r} is not supported (this detector needs {expected!r})."
            )
    settings = {
        "num_classes": _get(raw, path, "roi_heads", "num_classes"),
        "num_attributes": _get(raw, path, "roi_box_head", "num_attrs"),
        "anchor_sizes": _get(raw, path, "anchor_generator", "sizes")[0],
        "anchor_aspect_ratios": _get(raw, path, "anchor_generator", "aspect_ratios")[0],
        "pixel_mean": _get(raw, path, "model", "pixel_mean"),
        "pixel_std": _get(raw, path, "model", "pixel_std"),
        "input_format": _get(raw, path, "input", "format"),
    }
    return settings


def _get(raw: dict, path: Path, section: str, key: str) -> Any:
    try:
        return raw[section][key]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path} lacks `{section}.{key}`; is it the detector's config.yaml?") from error


def read_native_config(path: Path) -> dict[str, Any]:
    """Read the settings stored by `save_pretrained`."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    if payload.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{path} is not a RegionFeatureExtractor config (format {payload.get('format')!r}).")
    if payload.get("version") != CONFIG_VERSION:
        raise ValueError(f"{path}: unsupported config version {payload.get('version')!r}; upgrade lxmert_hf.")
    return payload["config"]


def read_vocab(path: Path | None) -> tuple[list[str] | None, list[str] | None]:
    """Read stored `(object_names, attribute_names)`; `(None, None)` when there is no vocab file."""
    if path is None:
        return None, None
    payload = json.loads(path.read_text(encoding="utf-8"))
    return payload.get("objects"), payload.get("attributes")


def load_weights(files: CheckpointFiles) -> dict[str, torch.Tensor]:
    """Load the state dict of a checkpoint, with the published checkpoint's `gamma`/`beta` names normalized."""
    if files.layout == "native":
        return load_file(str(files.weights))
    state = load_torch_file(files.weights, "the detector's weights")
    if not isinstance(state, dict):
        raise ValueError(f"{files.weights} does not hold a state dict (got {type(state).__name__}).")
    return {_rename_legacy(key): value for key, value in state.items()}


def _rename_legacy(key: str) -> str:
    # Old BatchNorm checkpoints name the affine parameters gamma / beta.
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Raise a `ValueError` listing every missing, unexpected and wrongly shaped entry of `state`."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key}: checkpoint {list(state[key].shape)} vs model {list(value.shape)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise ValueError(
            f"the checkpoint {source} does not match RegionFeatureExtractor ({len(expected)} entries expected): "
            + "; ".join(problems)
            + ". Check that it is the Visual Genome Faster R-CNN and that architecture overrides match it."
        )


def save_checkpoint(
    directory: str | os.PathLike,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    vocab: dict[str, list[str]] | None,
) -> Path:
    """
    Write `config.json`, `model.safetensors` and optionally `vocab.json` into `directory`, so that readers never see
    half a file: a new folder appears complete (written beside it, then renamed); in an existing one each file is
    replaced atomically (other files are kept, and a `vocab.json` left from an earlier save is removed when
    `vocab` is `None`).
    """
    directory = Path(directory)
    if directory.is_dir() and any(directory.iterdir()):
        _write_checkpoint_files(directory, state, config, vocab)
        if vocab is None:
            # A stale vocabulary would attach the wrong names to this checkpoint.
            (directory / VOCAB_NAME).unlink(missing_ok=True)
        return directory
    with atomic_directory(directory) as staging:
        _write_checkpoint_files(staging, state, config, vocab)
    return directory


def _write_checkpoint_files(
    folder: Path, state: dict[str, torch.Tensor], config: dict[str, Any], vocab: dict[str, list[str]] | None
) -> None:
    # The config goes last: a folder whose config is new also has the new weights.
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    with atomic_path(folder / WEIGHTS_NAME) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    if vocab is not None:
        write_json_atomic(folder / VOCAB_NAME, vocab, indent=None)
    write_json_atomic(
        folder / CONFIG_NAME, {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, "config": config}, indent=2
    )
