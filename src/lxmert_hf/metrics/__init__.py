"""The official VQA v2, GQA and NLVR2 metrics, as pure functions, for `transformers.Trainer` and for `evaluate`.

- Python lists of predictions and answers: [`vqa_accuracy`], [`vqa_score`], [`gqa_accuracy`], [`nlvr2_accuracy`].
- Files in the official formats: [`evaluate_vqa_files`], [`evaluate_gqa_files`], [`evaluate_nlvr2_files`]; the
  `lxmert-hf evaluate` command runs them.
- During training: `Trainer(compute_metrics=vqa_compute_metrics(...))` (the official accuracy, `vqa_accuracy`);
  [`vqa_soft_score_compute_metrics`] (`vqa_soft_score`) for eval data that keeps soft scores but not the
  annotators' answers (LXMERT's JSON files); [`gqa_compute_metrics`] (`gqa_accuracy`, per structural type) and
  [`nlvr2_compute_metrics`] (`nlvr2_accuracy`, `nlvr2_consistency`), the figures `lxmert-hf evaluate` prints.
- As `evaluate` modules: [`load_metric`]`("vqa_accuracy")`, `"gqa_accuracy"`, `"nlvr2_accuracy"`.

Example:
    ```python
    >>> from lxmert_hf.metrics import vqa_score
    >>> vqa_score("Two dogs.", ["2 dogs"] * 4 + ["dogs"] * 6)
    1.0
    ```
"""

from __future__ import annotations

from pathlib import Path

from lxmert_hf.metrics.gqa import gqa_accuracy
from lxmert_hf.metrics.nlvr2 import nlvr2_accuracy, nlvr2_sentence_key
from lxmert_hf.metrics.official import (
    check_coverage,
    evaluate_gqa_files,
    evaluate_nlvr2_files,
    evaluate_vqa_files,
    read_gqa_questions,
    read_nlvr2_annotations,
    read_vqa_annotations,
)
from lxmert_hf.metrics.tasks import gqa_compute_metrics, nlvr2_compute_metrics
from lxmert_hf.metrics.trainer import logits_to_answer_ids, vqa_compute_metrics, vqa_soft_score_compute_metrics
from lxmert_hf.metrics.vqa import vqa_accuracy, vqa_score, vqa_scores

__all__ = [
    "METRIC_NAMES",
    "check_coverage",
    "evaluate_gqa_files",
    "evaluate_nlvr2_files",
    "evaluate_vqa_files",
    "gqa_accuracy",
    "gqa_compute_metrics",
    "load_metric",
    "logits_to_answer_ids",
    "metric_path",
    "nlvr2_accuracy",
    "nlvr2_compute_metrics",
    "nlvr2_sentence_key",
    "read_gqa_questions",
    "read_nlvr2_annotations",
    "read_vqa_annotations",
    "vqa_accuracy",
    "vqa_compute_metrics",
    "vqa_score",
    "vqa_scores",
    "vqa_soft_score_compute_metrics",
]

METRIC_NAMES = ("vqa_accuracy", "gqa_accuracy", "nlvr2_accuracy")
_METRICS_DIR = Path(__file__).resolve().parent.parent / "evaluate_metrics"


def metric_path(name: str) -> Path:
    """The folder of the shipped `evaluate` module `name`, for `evaluate.load(str(metric_path(name)))`."""
    if name not in METRIC_NAMES:
        raise ValueError(f"`name` must be one of {METRIC_NAMES}, got {name!r}.")
    return _METRICS_DIR / name


def load_metric(name: str, **kwargs):
    """Load one of the shipped `evaluate` modules (`vqa_accuracy`, `gqa_accuracy`, `nlvr2_accuracy`).

    They are thin wrappers over the functions of this module, loaded from the installed package: nothing is
    downloaded. `kwargs` go to `evaluate.load` (e.g. `experiment_id`, `num_process`, `process_id`).

    Example:
        ```python
        >>> from lxmert_hf.metrics import load_metric
        >>> metric = load_metric("vqa_accuracy")
        >>> metric.compute(predictions=["yes"], references=[["yes"] * 10])
        {'overall': 100.0, 'perAnswerType': {}, 'perQuestionType': {}}
        ```
    """
    import evaluate  # imported here: `evaluate` pulls in much more than the metrics need

    return evaluate.load(str(metric_path(name)), **kwargs)
