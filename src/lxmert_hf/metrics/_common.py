"""Argument checks and rounding shared by the metrics."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import numpy as np


def is_list_like(value: object) -> bool:
    """Whether `value` is a list of per-question entries (a sequence or an array, not a string)."""
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes))


def describe(value: object) -> str:
    """A short description of `value` for error messages."""
    if is_list_like(value):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__


def check_lengths(predictions: object, references: object, reference_name: str) -> None:
    """Raise a `ValueError` unless both are non-empty lists of the same length."""
    for name, value in (("predictions", predictions), (reference_name, references)):
        if not is_list_like(value):
            raise ValueError(f"`{name}` must be a list with one entry per question, got {describe(value)}.")
    if not len(predictions):
        raise ValueError("`predictions` is empty: there is nothing to evaluate.")
    if len(predictions) != len(references):
        raise ValueError(
            f"`predictions` has {len(predictions)} entries but `{reference_name}` has {len(references)}; "
            "pass one of each per question, in the same order."
        )


def check_types(types: object, count: int, name: str) -> None:
    """Raise a `ValueError` unless `types` is a list of `count` strings."""
    if not is_list_like(types) or len(types) != count:
        raise ValueError(f"`{name}` must be a list with one type per question ({count}), got {describe(types)}.")
    if all(map(isinstance, types, repeat(str))):
        return
    index, kind = next((index, kind) for index, kind in enumerate(types) if not isinstance(kind, str))
    raise ValueError(f"`{name}[{index}]` must be a string, got {type(kind).__name__}.")


def check_precision(precision: object) -> None:
    """Raise a `ValueError` unless `precision` is a number of decimals or `None`."""
    if precision is not None and (isinstance(precision, bool) or not isinstance(precision, int) or precision < 0):
        raise ValueError(f"`precision` must be a non-negative number of decimals or None, got {precision!r}.")


def rounded(value: float, precision: int | None) -> float:
    """`round(value, precision)`, or `value` itself when `precision` is `None`."""
    return value if precision is None else round(value, precision)
