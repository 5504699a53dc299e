"""NLVR2 accuracy and consistency as the official evaluation computes them, as an `evaluate` module.

Load it with `lxmert_hf.metrics.load_metric("nlvr2_accuracy")` (or `evaluate.load` on this folder). It wraps
`lxmert_hf.metrics.nlvr2_accuracy`: see there for the rules.
"""

import datasets
import evaluate

from lxmert_hf.metrics import nlvr2_accuracy

_DESCRIPTION = """
NLVR2 accuracy, and consistency (the fraction of distinct sentences whose examples are all predicted correctly)
when the official identifiers are given, in percent.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[bool]`): the predicted truth value of each example.
    references (`list[bool]`): the gold truth value of each example.
    identifiers (`list[str]`, *optional*): the official identifier of each example (`split-set-pair-sentence`),
        for `consistency`.
    precision (`int`, *optional*, defaults to 2): decimals kept by `round`; `None` keeps them unrounded.
Returns:
    `{"accuracy": float}` in percent, plus `"consistency"` when the identifiers are given.
Example:
    >>> metric = evaluate.load("path/to/nlvr2_accuracy")
    >>> metric.compute(predictions=[True, False], references=[True, True], identifiers=["dev-1-0-0", "dev-1-1-0"])
    {'accuracy': 50.0, 'consistency': 0.0}
"""

_CITATION = """
@inproceedings{suhr2019corpus,
  title={A Corpus for Reasoning about Natural Language Grounded in Photographs},
  author={Suhr, Alane and Zhou, Stephanie and Zhang, Ally and Zhang, Iris and Bai, Huajun and Artzi, Yoav},
  booktitle={ACL},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Nlvr2Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("bool"), "references": datasets.Value("bool")}),
            reference_urls=["https://lil.nlp.cornell.edu/nlvr/"],
        )

    def _compute(self, predictions, references, identifiers=None, precision=2):
        return nlvr2_accuracy(predictions, references, identifiers, precision=precision)
