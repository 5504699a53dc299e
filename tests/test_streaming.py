"""`--streaming`: the training split as a shuffled `datasets.IterableDataset`, each process reading its own shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from guards import HANG_GUARD_S

from lxmert_hf.toy import ToyWorldConfig
from lxmert_hf.training import load_splits, parse_args, prepare_toy

ROOT = Path(__file__).resolve().parents[1]
TINY_WORLD = ["--toy_train_images", "24", "--toy_eval_images", "6", "--toy_questions_per_image", "5"]
STEPS = ["--eval_strategy", "steps", "--save_strategy", "steps", "--logging_strategy", "steps"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "needs `--max_steps`"),
        (["--max_steps", "5"], "`--eval_strategy epoch`.*--eval_strategy steps` with `--eval_steps N"),
        (
            ["--max_steps", "5", "--eval_strategy", "no", "--load_best_model_at_end", "false"],
            "`--save_strategy epoch`",
        ),
        (["--max_steps", "5", *STEPS[:4], "--logging_strategy", "epoch"], "`--logging_strategy epoch`"),
        (["--max_steps", "5", *STEPS, "--shuffle_buffer_size", "0"], "`--shuffle_buffer_size` must be at least 1"),
    ],
)
def test_streaming_arguments_are_checked(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--streaming", *argv, "--output_dir", "out"])


def test_streaming_lets_each_process_read_its_own_shards():
    _, data_args, training_args = parse_args(["--streaming", "--max_steps", "5", *STEPS, "--output_dir", "out"])
    assert data_args.streaming and training_args.accelerator_config.dispatch_batches is False
    _, _, plain = parse_args(["--output_dir", "out"])
    assert plain.accelerator_config.dispatch_batches is None  # map-style datasets: accelerate's default


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    config = ToyWorldConfig(num_images={"train": 24, "validation": 6}, questions_per_image=5, feature_dim=16)
    return prepare_toy(config, tmp_path_factory.mktemp("toy"))


def question_ids(dataset) -> list[int]:
    return [int(example["question_id"]) for example in dataset]


def test_the_stream_is_the_whole_split_shuffled_by_seed_and_epoch(toy_root):
    prepared = toy_root / "prepared"
    split = datasets.load_from_disk(str(prepared / "questions"))["train"]
    stored = [int(question_id) for question_id in split["question_id"]]
    options = {"streaming": True, "shuffle_buffer_size": 16, "num_processes": 2}
    train, evaluation, _ = load_splits(prepared, "train", "val", seed=3, **options)
    assert isinstance(train, datasets.IterableDataset) and isinstance(evaluation, datasets.Dataset)
    assert train.num_shards % 2 == 0
    first = question_ids(train)
    assert sorted(first) == sorted(stored) and first != stored
    example = next(iter(train))
    assert example["visual_feats"].shape[1] == 16 and len(example["labels"]) > 1  # joined to the store
    assert question_ids(load_splits(prepared, "train", "val", seed=3, **options)[0]) == first
    assert question_ids(load_splits(prepared, "train", "val", seed=4, **options)[0]) != first
    train.set_epoch(1)  # what the Trainer does at each pass
    second = question_ids(train)
    assert sorted(second) == sorted(stored) and second != first


def run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.slow
def test_two_processes_read_disjoint_shards_that_cover_the_split(tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    accelerate += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    script = [str(ROOT / "tests" / "streaming_ranks.py"), str(tmp_path)]
    options = ["--streaming", "--max_steps", "5", *STEPS, "--use_cpu", "true", "--per_device_train_batch_size", "8"]
    run([*accelerate, *script, *TINY_WORLD, *options, "--output_dir", str(tmp_path / "out")], tmp_path)
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [report["world_size"] for report in ranks] == [2, 2]
    seen = [report["question_ids"] for report in ranks]
    assert all(seen) and not set(seen[0]) & set(seen[1])
    assert all(len(ids) == len(set(ids)) for ids in seen)
    questions = datasets.load_from_disk(next((tmp_path / "cache").glob("lxmert_hf_toy/*/prepared/questions")))
    assert sorted(seen[0] + seen[1]) == sorted(int(q) for q in questions["train"]["question_id"])
    # Each process read its own shards (about half the split), not every batch of the main process.
    assert abs(len(seen[0]) - len(seen[1])) <= len(seen[0]) // 4


@pytest.mark.slow
def test_a_streaming_run_trains_and_evaluates(tmp_path):
    options = ["--streaming", "--max_steps", "4", *STEPS, "--eval_steps", "2", "--save_steps", "2"]
    options += ["--per_device_train_batch_size", "8", "--show_examples", "1", "--output_dir", str(tmp_path / "out")]
    result = run([sys.executable, str(ROOT / "recipes" / "vqa.py"), *TINY_WORLD, *options], tmp_path)
    metrics = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert 0.0 <= metrics["eval_vqa_accuracy"] <= 100.0
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [entry["step"] for entry in state["log_history"] if "eval_loss" in entry] == [2, 4]
    assert "Trained with 1 process(es)" in result.stdout
