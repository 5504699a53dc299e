"""Answers: the official VQA normalization, soft scores and the answer vocabulary.

Everything that turns annotator answers into training targets or into comparable strings lives here, so that the
data path (vocabulary, soft-score labels) and the metrics (official accuracy) apply exactly the same rules.

The normalization reproduces the one applied by the official VQA evaluation, quirks included, because a model
is judged by that tool: a prediction only counts when it equals the annotators' answers *after* that processing.

Example:
    ```python
    >>> from lxmert_hf.answers import AnswerVocabulary, normalize_answer, soft_scores
    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> soft_scores(["yes"] * 8 + ["no", "Yes."])
    {'yes': 1.0, 'no': 0.3}
    >>> vocabulary = AnswerVocabulary.build(["yes", "no", "yes", "2"], min_count=1)
    >>> vocabulary.answers
    ['yes', '2', 'no']
    ```
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from lxmert_hf.submission import write_text_atomic

__all__ = [
    "AnswerVocabulary",
    "clean_whitespace",
    "normalize_answer",
    "soft_scores",
    "vqa_soft_score",
]

# Characters the official tool removes (or turns into a space, see `_strip_punctuation`). The apostrophe, the
# colon and the period are deliberately absent: apostrophes are needed by the contraction table, and periods
# follow their own rule.
_PUNCTUATION = frozenset(';/[]"{}()=+\\_-><@`,?!')
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period is dropped unless a digit follows it ("3.5" keeps its decimal point, "dogs." loses it).
_PERIOD = re.compile(r"\.(?!\d)")
# The official tool passes the flag `re.UNICODE` (whose value is 32) where `re.sub` expects its `count`, so only
# the first 32 such periods of an answer are removed. Reproduced so that scores match to the last digit.
_MAX_PERIODS_REMOVED = 32

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table, one line per written form it produces, followed by the (lower-case) spellings
# that are rewritten into it. Entries of the official table whose key has a capital letter ("Im", "Ive", "Id've",
# "I'dve") are left out: words are lower-cased before the lookup, so those entries never apply. "somebody'd" ->
# "somebodyd" runs backwards in the official table and is kept as is, since the official score depends on it.
_CONTRACTION_TABLE = """
ain't: aint
aren't: arent
can't: cant
could've: couldve
couldn't: couldnt
couldn't've: couldnt've couldn'tve
didn't: didnt
doesn't: doesnt
don't: dont
hadn't: hadnt
hadn't've: hadnt've hadn'tve
hasn't: hasnt
haven't: havent
he'd: hed
he'd've: hed've he'dve
he's: hes
how'd: howd
how'll: howll
how's: hows
isn't: isnt
it'd: itd
it'd've: itd've it'dve
it'll: itll
let's: let's
ma'am: maam
mightn't: mightnt
mightn't've: mightnt've mightn'tve
might've: mightve
mustn't: mustnt
must've: mustve
needn't: neednt
not've: notve
o'clock: oclock
oughtn't: oughtnt
'ow's'at: ow's'at 'ows'at 'ow'sat
shan't: shant
she'd've: shed've she'dve
she's: she's
should've: shouldve
shouldn't: shouldnt
shouldn't've: shouldnt've shouldn'tve
somebodyd: somebody'd
somebody'd've: somebodyd've somebody'dve
somebody'll: somebodyll
somebody's: somebodys
someone'd: someoned
someone'd've: someoned've someone'dve
someone'll: someonell
someone's: someones
something'd: somethingd
something'd've: somethingd've something'dve
something'll: somethingll
that's: thats
there'd: thered
there'd've: thered've there'dve
there're: therere
there's: theres
they'd: theyd
they'd've: theyd've they'dve
they'll: theyll
they're: theyre
they've: theyve
'twas: twas
wasn't: wasnt
we'd've: wed've we'dve
we've: weve
weren't: werent
what'll: whatll
what're: whatre
what's: whats
what've: whatve
when's: whens
where'd: whered
where's: wheres
where've: whereve
who'd: whod
who'd've: whod've who'dve
who'll: wholl
who's: whos
who've: whove
why'll: whyll
why're: whyre
why's: whys
won't: wont
would've: wouldve
wouldn't: wouldnt
wouldn't've: wouldnt've wouldn'tve
y'all: yall
y'all'll: yall'll y'allll
y'all'd've: yall'd've y'alld've y'all'dve
you'd: youd
you'd've: youd've you'dve
you'll: youll
you're: youre
you've: youve
"""


def _parse_contractions(table: str) -> dict[str, str]:
    contractions = {}
    for line in table.strip().splitlines():
        written, spellings = line.split(": ")
        for spelling in spellings.split():
            contractions[spelling] = written
    return contractions


_CONTRACTIONS = _parse_contractions(_CONTRACTION_TABLE)
# Number words, articles and contractions never overlap, so the official three passes over the words (numbers,
# then articles, then contractions) collapse into one lookup; `None` marks a dropped word.
_WORD_REWRITES: dict[str, str | None] = {**_CONTRACTIONS, **_NUMBER_WORDS, **dict.fromkeys(_ARTICLES)}

# Leave-one-out average of min(1, matches / 3) over the 10 subsets of 9 annotators, by number of matching
# annotators: the closed form of the official accuracy, used as the soft training target.
_SOFT_SCORES = (0.0, 0.3, 0.6, 0.9)


def clean_whitespace(text: str) -> str:
    """Replace newlines and tabs by spaces and strip, as the official evaluation does before anything else.

    Example:
        ```python
        >>> clean_whitespace(" red\\tand\\nwhite ")
        'red and white'
        ```
    """
    return text.replace("\n", " ").replace("\t", " ").strip()


def _strip_punctuation(text: str) -> str:
    # Every decision looks at the text as it came in, not at the partially processed one, as the official tool does.
    present = _PUNCTUATION.intersection(text)
    if present:
        drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
        table = {}
        for mark in present:
            # A mark touching a space ("yes , no") or any answer with a number like "1,000" loses its marks;
            # otherwise a mark separates words ("t-shirt" -> "t shirt").
            glued = drop_all or f"{mark} " in text or f" {mark}" in text
            table[ord(mark)] = "" if glued else " "
        text = text.translate(table)
    if "." in text:
        text = _PERIOD.sub("", text, count=_MAX_PERIODS_REMOVED)
    return text


def _rewrite_words(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _WORD_REWRITES.get(word, word)
        if word is not None:
            words.append(word)
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Normalize an answer exactly as the official VQA evaluation does.

    In order: newlines and tabs become spaces and the ends are stripped; punctuation marks are removed when they
    touch a space or when the answer contains a digit-comma-digit group, and replaced by a space otherwise; periods
    not followed by a digit are removed; the answer is lower-cased and split on whitespace; number words become
    digits (including "none" -> "0"); the articles "a", "an" and "the" are dropped; spellings without apostrophe
    are mapped to their contraction ("dont" -> "don't"); the words are joined by single spaces.

    Args:
        text (`str`): an answer, from an annotator or from a model.

    Returns:
        `str`: the normalized answer.

    Example:
        ```python
        >>> [normalize_answer(a) for a in ["t-shirt", "Two dogs.", "1,000", "none", "dont", "The Eiffel Tower"]]
        ['t shirt', '2 dogs', '1000', '0', "don't", 'eiffel tower']
        ```
    """
    if not isinstance(text, str):
        raise ValueError(f"`text` must be a string, got {type(text).__name__}; convert answers with `str()` first.")
    return _rewrite_words(_strip_punctuation(clean_whitespace(text)))


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


