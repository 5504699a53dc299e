import importlib.util
import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from lxmert_hf.answers import AnswerVocabulary
from lxmert_hf.metrics import (
    METRIC_NAMES,
    gqa_accuracy,
    load_metric,
    logits_to_answer_ids,
    nlvr2_accuracy,
    nlvr2_sentence_key,
    vqa_accuracy,
    vqa_compute_metrics,
    vqa_score,
    vqa_scores,
    vqa_soft_score_compute_metrics,
)


def leave_one_out_reference(prediction: str, answers: list[str]) -> float:
    """The official per-question formula, written from its definition, in the official order of operations."""
    accuracies = []
    for left_out in range(len(answers)):
        others = answers[:left_out] + answers[left_out + 1 :]
        accuracies.append(min(1, sum(answer == prediction for answer in others) / 3))
    return sum(accuracies) / len(accuracies)


# ---------------------------------------------------------------------------------------------------------------
# VQA: one question


@pytest.mark.parametrize(
    ("matches", "expected"),
    [(0, 0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1), (5, 1), (6, 1), (7, 1), (8, 1), (9, 1), (10, 1)],
)
def test_leave_one_out_formula_for_0_to_10_matches(matches, expected):
    answers = ["yes"] * matches + ["no"] * (10 - matches)
    exact = Fraction(sum(min(Fraction(1), Fraction(matches - (i < matches), 3)) for i in range(10)), 10)
    assert exact == Fraction(expected).limit_denominator(10)
    assert vqa_score("yes", answers) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("matches", range(11))
def test_score_is_bit_identical_to_the_official_order_for_every_arrangement(matches):
    # Float addition is not associative: where the matching annotators sit changes the last bit, and the official
    # tool sums in annotator order. Every arrangement of the matching annotators must agree bit for bit.
    for positions in itertools.combinations(range(10), matches):
        answers = ["yes" if i in positions else "no" for i in range(10)]
        assert vqa_score("yes", answers) == leave_one_out_reference("yes", answers)


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # annotators disagree: both sides are normalized
        ("Two", ["2"] * 9 + ["3"], 1.0),
        ("two dogs.", ["2 dogs"] * 4 + ["dogs"] * 6, 1.0),
        ("T-Shirt", ["t shirt"] * 5 + ["shirt"] * 5, 1.0),
        ("none", ["0"] * 3 + ["1"] * 7, 0.9),
        # unanimous annotators: nothing is normalized, so spelling and case matter
        ("Two", ["2"] * 10, 0.0),
        ("Two", ["two"] * 10, 0.0),
        ("two", ["two"] * 10, 1.0),
        ("yes.", ["yes"] * 10, 0.0),
        # ... but newlines, tabs and outer spaces are always cleaned, on both sides
        (" yes\n", ["yes"] * 10, 1.0),
        ("yes", ["yes\t"] * 5 + [" yes"] * 5, 1.0),
        ("red and white", ["red\tand white"] * 10, 1.0),
        # answers in any case are lower-cased only through normalization
        ("Yes", ["yes"] * 9 + ["no"], 1.0),
    ],
)
def test_normalization_only_when_annotators_disagree(prediction, answers, expected):
    assert vqa_score(prediction, answers) == expected


def test_answer_lists_of_other_lengths_follow_the_same_formula():
    assert vqa_score("a", ["a", "b", "c"]) == leave_one_out_reference("a", ["a", "b", "c"])
    assert vqa_score("a", ["a"]) == 0.0  # one annotator: no other annotator can agree


# ---------------------------------------------------------------------------------------------------------------
# VQA: aggregates


@pytest.fixture
def typed_questions():
    return {
        "predictions": ["yes", "no", "2", "3", "red", "blue"],
        "gt_answers": [
            ["yes"] * 10,
            ["yes"] * 10,
            ["2"] * 2 + ["3"] * 8,
            ["3"] * 3 + ["4"] * 7,
            ["red"] * 10,
            ["red"] * 9 + ["blue"],
        ],
        "answer_types": ["yes/no", "yes/no", "number", "number", "other", "other"],
        "question_types": ["is the", "is the", "how many", "how many", "what color is the", "what color is"],
    }


