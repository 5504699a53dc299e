"""A feature store as parquet: exported to a folder or pushed to the Hugging Face Hub, and read back, through
`datasets`. Reads a local store through [`~lxmert_hf.data.store.reader`]; nothing there depends on this module."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
import pyarrow.dataset

from lxmert_hf.data.store.format import EXTRACTOR_KEY, PROVENANCE_NAME, read_complete_manifest
from lxmert_hf.data.store.reader import open_store_dataset
from lxmert_hf.files import atomic_path, write_json_atomic

PARQUET_PATTERN = "shard-*.parquet"
# Where a Hub dataset repo keeps its parquet files: at the top, in `data/`, or one folder per config and split.
HUB_PARQUET_PATTERNS = ("*.parquet", "*/*.parquet", "*/*/*.parquet")


def export_parquet(store_dir: str | os.PathLike, output_dir: str | os.PathLike) -> list[Path]:
    """
    Write a complete feature store as parquet shards (one per store shard), the layout the Hub serves.

    Each shard is written under a temporary name and renamed once complete. What the store records about its
    features' origin (the extractor) goes beside them in `lxmert_hf_features.json`, which
    [`~lxmert_hf.data.prepare_pushed_features`] reads back.

    Example:
        ```python
        >>> import numpy as np, tempfile
        >>> from lxmert_hf.data import FeatureStoreWriter, export_parquet, load_features
        >>> store_dir, parquet_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
        >>> with FeatureStoreWriter(store_dir, resume=True) as writer:
        ...     writer.add({"image_id": "a", "visual_feats": np.ones((2, 4)), "boxes": [[0, 0, 4, 8]] * 2,
        ...                 "image_width": 8, "image_height": 8})
        >>> _ = export_parquet(store_dir, parquet_dir)
        >>> next(iter(load_features(parquet_dir, streaming=True)))["image_id"]
        'a'
        ```
    """
    dataset = open_store_dataset(store_dir)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    written, start = [], 0
    for index, shard in enumerate(read_complete_manifest(store_dir)["shards"]):
        stop = start + shard["num_images"]
        final = output / PARQUET_PATTERN.replace("*", f"{index:05d}")
        with atomic_path(final) as temporary:
            dataset.select(range(start, stop)).to_parquet(str(temporary))
        written.append(final)
        start = stop
    write_json_atomic(output / PROVENANCE_NAME, provenance(store_dir))
    return written


def provenance(store_dir: str | os.PathLike) -> dict[str, Any]:
    """What the exported features of the store at `store_dir` carry about their origin (`lxmert_hf_features.json`):
    the extractor its manifest records (`None`: unknown), the feature size and dtype."""
    manifest = read_complete_manifest(store_dir)
    return {
        EXTRACTOR_KEY: manifest.get(EXTRACTOR_KEY),
        "feature_dim": manifest["feature_dim"],
        "dtype": manifest["dtype"],
    }


def read_provenance(path: str | os.PathLike | None) -> dict[str, Any]:
    """Read a `lxmert_hf_features.json` written by [`export_parquet`] or [`push_features_to_hub`]; `{}` when `path`
    is `None` or absent (features exported before the file existed, or by other tools)."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path}: not a valid {PROVENANCE_NAME} ({error}); delete it or export the features again."
        ) from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: {PROVENANCE_NAME} must hold a JSON object; delete it or export the features again.")
    return values


def push_features_to_hub(store_dir: str | os.PathLike, repo_id: str, **push_kwargs):
    """
    Push a complete feature store to a Hub dataset repo as parquet (through `datasets.Dataset.push_to_hub`).

    `push_kwargs` go to `push_to_hub` (`private`, `token`, `max_shard_size`, ...). The extractor the store records
    is uploaded beside the parquet files (`lxmert_hf_features.json`). Read the features back, streaming or not, with
    `load_features(repo_id, streaming=True)`, or make a store of them again with
    `lxmert-hf prepare features --hub REPO`.

    Example:
        ```python
        >>> from lxmert_hf.data import push_features_to_hub
        >>> push_features_to_hub("features/coco-train2014", "me/coco-lxmert-features", private=True)  # doctest: +SKIP
        ```
    """
    from huggingface_hub import HfApi

    pushed = open_store_dataset(store_dir).push_to_hub(repo_id, split="train", **push_kwargs)
    HfApi(token=push_kwargs.get("token")).upload_file(
        path_or_fileobj=json.dumps(provenance(store_dir), indent=2).encode(),
        path_in_repo=PROVENANCE_NAME,
        repo_id=repo_id,
        repo_type="dataset",
        revision=push_kwargs.get("revision"),
        commit_message="Record the extractor of the features",
    )
    return pushed


def row_group_scan() -> dict:
    """Keyword arguments of `datasets.load_dataset` that stream parquet one row group at a time: pyarrow's default
    pre-buffering keeps the row groups of a file already read in memory until the whole file is read (the peak RSS
    of a stream then grows with the file)."""
    return {"fragment_scan_options": pyarrow.dataset.ParquetFragmentScanOptions(pre_buffer=False)}


def load_parquet_folder(
    folder: Path, streaming: bool = False, **load_kwargs
) -> datasets.Dataset | datasets.IterableDataset:
    """Features from a folder written by [`export_parquet`], or a local copy of a Hub dataset repo of parquet files.
    `load_kwargs` go to `datasets.load_dataset` (e.g. [`row_group_scan`])."""
    files = sorted(str(path) for path in folder.glob(PARQUET_PATTERN))
    if files:
        return datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming, **load_kwargs)
    if any(next(folder.glob(pattern), None) for pattern in HUB_PARQUET_PATTERNS):
        return datasets.load_dataset(str(folder), split="train", streaming=streaming, **load_kwargs)
    raise FileNotFoundError(
        f"{folder} holds neither a feature store (store.json) nor parquet shards ({PARQUET_PATTERN}, or a Hub "
        "dataset repo's parquet files); prepare a store with `lxmert-hf prepare features --tsv FILE --output DIR`."
    )


def load_hub_features(
    repo_id: str, streaming: bool = False, **load_kwargs
) -> datasets.Dataset | datasets.IterableDataset:
    """Features from a Hub dataset repo pushed with [`push_features_to_hub`] (its `train` split); `load_kwargs` go
    to `datasets.load_dataset`."""
    return datasets.load_dataset(repo_id, split="train", streaming=streaming, **load_kwargs)


def hub_provenance(repo_id: str) -> dict[str, Any]:
    """The `lxmert_hf_features.json` of a Hub dataset repo pushed with [`push_features_to_hub`] (`{}` when it has
    none)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return read_provenance(hf_hub_download(repo_id, PROVENANCE_NAME, repo_type="dataset"))
    except EntryNotFoundError:
        return {}
