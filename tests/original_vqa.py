"""An independent implementation of how the original VQA training data was made, for the tests to compare with.

The original is bottom-up-attention-vqa's `tools/compute_softscore.py` (Python 2.7), whose answer list and soft
scores LXMERT uses: the vocabulary is the `multiple_choice_answer` of the train then the val annotations, each
rewritten by the official evaluation's answer processing, kept when at least 9 questions have it, listed in the
iteration order of the Python 2 dict that collected them; the soft score of an answer is 0.3 per annotator who
wrote exactly that string, capped at 1. Written from that description, apart from the library's code.
"""

from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path

_MARKS = ';/[]"{}()=+\\_-><@`,?!'
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
# The original's contraction table holds more; these are the spellings the tests' answers use.
_CONTRACTIONS = {"dont": "don't", "cant": "can't", "youre": "you're", "thats": "that's"}


def preprocess(answer: str) -> str:
    """The original's answer processing: punctuation, then periods, then number words, articles, contractions."""
    out = answer
    has_number_with_comma = re.search(r"\d,\d", answer) is not None
    for mark in _MARKS:
        touches_space = f"{mark} " in answer or f" {mark}" in answer
        out = out.replace(mark, "" if touches_space or has_number_with_comma else " ")
    out = re.sub(r"\.(?!\d)", "", out, count=32)
    words = [_NUMBERS.get(word, word) for word in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in ("a", "an", "the"))


def python2_hash(text: str) -> int:
    """CPython 2.7's hash of a unicode string on 64-bit Linux, with C's signed overflow."""
    if not text:
        return 0
    x = ctypes.c_int64(ord(text[0]) << 7).value
    for char in text:
        x = ctypes.c_int64(x * 1000003).value ^ ord(char)
    x ^= len(text)
    return -2 if x == -1 else x


_DUMMY = object()


class Python2Dict:
    """CPython 2.7's dict, as far as the original uses it: set a new key, delete a key, iterate the keys."""

    def __init__(self):
        self.slots: list = [None] * 8
        self.used = 0  # live keys
        self.fill = 0  # live keys + deleted markers

    def _find(self, key, hash_value: int) -> int:
        mask = len(self.slots) - 1
        i, perturb, free = hash_value & mask, hash_value & (2**64 - 1), None
        while True:
            entry = self.slots[i & mask]
            if entry is None:
                return free if free is not None else i & mask
            if entry is _DUMMY:
                free = i & mask if free is None else free
            elif entry == key:
                return i & mask
            i = (i << 2) + i + perturb + 1
            perturb >>= 5

    def add(self, key) -> None:
        slot = self._find(key, python2_hash(key))
        if self.slots[slot] == key:
            return
        self.fill += self.slots[slot] is None
        self.slots[slot] = key
        self.used += 1
        if self.fill * 3 >= len(self.slots) * 2:
            self._resize((2 if self.used > 50000 else 4) * self.used)

    def _resize(self, min_used: int) -> None:
        size = 8
        while size <= min_used:
            size <<= 1
        live = [entry for entry in self.slots if entry is not None and entry is not _DUMMY]
        self.slots, self.used, self.fill = [None] * size, 0, 0
        for key in live:
            self.slots[self._find(key, python2_hash(key))] = key
            self.used += 1
            self.fill += 1

    def delete(self, key) -> None:
        self.slots[self._find(key, python2_hash(key))] = _DUMMY
        self.used -= 1

    def keys(self) -> list:
        return [entry for entry in self.slots if entry is not None and entry is not _DUMMY]


def vocabulary_order(answers, min_count: int) -> list[str]:
    """The original's answer list from already processed answers, one per question, in the original's order."""
    collected, counts = Python2Dict(), {}
    for answer in answers:
        collected.add(answer)
        counts[answer] = counts.get(answer, 0) + 1
    for answer in list(collected.keys()):
        if counts[answer] < min_count:
            collected.delete(answer)
    return collected.keys()


def vocabulary(annotation_files, min_count: int = 9) -> list[str]:
    """The original's answer list from official annotation files (train first, then val)."""
    answers = []
    for path in annotation_files:
        records = json.loads(Path(path).read_text(encoding="utf-8"))["annotations"]
        answers += [preprocess(record["multiple_choice_answer"]) for record in records]
    return vocabulary_order(answers, min_count)


def targets(annotators: list[str], label2id: dict[str, int]) -> dict[int, float]:
    """The original's soft scores `{label: score}` of one question: exact strings, 0.3 per annotator, at most 1."""
    counts = {}
    for answer in annotators:
        counts[answer] = counts.get(answer, 0) + 1
    return {label2id[a]: {1: 0.3, 2: 0.6, 3: 0.9}.get(n, 1.0) for a, n in counts.items() if a in label2id}