def test_breakdowns_per_answer_and_question_type(typed_questions):
    result = vqa_accuracy(**typed_questions)
    # per question: 1, 0, 0.6, 0.9, 1, 0.3
    assert result["overall"] == 63.33
    assert result["perAnswerType"] == {"yes/no": 50.0, "number": 75.0, "other": 65.0}
    assert result["perQuestionType"] == {
        "is the": 50.0,
        "how many": 75.0,
        "what color is the": 100.0,
        "what color is": 30.0,
    }
    assert list(result["perAnswerType"]) == ["yes/no", "number", "other"]  # order of first appearance


def test_breakdowns_are_empty_without_types(typed_questions):
    result = vqa_accuracy(typed_questions["predictions"], typed_questions["gt_answers"])
    assert result == {"overall": 63.33, "perAnswerType": {}, "perQuestionType": {}}


@pytest.mark.parametrize(("precision", "expected"), [(0, 33.0), (1, 33.3), (2, 33.33), (4, 33.3333), (None, 100 / 3)])
def test_rounding_like_the_official_tool(precision, expected):
    result = vqa_accuracy(["yes", "no", "no"], [["yes"] * 10] * 3, precision=precision)
    assert result["overall"] == expected


def test_overall_uses_the_official_expression():
    predictions = ["yes"] * 7
    gt_answers = [["yes"] * 10] * 3 + [["yes"] * 2 + ["no"] * 8] * 4
    scores = [leave_one_out_reference(p, a) for p, a in zip(predictions, gt_answers, strict=True)]
    result = vqa_accuracy(predictions, gt_answers, precision=None)
    assert result["overall"] == 100 * sum(scores) / len(scores)
    assert vqa_scores(predictions, gt_answers) == scores


def test_accepts_arrays_and_datasets_columns():
    import datasets

    dataset = datasets.Dataset.from_dict({"answers": [["yes"] * 10, ["no"] * 10]})
    assert vqa_accuracy(np.array(["yes", "yes"]), dataset["answers"])["overall"] == 50.0


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"predictions": "yes", "gt_answers": [["yes"]]}, "`predictions` must be a list"),
        ({"predictions": ["yes"], "gt_answers": None}, "`gt_answers` must be a list"),
        ({"predictions": [], "gt_answers": []}, "`predictions` is empty"),
        ({"predictions": ["yes"], "gt_answers": [["yes"], ["no"]]}, "has 1 entries but `gt_answers` has 2"),
        ({"predictions": ["yes"], "gt_answers": ["yes"]}, r"`gt_answers\[0\]` must be a non-empty list"),
        ({"predictions": ["yes"], "gt_answers": [[]]}, r"`gt_answers\[0\]` must be a non-empty list"),
        ({"predictions": [3], "gt_answers": [["yes"]]}, r"`predictions\[0\]`.*must be answer strings"),
        ({"predictions": ["yes"], "gt_answers": [["yes", None]]}, r"`gt_answers\[0\]`.*answers must be strings"),
        ({"predictions": ["yes"], "gt_answers": [["yes", ["no"]]]}, r"`gt_answers\[0\]`.*answers must be strings"),
        ({"predictions": ["yes"], "gt_answers": [["yes"]], "answer_types": ["a", "b"]}, "one type per question"),
        ({"predictions": ["yes"], "gt_answers": [["yes"]], "question_types": [1]}, r"`question_types\[0\]`"),
        ({"predictions": ["yes"], "gt_answers": [["yes"]], "precision": -1}, "`precision` must be"),
        ({"predictions": ["yes"], "gt_answers": [["yes"]], "precision": True}, "`precision` must be"),
    ],
)
def test_vqa_accuracy_refusals(arguments, match):
    with pytest.raises(ValueError, match=match):
        vqa_accuracy(**arguments)


def test_vqa_score_refuses_a_single_string():
    with pytest.raises(ValueError, match="`gt_answers` must be the list"):
        vqa_score("yes", "yes")


# ---------------------------------------------------------------------------------------------------------------
# GQA


def test_gqa_exact_match_and_breakdowns():
    result = gqa_accuracy(
        ["yes", "cat", "red", "left", "Yes"],
        ["yes", "dog", "red", "left", "yes"],
        structural_types=["verify", "query", "query", "choose", "logical"],
        semantic_types=["rel", "obj", "attr", "rel", "obj"],
    )
    assert result == {
        "accuracy": 60.0,
        "binary": 66.67,  # verify, choose and logical
        "open": 50.0,  # query
        "accuracyPerStructuralType": {"choose": 100.0, "logical": 0.0, "query": 50.0, "verify": 100.0},
        "accuracyPerSemanticType": {"attr": 100.0, "obj": 0.0, "rel": 100.0},
    }


