"""`recipes/pretrain.py` on the toy world: with no `--sources` it pre-trains on the toy VQA world's captions and
questions and then fine-tunes toy VQA from the result and from scratch; and pre-training learns: every objective's
loss falls and the matching accuracy rises well above chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_pretrain_recipe import load_recipe

TINY_TOY = [
    "--toy_train_images", "48", "--toy_eval_images", "16", "--hidden_size", "32", "--num_attention_heads", "2",
    "--intermediate_size", "64", "--per_device_train_batch_size", "32", "--report_to", "none", "--use_cpu", "true",
]  # fmt: skip


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("toy")


def test_the_toy_run_compares_fine_tuning_from_the_pre_trained_model_and_from_scratch(tmp_path, toy_cache, capsys):
    out = tmp_path / "pretrain"
    metrics = load_recipe().main([*TINY_TOY, "--num_train_epochs", "1", "--finetune_epochs", "1",
                                  "--cache_dir", str(toy_cache), "--output_dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "Toy VQA accuracy after 1 epoch(s) of fine-tuning" in printed
    assert {"finetuned_vqa_accuracy", "scratch_vqa_accuracy", "eval_matching_accuracy"} <= set(metrics)
    # Both arms fine-tuned the same world and the same architecture; only the start differs.
    pretrained = json.loads((out / "finetune-finetuned" / "config.json").read_text())
    scratch = json.loads((out / "finetune-scratch" / "config.json").read_text())
    for key in ("hidden_size", "num_attention_heads", "intermediate_size", "l_layers", "x_layers", "r_layers"):
        assert pretrained[key] == scratch[key], key
    assert pretrained["id2label"] == scratch["id2label"]


def _toy_store(toy_cache: Path, **world) -> Path:
    from lxmert_hf.toy import ToyWorldConfig
    from lxmert_hf.training.data import prepare_toy

    sizes = {"train": world.pop("train", 2000), "validation": world.pop("validation", 250)}
    return prepare_toy(ToyWorldConfig(num_images=sizes, mask_background=True, **world), toy_cache)


TOY_MODEL = [
    "--hidden_size", "128", "--num_attention_heads", "4", "--intermediate_size", "256", "--l_layers", "1",
    "--x_layers", "1", "--r_layers", "0", "--dropout", "0.0", "--initializer_range", "0.1",
    "--num_object_labels", "5", "--num_attr_labels", "7", "--per_device_train_batch_size", "64",
    "--per_device_eval_batch_size", "256", "--learning_rate", "5e-4", "--warmup_steps", "0.05",
    "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", "--seed", "42",
]  # fmt: skip


def _sources(root: Path, *, questions: bool) -> list[str]:
    from lxmert_hf.toy import CAPTIONS_FILE

    train = [f"captions:{root / 'raw' / CAPTIONS_FILE.format(split='train')}"]
    held_out = [f"captions:{root / 'raw' / CAPTIONS_FILE.format(split='val')}"]
    if questions:
        train.append(f"prepared:{root / 'prepared'}@train")
        held_out.append(f"prepared:{root / 'prepared'}@val")
    return [
        "--sources", *train, "--eval_sources", *held_out, "--features", str(root / "prepared" / "features"),
        "--tokenizer_name", str(root / "tokenizer"),
    ]  # fmt: skip


def _first_and_last(history: list[dict], key: str) -> tuple[float, float]:
    values = [entry[key] for entry in history if key in entry]
    assert len(values) >= 4, key
    # Means of the first and last quarter of the logs: one log of a few steps is noisy.
    quarter = len(values) // 4
    return sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter


@pytest.mark.slow
def test_pre_training_learns_each_objective_and_matching_above_chance(toy_cache, tmp_path):
    # Matching is the slowest objective to learn on the toy world: on its captions, with the other objectives
    # beside it, it leaves chance after about 800 steps (mixed with the questions, many more). Ten epochs of the
    # captions of 2,000 images, at a constant rate after the warm-up, take it well above chance.
    root = _toy_store(toy_cache)
    out = tmp_path / "captions"
    metrics = load_recipe().main([
        *_sources(root, questions=False), *TOY_MODEL, "--task_qa", "false", "--num_train_epochs", "10",
        "--lr_scheduler_type", "constant_with_warmup", "--logging_steps", "25", "--eval_strategy", "no",
        "--output_dir", str(out),
    ])  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    for name in ("lm", "matched", "obj", "attr", "feat"):
        first, last = _first_and_last(history, f"{name}_loss")
        assert last < first, (name, first, last)
    assert metrics["eval_matching_accuracy"] > 56.0, metrics
    assert metrics["eval_masked_lm_accuracy"] > 50.0, metrics


@pytest.mark.slow
def test_pre_training_learns_question_answering(toy_cache, tmp_path):
    root = _toy_store(toy_cache, train=400, validation=100)
    out = tmp_path / "questions"
    metrics = load_recipe().main([
        *_sources(root, questions=True), *TOY_MODEL, "--num_train_epochs", "3", "--qa_from_epoch", "1",
        "--logging_steps", "10", "--eval_strategy", "no", "--output_dir", str(out),
    ])  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    first, last = _first_and_last(history, "qa_loss")
    assert last < first, (first, last)
    # QA joined at epoch 1: no QA loss is logged before.
    assert min(entry["epoch"] for entry in history if "qa_loss" in entry) > 1.0
    assert metrics["eval_qa_accuracy"] > 0.0
