"""Data: region-feature sources, the memory-mapped feature store, and VQA / GQA / NLVR2 datasets.

Data flows one way: feature files -> [`prepare_features`] -> a feature store (read by [`FeatureStore`], or as a
`datasets.Dataset` by [`load_features`]); question files -> [`prepare_vqa`] / [`prepare_gqa`] / [`prepare_nlvr2`]
-> a prepared directory -> [`load_prepared`] (questions joined to the store by image id) -> the collator.
"""

from lxmert_hf.data.builder import QuestionsBuilder, QuestionsConfig, load_answer_vocabulary, load_prepared
from lxmert_hf.data.collator import NLVR2DataCollator, VQADataCollator
from lxmert_hf.data.features import PrepareReport, prepare_features, prepare_pushed_features
from lxmert_hf.data.gqa import GQABuilder, prepare_gqa
from lxmert_hf.data.join import attach_features
from lxmert_hf.data.nlvr2 import NLVR2Builder, prepare_nlvr2
from lxmert_hf.data.pretraining import PretrainingSource, load_pretraining
from lxmert_hf.data.pretraining_collator import PretrainingDataCollator
from lxmert_hf.data.store import (
    FeatureStore,
    FeatureStoreWriter,
    export_parquet,
    load_features,
    normalize_boxes,
    push_features_to_hub,
)
from lxmert_hf.data.tokens import tokenize_questions
from lxmert_hf.data.tsv import BadRecordError, iter_tsv, write_tsv
from lxmert_hf.data.vqa import VQABuilder, prepare_vqa, vqa_split_sources

__all__ = [
    "BadRecordError",
    "FeatureStore",
    "FeatureStoreWriter",
    "GQABuilder",
    "NLVR2Builder",
    "NLVR2DataCollator",
    "PrepareReport",
    "QuestionsBuilder",
    "QuestionsConfig",
    "VQABuilder",
    "VQADataCollator",
    "attach_features",
    "export_parquet",
    "iter_tsv",
    "load_answer_vocabulary",
    "load_features",
    "load_prepared",
    "normalize_boxes",
    "prepare_features",
    "prepare_gqa",
    "prepare_nlvr2",
    "prepare_pushed_features",
    "prepare_vqa",
    "push_features_to_hub",
    "tokenize_questions",
    "vqa_split_sources",
    "write_tsv",
    "PretrainingDataCollator",
    "PretrainingSource",
    "load_pretraining",
]
