"""Pre-training data: sentences (captions and questions) of several sources, joined to a feature store.

- `sources`: reading the original `data/lxmert/*.json` files, prepared VQA / GQA splits and caption files into
  [`Sentence`] values; [`PretrainingSource`] names a source (`kind:path`).
- `dataset`: [`load_pretraining`], the sentences as a memory-mapped `datasets.Dataset` joined to the store at read
  time (with the detector's region labels for the object objectives), and the QA label rule of the original
  ([`map_qa_label`], [`load_qa_answers`]).

The masking of the objectives is [`~lxmert_hf.data.PretrainingDataCollator`]'s.
"""

from lxmert_hf.data.pretraining.dataset import (
    REGION_LABEL_COLUMNS,
    SENTENCE_FEATURES,
    VISUAL_LOSSES,
    RegionLabels,
    check_region_labels,
    load_pretraining,
    load_qa_answers,
    map_qa_label,
    pretraining_sentences,
)
from lxmert_hf.data.pretraining.sources import (
    SOURCE_KINDS,
    PretrainingSource,
    Sentence,
    read_captions,
    read_lxmert_json,
    read_prepared_questions,
)

__all__ = [
    "REGION_LABEL_COLUMNS",
    "SENTENCE_FEATURES",
    "SOURCE_KINDS",
    "VISUAL_LOSSES",
    "PretrainingSource",
    "RegionLabels",
    "Sentence",
    "check_region_labels",
    "load_pretraining",
    "load_qa_answers",
    "map_qa_label",
    "pretraining_sentences",
    "read_captions",
    "read_lxmert_json",
    "read_prepared_questions",
]
