"""GQA accuracy as the official evaluation computes it, as an `evaluate` module.

Load it with `lxmert_hf.metrics.load_metric("gqa_accuracy")` (or `evaluate.load` on this folder). It wraps
`lxmert_hf.metrics.gqa_accuracy`: see there for the rules.
"""

import datasets
import evaluate

from lxmert_hf.metrics import gqa_accuracy

_DESCRIPTION = """
GQA accuracy: exact match between the predicted and the gold answer, in percent, with the official breakdowns
(binary / open, per structural type, per semantic type) when the question types are given.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one predicted answer per question.
    references (`list[str]`): the gold answer of each question.
    structural_types (`list[str]`, *optional*): `types["structural"]` of each question.
    semantic_types (`list[str]`, *optional*): `types["semantic"]` of each question.
    precision (`int`, *optional*, defaults to 2): decimals kept by `round`; `None` keeps them unrounded.
Returns:
    `{"accuracy": float}` in percent, plus the breakdowns when the types are given.
Example:
    >>> metric = evaluate.load("path/to/gqa_accuracy")
    >>> metric.compute(predictions=["yes", "cat"], references=["yes", "dog"])
    {'accuracy': 50.0}
"""

_CITATION = """
@inproceedings{hudson2019gqa,
  title={{GQA}: A New Dataset for Real-World Visual Reasoning and Compositional Question Answering},
  author={Hudson, Drew A and Manning, Christopher D},
  booktitle={CVPR},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://cs.stanford.edu/people/dorarad/gqa/evaluate.html"],
        )

    def _compute(self, predictions, references, structural_types=None, semantic_types=None, precision=2):
        return gqa_accuracy(predictions, references, structural_types, semantic_types, precision=precision)
