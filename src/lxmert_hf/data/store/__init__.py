"""The feature store: region features of many images, written once and read by image id.

- `format.py`: what a store is on disk (file names, manifest, shard schema, index of byte offsets).
- `writer.py`: [`FeatureStoreWriter`] writes a store, one image at a time.
- `reader.py`: [`FeatureStore`] reads a store by image id: where training reads region bytes.
- `fastread.py`: how the reader moves the bytes (Linux page advice and positioned reads, a portable fallback).
- `parquet.py`: parquet export, Hub push, and reading those back.
- `load.py`: [`load_features`], any of these as a `datasets.Dataset`.
- `merge.py`: [`merge_stores`], complete stores (the parts of a multi-process extraction) moved into one.
"""

from lxmert_hf.data.store.format import FEATURE_DTYPES, MANIFEST_NAME, read_manifest
from lxmert_hf.data.store.load import load_features
from lxmert_hf.data.store.merge import merge_stores
from lxmert_hf.data.store.parquet import export_parquet, push_features_to_hub
from lxmert_hf.data.store.reader import FeatureStore, RegionBatch, open_store_dataset
from lxmert_hf.data.store.writer import FeatureStoreWriter, normalize_boxes

__all__ = [
    "FEATURE_DTYPES",
    "MANIFEST_NAME",
    "FeatureStore",
    "FeatureStoreWriter",
    "RegionBatch",
    "export_parquet",
    "load_features",
    "merge_stores",
    "normalize_boxes",
    "open_store_dataset",
    "push_features_to_hub",
    "read_manifest",
]
