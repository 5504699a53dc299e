"""Data: region-feature sources, the memory-mapped feature store, and VQA / GQA / NLVR2 datasets."""

from lxmert_hf.data.features import PrepareReport, prepare_features
from lxmert_hf.data.hub import export_parquet, push_features_to_hub
from lxmert_hf.data.store import FeatureStoreWriter, load_features, normalize_boxes
from lxmert_hf.data.tsv import BadRecordError, iter_tsv, write_tsv

__all__ = [
    "BadRecordError",
    "FeatureStoreWriter",
    "PrepareReport",
    "export_parquet",
    "iter_tsv",
    "load_features",
    "normalize_boxes",
    "prepare_features",
    "push_features_to_hub",
    "write_tsv",
]