def test_gqa_without_types_and_unrounded():
    assert gqa_accuracy(["a", "b", "c"], ["a", "x", "x"], precision=None) == {"accuracy": 1 / 3 * 100}


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"predictions": ["a"], "answers": ["a", "b"]}, "has 1 entries but `answers` has 2"),
        ({"predictions": [1], "answers": ["a"]}, r"`predictions\[0\]` must be a string"),
        ({"predictions": ["a"], "answers": [None]}, r"`answers\[0\]` must be a string"),
        ({"predictions": ["a"], "answers": ["a"], "structural_types": ["a", "b"]}, "`structural_types` must be"),
        ({"predictions": ["a"], "answers": ["a"], "semantic_types": [None]}, r"`semantic_types\[0\]`"),
    ],
)
def test_gqa_refusals(arguments, match):
    with pytest.raises(ValueError, match=match):
        gqa_accuracy(**arguments)


# ---------------------------------------------------------------------------------------------------------------
# NLVR2


def test_nlvr2_accuracy_and_consistency():
    identifiers = ["dev-1-0-0", "dev-1-1-0", "dev-1-2-0", "dev-1-0-1", "dev-2-0-0", "dev-2-1-0"]
    predictions = [True, False, True, True, False, 1]
    labels = [True, False, True, False, False, np.bool_(True)]
    result = nlvr2_accuracy(predictions, labels, identifiers=identifiers)
    # sentences dev-1--0 (all correct), dev-1--1 (wrong), dev-2--0 (all correct)
    assert result == {"accuracy": 83.33, "consistency": 66.67}
    assert nlvr2_accuracy(predictions, labels) == {"accuracy": 83.33}


@pytest.mark.parametrize(
    ("identifier", "key"), [("dev-850-2-0", "dev-850--0"), ("test1-0-1-3", "test1-0--3"), ("a-b-c", "a-b-")]
)
def test_nlvr2_sentence_key_blanks_the_pair_field(identifier, key):
    assert nlvr2_sentence_key(identifier) == key


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"predictions": ["True"], "labels": [True]}, r"`predictions\[0\]` must be a boolean"),
        ({"predictions": [True], "labels": [2]}, r"`labels\[0\]` must be a boolean"),
        (
            {"predictions": [True], "labels": [True], "identifiers": ["dev-1"]},
            "does not read `split-set-pair-sentence`",
        ),
        ({"predictions": [True], "labels": [True], "identifiers": [7]}, "identifier must be a string"),
        ({"predictions": [True], "labels": [True], "identifiers": ["a-b-c", "a-b-d"]}, "one identifier per example"),
    ],
)
def test_nlvr2_refusals(arguments, match):
    with pytest.raises(ValueError, match=match):
        nlvr2_accuracy(**arguments)


# ---------------------------------------------------------------------------------------------------------------
# Trainer


ANSWERS = ["yes", "no", "2", "3"]
GT_ANSWERS = [["yes"] * 10, ["2"] * 3 + ["3"] * 7, ["no"] * 10]


def _logits(ids):
    logits = np.zeros((len(ids), len(ANSWERS)), dtype=np.float32)
    logits[np.arange(len(ids)), ids] = 1.0
    return logits


@pytest.mark.parametrize("id2label", [ANSWERS, dict(enumerate(ANSWERS)), AnswerVocabulary(ANSWERS)])
def test_compute_metrics_from_logits(id2label):
    from transformers import EvalPrediction

    compute_metrics = vqa_compute_metrics(GT_ANSWERS, id2label)
    # yes (1.0), 2 (0.9), yes (0.0)
    metrics = compute_metrics(EvalPrediction(predictions=_logits([0, 2, 0]), label_ids=None))
    assert metrics == {"vqa_accuracy": 63.33}


def test_compute_metrics_from_answer_ids_tuples_and_answer_types():
    compute_metrics = vqa_compute_metrics(GT_ANSWERS, ANSWERS, answer_types=["yes/no", "number", "yes/no"])
    ids = logits_to_answer_ids(torch.from_numpy(_logits([0, 2, 1])), None).numpy()
    expected = {"vqa_accuracy": 96.67, "vqa_accuracy_yes_no": 100.0, "vqa_accuracy_number": 90.0}
    assert compute_metrics((ids, None)) == expected
    assert compute_metrics(((_logits([0, 2, 1]), np.zeros(3)), None)) == expected


