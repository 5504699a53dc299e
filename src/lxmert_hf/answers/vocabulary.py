"""The answer vocabulary: the answers a classifier predicts (index = label id), how it is loaded and how each task
chooses it from its training answers.

VQA's default, [`VQA_VOCABULARY`], is the original procedure (bottom-up-attention-vqa's `tools/compute_softscore.py`,
which made LXMERT's `trainval_label2ans.json`): the `multiple_choice_answer` of every train2014 and val2014
annotation, rewritten by [`bottom_up_vqa_normalize`], kept when at least 9 questions have it, listed in the order
that script's Python 2 dictionary gave them (`order="python2-dict"`): the procedure, label order included, that
made LXMERT's 3,129-answer list.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np

from lxmert_hf.answers.normalization import bottom_up_vqa_normalize, get_normalization
from lxmert_hf.answers.scores import encode_soft_labels
from lxmert_hf.answers.sources import check_answer_list, read_answers
from lxmert_hf.files import write_text_atomic

__all__ = [
    "GQA_VOCABULARY",
    "VOCABULARY_ORDERS",
    "VQA_TRAIN_SPLIT_VOCABULARY",
    "VQA_VOCABULARY",
    "AnswerVocabulary",
    "VocabularyChoice",
]

Normalization = bool | str | Callable[[str], str]


def _normalization(normalize: Normalization) -> Callable[[str], str]:
    return normalize if callable(normalize) else get_normalization(normalize)


_UINT64 = (1 << 64) - 1


def _python2_hash(text: str) -> int:
    """CPython 2.7's hash of a unicode string (64-bit Linux build: UCS-4, no hash randomization), as an unsigned
    64-bit number."""
    if not text:
        return 0
    value = ord(text[0]) << 7
    for char in text:
        value = ((1000003 * value) & _UINT64) ^ ord(char)
    value ^= len(text)
    return _UINT64 - 1 if value == _UINT64 else value  # -1 is reserved for errors: -2 instead


def _python2_slots(hash_value: int, mask: int) -> Iterator[int]:
    """The slots a CPython 2.7 dict of size `mask + 1` probes for a key of hash `hash_value`, in order."""
    slot, perturb = hash_value & mask, hash_value
    while True:
        yield slot
        slot = (5 * slot + perturb + 1) & mask
        perturb >>= 5


def _python2_insert(table: list, key: str, hash_value: int) -> None:
    mask = len(table) - 1
    slot = next(slot for slot in _python2_slots(hash_value, mask) if table[slot] is None)
    table[slot] = (hash_value, key)


def _python2_dict_order(keys: Iterable[str], removed: Collection[str]) -> list[str]:
    """The iteration order of a CPython 2.7 dict that received the distinct `keys` in order, then lost `removed`.

    The dict's table starts with 8 slots and is rebuilt, larger, whenever it is two thirds full; a deletion leaves
    its slot marked, so the remaining keys keep their slots, and iteration walks the slots in order.
    """
    table: list[tuple[int, str] | None] = [None] * 8
    for used, key in enumerate(keys, 1):
        _python2_insert(table, key, _python2_hash(key))
        if 3 * used >= 2 * len(table):
            minimum = (2 if used > 50000 else 4) * used
            size = 8
            while size <= minimum:
                size *= 2
            old, table = table, [None] * size
            for entry in old:
                if entry is not None:
                    _python2_insert(table, entry[1], entry[0])
    return [entry[1] for entry in table if entry is not None and entry[1] not in removed]


def _by_count(counts: Mapping[str, int], kept: Collection[str]) -> list[str]:
    return sorted(kept, key=lambda answer: (-counts[answer], answer))


def _python2_dict(counts: Mapping[str, int], kept: Collection[str]) -> list[str]:
    return _python2_dict_order(counts, removed=set(counts) - set(kept))


# How `AnswerVocabulary.build` may order the kept answers, from their counts (in order of first appearance).
VOCABULARY_ORDERS: dict[str, Callable[[Mapping[str, int], Collection[str]], list[str]]] = {
    "count": _by_count,
    "python2-dict": _python2_dict,
}


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
    def build(
        cls, answers: Iterable[str], min_count: int = 9, normalize: Normalization = True, order: str = "count"
    ) -> AnswerVocabulary:
        """Build the vocabulary of the answers occurring at least `min_count` times.

        Args:
            answers (`Iterable[str]`): one answer per training question (in VQA v2, its `multiple_choice_answer`).
            min_count (`int`, *optional*, defaults to 9): the minimum number of questions an answer must answer.
            normalize (`bool`, `str` or callable, *optional*, defaults to `True`): the normalization applied before
                counting (see [`get_normalization`]): `True` VQA's, `False` or `"gqa"` none, or a function of one
                answer such as [`bottom_up_vqa_normalize`].
            order (`str`, *optional*, defaults to `"count"`): one of [`VOCABULARY_ORDERS`]. `"count"`: by
                decreasing count, ties in alphabetical order. `"python2-dict"`: the order of the original VQA
                vocabulary script, that of a Python 2.7 dict which received the answers in order of first
                appearance and then lost the rare ones; with the original's answers and normalization it gives
                LXMERT's label order. Either way the same training answers always give the same labels.

        Returns:
            [`AnswerVocabulary`]: the kept answers, in the order `order`. [`VQA_VOCABULARY`] builds the original
            VQA vocabulary with this method.

        Example:
            ```python
            >>> AnswerVocabulary.build(["Yes", "no", "yes", "two", "2", "blue"], min_count=2).answers
            ['2', 'yes']
            >>> answers = ["no"] * 3 + ["yes", "2"] * 2
            >>> AnswerVocabulary.build(answers, min_count=2).answers
            ['no', '2', 'yes']
            >>> AnswerVocabulary.build(answers, min_count=2, order="python2-dict").answers
            ['yes', '2', 'no']
            ```
        """
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"`min_count` must be a positive integer, got {min_count!r}.")
        if isinstance(answers, (str, Mapping)):
            raise ValueError("`answers` must be an iterable of answer strings, one per question.")
        if order not in VOCABULARY_ORDERS:
            raise ValueError(f"`order` must be one of {sorted(VOCABULARY_ORDERS)}, got {order!r}.")
        normalization = _normalization(normalize)
        counts: Counter[str] = Counter()
        for index, answer in enumerate(answers):
            if not isinstance(answer, str):
                raise ValueError(f"`answers[{index}]` must be a string, got {type(answer).__name__}.")
            counts[normalization(answer)] += 1
        kept = [answer for answer, count in counts.items() if count >= min_count]
        if not kept:
            raise ValueError(
                f"No answer occurs at least `min_count={min_count}` times among {sum(counts.values())} answers; "
                "lower `min_count` or pass more training answers."
            )
        return cls(VOCABULARY_ORDERS[order](counts, kept))

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
    """How a task chooses its answer vocabulary when none is given: the answers of the answer lists `splits`
    occurring at least `min_count` times, counted after the normalization `normalize`, in the order `order` (see
    [`AnswerVocabulary.build`]). With `skip_empty`, empty answers (in a prepared split, those of unannotated
    questions) are left out; the original VQA procedure counts annotation files, whose every record is annotated,
    and keeps them.

    [`VQA_VOCABULARY`] (the original procedure, `prepare_vqa`'s default), [`VQA_TRAIN_SPLIT_VOCABULARY`] and
    [`GQA_VOCABULARY`] are the choices of `prepare_vqa` and `prepare_gqa`. The names in `splits` are those of the
    answer lists the task passes to [`VocabularyChoice.choose`]: its prepared splits (`"train"`, ...) and, for VQA,
    the `multiple_choice_answer` of the official annotation files as `"train2014"` and `"val2014"`.

    Example:
        ```python
        >>> VQA_TRAIN_SPLIT_VOCABULARY.choose({"train": ["yes"] * 9 + ["no"] * 3}).answers
        ['yes']
        >>> VQA_VOCABULARY.choose({"train2014": ["Yes"] * 5 + ["no"] * 9, "val2014": ["yes"] * 4}).answers
        ['yes', 'no']
        >>> GQA_VOCABULARY.choose({"train": ["t-shirt", "yes", "taking a photo", "yes"]}).answers
        ['yes', 't-shirt', 'taking a photo']
        ```
    """

    min_count: int
    splits: tuple[str, ...] = ("train",)
    normalize: Normalization = True
    order: str = "count"
    skip_empty: bool = True

    def choose(self, split_answers: Mapping[str, Iterable[str]], given: object = None) -> AnswerVocabulary:
        """The vocabulary `given` (anything [`AnswerVocabulary.load`] reads), or else the one built from the
        answers of those of `self.splits` that `split_answers` holds (`{name: one answer per question}`, counted
        in the order of `self.splits`)."""
        if given is not None:
            return AnswerVocabulary.load(given)
        present = [split for split in self.splits if split in split_answers]
        if not present:
            names = " or ".join(f"`{split}`" for split in self.splits)
            raise ValueError(
                f"no {names} answers to build the answer vocabulary from; pass `vocabulary` (an answer list: "
                "a label2ans file, a URL or a list)."
            )
        answers = [answer for split in present for answer in split_answers[split] if answer or not self.skip_empty]
        return AnswerVocabulary.build(answers, min_count=self.min_count, normalize=self.normalize, order=self.order)


# VQA v2, the original procedure (bottom-up-attention-vqa's `tools/compute_softscore.py`, whose list LXMERT uses):
# the `multiple_choice_answer` of the train2014 then the val2014 annotations (all of val, minival included), in
# file order, after that script's preprocessing, given by at least 9 questions, in its Python 2 dict's order.
VQA_VOCABULARY = VocabularyChoice(
    min_count=9,
    splits=("train2014", "val2014"),
    normalize=bottom_up_vqa_normalize,
    order="python2-dict",
    skip_empty=False,
)
# VQA v2, counted on the prepared train split (train2014 + nominival: minival stays unseen) after the official
# normalization, by decreasing count.
VQA_TRAIN_SPLIT_VOCABULARY = VocabularyChoice(min_count=9)
# GQA: every train answer as written, as the original preprocessing takes `datum["answer"]` (score 1.0) and the
# official evaluation compares exact strings. Labels are matched by exact string too (`encode_soft_labels`), so an
# answer rewritten while counting ("t-shirt" -> "t shirt", "taking a photo" -> "taking photo") would leave its
# questions without a label: VQA's normalization changes 8 of the 1,842 answers of LXMERT's GQA list.
GQA_VOCABULARY = VocabularyChoice(min_count=1, normalize="gqa")
