import json
import re
import subprocess
import sys

import pytest

from lxmert_hf.cli import main

# ---------------------------------------------------------------------------------------------------------------
# Official-format files written by the tests


def _vqa_annotation(question_id, answers, answer_type, question_type):
    return {
        "question_id": question_id,
        "image_id": question_id // 10,
        "question_type": question_type,
        "answer_type": answer_type,
        "multiple_choice_answer": answers[0],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


VQA_ANNOTATIONS = [
    _vqa_annotation(10, ["yes"] * 10, "yes/no", "is the"),
    _vqa_annotation(11, ["2"] * 2 + ["two"] * 1 + ["3"] * 7, "number", "how many"),
    _vqa_annotation(20, ["Red"] * 10, "other", "what color is the"),
    _vqa_annotation(21, ["t-shirt"] * 4 + ["shirt"] * 6, "other", "what is the"),
]
# per question: 1.0; "Two." matches "2", "2", "two" after normalization: 0.9; "red" is not normalized: 0.0; 1.0
VQA_PREDICTIONS = [
    {"question_id": 10, "answer": "yes"},
    {"question_id": 11, "answer": "Two."},
    {"question_id": 20, "answer": "red"},
    {"question_id": 21, "answer": "T-Shirt"},
]
VQA_METRICS = {
    "overall": 72.5,
    "perAnswerType": {"yes/no": 100.0, "number": 90.0, "other": 50.0},
    "perQuestionType": {"is the": 100.0, "how many": 90.0, "what color is the": 0.0, "what is the": 100.0},
}


def _write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.fixture
def vqa_files(tmp_path):
    questions = {
        "questions": [{"question_id": a["question_id"], "image_id": 1, "question": "?"} for a in VQA_ANNOTATIONS]
    }
    return {
        "questions": _write(tmp_path / "questions.json", questions),
        "annotations": _write(tmp_path / "annotations.json", {"annotations": VQA_ANNOTATIONS}),
        "predictions": _write(tmp_path / "predictions.json", VQA_PREDICTIONS),
    }


def _vqa_argv(files, **overrides):
    files = {**files, **overrides}
    return ["evaluate", "vqa"] + [f"--{key}={value}" for key, value in files.items()]


def _run_error(argv, capsys):
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("lxmert-hf evaluate: error: ")
    return error


# ---------------------------------------------------------------------------------------------------------------
# vqa


def test_evaluate_vqa_prints_and_writes_the_official_keys(vqa_files, tmp_path, capsys):
    output = tmp_path / "metrics.json"
    assert main(_vqa_argv(vqa_files, output=output)) == 0
    assert json.loads(capsys.readouterr().out) == VQA_METRICS
    assert json.loads(output.read_text()) == VQA_METRICS
    assert list(json.loads(output.read_text())) == ["overall", "perAnswerType", "perQuestionType"]


def test_evaluate_vqa_precision(vqa_files, capsys):
    assert main([*_vqa_argv(vqa_files), "--precision", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == 72.0  # round half to even, as Python's round


@pytest.mark.parametrize(
    ("predictions", "expected"),
    [
        (VQA_PREDICTIONS[:3], "1 annotated question(s) have no prediction (e.g. 21)"),
        (
            [*VQA_PREDICTIONS, {"question_id": 99, "answer": "no"}, {"question_id": 98, "answer": "no"}],
            "2 prediction(s) are for questions that are not annotated (e.g. 99, 98)",
        ),
        (
            [*VQA_PREDICTIONS[1:], {"question_id": 7, "answer": "no"}],
            "1 annotated question(s) have no prediction (e.g. 10); 1 prediction(s) are for questions",
        ),
    ],
)
def test_evaluate_vqa_refuses_predictions_not_covering_the_annotated_questions(
    vqa_files, tmp_path, capsys, predictions, expected
):
    path = _write(tmp_path / "partial.json", predictions)
    error = _run_error(_vqa_argv(vqa_files, predictions=path), capsys)
    assert expected in error
    assert "does not cover exactly the annotated questions" in error


def test_the_missing_ids_listed_are_a_few(vqa_files, tmp_path, capsys):
    annotations = [_vqa_annotation(i, ["yes"] * 10, "yes/no", "is") for i in range(100)]
    questions = {"questions": [{"question_id": i} for i in range(100)]}
    error = _run_error(
        _vqa_argv(
            vqa_files,
            questions=_write(tmp_path / "q100.json", questions),
            annotations=_write(tmp_path / "a100.json", {"annotations": annotations}),
            predictions=_write(tmp_path / "p100.json", [{"question_id": 0, "answer": "yes"}]),
        ),
        capsys,
    )
    assert "99 annotated question(s) have no prediction (e.g. 1, 2, 3, 4, 5, ...)" in error


def test_evaluate_vqa_refuses_swapped_files(vqa_files, capsys):
    error = _run_error(
        _vqa_argv(vqa_files, questions=vqa_files["annotations"], annotations=vqa_files["questions"]), capsys
    )
    assert "look swapped" in error


def test_evaluate_vqa_refuses_a_result_file_given_as_annotations(vqa_files, capsys):
    error = _run_error(_vqa_argv(vqa_files, annotations=vqa_files["predictions"]), capsys)
    assert "must be a JSON object with a `annotations` list" in error and "like a result file" in error


def test_evaluate_vqa_refuses_questions_of_another_split(vqa_files, tmp_path, capsys):
    other = _write(tmp_path / "other_questions.json", {"questions": [{"question_id": 10}, {"question_id": 12}]})
    error = _run_error(_vqa_argv(vqa_files, questions=other), capsys)
    assert "describe different questions (1 question(s) without annotation, 3 annotation(s) without question)" in error


BAD_ANNOTATIONS = [
    ("", "is empty"),
    ("{", "is not valid JSON"),
    ({"annotations": []}, "`annotations` is an empty list"),
    ({"annotations": ["x"]}, "annotation 0 must be an object"),
    ({"annotations": [{**VQA_ANNOTATIONS[0], "question_id": "10"}]}, "annotation 0 has `question_id` '10'"),
    (
        {"annotations": [{**VQA_ANNOTATIONS[0], "answers": ["yes"] * 10}]},
        r"annotation 0 \(question 10\) needs a non-empty",
    ),
    ({"annotations": [{**VQA_ANNOTATIONS[0], "answers": []}]}, r"annotation 0 \(question 10\) needs a non-empty"),
    ({"annotations": [{**VQA_ANNOTATIONS[0], "answers": [{"answer": 1}]}]}, "needs a non-empty `answers` list"),
    ({"annotations": [{**VQA_ANNOTATIONS[0], "answer_type": None}]}, "needs a string `answer_type`"),
    ({"annotations": [{k: v for k, v in VQA_ANNOTATIONS[0].items() if k != "question_type"}]}, "`question_type`"),
    ({"annotations": [VQA_ANNOTATIONS[0], VQA_ANNOTATIONS[0]]}, "annotation 1 repeats question 10"),
]


@pytest.mark.parametrize(("content", "match"), BAD_ANNOTATIONS)
def test_evaluate_vqa_refuses_bad_annotations_naming_file_and_record(vqa_files, tmp_path, capsys, content, match):
    path = _write(tmp_path / "bad_annotations.json", content)
    error = _run_error(_vqa_argv(vqa_files, annotations=path), capsys)
    assert path in error
    assert re.search(match, error), error


@pytest.mark.parametrize(
    ("content", "match"),
    [("", "is empty"), ({"1": "yes"}, "must hold a JSON list"), ([{"question_id": "10", "answer": "yes"}], "integer")],
)
def test_evaluate_vqa_refuses_bad_prediction_files(vqa_files, tmp_path, capsys, content, match):
    path = _write(tmp_path / "bad_predictions.json", content)
    assert match in _run_error(_vqa_argv(vqa_files, predictions=path), capsys)


def test_evaluate_reports_missing_files_and_output_folders(vqa_files, tmp_path, capsys):
    assert "does not exist" in _run_error(_vqa_argv(vqa_files, predictions=tmp_path / "missing.json"), capsys)
    error = _run_error(_vqa_argv(vqa_files, output=tmp_path / "no" / "metrics.json"), capsys)
    assert "--output" in error and "does not exist" in error


def test_evaluate_refuses_negative_precision(vqa_files, capsys):
    assert "--precision must be" in _run_error([*_vqa_argv(vqa_files), "--precision", "-1"], capsys)


def test_errors_exit_with_status_2_from_the_command_line(vqa_files, tmp_path):
    path = _write(tmp_path / "partial.json", VQA_PREDICTIONS[:1])
    completed = subprocess.run(
        [sys.executable, "-m", "lxmert_hf.cli", *_vqa_argv(vqa_files, predictions=path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert "lxmert-hf evaluate: error:" in completed.stderr and "3 annotated question(s)" in completed.stderr


# ---------------------------------------------------------------------------------------------------------------
# gqa


def _gqa_question(answer, structural, semantic, balanced=True):
    return {"answer": answer, "isBalanced": balanced, "types": {"structural": structural, "semantic": semantic}}


GQA_QUESTIONS = {
    "201": _gqa_question("yes", "verify", "attr"),
    "202": _gqa_question("dog", "query", "obj"),
    "203": _gqa_question("left", "choose", "rel"),
    "204": _gqa_question("no", "logical", "obj"),
    "205": _gqa_question("cat", "query", "cat", balanced=False),
}


@pytest.fixture
def gqa_questions(tmp_path):
    return _write(tmp_path / "testdev_balanced_questions.json", GQA_QUESTIONS)


def _gqa_predictions(tmp_path, answers):
    return _write(tmp_path / "gqa_predictions.json", [{"questionId": q, "prediction": a} for q, a in answers.items()])


def test_evaluate_gqa_scores_balanced_questions(gqa_questions, tmp_path, capsys):
    # an answer for the unbalanced question 205 is allowed and not scored
    predictions = _gqa_predictions(tmp_path, {"201": "yes", "202": "cat", "203": "left", "204": "No", "205": "dog"})
    output = tmp_path / "metrics.json"
    argv = ["evaluate", "gqa", "--questions", gqa_questions, "--predictions", predictions, "--output", str(output)]
    assert main(argv) == 0
    expected = {
        "accuracy": 50.0,
        "binary": 66.67,
        "open": 0.0,
        "accuracyPerStructuralType": {"choose": 100.0, "logical": 0.0, "query": 0.0, "verify": 100.0},
        "accuracyPerSemanticType": {"attr": 100.0, "obj": 0.0, "rel": 100.0},
    }
    assert json.loads(capsys.readouterr().out) == expected == json.loads(output.read_text())


def test_evaluate_gqa_without_types(tmp_path, capsys):
    questions = _write(tmp_path / "q.json", {"1": {"answer": "yes"}, "2": {"answer": "no"}})
    predictions = _gqa_predictions(tmp_path, {"1": "yes", "2": "yes"})
    assert main(["evaluate", "gqa", "--questions", questions, "--predictions", predictions]) == 0
    assert json.loads(capsys.readouterr().out) == {"accuracy": 50.0}


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"201": "yes", "202": "dog", "203": "left"}, "1 annotated question(s) have no prediction (e.g. '204')"),
        (
            {"201": "yes", "202": "dog", "203": "left", "204": "no", "999": "x"},
            "1 prediction(s) are for questions that are not annotated (e.g. '999')",
        ),
    ],
)
def test_evaluate_gqa_coverage_refusals(gqa_questions, tmp_path, capsys, answers, expected):
    predictions = _gqa_predictions(tmp_path, answers)
    assert expected in _run_error(
        ["evaluate", "gqa", "--questions", gqa_questions, "--predictions", predictions], capsys
    )


@pytest.mark.parametrize(
    ("questions", "match"),
    [
        ([{"questionId": "1", "prediction": "yes"}], "looks like a predictions file"),
        ({}, "must be a non-empty JSON object"),
        ({"1": {"question": "is it?"}}, "question '1' has no string `answer`; test-split questions are unlabeled"),
        ({"1": ["yes"]}, "question '1' must be an object"),
        ({"1": {"answer": "yes", "isBalanced": False}}, "has no balanced question"),
    ],
)
def test_evaluate_gqa_refuses_bad_questions(tmp_path, capsys, questions, match):
    path = _write(tmp_path / "questions.json", questions)
    predictions = _gqa_predictions(tmp_path, {"1": "yes"})
    assert match in _run_error(["evaluate", "gqa", "--questions", path, "--predictions", predictions], capsys)


# ---------------------------------------------------------------------------------------------------------------
# nlvr2

NLVR2_EXAMPLES = [
    {"identifier": "dev-1-0-0", "label": "True", "sentence": "s"},
    {"identifier": "dev-1-1-0", "label": "False", "sentence": "s"},
    {"identifier": "dev-1-0-1", "label": "True", "sentence": "t"},
    {"identifier": "dev-2-0-0", "label": "False", "sentence": "u"},
]


@pytest.fixture
def nlvr2_files(tmp_path):
    return {
        "annotations": _write(tmp_path / "dev.json", "\n".join(json.dumps(e) for e in NLVR2_EXAMPLES) + "\n"),
        "predictions": _write(
            tmp_path / "dev_predict.csv", "dev-1-0-0,True\ndev-1-1-0,True\ndev-1-0-1,True\ndev-2-0-0,false\n"
        ),
    }


def test_evaluate_nlvr2_accuracy_and_consistency(nlvr2_files, capsys):
    argv = [
        "evaluate",
        "nlvr2",
        "--annotations",
        nlvr2_files["annotations"],
        "--predictions",
        nlvr2_files["predictions"],
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"accuracy": 75.0, "consistency": 66.67}


def test_evaluate_nlvr2_reads_a_json_list_with_integer_labels(nlvr2_files, tmp_path, capsys):
    examples = [{**e, "label": int(e["label"] == "True")} for e in NLVR2_EXAMPLES]
    annotations = _write(tmp_path / "valid.json", examples)
    assert main(["evaluate", "nlvr2", "--annotations", annotations, "--predictions", nlvr2_files["predictions"]]) == 0
    assert json.loads(capsys.readouterr().out) == {"accuracy": 75.0, "consistency": 66.67}


@pytest.mark.parametrize(
    ("annotations", "match"),
    [
        ("", "is empty"),
        ("{\n", "is not valid JSON or JSON lines"),
        ('{"label": "True"}\n', "line 1 must be an object with a string `identifier`"),
        ('{"identifier": "dev-1-0-0", "label": "yes"}\n', "line 1 needs a `label` of True/False"),
        ('{"identifier": "dev-1-0-0", "label": "True"}\n' * 2, "line 2 repeats identifier 'dev-1-0-0'"),
        ('[{"identifier": "dev-1-0-0", "label": 2}]', "record 0 needs a `label`"),
    ],
)
def test_evaluate_nlvr2_refuses_bad_annotations(nlvr2_files, tmp_path, capsys, annotations, match):
    path = _write(tmp_path / "bad.json", annotations)
    argv = ["evaluate", "nlvr2", "--annotations", path, "--predictions", nlvr2_files["predictions"]]
    assert match in _run_error(argv, capsys)


def test_evaluate_nlvr2_refuses_missing_predictions(nlvr2_files, tmp_path, capsys):
    predictions = _write(tmp_path / "partial.csv", "dev-1-0-0,True\n")
    argv = ["evaluate", "nlvr2", "--annotations", nlvr2_files["annotations"], "--predictions", predictions]
    assert "3 annotated question(s) have no prediction (e.g. 'dev-1-1-0', 'dev-1-0-1', 'dev-2-0-0')" in _run_error(
        argv, capsys
    )


# ---------------------------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize("argv", [["evaluate"], ["evaluate", "vqa"], ["evaluate", "gqa"], ["evaluate", "nlvr2"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    assert "usage: lxmert-hf evaluate" in capsys.readouterr().out


def test_a_task_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate"])
    assert exit_.value.code == 2


def test_read_only_output_folder_fails_before_evaluating(vqa_files, read_only_folder, capsys, monkeypatch):
    monkeypatch.setattr("lxmert_hf.metrics.evaluate_vqa_files", lambda *a, **k: pytest.fail("evaluated anyway"))
    error = _run_error(_vqa_argv(vqa_files, output=read_only_folder / "metrics.json"), capsys)
    assert f"--output {read_only_folder / 'metrics.json'}: cannot write {read_only_folder}: permission denied" in error
    assert len(error.splitlines()) == 1


def test_full_disk_leaves_no_half_written_metrics(vqa_files, tmp_path, full_disk, capsys):
    (tmp_path / "out").mkdir()
    full_disk()
    error = _run_error(_vqa_argv(vqa_files, output=tmp_path / "out" / "metrics.json"), capsys)
    assert f"cannot write {tmp_path / 'out' / 'metrics.json'}: no space left on the device" in error
    assert list((tmp_path / "out").iterdir()) == []


def test_a_protected_input_is_named_as_such_not_as_an_output(vqa_files, capsys, monkeypatch):
    def protected(*args, **kwargs):
        raise PermissionError(13, "Permission denied", vqa_files["predictions"])

    monkeypatch.setattr("lxmert_hf.metrics.evaluate_vqa_files", protected)
    error = _run_error(_vqa_argv(vqa_files), capsys)
    assert (
        error == f"lxmert-hf evaluate: error: permission denied: {vqa_files['predictions']}; change its "
        "permissions or choose another path.\n"
    )
