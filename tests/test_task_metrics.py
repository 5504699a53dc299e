"""The GQA and NLVR2 metrics of `Trainer` evaluation: the figures `lxmert-hf evaluate` prints for the same
predictions, on the whole set and batch by batch, in one process and in two."""

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from guards import HANG_GUARD_S
from task_metrics_evaluation import GQA_ANSWERS, compute_metrics_of, evaluate_all, gqa_eval_set, nlvr2_eval_set

from lxmert_hf.answers import AnswerVocabulary
from lxmert_hf.cli import main
from lxmert_hf.metrics import gqa_compute_metrics, nlvr2_compute_metrics
from lxmert_hf.submission import write_gqa_submission, write_nlvr2_submission

SEMANTIC_TYPES = ["attr", "obj", "rel", "cat", "global"]
COUNT = 40


def _evaluate_cli(argv) -> dict:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return json.loads(printed.getvalue())


def _gqa_cli_figures(eval_set, predicted_ids, folder) -> dict:
    """What `lxmert-hf evaluate gqa` prints for these predictions, as `gqa_compute_metrics` names its figures."""
    question_ids = [f"{20000000 + index:08d}" for index in range(len(predicted_ids))]
    rng = np.random.default_rng(1)
    questions = {
        question_id: {
            "imageId": f"n{index}", "question": "what is it?", "answer": answer, "isBalanced": True,
            "types": {"structural": kind, "semantic": str(rng.choice(SEMANTIC_TYPES)), "detailed": "x"},
        }
        for index, (question_id, answer, kind) in enumerate(
            zip(question_ids, eval_set["gt_answers"], eval_set["structural_types"], strict=True)
        )
    }  # fmt: skip
    (folder / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    answers = {qid: GQA_ANSWERS[label] for qid, label in zip(question_ids, predicted_ids.tolist(), strict=True)}
    write_gqa_submission(folder / "predictions.json", answers)
    argv = ["evaluate", "gqa", "--questions", str(folder / "testdev_balanced_questions.json")]
    printed = _evaluate_cli([*argv, "--predictions", str(folder / "predictions.json")])
    per_type = {f"gqa_accuracy_{kind}": value for kind, value in printed["accuracyPerStructuralType"].items()}
    return {"gqa_accuracy": printed["accuracy"], **per_type}


def _nlvr2_cli_figures(eval_set, predicted, folder) -> dict:
    """What `lxmert-hf evaluate nlvr2` prints for these predictions, as `nlvr2_compute_metrics` names them."""
    lines = [
        json.dumps({"identifier": identifier, "sentence": "s", "label": "True" if label else "False"})
        for identifier, label in zip(eval_set["identifiers"], eval_set["labels"].tolist(), strict=True)
    ]
    (folder / "dev.json").write_text("\n".join(lines) + "\n")
    write_nlvr2_submission(
        folder / "predictions.csv", dict(zip(eval_set["identifiers"], predicted.tolist(), strict=True))
    )
    argv = ["evaluate", "nlvr2", "--annotations", str(folder / "dev.json")]
    printed = _evaluate_cli([*argv, "--predictions", str(folder / "predictions.csv")])
    return {"nlvr2_accuracy": printed["accuracy"], "nlvr2_consistency": printed["consistency"]}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Per task: the eval set, the logits of its predictions and the figures the CLI prints for them."""
    folder = tmp_path_factory.mktemp("official")
    gqa, nlvr2 = gqa_eval_set(COUNT, seed=3), nlvr2_eval_set(COUNT, seed=3)
    (folder / "gqa").mkdir(), (folder / "nlvr2").mkdir()
    return {
        "gqa": (gqa, _gqa_cli_figures(gqa, gqa["features"].argmax(-1), folder / "gqa")),
        "nlvr2": (nlvr2, _nlvr2_cli_figures(nlvr2, nlvr2["features"].argmax(-1), folder / "nlvr2")),
    }


def test_figures_are_those_the_evaluate_command_prints(cases):
    gqa, printed = cases["gqa"]
    assert printed["gqa_accuracy"] not in (0.0, 100.0) and len(printed) == 1 + len(set(gqa["structural_types"]))
    assert compute_metrics_of("gqa", gqa)((gqa["features"], gqa["labels"])) == printed
    nlvr2, printed = cases["nlvr2"]
    assert 0 < printed["nlvr2_consistency"] < printed["nlvr2_accuracy"] < 100
    assert compute_metrics_of("nlvr2", nlvr2)((nlvr2["features"], nlvr2["labels"])) == printed


@pytest.mark.parametrize("task", ["gqa", "nlvr2"])
@pytest.mark.parametrize("predictions", ["logits", "ids"])
@pytest.mark.parametrize("to_batch", [np.asarray, torch.from_numpy], ids=["arrays", "tensors"])
@pytest.mark.parametrize("sizes", [[COUNT], [7] * 5 + [5], [1] * COUNT], ids=["whole", "partial-last", "ones"])
def test_batch_by_batch_figures_equal_the_printed_ones(cases, task, predictions, to_batch, sizes):
    eval_set, printed = cases[task]
    outputs = eval_set["features"] if predictions == "logits" else eval_set["features"].argmax(-1)
    labels = eval_set["labels"]
    compute_metrics = compute_metrics_of(task, eval_set)
    bounds = list(itertools.accumulate(sizes, initial=0))
    for _ in range(2):  # the second evaluation starts afresh
        results = [
            compute_metrics((to_batch(outputs[start:end]), to_batch(labels[start:end])), compute_result=end == COUNT)
            for start, end in itertools.pairwise(bounds)
        ]
        assert results == [{}] * (len(sizes) - 1) + [printed]


def test_types_precision_and_vocabularies():
    gold, types = ["yes", "t-shirt", "red"], ["verify", "query", ""]
    ids = np.array([0, 2, 1])
    for id2label in (
        ["yes", "no", "t-shirt"],
        {0: "yes", 1: "no", 2: "t-shirt"},
        AnswerVocabulary(["yes", "no", "t-shirt"]),
    ):
        assert gqa_compute_metrics(gold, id2label, types)((ids, None)) == {
            "gqa_accuracy": 66.67, "gqa_accuracy_query": 100.0, "gqa_accuracy_verify": 100.0,
        }  # fmt: skip
    assert gqa_compute_metrics(gold, ["yes", "no", "t-shirt"], precision=None)((ids, None)) == {
        "gqa_accuracy": pytest.approx(200 / 3)
    }
    assert gqa_compute_metrics(gold, ["yes", "no", "t shirt"])((ids, None)) == {"gqa_accuracy": 33.33}  # exact match
    identifiers = ["dev-1-0-0", "dev-1-1-0", "dev-2-0-0"]
    figures = nlvr2_compute_metrics(identifiers, precision=None)((np.array([1, 0, 1]), np.array([True, True, True])))
    assert figures == {"nlvr2_accuracy": pytest.approx(200 / 3), "nlvr2_consistency": 50.0}


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: gqa_compute_metrics([], GQA_ANSWERS), "`gt_answers` must be the non-empty list"),
        (lambda: gqa_compute_metrics("yes", GQA_ANSWERS), "`gt_answers` must be the non-empty list"),
        (
            lambda: gqa_compute_metrics(["yes", ""], GQA_ANSWERS),
            r"`gt_answers\[1\]` must be a non-empty string.*testdev",
        ),
        (lambda: gqa_compute_metrics(["yes", None], GQA_ANSWERS), r"`gt_answers\[1\]` must be a non-empty string"),
        (lambda: gqa_compute_metrics(["yes"], {1: "yes"}), "must map every label id"),
        (lambda: gqa_compute_metrics(["yes"], GQA_ANSWERS, ["query", "verify"]), r"one type per question \(1\)"),
        (lambda: gqa_compute_metrics(["yes"], GQA_ANSWERS, precision=-1), "`precision` must be"),
        (lambda: nlvr2_compute_metrics([]), "`identifiers` must be the non-empty list"),
        (lambda: nlvr2_compute_metrics(["dev-1-0-0", 7]), r"`identifiers\[1\]` must be a non-empty string"),
        (lambda: nlvr2_compute_metrics(["dev-1-0-0", "dev-1"]), "'dev-1' does not read `split-set-pair-sentence`"),
        (lambda: nlvr2_compute_metrics(["dev-1-0-0"], precision=1.5), "`precision` must be"),
    ],
)
def test_bad_arguments_are_refused_when_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()


GQA_GOLD = ["yes", "no", "yes"]
NLVR2_IDS = ["dev-1-0-0", "dev-1-1-0", "dev-2-0-0"]


@pytest.mark.parametrize(
    ("task", "predictions", "labels", "match"),
    [
        ("gqa", np.array([0, 1]), None, "got predictions for 2 questions but `gt_answers` holds 3"),
        ("gqa", np.zeros((3, 7)), None, r"neither answer logits \[N, 6\] nor answer ids"),
        ("gqa", np.array([0, 1, 6]), None, r"must lie in \[0, 6\)"),
        ("nlvr2", np.array([0, 1]), np.array([0, 1]), "got predictions for 2 questions but `identifiers` holds 3"),
        ("nlvr2", np.array([0, 1, 1]), np.array([0, 1]), "got predictions for 3 examples but labels for 2"),
        ("nlvr2", np.array([0, 1, 1]), None, "need the true/false labels as `label_ids`, got none"),
        ("nlvr2", np.array([0, 1, 1]), np.array([0, 2, 1]), "must be 0 .false. or 1 .true., got 2 for example 1"),
        ("nlvr2", np.array([0, 1, 1]), np.array([-100, 1, 1]), "got -100 for example 0 of the batch"),
        ("nlvr2", np.array([0, 1, 1]), torch.tensor([1, -1, -1]), r"got -1 for example 1 .* \(2 such; -1 marks"),
        ("nlvr2", np.array([0, 1, 1]), np.array([0.0, 1.0, 1.0]), r"class ids \[N\].*float64"),
        ("nlvr2", np.array([0, 1, 1]), np.zeros((3, 2), dtype=np.int64), r"class ids \[N\].*shape \(3, 2\)"),
        ("nlvr2", np.zeros((3, 3)), np.array([0, 1, 1]), r"neither answer logits \[N, 2\] nor answer ids"),
    ],
)
def test_bad_predictions_and_labels_are_refused(task, predictions, labels, match):
    compute_metrics = gqa_compute_metrics(GQA_GOLD, GQA_ANSWERS) if task == "gqa" else nlvr2_compute_metrics(NLVR2_IDS)
    with pytest.raises(ValueError, match=match):
        compute_metrics((predictions, labels))


def test_a_short_batched_evaluation_is_refused_at_its_last_batch():
    compute_metrics = nlvr2_compute_metrics(NLVR2_IDS)
    assert compute_metrics((np.array([1]), np.array([1])), compute_result=False) == {}
    with pytest.raises(ValueError, match="got predictions for 2 questions but `identifiers` holds 3"):
        compute_metrics((np.array([1]), np.array([1])), compute_result=True)
    # and the next evaluation starts afresh
    assert compute_metrics((np.array([1, 0]), np.array([1, 0])), compute_result=False) == {}
    last = compute_metrics((np.array([1]), np.array([1])), compute_result=True)
    assert last == {"nlvr2_accuracy": 100.0, "nlvr2_consistency": 100.0}


# ---------------------------------------------------------------------------------------------------------------
# Inside Trainer.evaluate


@pytest.fixture(scope="module")
def one_process_figures(tmp_path_factory):
    return evaluate_all(tmp_path_factory.mktemp("trainer"))


@pytest.mark.parametrize("task", ["gqa", "nlvr2"])
def test_trainer_reports_the_figures_of_the_whole_set(one_process_figures, task):
    eval_set = gqa_eval_set() if task == "gqa" else nlvr2_eval_set()
    whole = compute_metrics_of(task, eval_set)((eval_set["features"], eval_set["labels"]))
    expected = {f"eval_{name}": value for name, value in whole.items()}
    assert one_process_figures[task] == {"streamed": expected, "accumulated": expected}
    assert f"eval_{task}_accuracy" in expected and 0 < expected[f"eval_{task}_accuracy"] < 100


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(one_process_figures, tmp_path):
    worker = Path(__file__).resolve().parent / "task_metrics_evaluation.py"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(worker), str(tmp_path),
        str(tmp_path / "r.json"),
    ]  # fmt: skip
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    figures = json.loads((tmp_path / "r.json").read_text())
    assert figures.pop("processes") == 2
    assert figures == one_process_figures
