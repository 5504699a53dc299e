"""Runs of `recipes/vqa.py` that must repeat themselves: killed with SIGKILL and resumed (one process and two), the
same seed twice, and early stopping. Tiny toy world and model: each run is a few seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from guards import HANG_GUARD_S
from recipe_probe import KILL, load_recipe
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "recipe_probe.py"
ACCELERATE = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip
# 64 images of 10 questions: 10 batches of 64 an epoch; 8 steps with a checkpoint and an evaluation every 4.
# Dropout on, so that the resumed run must also restore the random state.
TINY_RUN = [
    "--toy_train_images", "64", "--toy_eval_images", "16", "--hidden_size", "32", "--num_attention_heads", "2",
    "--intermediate_size", "64", "--dropout", "0.1", "--max_steps", "8", "--eval_strategy", "steps",
    "--save_strategy", "steps", "--eval_steps", "4", "--save_steps", "4", "--logging_steps", "4",
    "--show_examples", "0", "--question_only_baseline", "false", "--report_to", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("toy")


def run(command: list[str], toy_cache: Path, expect_killed: bool = False) -> str:
    env = {**os.environ, "HF_DATASETS_CACHE": str(toy_cache / "datasets"), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [*command, "--cache_dir", str(toy_cache)], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=HANG_GUARD_S,
    )  # fmt: skip
    if expect_killed:
        assert result.returncode != 0, "the run was meant to be killed after its first checkpoint"
    else:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    ours, theirs = load_file(resumed / "model.safetensors"), load_file(uninterrupted / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], msg=name)
    metrics = [json.loads((folder / "eval_results.json").read_text()) for folder in (resumed, uninterrupted)]
    assert metrics[0].keys() == metrics[1].keys()
    for name, value in metrics[0].items():
        assert value == pytest.approx(metrics[1][name], abs=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_killed_and_resumed_run_ends_as_an_uninterrupted_one(tmp_path, toy_cache, processes):
    launch = [sys.executable] if processes == 1 else [*ACCELERATE]
    # The global batch of 64 either way: 32 a process with two.
    flags = [*TINY_RUN, "--seed", "3"] + ([] if processes == 1 else ["--per_device_train_batch_size", "32"])
    flags += ["--use_cpu", "true"]
    out = tmp_path / "killed"
    run([*launch, str(PROBE), *flags, "--output_dir", str(tmp_path / "whole")], toy_cache)
    run([*launch, str(PROBE), KILL, *flags, "--output_dir", str(out)], toy_cache, expect_killed=True)
    assert (out / "checkpoint-4" / "trainer_state.json").is_file() and not (out / "model.safetensors").exists()
    stdout = run([*launch, str(PROBE), *flags, "--output_dir", str(out), "--resume_from_checkpoint", "last"], toy_cache)
    assert "first optimizer step: 5" in stdout  # it went on from step 4, not from scratch
    assert_same_run(out, tmp_path / "whole")


def in_process_run(tmp_path: Path, toy_cache: Path, name: str, *flags: str) -> Path:
    out = tmp_path / name
    load_recipe().main([*TINY_RUN, *flags, "--output_dir", str(out), "--cache_dir", str(toy_cache)])
    return out


@pytest.mark.slow
def test_seed_makes_a_run_repeat_itself(tmp_path, toy_cache):
    # In one process, one after the other: the second run finds the global random state wherever the first left it.
    runs = [in_process_run(tmp_path, toy_cache, name, "--seed", seed) for name, seed in [("a", "5"), ("b", "5"),
                                                                                          ("c", "6")]]  # fmt: skip
    first, again, other = (load_file(folder / "model.safetensors") for folder in runs)
    assert all(torch.equal(first[name], again[name]) for name in first)
    metrics = [json.loads((folder / "eval_results.json").read_text()) for folder in runs]
    assert metrics[0] == metrics[1]
    drawn = [name for name in first if name.endswith("weight") and "LayerNorm" not in name]  # random at init
    assert drawn and not any(torch.equal(first[name], other[name]) for name in drawn)


@pytest.mark.slow
def test_early_stopping_stops_when_the_metric_stops_improving(tmp_path, toy_cache):
    # No learning at all: the second evaluation is no better than the first, and patience 1 stops there.
    out = in_process_run(
        tmp_path, toy_cache, "stopped", "--learning_rate", "0", "--eval_steps", "1", "--save_steps", "1",
        "--early_stopping_patience", "1",
    )  # fmt: skip
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and len([e for e in state["log_history"] if "eval_loss" in e]) == 2
    assert not any(out.glob("checkpoint-[3-8]"))