@pytest.mark.parametrize(
    ("predictions", "match"),
    [
        (_logits([0, 1]), "got predictions for 2 questions but `gt_answers` holds 3"),
        (np.zeros((3, 5)), r"neither answer logits \[N, 4\] nor answer ids"),
        (np.array([0, 1, 4]), r"must lie in \[0, 4\)"),
        (np.array([0.0, 1.0, 2.0]), "neither answer logits"),
        (None, "received no predictions"),
    ],
)
def test_compute_metrics_refuses_mismatched_predictions(predictions, match):
    compute_metrics = vqa_compute_metrics(GT_ANSWERS, ANSWERS)
    with pytest.raises(ValueError, match=match):
        compute_metrics((predictions, None))


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"gt_answers": [], "id2label": ANSWERS}, "`gt_answers` must be the non-empty list"),
        ({"gt_answers": GT_ANSWERS, "id2label": {1: "yes"}}, "must map every label id"),
        ({"gt_answers": GT_ANSWERS, "id2label": 4}, "`id2label` must be"),
        ({"gt_answers": GT_ANSWERS, "id2label": ["yes", 2]}, "only answer strings"),
        ({"gt_answers": GT_ANSWERS, "id2label": ANSWERS, "answer_types": ["x"]}, "`answer_types` must be"),
    ],
)
def test_compute_metrics_factory_refusals(arguments, match):
    with pytest.raises(ValueError, match=match):
        vqa_compute_metrics(**arguments)


def test_trainer_evaluate_reports_the_official_accuracy(tmp_path):
    from transformers import Trainer, TrainingArguments

    class TinyAnswerer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Linear(4, len(ANSWERS))
            with torch.no_grad():
                self.classifier.weight.copy_(torch.eye(4))
                self.classifier.bias.zero_()

        def forward(self, features, labels=None):
            logits = self.classifier(features)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    class Questions(torch.utils.data.Dataset):
        def __init__(self, ids):
            self.ids = ids

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, index):
            return {"features": torch.eye(4)[self.ids[index]], "labels": torch.zeros(len(ANSWERS))}

    gt_answers = GT_ANSWERS * 3  # 9 questions, evaluated in batches of 4
    trainer = Trainer(
        model=TinyAnswerer(),
        args=TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True),
        eval_dataset=Questions([0, 2, 0] * 3),
        compute_metrics=vqa_compute_metrics(gt_answers, ANSWERS),
        preprocess_logits_for_metrics=logits_to_answer_ids,
    )
    assert trainer.evaluate()["eval_vqa_accuracy"] == 63.33


# Soft scores of GT_ANSWERS over ANSWERS: what `labels` hold for those questions.
SOFT_SCORES = np.array([[1.0, 0, 0, 0], [0, 0, 0.9, 1.0], [0, 1.0, 0, 0]], dtype=np.float32)


@pytest.mark.parametrize("predictions", [_logits([0, 2, 0]), np.array([0, 2, 0]), (_logits([0, 2, 0]), np.zeros(3))])
def test_soft_score_metrics_read_the_predicted_answers_score(predictions):
    compute_metrics = vqa_soft_score_compute_metrics(["yes/no", "number", "yes/no"])
    # yes (1.0), 2 (0.9), yes (0.0): the same questions and answers as the official 63.33 above.
    expected = {"vqa_soft_score": 63.33, "vqa_soft_score_yes_no": 50.0, "vqa_soft_score_number": 90.0}
    assert compute_metrics((predictions, SOFT_SCORES)) == expected


def test_soft_score_metrics_unrounded_and_without_types():
    assert vqa_soft_score_compute_metrics(precision=None)((np.array([0, 2, 2]), SOFT_SCORES)) == {
        "vqa_soft_score": pytest.approx(190 / 3)
    }


@pytest.mark.parametrize(
    ("label_ids", "match"),
    [(None, "got none"), (np.array([0, 2, 1]), r"got shape \(3,\)"), (np.zeros((0, 4)), r"got shape \(0, 4\)")],
)
def test_soft_score_metrics_need_soft_score_labels(label_ids, match):
    with pytest.raises(ValueError, match=f"needs the soft-score labels.*{match}.*vqa_compute_metrics"):
        vqa_soft_score_compute_metrics()((np.array([0, 2, 1]), label_ids))


