"""GQA and NLVR2 metrics inside `transformers.Trainer` evaluation, the siblings of
[`~lxmert_hf.metrics.vqa_compute_metrics`].

Each reports the official figures in percent, computed by the functions `lxmert-hf evaluate gqa|nlvr2` runs
([`~lxmert_hf.metrics.gqa_accuracy`], [`~lxmert_hf.metrics.nlvr2_accuracy`]), so that the same predictions give
the same numbers during training and from the submission files. Both work on the whole eval set at once and, with
`TrainingArguments(batch_eval_metrics=True)`, batch by batch, keeping one or two integers per example. Across
processes, the Trainer gathers each batch's predictions and labels (dropping the repeated examples of the last
batch) before they reach these functions, as it does for the VQA metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lxmert_hf.metrics._common import check_precision, check_types, describe, is_list_like
from lxmert_hf.metrics.gqa import gqa_accuracy
from lxmert_hf.metrics.nlvr2 import nlvr2_accuracy, nlvr2_sentence_key
from lxmert_hf.metrics.trainer import (
    _answer_ids,
    _answer_list,
    _Batches,
    _check_count,
    _is_tensor,
    _numpy,
    _predictions,
    _with_types,
)

__all__ = ["gqa_compute_metrics", "nlvr2_compute_metrics"]

# NLVR2's classes, as `LxmertForNLVR2` orders its logits: index 1 means the sentence holds for the image pair.
_NLVR2_CLASSES = 2


def _check_strings(values: object, name: str, what: str, fix: str) -> list[str]:
    """`values` as a list, refused unless it is a non-empty list of non-empty strings, one per eval example."""
    if not is_list_like(values) or not len(values):
        raise ValueError(f"`{name}` must be the non-empty list of the eval examples' {what}, got {describe(values)}.")
    values = list(values)
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value:
            raise ValueError(f"`{name}[{index}]` must be a non-empty string ({what}), got {value!r}; {fix}.")
    return values


def gqa_compute_metrics(
    gt_answers: Sequence[str],
    id2label: Mapping[int, str] | Sequence[str],
    structural_types: Sequence[str] | None = None,
    precision: int | None = 2,
) -> Callable[..., dict[str, float]]:
    """Build a `compute_metrics` for `transformers.Trainer` reporting the official GQA accuracy of the eval split.

    A prediction is right when its answer string equals the gold answer exactly, as in the official evaluation.
    The gold answers are given here, in the order of the eval dataset (e.g. the `answer` column of a prepared GQA
    split): a gold answer outside the vocabulary still counts, as a question the model cannot get right.

    Args:
        gt_answers (`Sequence[str]`): the gold answer of each eval question, in eval-dataset order.
        id2label (`Mapping[int, str]`, `Sequence[str]` or [`~lxmert_hf.answers.AnswerVocabulary`]): the answer of
            each label id, e.g. `model.config.id2label`.
        structural_types (`Sequence[str]`, *optional*): `types["structural"]` of each eval question (the
            `answer_type` column of a prepared GQA split); adds one `gqa_accuracy_<type>` entry per type
            (`gqa_accuracy_query`, `gqa_accuracy_verify`, ...; questions of type `""` count in the overall figure
            only).
        precision (`int`, *optional*, defaults to 2): decimals of the reported percentages, as
            `lxmert-hf evaluate gqa --precision`; `None` keeps them unrounded.

    Returns:
        A function of an `EvalPrediction` whose `predictions` are the answer logits `[N, num_answers]` or, with
        `preprocess_logits_for_metrics=logits_to_answer_ids`, the answer ids `[N]`, N the number of eval questions.
        It returns `{"gqa_accuracy": float, "gqa_accuracy_<type>": float, ...}` in percent: the `accuracy` and
        `accuracyPerStructuralType` that `lxmert-hf evaluate gqa` prints for the same predictions. With
        `TrainingArguments(batch_eval_metrics=True)` it returns `{}` until the last batch, then the metrics of all
        the batches, and starts afresh.

    Example:
        ```python
        >>> import numpy as np
        >>> from transformers import EvalPrediction
        >>> from lxmert_hf.metrics import gqa_compute_metrics
        >>> compute_metrics = gqa_compute_metrics(["yes", "t-shirt", "red"], ["yes", "no", "t-shirt", "blue"],
        ...                                       structural_types=["verify", "query", "query"])
        >>> logits = np.array([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
        >>> compute_metrics(EvalPrediction(predictions=logits, label_ids=None))
        {'gqa_accuracy': 66.67, 'gqa_accuracy_query': 50.0, 'gqa_accuracy_verify': 100.0}
        >>> compute_metrics(EvalPrediction(predictions=logits[:2], label_ids=None), compute_result=False)
        {}
        >>> compute_metrics(EvalPrediction(predictions=logits[2:], label_ids=None), compute_result=True)
        {'gqa_accuracy': 66.67, 'gqa_accuracy_query': 50.0, 'gqa_accuracy_verify': 100.0}
        ```
    """
    check_precision(precision)
    unlabeled = "unlabeled questions (GQA's test split) cannot be scored: evaluate on testdev or val"
    gt_answers = _check_strings(gt_answers, "gt_answers", "gold answers", unlabeled)
    answers = np.asarray(_answer_list(id2label), dtype=object)
    if structural_types is not None:
        check_types(structural_types, len(gt_answers), "structural_types")
        structural_types = list(structural_types)
    batches = _Batches()

    def compute_metrics(eval_prediction, compute_result: bool | None = None) -> dict[str, float]:
        predicted_ids = batches.collect(_answer_ids(_predictions(eval_prediction), len(answers)), compute_result)
        if predicted_ids is None:
            return {}
        _check_count(len(predicted_ids), len(gt_answers), "gt_answers", "gold answers")
        result = gqa_accuracy(answers[predicted_ids].tolist(), gt_answers, structural_types, precision=precision)
        return _with_types("gqa_accuracy", result["accuracy"], result.get("accuracyPerStructuralType", {}))

    return compute_metrics


def nlvr2_compute_metrics(identifiers: Sequence[str], precision: int | None = 2) -> Callable[..., dict[str, float]]:
    """Build a `compute_metrics` for `transformers.Trainer` reporting the official NLVR2 accuracy and consistency.

    Consistency is the share of distinct sentences whose every image pair is classified right; the sentence of an
    example is read off its official identifier (`split-set-pair-sentence`, see
    [`~lxmert_hf.metrics.nlvr2_sentence_key`]), so the identifiers are given here, in eval-dataset order. The truth
    values come from the Trainer's `label_ids`.

    Args:
        identifiers (`Sequence[str]`): the official identifier of each eval example (e.g. `dev-850-2-0`), in
            eval-dataset order (the `identifier` column of a prepared NLVR2 split).
        precision (`int`, *optional*, defaults to 2): decimals of the reported percentages, as
            `lxmert-hf evaluate nlvr2 --precision`; `None` keeps them unrounded.

    Returns:
        A function of an `EvalPrediction` whose `predictions` are the logits `[N, 2]` (index 1: the sentence is
        true) or, with `preprocess_logits_for_metrics=logits_to_answer_ids`, the class ids `[N]`, and whose
        `label_ids` are the class ids `[N]` (1 true, 0 false). It returns `{"nlvr2_accuracy": float,
        "nlvr2_consistency": float}` in percent: the `accuracy` and `consistency` that `lxmert-hf evaluate nlvr2`
        prints for the same predictions. With `TrainingArguments(batch_eval_metrics=True)` it returns `{}` until
        the last batch, then the metrics of all the batches, and starts afresh.

    Example:
        ```python
        >>> import numpy as np
        >>> from transformers import EvalPrediction
        >>> from lxmert_hf.metrics import nlvr2_compute_metrics
        >>> compute_metrics = nlvr2_compute_metrics(["dev-1-0-0", "dev-1-1-0", "dev-1-0-1", "dev-2-0-0"])
        >>> logits, labels = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]]), np.array([1, 0, 0, 1])
        >>> compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
        {'nlvr2_accuracy': 75.0, 'nlvr2_consistency': 66.67}
        >>> compute_metrics(EvalPrediction(predictions=logits[:3], label_ids=labels[:3]), compute_result=False)
        {}
        >>> compute_metrics(EvalPrediction(predictions=logits[3:], label_ids=labels[3:]), compute_result=True)
        {'nlvr2_accuracy': 75.0, 'nlvr2_consistency': 66.67}
        ```
    """
    check_precision(precision)
    official = "pass the `identifier` column of the eval split, e.g. 'dev-850-2-0'"
    identifiers = _check_strings(identifiers, "identifiers", "official NLVR2 identifiers", official)
    for identifier in identifiers:
        nlvr2_sentence_key(identifier)  # refuses, naming it, an identifier consistency cannot group
    batches = _Batches()

    def compute_metrics(eval_prediction, compute_result: bool | None = None) -> dict[str, float]:
        predicted = _answer_ids(_predictions(eval_prediction), _NLVR2_CLASSES)
        labels = _class_labels(eval_prediction)
        if len(labels) != len(predicted):
            raise ValueError(
                f"got predictions for {len(predicted)} examples but labels for {len(labels)}; pass the Trainer's "
                "`EvalPrediction`, whose predictions and labels come from the same examples."
            )
        pairs = batches.collect(np.stack([predicted, labels], axis=1), compute_result)
        if pairs is None:
            return {}
        _check_count(len(pairs), len(identifiers), "identifiers", "identifiers")
        result = nlvr2_accuracy(pairs[:, 0].tolist(), pairs[:, 1].tolist(), identifiers, precision=precision)
        return {"nlvr2_accuracy": result["accuracy"], "nlvr2_consistency": result["consistency"]}

    return compute_metrics


def _class_labels(eval_prediction: object) -> np.ndarray:
    """The NLVR2 truth values of the batch as class ids `[N]` (0 false, 1 true), refused unless they are."""
    labels = getattr(eval_prediction, "label_ids", None)
    if labels is None and isinstance(eval_prediction, tuple):
        labels = eval_prediction[1]
    if labels is None:
        raise ValueError(
            "the NLVR2 metrics need the true/false labels as `label_ids`, got none; evaluate on a labeled split "
            "whose examples carry `labels` (as `load_prepared` gives them), with the Trainer's default `label_names`."
        )
    labels = _numpy(labels) if _is_tensor(labels) else np.asarray(labels)
    if labels.ndim != 1 or not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"the NLVR2 labels must be class ids [N] (1 true, 0 false), got shape {labels.shape} of {labels.dtype}; "
            "give each eval example an integer `labels`."
        )
    wrong = np.flatnonzero((labels != 0) & (labels != 1))
    if len(wrong):
        first = int(wrong[0])
        raise ValueError(
            f"the NLVR2 labels must be 0 (false) or 1 (true), got {labels[first].item()!r} for example {first} of "
            f"the batch ({len(wrong)} such; -1 marks an unlabeled example of a prepared split); evaluate on a "
            "split whose every example is labeled true or false."
        )
    return labels.astype(np.int64)
