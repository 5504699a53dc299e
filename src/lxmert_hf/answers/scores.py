"""Soft scores: the training targets of VQA, from the annotators' answers to a dense vector over the vocabulary.

Two steps, each with one home: [`soft_scores`] counts the answers of one question and gives each distinct answer
its [`vqa_soft_score`] (the `label_answers` / `label_scores` columns of a prepared split are its keys and values);
[`encode_soft_labels`] turns such `(answers, scores)` lists into dense target rows over a vocabulary, for a batch
of questions ([`AnswerVocabulary.encode`] does it for one).

By default the annotators' answers count as written, as in the original training targets (`compute_target` of
bottom-up-attention-vqa's `tools/compute_softscore.py`, which made LXMERT's labels): only an answer spelled exactly
like a vocabulary answer scores for it, so "two" does not score for "2". `normalize=True` counts them after the
official VQA normalization instead.

Example:
    ```python
    >>> from lxmert_hf.answers import encode_soft_labels, soft_scores
    >>> scores = soft_scores(["2", "two", "2", "3"])
    >>> scores
    {'2': 0.6, 'two': 0.3, '3': 0.3}
    >>> encode_soft_labels([list(scores)], [list(scores.values())], {"yes": 0, "2": 1}).tolist()
    [[0.0, 0.6000000238418579]]
    >>> soft_scores(["2", "two", "2", "3"], normalize=True)
    {'2': 0.9, '3': 0.3}
    ```
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from lxmert_hf.answers.normalization import get_normalization

__all__ = ["encode_soft_labels", "soft_scores", "vqa_soft_score"]

# Leave-one-out average of min(1, matches / 3) over the 10 subsets of 9 annotators, by number of matching
# annotators: the closed form of the official accuracy, used as the soft training target.
_SOFT_SCORES = (0.0, 0.3, 0.6, 0.9)


def vqa_soft_score(num_matches: int) -> float:
    """The VQA soft score of an answer given by `num_matches` of the 10 annotators.

    It is the official accuracy of that answer, the mean over the 10 leave-one-out subsets of 9 annotators of
    `min(1, matches / 3)`: 0, 1, 2, 3 and 4 or more matches give 0.0, 0.3, 0.6, 0.9 and 1.0.

    Example:
        ```python
        >>> [vqa_soft_score(n) for n in range(6)]
        [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
        ```
    """
    if isinstance(num_matches, bool) or not isinstance(num_matches, (int, np.integer)) or num_matches < 0:
        raise ValueError(f"`num_matches` must be a non-negative integer, got {num_matches!r}.")
    return _SOFT_SCORES[num_matches] if num_matches < len(_SOFT_SCORES) else 1.0


def soft_scores(answers: Sequence[str], normalize: bool | str = False) -> dict[str, float]:
    """Soft scores `{answer: score}` of every distinct answer among the annotators' answers of one question.

    Args:
        answers (`Sequence[str]`): the annotators' answers (10 in VQA v2).
        normalize (`bool` or `str`, *optional*, defaults to `False`): `False` counts the answers as written, as the
            original training targets do (`compute_target` in bottom-up-attention-vqa's `compute_softscore.py`,
            which made LXMERT's labels); `True` applies [`normalize_answer`] before counting, so that "Two" and "2"
            count as the same answer; a name of [`ANSWER_NORMALIZATIONS`] applies that normalization.

    Returns:
        `dict[str, float]`: each distinct answer and its [`vqa_soft_score`], in order of first appearance.

    Example:
        ```python
        >>> soft_scores(["2", "two", "2", "3"])
        {'2': 0.6, 'two': 0.3, '3': 0.3}
        >>> soft_scores(["2", "two", "2", "3"], normalize=True)
        {'2': 0.9, '3': 0.3}
        ```
    """
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise ValueError(f"`answers` must be a list of answer strings, got {type(answers).__name__}.")
    normalization = get_normalization(normalize)
    answers = [normalization(answer) for answer in answers]
    return {answer: vqa_soft_score(count) for answer, count in Counter(answers).items()}


def encode_soft_labels(
    label_answers: Sequence[Sequence[str]],
    label_scores: Sequence[Sequence[float]],
    label2id: Mapping[str, int],
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Dense soft-score targets of a batch of questions over the vocabulary `label2id`.

    Args:
        label_answers (`Sequence[Sequence[str]]`): the scored answers of each question (e.g. `list(soft_scores(...))`
            or a prepared split's `label_answers` column).
        label_scores (`Sequence[Sequence[float]]`): their scores, in the same order (`label_scores`).
        label2id (`Mapping[str, int]`): answer -> label id; answers outside it are ignored, as in the original
            training data.
        dtype (*optional*, defaults to `np.float32`): the dtype of the targets.

    Returns:
        `np.ndarray` of shape `(len(label_answers), len(label2id))`.

    Example:
        ```python
        >>> encode_soft_labels([["yes", "maybe"], []], [[1.0, 0.3], []], {"no": 0, "yes": 1}).tolist()
        [[0.0, 1.0], [0.0, 0.0]]
        ```
    """
    targets = np.zeros((len(label_answers), len(label2id)), dtype=dtype)
    for row, (answers, scores) in enumerate(zip(label_answers, label_scores, strict=True)):
        for answer, score in zip(answers, scores, strict=True):
            label = label2id.get(answer)
            if label is not None:
                targets[row, label] = score
    return targets
