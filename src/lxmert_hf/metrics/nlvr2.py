"""NLVR2 accuracy and consistency, as the official NLVR2 evaluation computes them.

An NLVR2 identifier reads `split-set-pair-sentence` (e.g. `dev-850-2-0`): the same sentence is paired with several
image pairs, and consistency is the fraction of distinct sentences whose examples are all predicted correctly.
Like the official tool, the sentence is the identifier with its third field (the image pair) blanked out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lxmert_hf.metrics._common import check_lengths, check_precision, is_list_like, rounded

__all__ = ["nlvr2_accuracy", "nlvr2_sentence_key"]


def nlvr2_sentence_key(identifier: str) -> str:
    """The key shared by all examples of one sentence: the identifier with its third field (the pair) blanked.

    Example:
        ```python
        >>> from lxmert_hf.metrics import nlvr2_sentence_key
        >>> nlvr2_sentence_key("dev-850-2-0")
        'dev-850--0'
        ```
    """
    if not isinstance(identifier, str):
        raise ValueError(f"an NLVR2 identifier must be a string, got {type(identifier).__name__}.")
    fields = identifier.split("-")
    if len(fields) < 3:
        raise ValueError(
            f"NLVR2 identifier {identifier!r} does not read `split-set-pair-sentence` (e.g. 'dev-850-2-0'); "
            "consistency needs the official identifiers."
        )
    fields[2] = ""
    return "-".join(fields)


def _as_bool(value: object, name: str, index: int) -> bool:
    # 0/1 integers are accepted because a classifier's argmax over (False, True) produces them.
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"`{name}[{index}]` must be a boolean (or 0/1), got {value!r}.")


def nlvr2_accuracy(
    predictions: Sequence[bool],
    labels: Sequence[bool],
    identifiers: Sequence[str] | None = None,
    precision: int | None = 2,
) -> dict:
    """NLVR2 accuracy and, given the identifiers, consistency, in percent.

    Args:
        predictions (`Sequence[bool]`): the predicted truth value of each example (booleans or 0/1).
        labels (`Sequence[bool]`): the gold truth value of each example.
        identifiers (`Sequence[str]`, *optional*): the official identifier of each example; adds `consistency`.
        precision (`int`, *optional*, defaults to 2): decimals kept by `round`; `None` keeps the unrounded figures.

    Returns:
        `dict`: `{"accuracy": float}`, plus `"consistency": float` when `identifiers` is given.

    Example:
        ```python
        >>> from lxmert_hf.metrics import nlvr2_accuracy
        >>> nlvr2_accuracy(
        ...     [True, False, True, True],
        ...     [True, False, False, True],
        ...     identifiers=["dev-1-0-0", "dev-1-1-0", "dev-1-0-1", "dev-2-0-0"],
        ... )
        {'accuracy': 75.0, 'consistency': 66.67}
        ```
    """
    check_precision(precision)
    check_lengths(predictions, labels, "labels")
    correct = [
        _as_bool(prediction, "predictions", index) == _as_bool(label, "labels", index)
        for index, (prediction, label) in enumerate(zip(predictions, labels, strict=True))
    ]
    result = {"accuracy": rounded(sum(correct) / len(correct) * 100, precision)}
    if identifiers is not None:
        if not is_list_like(identifiers) or len(identifiers) != len(correct):
            raise ValueError(f"`identifiers` must be a list with one identifier per example ({len(correct)}).")
        consistent: dict[str, bool] = {}
        for identifier, is_correct in zip(identifiers, correct, strict=True):
            key = nlvr2_sentence_key(identifier)
            consistent[key] = consistent.get(key, True) and is_correct
        result["consistency"] = rounded(sum(consistent.values()) / len(consistent) * 100, precision)
    return result
