"""The answer vocabulary: the answers a classifier predicts (index = label id), how it is loaded and how each task
chooses it from its training answers."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from lxmert_hf.answers.normalization import get_normalization
from lxmert_hf.answers.scores import encode_soft_labels
from lxmert_hf.answers.sources import check_answer_list, read_answers
from lxmert_hf.files import write_text_atomic

__all__ = ["GQA_VOCABULARY", "VQA_VOCABULARY", "AnswerVocabulary", "VocabularyChoice"]


class AnswerVocabulary:
    """The answers a classifier can predict, index = label id.

    Load the list a checkpoint was trained with by [`AnswerVocabulary.load`] (a list, records, a dict, a file, a
    URL or a Hub file), so that labels line up exactly, or build one from training answers with
    [`AnswerVocabulary.build`] (what each task does is its [`VocabularyChoice`]).

    Args:
        answers (`Sequence[str]`): distinct answers, index = label id.

    Example:
        ```python
        >>> vocabulary = AnswerVocabulary(["yes", "no", "2"])
        >>> vocabulary.label("no"), vocabulary.answer(2), len(vocabulary)
        (1, '2', 3)
        >>> vocabulary.encode({"2": 0.9, "3": 0.3}).tolist()
        [0.0, 0.0, 0.8999999761581421]
        ```
    """

    def __init__(self, answers: Sequence[str]):
        self._answers = check_answer_list(answers)
        self._label2id = {answer: label for label, answer in enumerate(self._answers)}

    @classmethod
    def load(cls, source: object) -> AnswerVocabulary:
        """Load a vocabulary from any form an answer list comes in, index = label id.

        Args:
            source: one of
                - a list of answers (`["yes", "no"]`, the `trainval_label2ans.json` layout) or of `{"ans": answer,
                  ...}` records (the pre-training QA head's `all_ans.json`);
                - a dict `{answer: label id}` (`trainval_ans2label.json`) or `{label id: answer}` (`id2label`);
                - a path to a file holding one of these as JSON, or a text file with one answer per line;
                - an http(s) URL of such a file (downloaded once, cached under `$HF_HOME/lxmert_hf/answers`);
                - a Hub file `hf://[datasets/]owner/name[@revision]/path` (downloaded by `huggingface_hub`);
                - an [`AnswerVocabulary`], returned as is.

        Raises:
            `FileNotFoundError`: a local file that does not exist.
            `ValueError`: a source of another shape, an answer given twice, label ids that are not 0..n-1, a file
                that cannot be read or downloaded; the message names the source and the record.

        Example:
            ```python
            >>> AnswerVocabulary.load([{"ans": "yes", "dsets": ["vqa"]}, {"ans": "no", "dsets": ["gqa"]}]).answers
            ['yes', 'no']
            >>> AnswerVocabulary.load({"0": "yes", "1": "no"}) == AnswerVocabulary.load({"no": 1, "yes": 0})
            True
            ```
        """
        if isinstance(source, AnswerVocabulary):
            return source
        return cls(read_answers(source))

    @classmethod
    def build(cls, answers: Iterable[str], min_count: int = 9, normalize: bool | str = True) -> AnswerVocabulary:
        """Build the vocabulary of the answers occurring at least `min_count` times.

        Args:
            answers (`Iterable[str]`): one answer per training question (in VQA v2, its `multiple_choice_answer`).
            min_count (`int`, *optional*, defaults to 9): the minimum number of questions an answer must answer.
            normalize (`bool` or `str`, *optional*, defaults to `True`): the normalization applied before counting
                (see [`get_normalization`]): `True` VQA's, `False` or `"gqa"` none.

        Returns:
            [`AnswerVocabulary`]: the answers by decreasing count, ties in alphabetical order, so that the same
            training answers always give the same labels.

        Example:
            ```python
            >>> AnswerVocabulary.build(["Yes", "no", "yes", "two", "2", "blue"], min_count=2).answers
            ['2', 'yes']
            ```
        """
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"`min_count` must be a positive integer, got {min_count!r}.")
        if isinstance(answers, (str, Mapping)):
            raise ValueError("`answers` must be an iterable of answer strings, one per question.")
        normalization = get_normalization(normalize)
        counts: Counter[str] = Counter()
        for index, answer in enumerate(answers):
            if not isinstance(answer, str):
                raise ValueError(f"`answers[{index}]` must be a string, got {type(answer).__name__}.")
            counts[normalization(answer)] += 1
        kept = sorted(
            (answer for answer, count in counts.items() if count >= min_count), key=lambda a: (-counts[a], a)
        )
        if not kept:
            raise ValueError(
                f"No answer occurs at least `min_count={min_count}` times among {sum(counts.values())} answers; "
                "lower `min_count` or pass more training answers."
            )
        return cls(kept)

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as a JSON list of answers (index = label, the `trainval_label2ans.json` layout),
        atomically; [`AnswerVocabulary.load`] reads it back.

        Example:
            ```python
            >>> import tempfile, os
            >>> path = os.path.join(tempfile.mkdtemp(), "label2ans.json")
            >>> AnswerVocabulary(["yes", "no"]).save(path)
            >>> AnswerVocabulary.load(path).answers
            ['yes', 'no']
            ```
        """
        write_text_atomic(path, json.dumps(self._answers, ensure_ascii=False))

    @property
    def answers(self) -> list[str]:
        """The answers, index = label id."""
        return list(self._answers)

    @property
    def id2label(self) -> dict[int, str]:
        """`{label id: answer}`, the layout of `PretrainedConfig.id2label`."""
        return dict(enumerate(self._answers))

    @property
    def label2id(self) -> dict[str, int]:
        """`{answer: label id}`, the layout of `PretrainedConfig.label2id`."""
        return dict(self._label2id)

    def label(self, answer: str) -> int:
        """The label id of `answer`; raises a `KeyError` naming the answer when it is not in the vocabulary."""
        try:
            return self._label2id[answer]
        except KeyError:
            raise KeyError(f"{answer!r} is not in the answer vocabulary ({len(self)} answers).") from None

    def answer(self, label: int) -> str:
        """The answer of label id `label`."""
        if not 0 <= label < len(self._answers):
            raise IndexError(f"label {label} is out of range for a vocabulary of {len(self)} answers.")
        return self._answers[label]

    def encode(self, scores: Mapping[str, float], dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The dense target vector of `{answer: score}` (e.g. from [`soft_scores`]); answers outside the vocabulary
        are ignored, as in the original training data. See [`encode_soft_labels`] for a batch.

        Returns:
            `np.ndarray` of shape `(len(self),)`.
        """
        if not isinstance(scores, Mapping):
            raise ValueError(f"`scores` must be a mapping {{answer: score}}, got {type(scores).__name__}.")
        return encode_soft_labels([list(scores)], [list(scores.values())], self._label2id, dtype)[0]

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, answer: object) -> bool:
        return answer in self._label2id

    def __iter__(self) -> Iterator[str]:
        return iter(self._answers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnswerVocabulary) and self._answers == other._answers

    def __repr__(self) -> str:
        return f"AnswerVocabulary({len(self)} answers)"


@dataclasses.dataclass(frozen=True)
class VocabularyChoice:
    """How a task chooses its answer vocabulary when none is given: the answers of the prepared `splits` occurring
    at least `min_count` times, counted after the normalization `normalize` (see [`AnswerVocabulary.build`]).

    [`VQA_VOCABULARY`] and [`GQA_VOCABULARY`] are the choices of `prepare_vqa` and `prepare_gqa`.

    Example:
        ```python
        >>> VQA_VOCABULARY.choose({"train": ["yes"] * 9 + ["no"] * 3}).answers
        ['yes']
        >>> dataclasses.replace(GQA_VOCABULARY, normalize="gqa").choose({"train": ["t-shirt", "yes"]}).answers
        ['t-shirt', 'yes']
        ```
    """

    min_count: int
    splits: tuple[str, ...] = ("train",)
    normalize: bool | str = True

    def choose(self, split_answers: Mapping[str, Iterable[str]], given: object = None) -> AnswerVocabulary:
        """The vocabulary `given` (anything [`AnswerVocabulary.load`] reads), or else the one built from the
        answers of `self.splits` in `split_answers` (`{split: one answer per question}`; empty answers, those of
        unannotated questions, are left out)."""
        if given is not None:
            return AnswerVocabulary.load(given)
        missing = [split for split in self.splits if split not in split_answers]
        if missing:
            raise ValueError(
                f"no `{missing[0]}` split to build the answer vocabulary from; pass `vocabulary` (an answer list: "
                "a label2ans file, a URL or a list)."
            )
        answers = [answer for split in self.splits for answer in split_answers[split] if answer]
        return AnswerVocabulary.build(answers, min_count=self.min_count, normalize=self.normalize)


# VQA v2: train answers (train2014 + nominival in the paper's splits) given by at least 9 questions' majority answer.
VQA_VOCABULARY = VocabularyChoice(min_count=9)
# GQA: every train answer, counted after VQA's normalization (`AnswerVocabulary.build`'s default). That rewrites
# 8 of the 1,842 answers of LXMERT's GQA list ("t-shirt" -> "t shirt"), whose questions then have no label in the
# vocabulary; `normalize="gqa"` (exact strings, GQA's own rule) keeps them.
GQA_VOCABULARY = VocabularyChoice(min_count=1)
