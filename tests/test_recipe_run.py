"""End-to-end runs of the recipes on small toy worlds: each task in one process, and in two processes with
accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from guards import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "vqa.py"
# A smaller world than the default trained for about 1,100 steps (the default config otherwise): the model
# finds the objects the questions name after a few hundred steps, so it must be well clear of question-only.
SMALL = [
    "--toy_train_images", "1200", "--toy_eval_images", "100",
    "--num_train_epochs", "6", "--logging_steps", "1000", "--show_examples", "3", "--save_total_limit", "1",
]  # fmt: skip


ACCELERATE_TWO = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip
# Smaller worlds than each recipe's default; the model size and learning rate are the recipe's toy settings.
TASK_RUNS = {
    "gqa": ["--toy_train_images", "1200", "--toy_eval_images", "100", "--num_train_epochs", "6"],
    # The world of the recipe's default run: the model sits at chance for ~1,500 steps of 32, then climbs within a
    # few hundred; 4 epochs are 2,380 steps.
    "nlvr2": ["--toy_eval_images", "100", "--num_train_epochs", "4"],
}
QUIET = ["--logging_steps", "1000", "--show_examples", "2", "--save_total_limit", "1"]


def learned(name: str, metrics: dict) -> bool:
    """Whether a toy run learned what only the regions tell: well clear of its blind baseline (question-only for
    GQA, whose answers are partly guessable from the question; sentence-only for NLVR2, whose truth values are
    balanced, so that it stays near 50%)."""
    if name == "gqa":
        return metrics["eval_gqa_accuracy"] >= max(60.0, metrics["eval_question_only_gqa_accuracy"] + 20.0)
    return metrics["eval_nlvr2_accuracy"] >= 75.0 and abs(metrics["eval_sentence_only_nlvr2_accuracy"] - 50.0) <= 10.0


def run_recipe(command: list[str], tmp_path: Path) -> dict:
    """Run the recipe with its output and errors written to one file, as `... > log.txt 2>&1` does."""
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    log = tmp_path / "log.txt"
    with log.open("w") as file:
        result = subprocess.run(
            command, stdout=file, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=HANG_GUARD_S
        )
    text = log.read_text()
    assert result.returncode == 0, text[-8000:]
    return {"log": text, "metrics": json.loads((tmp_path / "out" / "eval_results.json").read_text())}


@pytest.mark.slow
def test_toy_run_learns_and_saves(tmp_path):
    run = run_recipe([sys.executable, str(RECIPE), *SMALL, "--output_dir", str(tmp_path / "out")], tmp_path)
    metrics = run["metrics"]
    assert metrics["eval_vqa_accuracy"] >= max(75.0, metrics["eval_question_only_vqa_accuracy"] + 15.0), metrics
    assert {"eval_vqa_accuracy_yes_no", "eval_vqa_accuracy_number", "eval_vqa_accuracy_other"} <= set(metrics)
    assert "question only" in run["log"] and run["log"].count("truth:") == 3
    assert all(f"({kind})" in run["log"] for kind in ("yes/no", "number", "other"))  # one example of each
    assert "VQA accuracy, %" in run["log"]  # the official metric, the one the best checkpoint was chosen on
    assert f"Trained with 1 process(es) on {'cuda' if torch.cuda.is_available() else 'cpu'}" in run["log"]
    # Read in a file, the log has one line per message: no progress bars redrawn with carriage returns or escapes.
    assert "\x1b[" not in run["log"] and "\r" not in run["log"], repr(run["log"][:3000])
    saved = tmp_path / "out"
    assert (saved / "model.safetensors").is_file() and (saved / "tokenizer_config.json").is_file()
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "lxmert" and "yes" in config["id2label"].values()


@pytest.mark.slow
def test_two_processes_with_accelerate(tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command = [*accelerate, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE)]
    # Half the batch per process keeps the global batch, hence the number of optimizer steps, of the one-process run.
    # Two CPU processes (gloo) on any machine: a machine with one GPU cannot hold two NCCL ranks.
    halves = ["--per_device_train_batch_size", "32", "--use_cpu", "true"]
    run = run_recipe([*command, *SMALL, *halves, "--output_dir", str(tmp_path / "out")], tmp_path)
    metrics = run["metrics"]
    assert metrics["eval_vqa_accuracy"] >= max(75.0, metrics["eval_question_only_vqa_accuracy"] + 15.0), metrics
    # One report, from the main process only, of a run that really was distributed.
    assert run["log"].count("question only") == 1
    assert "Trained with 2 process(es) on cpu" in run["log"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASK_RUNS))
def test_toy_run_of_each_task_learns(tmp_path, name):
    recipe = ROOT / "recipes" / f"{name}.py"
    run = run_recipe([sys.executable, str(recipe), *TASK_RUNS[name], *QUIET, "--output_dir", str(tmp_path / "out")],
                     tmp_path)  # fmt: skip
    metrics = run["metrics"]
    assert learned(name, metrics), metrics
    title = {"gqa": "GQA accuracy, %", "nlvr2": "NLVR2 accuracy, %"}[name]
    assert title in run["log"] and run["log"].count("truth:") == 2
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == {"gqa": "lxmert", "nlvr2": "lxmert_nlvr2"}[name]
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"toy {name.upper()} world" in card and f"python recipes/{name}.py" in card


# A short run: two processes must train, evaluate and report together (learning is the one-process test's).
SHORT_RUN = ["--toy_train_images", "160", "--toy_eval_images", "40", "--num_train_epochs", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASK_RUNS))
def test_two_processes_of_each_task(tmp_path, name):
    recipe = ROOT / "recipes" / f"{name}.py"
    halves = ["--per_device_train_batch_size", "32", "--use_cpu", "true"]
    command = [*ACCELERATE_TWO, str(recipe), *SHORT_RUN, *QUIET, *halves, "--output_dir", str(tmp_path / "out")]
    run = run_recipe(command, tmp_path)
    metric = {"gqa": "eval_gqa_accuracy", "nlvr2": "eval_nlvr2_consistency"}[name]
    assert 0.0 <= run["metrics"][metric] <= 100.0
    # One report, from the main process only, of a run that really was distributed, evaluated as one split.
    baseline = {"gqa": "question only", "nlvr2": "sentence only"}[name]
    assert run["log"].count(baseline) == 1 and "Trained with 2 process(es) on cpu" in run["log"]
    assert "'train_runtime'" in run["log"] and "'epoch': '2'" in run["log"]  # both epochs ran
