"""VQA v2 accuracy as the official evaluation computes it, as an `evaluate` module.

Load it with `lxmert_hf.metrics.load_metric("vqa_accuracy")` (or `evaluate.load` on this folder). It wraps
`lxmert_hf.metrics.vqa_accuracy`: see there for the rules.
"""

import datasets
import evaluate

from lxmert_hf.metrics import vqa_accuracy

_DESCRIPTION = """
VQA accuracy: per question, the mean over the leave-one-out subsets of the annotators of min(1, matches / 3), after
the official answer normalization when the annotators disagree. Reported in percent overall, per answer type and per
question type, with the official tool's keys.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one predicted answer per question.
    references (`list[list[str]]`): the annotators' answers of each question (10 in VQA v2).
    answer_types (`list[str]`, *optional*): the answer type of each question, for `perAnswerType`.
    question_types (`list[str]`, *optional*): the question type of each question, for `perQuestionType`.
    precision (`int`, *optional*, defaults to 2): decimals kept by `round`; `None` keeps them unrounded.
Returns:
    `{"overall": float, "perAnswerType": dict, "perQuestionType": dict}` in percent.
Example:
    >>> metric = evaluate.load("path/to/vqa_accuracy")
    >>> metric.compute(predictions=["2"], references=[["two"] * 3 + ["three"] * 7])
    {'overall': 90.0, 'perAnswerType': {}, 'perQuestionType': {}}
"""

_CITATION = """
@inproceedings{goyal2017making,
  title={Making the {V} in {VQA} Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
            ),
            reference_urls=["https://visualqa.org/evaluation.html"],
        )

    def _compute(self, predictions, references, answer_types=None, question_types=None, precision=2):
        return vqa_accuracy(predictions, references, answer_types, question_types, precision=precision)
