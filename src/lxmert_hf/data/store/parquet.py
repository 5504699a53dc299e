"""A feature store as parquet: exported to a folder or pushed to the Hugging Face Hub, and read back, through
`datasets`. Reads a local store through [`~lxmert_hf.data.store.reader`]; nothing there depends on this module."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import pyarrow.dataset

from lxmert_hf.data.store.format import read_complete_manifest
from lxmert_hf.data.store.reader import open_store_dataset
from lxmert_hf.files import atomic_path

PARQUET_PATTERN = "shard-*.parquet"
# Where a Hub dataset repo keeps its parquet files: at the top, in `data/`, or one folder per config and split.
HUB_PARQUET_PATTERNS = ("*.parquet", "*/*.parquet", "*/*/*.parquet")


def export_parquet(store_dir: str | os.PathLike, output_dir: str | os.PathLike) -> list[Path]:
    """
    Write a complete feature store as parquet shards (one per store shard), the layout the Hub serves.

    Each shard is written under a temporary name and renamed once complete.

    Example:
        ```python
        >>> import numpy as np, tempfile
        >>> from lxmert_hf.data import FeatureStoreWriter, export_parquet, load_features
        >>> store_dir, parquet_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
        >>> with FeatureStoreWriter(store_dir, resume=True) as writer:
        ...     writer.add({"image_id": "a", "visual_feats": np.ones((2, 4)), "boxes": np.zeros((2, 4)),
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
    return written


def push_features_to_hub(store_dir: str | os.PathLike, repo_id: str, **push_kwargs):
    """
    Push a complete feature store to a Hub dataset repo as parquet (through `datasets.Dataset.push_to_hub`).

    `push_kwargs` go to `push_to_hub` (`private`, `token`, `max_shard_size`, ...). Read it back, streaming or not,
    with `load_features(repo_id, streaming=True)`.

    Example:
        ```python
        >>> from lxmert_hf.data import push_features_to_hub
        >>> push_features_to_hub("features/coco-train2014", "me/coco-lxmert-features", private=True)  # doctest: +SKIP
        ```
    """
    return open_store_dataset(store_dir).push_to_hub(repo_id, split="train", **push_kwargs)


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