def soft_scores(answers: Sequence[str], normalize: bool = True) -> dict[str, float]:
    """Soft scores `{answer: score}` of every distinct answer among the annotators' answers of one question.

    Args:
        answers (`Sequence[str]`): the annotators' answers (10 in VQA v2).
        normalize (`bool`, *optional*, defaults to `True`): normalize with [`normalize_answer`] before counting,
            so that "Two" and "2" count as the same answer.

    Returns:
        `dict[str, float]`: each distinct answer and its [`vqa_soft_score`], in order of first appearance.

    Example:
        ```python
        >>> soft_scores(["2", "two", "2", "3"])
        {'2': 0.9, '3': 0.3}
        ```
    """
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise ValueError(f"`answers` must be a list of answer strings, got {type(answers).__name__}.")
    if normalize:
        answers = [normalize_answer(answer) for answer in answers]
    return {answer: vqa_soft_score(count) for answer, count in Counter(answers).items()}


class AnswerVocabulary:
    """The answers a classifier can predict, index = label id.

    Build it from the training answers with [`AnswerVocabulary.build`] (answers occurring at least `min_count`
    times; 9 on VQA v2 train + val gave the original 3,129 answers), or load the list a checkpoint was trained with
    from a file in the `trainval_label2ans.json` layout (a JSON list, index = label) with
    [`AnswerVocabulary.from_file`], so that labels line up exactly.

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
        if isinstance(answers, str) or not isinstance(answers, Sequence) or not len(answers):
            raise ValueError("`answers` must be a non-empty list of answer strings, index = label id.")
        label2id: dict[str, int] = {}
        for index, answer in enumerate(answers):
            if not isinstance(answer, str):
                raise ValueError(f"`answers[{index}]` must be a string, got {type(answer).__name__}.")
            if answer in label2id:
                raise ValueError(
                    f"`answers` repeats {answer!r} at indices {label2id[answer]} and {index}; answers must be unique."
                )
            label2id[answer] = index
        self._answers = list(answers)
        self._label2id = label2id

    @classmethod
    def build(cls, answers: Iterable[str], min_count: int = 9, normalize: bool = True) -> AnswerVocabulary:
        """Build the vocabulary of the answers occurring at least `min_count` times.

        Args:
            answers (`Iterable[str]`): one answer per training question (in VQA v2, its `multiple_choice_answer`).
            min_count (`int`, *optional*, defaults to 9): the minimum number of questions an answer must answer.
            normalize (`bool`, *optional*, defaults to `True`): apply [`normalize_answer`] before counting.

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
        counts: Counter[str] = Counter()
        for index, answer in enumerate(answers):
            if not isinstance(answer, str):
                raise ValueError(f"`answers[{index}]` must be a string, got {type(answer).__name__}.")
            counts[normalize_answer(answer) if normalize else answer] += 1
        kept = sorted(
            (answer for answer, count in counts.items() if count >= min_count), key=lambda a: (-counts[a], a)
        )
        if not kept:
            raise ValueError(
                f"No answer occurs at least `min_count={min_count}` times among {sum(counts.values())} answers; "
                "lower `min_count` or pass more training answers."
            )
        return cls(kept)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> AnswerVocabulary:
        """Load a vocabulary from a JSON list of answers (the `trainval_label2ans.json` layout, index = label).

        Example:
            ```python
            >>> import tempfile, os
            >>> path = os.path.join(tempfile.mkdtemp(), "label2ans.json")
            >>> AnswerVocabulary(["yes", "no"]).save(path)
            >>> AnswerVocabulary.from_file(path).answers
            ['yes', 'no']
            ```
        """
        path = Path(path)
        try:
            answers = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: not valid JSON ({error}); expected a JSON list of answers, index = label."
            ) from None
        if not isinstance(answers, list) or not answers:
            raise ValueError(
                f"{path}: expected a non-empty JSON list of answers (index = label, the `trainval_label2ans.json` "
                f"layout), got {type(answers).__name__ if answers else 'an empty list'}."
            )
        try:
            return cls(answers)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as a JSON list of answers (index = label), atomically."""
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
        are ignored, as in the original training data.

        Returns:
            `np.ndarray` of shape `(len(self),)`.
        """
        if not isinstance(scores, Mapping):
            raise ValueError(f"`scores` must be a mapping {{answer: score}}, got {type(scores).__name__}.")
        target = np.zeros(len(self._answers), dtype=dtype)
        for answer, score in scores.items():
            label = self._label2id.get(answer)
            if label is not None:
                target[label] = score
        return target

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
