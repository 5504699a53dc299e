"""Runs of `recipes/vqa.py` that must repeat themselves or refuse to start: killed with SIGKILL and resumed (one
process and two), the same seed twice, early stopping, an output folder of an earlier run, a foreign checkpoint.
Tiny toy world and model: a run is a few seconds, most run inside the test process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from guards import HANG_GUARD_S
from recipe_probe import KILL, probed_recipe
from safetensors.torch import load_file

from lxmert_hf import LxmertVQAConfig

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
    "--show_examples", "0", "--question_only_baseline", "false", "--report_to", "none", "--use_cpu", "true",
]  # fmt: skip


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("toy")


def in_process_run(out: Path, toy_cache: Path, *flags: str) -> Path:
    probed_recipe().main([*TINY_RUN, *flags, "--output_dir", str(out), "--cache_dir", str(toy_cache)])
    return out


def launch(command: list[str], toy_cache: Path, expect_killed: bool = False) -> str:
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
        torch.testing.assert_close(ours[name], theirs[name], msg=lambda message, name=name: f"{name}: {message}")
    metrics = [json.loads((folder / "eval_results.json").read_text()) for folder in (resumed, uninterrupted)]
    assert metrics[0].keys() == metrics[1].keys()
    for name, value in metrics[0].items():
        assert value == pytest.approx(metrics[1][name], abs=1e-6), name


def kill_after_first_checkpoint(command: list[str], out: Path, toy_cache: Path, *flags: str) -> None:
    launch([*command, str(PROBE), KILL, *TINY_RUN, *flags, "--output_dir", str(out)], toy_cache, expect_killed=True)
    assert (out / "checkpoint-4" / "trainer_state.json").is_file() and not (out / "model.safetensors").exists()


@pytest.mark.slow
def test_killed_and_resumed_run_ends_as_an_uninterrupted_one(tmp_path, toy_cache, capsys):
    kill_after_first_checkpoint([sys.executable], tmp_path / "killed", toy_cache)
    in_process_run(tmp_path / "whole", toy_cache)
    capsys.readouterr()
    in_process_run(tmp_path / "killed", toy_cache, "--resume_from_checkpoint", str(tmp_path / "killed/checkpoint-4"))
    assert "first optimizer step: 5" in capsys.readouterr().out  # it went on from step 4, not from scratch
    assert_same_run(tmp_path / "killed", tmp_path / "whole")


@pytest.mark.slow
def test_two_processes_killed_and_resumed(tmp_path, toy_cache):
    # 32 a process: the global batch of the one-process run.
    halves = ["--per_device_train_batch_size", "32"]
    launch([*ACCELERATE, str(PROBE), *TINY_RUN, *halves, "--output_dir", str(tmp_path / "whole")], toy_cache)
    kill_after_first_checkpoint([*ACCELERATE], tmp_path / "killed", toy_cache, *halves)
    resume = ["--output_dir", str(tmp_path / "killed"), "--resume_from_checkpoint", "last"]
    assert "first optimizer step: 5" in launch([*ACCELERATE, str(PROBE), *TINY_RUN, *halves, *resume], toy_cache)
    assert_same_run(tmp_path / "killed", tmp_path / "whole")


@pytest.mark.slow
def test_seed_makes_a_run_repeat_itself(tmp_path, toy_cache):
    # In one process, one after the other: the second run finds the global random state wherever the first left it.
    runs = [in_process_run(tmp_path / name, toy_cache, "--seed", seed) for name, seed in [("a", "5"), ("b", "5"),
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
        tmp_path / "stopped", toy_cache, "--learning_rate", "0", "--eval_steps", "1", "--save_steps", "1",
        "--early_stopping_patience", "1",
    )  # fmt: skip
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and len([e for e in state["log_history"] if "eval_loss" in e]) == 2
    assert not any(out.glob("checkpoint-[3-8]"))


@pytest.mark.slow
def test_early_stopping_counts_on_across_a_resume(tmp_path, toy_cache, capsys):
    # Evaluations at steps 1 (best), 2 and 3 (no better): patience 2 stops at step 3. A run resumed from the
    # checkpoint of step 2 (one strike already) must stop there too, not start counting again.
    flags = ["--learning_rate", "0", "--eval_steps", "1", "--save_steps", "2", "--early_stopping_patience", "2"]
    in_process_run(tmp_path / "whole", toy_cache, *flags)
    assert "last optimizer step: 3" in capsys.readouterr().out
    resume = ["--resume_from_checkpoint", str(tmp_path / "whole" / "checkpoint-2")]
    in_process_run(tmp_path / "resumed", toy_cache, *flags, *resume)
    assert "first optimizer step: 3\n" in (out := capsys.readouterr().out) and "last optimizer step: 3" in out


def earlier_run(out: Path) -> Path:
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (out / "trainer_state.json").write_text("{}")
    return out


def test_output_dir_of_an_earlier_run_is_refused_before_any_work(tmp_path, capsys):
    out = earlier_run(tmp_path / "out")
    with pytest.raises(SystemExit) as exit:
        probed_recipe().main([*TINY_RUN, "--output_dir", str(out), "--cache_dir", str(tmp_path / "toy")])
    assert exit.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "--output_dir" in message and str(out) in message
    assert "--overwrite_output_dir" in message and "--resume_from_checkpoint last" in message
    assert not (tmp_path / "toy").exists()  # refused before the data was prepared
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()


def test_read_only_output_dir_is_refused_before_any_work(tmp_path, read_only_folder, capsys):
    out = read_only_folder / "run"
    with pytest.raises(SystemExit) as exit:
        probed_recipe().main([*TINY_RUN, "--output_dir", str(out), "--cache_dir", str(tmp_path / "toy")])
    assert exit.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and f"--output_dir {out}: cannot write" in message
    assert "permission denied" in message
    assert not (tmp_path / "toy").exists()  # refused before the data was prepared


@pytest.mark.slow
def test_overwrite_output_dir_replaces_the_earlier_run(tmp_path, toy_cache):
    out = earlier_run(tmp_path / "out")
    (out / "notes.txt").write_text("of the earlier run")
    in_process_run(out, toy_cache, "--max_steps", "2", "--overwrite_output_dir", "true")
    assert (out / "model.safetensors").is_file() and not (out / "notes.txt").exists()
    assert not (out / "checkpoint-4").exists()  # the earlier run's checkpoints go too


@pytest.mark.parametrize("change, expected", [
    ({"answers": ["yes", "no"]}, "answers: 2 in the checkpoint"),
    ({"hidden_size": 64}, "hidden_size: 64 in the checkpoint, 32 here"),
])  # fmt: skip
def test_foreign_checkpoint_is_refused(tmp_path, toy_cache, capsys, change, expected):
    probed_recipe()  # the toy world, prepared once for the module
    checkpoint = tmp_path / "other-run" / "checkpoint-4"
    options = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, **change}
    answers = options.pop("answers", None)
    if answers is None:  # the answers of the run: take them from a checkpoint it saves
        in_process_run(tmp_path / "ours", toy_cache, "--max_steps", "1")
        answers = list(json.loads((tmp_path / "ours" / "config.json").read_text())["label2id"])
    LxmertVQAConfig.from_answers(answers, **options).save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text("{}")
    with pytest.raises(SystemExit):
        in_process_run(tmp_path / "new", toy_cache, "--resume_from_checkpoint", str(checkpoint))
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--resume_from_checkpoint {str(checkpoint)!r}" in message and expected in message, message


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "checkpoint-10"
    with pytest.raises(SystemExit) as exit:
        probed_recipe().main(["--resume_from_checkpoint", str(missing), "--output_dir", str(tmp_path / "out")])
    assert exit.value.code == 2
    assert capsys.readouterr().err == (
        f"vqa.py: error: --resume_from_checkpoint {str(missing)!r} does not exist; pass a checkpoint-N folder of an "
        "earlier run, or `last` for the newest one in --output_dir.\n"
    )
