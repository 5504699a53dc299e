"""The loss and gradient a run logs do not depend on how its global batch is split: over processes, over
gradient-accumulation steps, or neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from guards import HANG_GUARD_S
from transformers import PreTrainedModel, Trainer, TrainingArguments

import lxmert_hf
from lxmert_hf.base import LxmertTaskModel
from lxmert_hf.training import build_model, load_splits, load_tokenizer, parse_args, prepare_toy, toy_world_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "vqa.py"
TOY_CONFIG = ROOT / "recipes" / "configs" / "toy.yaml"
GLOBAL_BATCH = 16
# A small toy world, one optimizer step logged, and nothing else that costs time. The paper's loss averages over
# every question of a batch; the softmax loss leaves out questions none of whose answers is in the vocabulary, so
# micro-batches holding different numbers of those would average differently from their union.
TINY_RUN = [
    "--head_loss", "bce", "--toy_train_images", "8", "--toy_eval_images", "4", "--hidden_size", "32",
    "--num_attention_heads", "2", "--intermediate_size", "64", "--max_steps", "1", "--logging_steps", "1",
    "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end", "false",
    "--question_only_baseline", "false", "--show_examples", "0", "--per_device_eval_batch_size", "64",
    "--use_cpu", "true", "--report_to", "none",
]  # fmt: skip
LAUNCH_TWO = [
    "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip


def library_models() -> list[type[PreTrainedModel]]:
    """Every model class the package defines."""
    found, pending = [], [PreTrainedModel]
    while pending:
        for subclass in pending.pop().__subclasses__():
            pending.append(subclass)
            if subclass.__module__.startswith("lxmert_hf."):
                found.append(subclass)
    return found


@pytest.mark.parametrize("model_class", library_models(), ids=lambda cls: cls.__name__)
def test_every_model_of_the_library_normalizes_its_own_loss(model_class):
    # A model that says it takes `num_items_in_batch` is trusted to normalize the loss by it; ours average per batch.
    assert issubclass(model_class, LxmertTaskModel) and model_class.accepts_loss_kwargs is False


def test_the_trainer_divides_our_loss_by_the_accumulation_steps(tiny_config, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = Trainer(model=lxmert_hf.LxmertForVQA(tiny_config), args=args)
    assert trainer.model_accepts_loss_kwargs is False


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> dict[str, str]:
    """A saved tiny model for the toy world of `TINY_RUN`, so that every run starts from the same weights."""
    folder = tmp_path_factory.mktemp("loss_scaling")
    cache = folder / "toy"
    model_args, data_args, _ = parse_args([*TINY_RUN, "--output_dir", str(folder)], default_config=TOY_CONFIG)
    root = prepare_toy(toy_world_config(data_args), cache)
    tokenizer = load_tokenizer(model_args, default=str(root / "tokenizer"))
    _, _, answers = load_splits(root / "prepared", data_args.train_split, data_args.eval_split, tokenizer)
    model = build_model(model_args, answers, tokenizer)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return {"model": str(folder / "model"), "cache": str(cache), "folder": str(folder)}


def first_step(start: dict[str, str], name: str, launcher: list[str], *options: str) -> dict[str, float]:
    """The loss and gradient norm the recipe logs at its first optimizer step."""
    output = Path(start["folder"]) / name
    command = [sys.executable, *launcher, str(RECIPE), *TINY_RUN, *options, "--output_dir", str(output)]
    command += ["--model_name_or_path", start["model"], "--cache_dir", start["cache"]]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    history = json.loads((output / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
    logged = next(entry for entry in history if entry.get("step") == 1 and "loss" in entry)
    return {"loss": logged["loss"], "grad_norm": logged["grad_norm"]}


@pytest.mark.slow
def test_first_step_is_the_same_however_the_global_batch_is_split(start):
    whole = first_step(start, "one", [], "--per_device_train_batch_size", str(GLOBAL_BATCH))
    half = ["--per_device_train_batch_size", str(GLOBAL_BATCH // 2)]
    accumulated = first_step(start, "accumulated", [], *half, "--gradient_accumulation_steps", "2")
    two_processes = first_step(start, "two", LAUNCH_TWO, *half)
    for run in (accumulated, two_processes):
        torch.testing.assert_close(run, whole, rtol=1e-4, atol=0.0)
