"""GQA accuracy, as the official GQA evaluation computes it.

A prediction is correct when it equals the gold answer exactly (no normalization). The official tool scores the
balanced questions only; choosing them is up to the caller (see [`~lxmert_hf.metrics.evaluate_gqa_files`]).
Questions whose structural type is "query" are open questions, all others (verify, logical, choose, compare)
are binary.
"""

from __future__ import annotations

from collections.abc import Sequence

from lxmert_hf.metrics._common import check_lengths, check_precision, check_types, rounded

__all__ = ["gqa_accuracy"]

_OPEN_STRUCTURAL_TYPE = "query"


def gqa_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    structural_types: Sequence[str] | None = None,
    semantic_types: Sequence[str] | None = None,
    precision: int | None = 2,
) -> dict:
    """GQA accuracy in percent, with the official tool's breakdowns when the question types are given.

    Args:
        predictions (`Sequence[str]`): one predicted answer per question.
        answers (`Sequence[str]`): the gold answer of each question.
        structural_types (`Sequence[str]`, *optional*): `types["structural"]` of each question ("query", "verify",
            "logical", "choose", "compare"); adds `binary`, `open` and `accuracyPerStructuralType`.
        semantic_types (`Sequence[str]`, *optional*): `types["semantic"]` of each question ("attr", "obj", "rel",
            "cat", "global"); adds `accuracyPerSemanticType`.
        precision (`int`, *optional*, defaults to 2): decimals kept by `round` (the official tool prints two);
            `None` keeps the unrounded figures.

    Returns:
        `dict`: `{"accuracy": float}`, plus `"binary"`, `"open"`, `"accuracyPerStructuralType"` and
        `"accuracyPerSemanticType"` when the corresponding types are given. Types are sorted by name.

    Example:
        ```python
        >>> from lxmert_hf.metrics import gqa_accuracy
        >>> types = ["verify", "query", "query"]
        >>> result = gqa_accuracy(["yes", "cat", "red"], ["yes", "dog", "red"], structural_types=types)
        >>> result["accuracy"], result["binary"], result["open"], result["accuracyPerStructuralType"]
        (66.67, 100.0, 50.0, {'query': 50.0, 'verify': 100.0})
        ```
    """
    check_precision(precision)
    check_lengths(predictions, answers, "answers")
    correct = []
    for index, (prediction, answer) in enumerate(zip(predictions, answers, strict=True)):
        if not isinstance(prediction, str):
            raise ValueError(f"`predictions[{index}]` must be a string, got {type(prediction).__name__}.")
        if not isinstance(answer, str):
            raise ValueError(f"`answers[{index}]` must be a string, got {type(answer).__name__}.")
        correct.append(1.0 if prediction == answer else 0.0)
    result = {"accuracy": _percent(correct, precision)}
    if structural_types is not None:
        check_types(structural_types, len(correct), "structural_types")
        is_open = [kind == _OPEN_STRUCTURAL_TYPE for kind in structural_types]
        result["binary"] = _percent([c for c, o in zip(correct, is_open, strict=True) if not o], precision)
        result["open"] = _percent([c for c, o in zip(correct, is_open, strict=True) if o], precision)
        result["accuracyPerStructuralType"] = _per_type(correct, structural_types, precision)
    if semantic_types is not None:
        check_types(semantic_types, len(correct), "semantic_types")
        result["accuracyPerSemanticType"] = _per_type(correct, semantic_types, precision)
    return result


def _percent(correct: list[float], precision: int | None) -> float:
    # The official tool averages first and scales after, and reports 0 for an empty group.
    if not correct:
        return 0.0
    return rounded(sum(correct) / len(correct) * 100, precision)


def _per_type(correct: list[float], types: Sequence[str], precision: int | None) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for kind, score in zip(types, correct, strict=True):
        groups.setdefault(kind, []).append(score)
    return {kind: _percent(groups[kind], precision) for kind in sorted(groups)}