@pytest.mark.parametrize(
    ("arguments", "match"),
    [({"answer_types": "yes/no"}, "`answer_types` must be a list"), ({"precision": -1}, "`precision` must be")],
)
def test_soft_score_metrics_refusals(arguments, match):
    with pytest.raises(ValueError, match=match):
        vqa_soft_score_compute_metrics(**arguments)


def test_soft_score_metrics_check_the_number_of_types():
    with pytest.raises(ValueError, match=r"one type per question \(3\)"):
        vqa_soft_score_compute_metrics(["yes/no"])((np.array([0, 2, 1]), SOFT_SCORES))


def _batch_metric_cases():
    rng = np.random.default_rng(0)
    count = 50
    gt_answers = [rng.choice(["yes", "no", "2", "Two", "3", "3."], 10).tolist() for _ in range(count)]
    types = rng.choice(["yes/no", "number", "other", ""], count).tolist()
    logits = rng.standard_normal((count, len(ANSWERS))).astype(np.float32)
    labels = rng.choice(np.array([0.0, 0.3, 0.6, 0.9, 1.0], dtype=np.float32), (count, len(ANSWERS)))
    builds = {
        "official": lambda: vqa_compute_metrics(gt_answers, ANSWERS, types, precision=None),
        "soft score": lambda: vqa_soft_score_compute_metrics(types, precision=None),
    }
    return builds, logits, labels


@pytest.mark.parametrize("metric", ["official", "soft score"])
@pytest.mark.parametrize("predictions", ["logits", "answer ids"])
@pytest.mark.parametrize("to_batch", [np.asarray, torch.from_numpy], ids=["arrays", "tensors"])
@pytest.mark.parametrize("sizes", [[50], [7] * 7 + [1], [1] * 50])
def test_batch_by_batch_metrics_equal_the_whole_set_exactly(metric, predictions, to_batch, sizes):
    builds, logits, labels = _batch_metric_cases()
    whole = builds[metric]()((logits, labels))
    outputs = logits if predictions == "logits" else logits.argmax(-1)
    # As `TrainingArguments(batch_eval_metrics=True)` calls it: a batch at a time, told which one is the last.
    compute_metrics = builds[metric]()
    bounds = list(itertools.accumulate(sizes, initial=0))
    for _ in range(2):  # the second evaluation starts afresh
        results = [
            compute_metrics((to_batch(outputs[start:end]), to_batch(labels[start:end])), compute_result=end == 50)
            for start, end in itertools.pairwise(bounds)
        ]
        assert results == [{}] * (len(sizes) - 1) + [whole]
    assert len(whole) == 4  # overall and 3 named types, unrounded


# ---------------------------------------------------------------------------------------------------------------
# evaluate modules


def test_load_metric_loads_every_shipped_module_offline():
    vqa = load_metric("vqa_accuracy")
    vqa.add_batch(predictions=["2"], references=[["two"] * 3 + ["three"] * 7])
    vqa.add_batch(predictions=["yes"], references=[["yes"] * 10])
    assert vqa.compute(answer_types=["number", "yes/no"]) == {
        "overall": 95.0,
        "perAnswerType": {"number": 90.0, "yes/no": 100.0},
        "perQuestionType": {},
    }
    gqa = load_metric("gqa_accuracy")
    assert gqa.compute(predictions=["yes", "cat"], references=["yes", "dog"]) == {"accuracy": 50.0}
    nlvr2 = load_metric("nlvr2_accuracy")
    result = nlvr2.compute(predictions=[True, False], references=[True, True], identifiers=["d-1-0-0", "d-1-1-0"])
    assert result == {"accuracy": 50.0, "consistency": 0.0}
    assert set(METRIC_NAMES) == {"vqa_accuracy", "gqa_accuracy", "nlvr2_accuracy"}


def test_load_metric_refuses_unknown_names():
    with pytest.raises(ValueError, match="`name` must be one of"):
        load_metric("bleu")


# ---------------------------------------------------------------------------------------------------------------
# benchmark


def test_benchmark_agrees_with_the_straightforward_loop_on_realistic_questions(capsys):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "metrics.py"
    spec = importlib.util.spec_from_file_location("metrics_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    benchmark.main(["--questions", "3000", "--repeats", "1"])  # exits with an error if any figure differs
    output = capsys.readouterr().out
    assert "figures identical to the straightforward loop: yes" in output
    assert "| vqa_accuracy (lists in memory) |" in output
