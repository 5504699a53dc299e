"""Moving a feature store to parquet and the Hugging Face Hub, and reading it back, through `datasets`."""

from __future__ import annotations

import os
from pathlib import Path

import datasets

PARQUET_PATTERN = "shard-*.parquet"


def export_parquet(store_dir: str | os.PathLike, output_dir: str | os.PathLike) -> list[Path]:
    """
    Write a complete feature store as parquet shards (one per store shard), the layout the Hub serves.

    The shards are written under temporary names and renamed once complete.

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
    from lxmert_hf.data.store import load_features, read_manifest

    dataset = load_features(store_dir)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    written, start = [], 0
    for index, shard in enumerate(read_manifest(store_dir)["shards"]):
        stop = start + shard["num_images"]
        final = output / PARQUET_PATTERN.replace("*", f"{index:05d}")
        tmp = final.with_name(final.name + ".tmp")
        dataset.select(range(start, stop)).to_parquet(str(tmp))
        os.replace(tmp, final)
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
    from lxmert_hf.data.store import load_features

    return load_features(store_dir).push_to_hub(repo_id, split="train", **push_kwargs)


def load_remote_features(path: str | os.PathLike, streaming: bool = False):
    """Load features from a directory of parquet shards or a Hub dataset repo id (`split="train"`)."""
    local = Path(path)
    if local.is_dir():
        files = sorted(str(p) for p in local.glob(PARQUET_PATTERN))
        if not files:
            raise FileNotFoundError(
                f"{path} holds neither a feature store (store.json) nor parquet shards ({PARQUET_PATTERN}); "
                "prepare one with `lxmert-hf prepare features --tsv FILE --output DIR`."
            )
        return datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
    if local.exists() or os.sep in str(path) and str(path).count("/") > 1:
        raise FileNotFoundError(f"{path} is not a feature store directory or a Hub dataset repo id.")
    return datasets.load_dataset(str(path), split="train", streaming=streaming)
