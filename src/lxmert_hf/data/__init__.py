"""Data: region-feature sources, the memory-mapped feature store, and VQA / GQA / NLVR2 datasets."""

from lxmert_hf.data.hub import export_parquet, push_features_to_hub
from lxmert_hf.data.store import FeatureStoreWriter, load_features, normalize_boxes

__all__ = [
    "FeatureStoreWriter",
    "export_parquet",
    "load_features",
    "normalize_boxes",
    "push_features_to_hub",
]
