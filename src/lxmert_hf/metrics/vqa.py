"""VQA v2 accuracy, computed exactly as the official evaluation computes it.

Per question: newlines and tabs of the prediction and of the annotators' answers become spaces and the ends are
stripped; only when the annotators' answers are not all identical are both sides normalized with
[`~lxmert_hf.answers.normalize_answer`]; the accuracy is the mean over the leave-one-out subsets (each annotator
left out once) of `min(1, matching answers among the others / 3)`. The overall, per answer type and per question
type figures are means of those accuracies in percent, rounded with Python's `round` to `precision` decimals.

The floating-point operations follow the official tool's order, so results agree with it to the last digit, not
only to the second decimal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lxmert_hf.answers.normalization import _rewrite_words, _strip_punctuation, clean_whitespace
from lxmert_hf.metrics._common import check_lengths, check_precision, check_types, is_list_like, rounded

# The answer types of the VQA v2 annotations, as the official tool reports them (`perAnswerType`).
ANSWER_TYPES = ("yes/no", "number", "other")

__all__ = ["vqa_accuracy", "vqa_score", "vqa_scores"]


class _Memo(dict):
    """A dict that computes and stores missing values: the same answers come back across thousands of questions
    ("yes", "2", "white"), so each distinct string is cleaned and normalized once."""

    def __init__(self, function: Callable[[str], str]):
        super().__init__()
        self.function = function

    def __missing__(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"expected a string, got {type(key).__name__}")
        value = self[key] = self.function(key)
        return value


def _normalize_cleaned(text: str) -> str:
    return _rewrite_words(_strip_punctuation(text))


def _question_score(prediction: str, answers: list[str]) -> float:
    matches = answers.count(prediction)
    if matches == 0:
        return 0.0
    if matches > 3:
        # Every leave-one-out subset still holds at least 3 matches.
        return 1.0
    # An annotator who gave the prediction leaves `matches - 1` matches among the others, any other leaves
    # `matches`. Float addition is not associative, so the per-annotator values are made and added exactly as the
    # official tool does: `min(1, k / 3)` (the int 1 when k >= 3), in annotator order, through the built-in `sum`.
    # From Python 3.12 on, `sum` compensates the rounding of floats but not of ints, so a hand-written loop, or 1.0
    # in place of 1, would match the official tool on older Pythons only.
    left_out_match = min(1, (matches - 1) / 3)
    left_out_other = min(1, matches / 3)
    return sum([left_out_match if answer == prediction else left_out_other for answer in answers]) / len(answers)


def vqa_scores(predictions: Sequence[str], gt_answers: Sequence[Sequence[str]]) -> list[float]:
    """Official VQA accuracy of each question, in [0, 1].

    Args:
        predictions (`Sequence[str]`): one predicted answer per question.
        gt_answers (`Sequence[Sequence[str]]`): the annotators' answers of each question (10 in VQA v2), one
            answer per annotator.

    Returns:
        `list[float]`: one accuracy per question, in the order given.

    Example:
        ```python
        >>> from lxmert_hf.metrics import vqa_scores
        >>> vqa_scores(["2", "yes"], [["two"] * 3 + ["3"] * 7, ["no"] * 10])
        [0.9, 0.0]
        ```
    """
    check_lengths(predictions, gt_answers, "gt_answers")
    cleaned = _Memo(clean_whitespace)
    normalized = _Memo(_normalize_cleaned)
    scores = []
    for index, (prediction, answers) in enumerate(zip(predictions, gt_answers, strict=True)):
        if not is_list_like(answers) or not len(answers):
            raise ValueError(
                f"`gt_answers[{index}]` must be a non-empty list of the annotators' answer strings, got {answers!r}."
            )
        try:
            prediction = cleaned[prediction]
        except TypeError as error:
            raise ValueError(f"`predictions[{index}]`: {error}; predictions must be answer strings.") from None
        try:
            answers = [cleaned[answer] for answer in answers]
        except TypeError as error:
            raise ValueError(f"`gt_answers[{index}]`: {error}; answers must be strings.") from None
        if len(set(answers)) > 1:
            answers = [normalized[answer] for answer in answers]
            prediction = normalized[prediction]
        scores.append(_question_score(prediction, answers))
    return scores


def vqa_score(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer against the annotators' answers, in [0, 1].

    Example:
        ```python
        >>> from lxmert_hf.metrics import vqa_score
        >>> vqa_score("Two", ["2"] * 2 + ["3"] * 8)  # normalized: the annotators disagree
        0.6
        >>> vqa_score("Two", ["2"] * 10)  # not normalized: the annotators agree
        0.0
        ```
    """
    if not is_list_like(gt_answers):
        raise ValueError(f"`gt_answers` must be the list of the annotators' answers, got {type(gt_answers).__name__}.")
    return vqa_scores([prediction], [gt_answers])[0]


def vqa_accuracy(
    predictions: Sequence[str],
    gt_answers: Sequence[Sequence[str]],
    answer_types: Sequence[str] | None = None,
    question_types: Sequence[str] | None = None,
    precision: int | None = 2,
) -> dict:
    """Official VQA accuracy of a set of predictions: overall, per answer type and per question type.

    Args:
        predictions (`Sequence[str]`): one predicted answer per question.
        gt_answers (`Sequence[Sequence[str]]`): the annotators' answers of each question.
        answer_types (`Sequence[str]`, *optional*): the `answer_type` of each question ("yes/no", "number",
            "other"); gives `perAnswerType`.
        question_types (`Sequence[str]`, *optional*): the `question_type` of each question ("what color is", ...);
            gives `perQuestionType`.
        precision (`int`, *optional*, defaults to 2): decimals kept by `round`, as the official tool's `n`;
            `None` keeps the unrounded figures.

    Returns:
        `dict`: `{"overall": float, "perAnswerType": {type: float}, "perQuestionType": {type: float}}` in percent,
        the official tool's keys; a breakdown is empty when its types are not given. Types appear in order of first
        appearance.

    Example:
        ```python
        >>> from lxmert_hf.metrics import vqa_accuracy
        >>> vqa_accuracy(
        ...     ["yes", "2", "red"],
        ...     [["yes"] * 10, ["2"] * 2 + ["3"] * 8, ["blue"] * 10],
        ...     answer_types=["yes/no", "number", "other"],
        ... )
        {'overall': 53.33, 'perAnswerType': {'yes/no': 100.0, 'number': 60.0, 'other': 0.0}, 'perQuestionType': {}}
        ```
    """
    check_precision(precision)
    scores = vqa_scores(predictions, gt_answers)
    return {
        "overall": _percent(scores, precision),
        "perAnswerType": _per_type(scores, answer_types, "answer_types", precision),
        "perQuestionType": _per_type(scores, question_types, "question_types", precision),
    }


def _percent(scores: list[float], precision: int | None) -> float:
    # Same expression as the official tool: 100 * sum first, then the division.
    return rounded(100 * sum(scores) / len(scores), precision)


def _per_type(scores: list[float], types: Sequence[str] | None, name: str, precision: int | None) -> dict:
    if types is None:
        return {}
    check_types(types, len(scores), name)
    groups: dict[str, list[float]] = {}
    for kind, score in zip(types, scores, strict=True):
        groups.setdefault(kind, []).append(score)
    return {kind: _percent(group, precision) for kind, group in groups.items()}
