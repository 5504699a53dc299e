"""Answers: one home for everything that turns answer strings into labels, targets or comparable strings.

- `normalization`: the three ways answers are compared, one per task: VQA's official normalization
  ([`normalize_answer`]), GQA's exact strings ([`exact_answer`]) and the original code's transplant matching
  ([`lxmert_qa_normalize`]); the one table of number words.
- `scores`: VQA soft scores ([`soft_scores`]) and the one dense soft-label encoder ([`encode_soft_labels`]).
- `sources`: reading an answer list from a list, records, a dict, a file, a URL or a Hub file.
- `vocabulary`: [`AnswerVocabulary`] (with [`AnswerVocabulary.load`], the one entry for answer lists) and each
  task's [`VocabularyChoice`] (VQA's default: the original procedure, [`VQA_VOCABULARY`]).

The metrics apply the official evaluation's normalization; the training data follows the original by default
(soft scores count the annotators' answers as written, the VQA vocabulary is counted as the original script did,
GQA's answers are exact strings), with VQA's normalization as an option. All of these rules live here.

Example:
    ```python
    >>> from lxmert_hf.answers import AnswerVocabulary, normalize_answer, soft_scores
    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> soft_scores(["yes"] * 8 + ["no", "Yes."])
    {'yes': 1.0, 'no': 0.3, 'Yes.': 0.3}
    >>> soft_scores(["yes"] * 8 + ["no", "Yes."], normalize=True)
    {'yes': 1.0, 'no': 0.3}
    >>> vocabulary = AnswerVocabulary.build(["yes", "no", "yes", "2"], min_count=1)
    >>> vocabulary.answers
    ['yes', '2', 'no']
    ```
"""

from lxmert_hf.answers.normalization import (
    ANSWER_NORMALIZATIONS,
    NUMBER_WORDS,
    bottom_up_vqa_normalize,
    clean_whitespace,
    exact_answer,
    get_normalization,
    lxmert_qa_normalize,
    normalize_answer,
)
from lxmert_hf.answers.scores import encode_soft_labels, soft_scores, vqa_soft_score
from lxmert_hf.answers.sources import answers_cache_dir
from lxmert_hf.answers.vocabulary import (
    GQA_VOCABULARY,
    VQA_TRAIN_SPLIT_VOCABULARY,
    VQA_VOCABULARY,
    AnswerVocabulary,
    VocabularyChoice,
)

__all__ = [
    "ANSWER_NORMALIZATIONS",
    "GQA_VOCABULARY",
    "NUMBER_WORDS",
    "VQA_TRAIN_SPLIT_VOCABULARY",
    "VQA_VOCABULARY",
    "AnswerVocabulary",
    "VocabularyChoice",
    "answers_cache_dir",
    "bottom_up_vqa_normalize",
    "clean_whitespace",
    "encode_soft_labels",
    "exact_answer",
    "get_normalization",
    "lxmert_qa_normalize",
    "normalize_answer",
    "soft_scores",
    "vqa_soft_score",
]
