"""[`load_features`]: any of the three homes of region features (a store folder, a parquet folder, a Hub dataset
repo) opened as a `datasets.Dataset`, the home told by the rule of [`~lxmert_hf.locations.locate`]."""

from __future__ import annotations

import os

from datasets import Dataset, IterableDataset

from lxmert_hf.data.store.format import MANIFEST_NAME
from lxmert_hf.data.store.parquet import load_hub_features, load_parquet_folder
from lxmert_hf.data.store.reader import open_store_dataset
from lxmert_hf.locations import locate


def load_features(path: str | os.PathLike, streaming: bool = False) -> Dataset | IterableDataset:
    r"""
    Open region features as a `datasets.Dataset`; a local store is memory-mapped (no data is read until accessed).

    Columns: `image_id` (str), `visual_feats` ([num_boxes, dim]), `visual_pos` ([num_boxes, 4], normalized
    x1/w, y1/h, x2/w, y2/h), `image_width`, `image_height`, `num_boxes` and, when the detector gave them,
    `object_ids`, `object_scores`, `attribute_ids`, `attribute_scores`.

    For training, [`FeatureStore`] reads the regions of a store by image id, a batch at a time.

    Args:
        path (`str` or `os.PathLike`):
            A store folder written by [`FeatureStoreWriter`], a folder of parquet files written by
            [`export_parquet`] (or a local copy of a Hub dataset repo), or a Hub dataset repo id pushed with
            [`push_features_to_hub`]; `hf-hub:owner/name` means the Hub even if a folder of that name exists.
        streaming (`bool`, *optional*, defaults to `False`):
            Return a `datasets.IterableDataset` that streams the shards.

    Example:
        ```python
        >>> import numpy as np, tempfile
        >>> from lxmert_hf.data import FeatureStoreWriter, load_features
        >>> store_dir = tempfile.mkdtemp()
        >>> with FeatureStoreWriter(store_dir, resume=True) as writer:
        ...     writer.add({"image_id": "a", "visual_feats": np.zeros((2, 4)), "boxes": [[0, 0, 4, 8]] * 2,
        ...                 "image_width": 8, "image_height": 8})
        >>> load_features(store_dir)["image_id"][:]
        ['a']
        ```
    """
    location = locate(path, what="features")
    if not location.is_local:
        return load_hub_features(location.repo_id, streaming=streaming)
    if (location.path / MANIFEST_NAME).is_file():
        return open_store_dataset(location.path, streaming=streaming)
    if not location.path.is_dir():
        raise FileNotFoundError(
            f"{path} is a file; give the folder of a feature store (store.json) or of parquet shards, or a Hub "
            "dataset repo id."
        )
    return load_parquet_folder(location.path, streaming=streaming)
