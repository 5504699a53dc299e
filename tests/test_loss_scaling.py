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
from tiny import random_inputs
from transformers import PreTrainedModel, TrainingArguments

import lxmert_hf
from lxmert_hf.base import LxmertTaskModel
from lxmert_hf.losses import answer_loss
from lxmert_hf.training import (
    VQATrainer,
    build_model,
    load_splits,
    load_tokenizer,
    parse_args,
    prepare_toy,
    toy_world_config,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "vqa.py"
TOY_CONFIG = ROOT / "recipes" / "configs" / "vqa_toy.yaml"
GLOBAL_BATCH = 16
# A small toy world, one optimizer step logged, and nothing else that costs time. About a quarter of its questions
# have no answer in its 4-answer vocabulary: the softmax loss leaves them out, so micro-batches hold different
# numbers of questions that count.
TINY_RUN = [
    "--toy_train_images", "8", "--toy_eval_images", "4", "--hidden_size", "32",
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
def test_every_model_of_the_library_normalizes_by_the_global_item_count(model_class):
    # The Trainer hands `num_items_in_batch` only to a model that says it takes it, and then trusts the model to
    # divide by it; it must also know which items the model's loss counts.
    # The class declines it for transformers' own Trainer (which would count label entries); VQATrainer takes it.
    assert issubclass(model_class, LxmertTaskModel) and model_class.accepts_loss_kwargs is False
    assert model_class is LxmertTaskModel or model_class.counted_in_loss is not LxmertTaskModel.counted_in_loss


SOFT_SCORES = torch.tensor([[0.0, 1.0, 0.3], [0.0, 0.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.9, 1.0]])
INDICES = torch.tensor([1, -100, 0, -100, 2])


@pytest.mark.parametrize("labels", [SOFT_SCORES, INDICES], ids=["soft_scores", "indices"])
@pytest.mark.parametrize("head_loss", ["softmax", "bce"])
def test_micro_batch_losses_add_up_to_the_loss_of_their_union(head_loss, labels):
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    model = lxmert_hf.LxmertForVQA(lxmert_hf.LxmertVQAConfig.from_answers(["a", "b", "c"], head_loss=head_loss))
    counted = int(model.counted_in_loss(labels).sum())
    # Uneven micro-batches: one without any question that counts.
    parts = [slice(0, 1), slice(1, 2), slice(2, 5)]
    summed = sum(answer_loss(logits[part], labels[part], head_loss, num_items_in_batch=counted) for part in parts)
    torch.testing.assert_close(summed, answer_loss(logits, labels, head_loss))
    expected = 3 if head_loss == "softmax" or labels is INDICES else 5
    assert counted == expected


@pytest.mark.parametrize("head_loss", ["softmax", "bce"])
def test_the_trainer_counts_the_questions_the_loss_counts(head_loss, tiny_config, tmp_path):
    tiny_config.head_loss = head_loss
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = VQATrainer(model=lxmert_hf.LxmertForVQA(tiny_config), args=args)
    assert trainer.model_accepts_loss_kwargs is True
    soft = torch.zeros(4, tiny_config.num_labels)
    soft[[0, 3], 1] = 0.6  # two of four questions have a target
    micro_batches = [{"labels": soft}, {"labels": torch.tensor([2, -100, 0])}]
    expected = 2 + 2 if head_loss == "softmax" else 4 + 2
    assert int(trainer._get_num_items_in_batch(micro_batches, trainer.args.device)) == expected


def test_transformers_own_trainer_averages_each_micro_batch(tiny_config, tmp_path):
    """With transformers' Trainer, which counts label entries (every answer of every soft-score row), the model
    takes no count: its loss is the micro-batch mean, not a sum divided by about the vocabulary size."""
    from transformers import Trainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    model = lxmert_hf.LxmertForVQA(tiny_config).eval()
    trainer = Trainer(model=model, args=args)
    assert trainer.model_accepts_loss_kwargs is False
    inputs = {**random_inputs(batch=4), "labels": torch.rand(4, tiny_config.num_labels)}
    loss = trainer.compute_loss(model, inputs, num_items_in_batch=torch.tensor(4 * tiny_config.num_labels))
    torch.testing.assert_close(loss, model(**inputs).loss)


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


def has_questions_without_target(start: dict[str, str]) -> bool:
    model_args, data_args, _ = parse_args([*TINY_RUN, "--output_dir", start["folder"]], default_config=TOY_CONFIG)
    root = prepare_toy(toy_world_config(data_args), start["cache"])
    tokenizer = load_tokenizer(model_args, default=str(root / "tokenizer"))
    train, _, _ = load_splits(root / "prepared", data_args.train_split, data_args.eval_split, tokenizer)
    return any(not any(train[index]["labels"]) for index in range(len(train)))


@pytest.mark.slow
@pytest.mark.parametrize("head_loss", ["softmax", "bce"])
def test_first_step_is_the_same_however_the_global_batch_is_split(start, head_loss):
    assert has_questions_without_target(start)  # else the softmax loss would split exactly by chance
    loss = ["--head_loss", head_loss]
    whole = first_step(start, f"{head_loss}-one", [], *loss, "--per_device_train_batch_size", str(GLOBAL_BATCH))
    half = [*loss, "--per_device_train_batch_size", str(GLOBAL_BATCH // 2)]
    accumulated = first_step(start, f"{head_loss}-accumulated", [], *half, "--gradient_accumulation_steps", "2")
    two_processes = first_step(start, f"{head_loss}-two", LAUNCH_TWO, *half)
    for run in (accumulated, two_processes):
        torch.testing.assert_close(run, whole, rtol=1e-4, atol=0.0)
