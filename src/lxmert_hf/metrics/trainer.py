"""VQA metrics inside `transformers.Trainer` evaluation: the official accuracy, and a soft-score proxy for eval data
without the annotators' answers.

Both work on the whole eval set at once (the Trainer's default) and, with `TrainingArguments(batch_eval_metrics=True)`,
batch by batch: each batch is reduced to one answer id (and one score) per question at once, so that evaluation
never holds the logits or the soft-score labels of the whole set (2 x 214k x 3,129 floats on VQA v2 val).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lxmert_hf.metrics._common import check_precision, check_types, describe, is_list_like, rounded
from lxmert_hf.metrics.vqa import vqa_accuracy

__all__ = ["logits_to_answer_ids", "vqa_compute_metrics", "vqa_soft_score_compute_metrics"]


def logits_to_answer_ids(logits, labels=None):
    """Reduce answer logits `[batch, num_answers]` to the predicted answer ids `[batch]`.

    Pass it as `Trainer(preprocess_logits_for_metrics=logits_to_answer_ids)`: the Trainer then keeps (and, across
    processes, gathers) one id per question instead of every logit (about 2.7 GB for the 214k questions of VQA v2
    val and 3,129 answers). It still keeps every soft-score label vector, as many bytes again, unless
    `TrainingArguments(batch_eval_metrics=True)` hands each batch to the metrics below, which keep one or two numbers
    per question. Works on tensors and arrays; a tuple of model outputs is reduced from its first element, the
    logits.
    """
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(-1)


def _answer_list(id2label: object) -> list[str]:
    if isinstance(id2label, Mapping):
        try:
            answers = [id2label[index] for index in range(len(id2label))]
        except KeyError:
            raise ValueError("`id2label` must map every label id 0..num_answers-1 to its answer.") from None
    elif is_list_like(id2label) or hasattr(id2label, "answers"):
        answers = list(getattr(id2label, "answers", id2label))
    else:
        raise ValueError(
            "`id2label` must be `config.id2label`, a list of answers or an AnswerVocabulary, "
            f"got {describe(id2label)}."
        )
    if not answers or not all(isinstance(answer, str) for answer in answers):
        raise ValueError("`id2label` must hold at least one answer, and only answer strings.")
    return answers


def vqa_compute_metrics(
    gt_answers: Sequence[Sequence[str]],
    id2label: Mapping[int, str] | Sequence[str],
    answer_types: Sequence[str] | None = None,
    precision: int | None = 2,
) -> Callable[..., dict[str, float]]:
    """Build a `compute_metrics` for `transformers.Trainer` reporting the official VQA accuracy of the eval split.

    The Trainer only hands over predictions and `label_ids` (the soft-score vectors, from which the annotators'
    answers cannot be recovered), so the annotators' answers of the eval split are given here, in the order of the
    eval dataset.

    Args:
        gt_answers (`Sequence[Sequence[str]]`): the annotators' answers of each eval question, in eval-dataset order.
        id2label (`Mapping[int, str]`, `Sequence[str]` or [`~lxmert_hf.answers.AnswerVocabulary`]): the answer of
            each label id, e.g. `model.config.id2label`.
        answer_types (`Sequence[str]`, *optional*): the answer type of each eval question; adds one
            `vqa_accuracy_<type>` entry per type (spaces and slashes become underscores: `vqa_accuracy_yes_no`;
            questions of type `""` count in the overall figure only).
        precision (`int`, *optional*, defaults to 2): decimals of the reported percentages; `None` keeps them
            unrounded.

    Returns:
        A function of an `EvalPrediction` whose `predictions` are either the answer logits `[N, num_answers]` or,
        with `preprocess_logits_for_metrics=logits_to_answer_ids`, the answer ids `[N]`, where N must be the number
        of eval questions. It returns `{"vqa_accuracy": float, ...}` in percent; the Trainer adds the `eval_` prefix.
        With `TrainingArguments(batch_eval_metrics=True)` the Trainer calls it once per batch with `compute_result`:
        it keeps the batch's predicted answer ids, returns `{}` until the last batch (`compute_result=True`), then
        the metrics of all the batches, and starts afresh.

    Example:
        ```python
        >>> import numpy as np
        >>> from transformers import EvalPrediction
        >>> from lxmert_hf.metrics import vqa_compute_metrics
        >>> compute_metrics = vqa_compute_metrics([["yes"] * 10, ["2"] * 3 + ["3"] * 7], ["yes", "no", "2", "3"])
        >>> logits = np.array([[5.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0]])
        >>> compute_metrics(EvalPrediction(predictions=logits, label_ids=None))
        {'vqa_accuracy': 95.0}
        >>> compute_metrics(EvalPrediction(predictions=logits[:1], label_ids=None), compute_result=False)
        {}
        >>> compute_metrics(EvalPrediction(predictions=logits[1:], label_ids=None), compute_result=True)
        {'vqa_accuracy': 95.0}
        ```
    """
    check_precision(precision)
    if not is_list_like(gt_answers) or not len(gt_answers):
        raise ValueError(
            "`gt_answers` must be the non-empty list of the eval questions' annotator answers, "
            f"got {describe(gt_answers)}."
        )
    gt_answers = list(gt_answers)
    answers = np.asarray(_answer_list(id2label), dtype=object)
    if answer_types is not None:
        check_types(answer_types, len(gt_answers), "answer_types")
        answer_types = list(answer_types)
    batches = _Batches()

    def compute_metrics(eval_prediction, compute_result: bool | None = None) -> dict[str, float]:
        predicted_ids = batches.collect(_answer_ids(_predictions(eval_prediction), len(answers)), compute_result)
        if predicted_ids is None:
            return {}
        _check_count(len(predicted_ids), len(gt_answers))
        result = vqa_accuracy(answers[predicted_ids].tolist(), gt_answers, answer_types, precision=precision)
        return _with_types("vqa_accuracy", result["overall"], result["perAnswerType"])

    return compute_metrics


def vqa_soft_score_compute_metrics(
    answer_types: Sequence[str] | None = None, precision: int | None = 2
) -> Callable[..., dict[str, float]]:
    """Build a `compute_metrics` for `transformers.Trainer` reporting `vqa_soft_score`: the mean soft score of the
    predicted answers, in percent, read off the soft-score labels.

    It is what LXMERT's own code reports on its JSON files, which keep each question's soft scores but not the
    annotators' answers; with those answers, use [`vqa_compute_metrics`], the official accuracy. The two agree
    except where the official tool compares answers without normalizing them (when all annotators gave the same
    string), so only the official figure compares with published results.

    Args:
        answer_types (`Sequence[str]`, *optional*): the answer type of each eval question; adds one
            `vqa_soft_score_<type>` entry per type, named as in [`vqa_compute_metrics`].
        precision (`int`, *optional*, defaults to 2): decimals of the reported percentages; `None` keeps them
            unrounded.

    Returns:
        A function of an `EvalPrediction` whose `label_ids` are the soft scores `[N, num_answers]` and whose
        `predictions` are the answer logits `[N, num_answers]` or answer ids `[N]`. It returns
        `{"vqa_soft_score": float, ...}` in percent. With `TrainingArguments(batch_eval_metrics=True)` it reads
        each batch's scores off its labels, on the labels' device, keeps one score per question and returns the
        metrics at the last batch, as [`vqa_compute_metrics`] does.

    Example:
        ```python
        >>> import numpy as np
        >>> from transformers import EvalPrediction
        >>> from lxmert_hf.metrics import vqa_soft_score_compute_metrics
        >>> compute_metrics = vqa_soft_score_compute_metrics(["yes/no", "number"])
        >>> soft_scores = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.9, 0.3]])
        >>> compute_metrics(EvalPrediction(predictions=np.array([0, 3]), label_ids=soft_scores))
        {'vqa_soft_score': 65.0, 'vqa_soft_score_yes_no': 100.0, 'vqa_soft_score_number': 30.0}
        ```
    """
    check_precision(precision)
    if answer_types is not None:
        if not is_list_like(answer_types):
            raise ValueError(
                f"`answer_types` must be a list with one type per question, got {describe(answer_types)}."
            )
        answer_types = list(answer_types)
    batches = _Batches()

    def compute_metrics(eval_prediction, compute_result: bool | None = None) -> dict[str, float]:
        labels = _soft_score_labels(eval_prediction)
        scores = batches.collect(
            _scores_of(labels, _answer_ids(_predictions(eval_prediction), labels.shape[1])), compute_result
        )
        if scores is None:
            return {}
        scores = scores.astype(np.float64)
        per_type = {}
        if answer_types is not None:
            check_types(answer_types, len(scores), "answer_types")
            kinds = np.asarray(answer_types, dtype=object)
            per_type = {kind: _percent(scores[kinds == kind], precision) for kind in dict.fromkeys(answer_types)}
        return _with_types("vqa_soft_score", _percent(scores, precision), per_type)

    return compute_metrics


class _Batches:
    """The per-question values of the batches evaluated so far, handed back whole (and forgotten) at the last."""

    def __init__(self):
        self.parts: list[np.ndarray] = []

    def add(self, values: np.ndarray, last: bool) -> np.ndarray | None:
        self.parts.append(values)
        if not last:
            return None
        parts, self.parts = self.parts, []
        return np.concatenate(parts)

    def collect(self, values: np.ndarray, compute_result: bool | None) -> np.ndarray | None:
        """The values of the whole set: `values` themselves when the Trainer hands over the whole set
        (`compute_result` is `None`), else those of every batch so far at the last one, `None` before it."""
        return values if compute_result is None else self.add(values, last=compute_result)


def _percent(scores: np.ndarray, precision: int | None) -> float:
    return rounded(100 * float(scores.sum()) / len(scores), precision)


def answer_type_key(answer_type: str) -> str:
    """The suffix of an answer type's metric names: metric names are identifiers, so spaces and slashes become
    underscores.

    Example:
        ```python
        >>> from lxmert_hf.metrics.trainer import answer_type_key
        >>> answer_type_key("yes/no")
        'yes_no'
        ```
    """
    return answer_type.replace(" ", "_").replace("/", "_")


def _with_types(name: str, overall: float, per_type: Mapping[str, float]) -> dict[str, float]:
    """`{name: overall, name_<type>: value, ...}`: a flat dict the Trainer can log and select a best model on."""
    metrics = {name: overall}
    for kind, value in per_type.items():
        if kind:
            metrics[f"{name}_{answer_type_key(kind)}"] = value
    return metrics


def _is_tensor(value: object) -> bool:
    # Only the Trainer hands over tensors, and it has imported torch: the metrics never import it themselves.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _numpy(value: object) -> np.ndarray:
    """An array on the CPU (batches of `batch_eval_metrics=True` arrive as tensors on the device)."""
    if not _is_tensor(value):
        return np.asarray(value)
    value = value.detach()
    if value.dtype == sys.modules["torch"].bfloat16:  # numpy has no bfloat16; the Trainer converts them alike
        value = value.float()
    return value.cpu().numpy()


def _predictions(eval_prediction: object) -> object:
    predictions = getattr(eval_prediction, "predictions", None)
    if predictions is None and isinstance(eval_prediction, tuple):
        predictions = eval_prediction[0]
    return predictions


def _soft_score_labels(eval_prediction: object):
    labels = getattr(eval_prediction, "label_ids", None)
    if labels is None and isinstance(eval_prediction, tuple):
        labels = eval_prediction[1]
    if labels is not None and not _is_tensor(labels):
        labels = np.asarray(labels)
    if labels is None or labels.ndim != 2 or not len(labels):
        shape = "none" if labels is None else f"shape {tuple(labels.shape)}"
        raise ValueError(
            f"the soft-score metric needs the soft-score labels [N, num_answers] as `label_ids`, got {shape}; "
            "evaluate on a dataset with dense soft-score `labels` (as `load_prepared` gives), or use "
            "`vqa_compute_metrics` with the annotators' answers."
        )
    return labels


def _scores_of(labels, answer_ids: np.ndarray) -> np.ndarray:
    """The soft score of each question's predicted answer, read where the labels are (a tensor stays on its
    device: only one number per question is copied off it)."""
    if len(answer_ids) != len(labels):
        raise ValueError(
            f"got predictions for {len(answer_ids)} questions but labels for {len(labels)}; pass the Trainer's "
            "`EvalPrediction`, whose predictions and labels come from the same questions."
        )
    if _is_tensor(labels):
        torch = sys.modules["torch"]
        index = torch.as_tensor(answer_ids, dtype=torch.long, device=labels.device)
        return _numpy(labels.gather(1, index[:, None]).squeeze(1))
    return labels[np.arange(len(labels)), answer_ids]


def _answer_ids(predictions: object, num_answers: int) -> np.ndarray:
    """The predicted answer id of each question, from answer logits `[N, num_answers]` or answer ids `[N]`."""
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    if predictions is None:
        raise ValueError("compute_metrics received no predictions; pass the Trainer's `EvalPrediction`.")
    if not _is_tensor(predictions):
        predictions = np.asarray(predictions)
    shape = tuple(predictions.shape)
    if len(shape) == 2 and shape[1] == num_answers:
        predictions = predictions.argmax(-1)  # where the logits are: a tensor stays on its device
    predicted_ids = _numpy(predictions)
    if predicted_ids.ndim != 1 or not np.issubdtype(predicted_ids.dtype, np.integer):
        raise ValueError(
            f"predictions of shape {shape} are neither answer logits [N, {num_answers}] nor answer ids "
            "[N]; check that the model's answer head matches `id2label`."
        )
    if len(predicted_ids) and not 0 <= predicted_ids.min() <= predicted_ids.max() < num_answers:
        raise ValueError(f"predicted answer ids must lie in [0, {num_answers}); the model and id2label disagree.")
    return predicted_ids


def _check_count(
    num_predictions: int, num_questions: int, name: str = "gt_answers", what: str = "annotator answers"
) -> None:
    if num_predictions != num_questions:
        raise ValueError(
            f"got predictions for {num_predictions} questions but `{name}` holds {num_questions}; "
            f"build compute_metrics from the {what} of the same eval dataset, in the same order "
            f"(and evaluate without `max_eval_samples`-style truncation, or truncate `{name}` the same way)."
        )
