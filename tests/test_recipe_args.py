"""The recipes' argument parsing: `--help`, YAML config files, command-line overrides, paper defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from guards import HANG_GUARD_S

from lxmert_hf.training import make_parser, parse_args

ROOT = Path(__file__).resolve().parents[1]
TOY_YAML = ROOT / "recipes" / "configs" / "toy.yaml"


def test_help_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "vqa.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "--model_name_or_path" in result.stdout and "--head_loss" in result.stdout


def test_paper_defaults():
    model_args, data_args, training_args = parse_args(["--output_dir", "out"])
    assert training_args.learning_rate == 5e-5 and training_args.per_device_train_batch_size == 32
    assert training_args.num_train_epochs == 4 and training_args.warmup_steps == 0.1
    assert training_args.weight_decay == 0.01 and training_args.max_grad_norm == 5.0
    assert training_args.lr_scheduler_type == "linear" and training_args.eval_strategy == "epoch"
    assert training_args.load_best_model_at_end and training_args.metric_for_best_model == "vqa_accuracy"
    assert data_args.max_question_length == 20 and model_args.head_loss == "softmax"


def test_config_file_then_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1.0e-4\nhidden_size: 64\nnum_train_epochs: 2\n")
    model_args, _, training_args = parse_args(["--config", str(config), "--num_train_epochs", "3"])
    assert training_args.learning_rate == 1e-4 and model_args.hidden_size == 64
    assert training_args.num_train_epochs == 3  # the flag wins over the file


def test_default_config_applies_without_config_flag():
    model_args, data_args, training_args = parse_args([], default_config=TOY_YAML)
    assert (
        data_args.dataset == "toy" and model_args.hidden_size < 768 and training_args.output_dir == "outputs/toy-vqa"
    )


def test_unknown_key_is_named(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rat: 1.0e-4\n")
    with pytest.raises(ValueError, match=r"Unknown key 'learning_rat'.*Did you mean 'learning_rate'"):
        parse_args(["--config", str(config)])


@pytest.mark.parametrize("content, message", [("- a\n- b\n", "must hold a mapping"), (None, "does not exist")])
def test_bad_config_files(tmp_path, content, message):
    config = tmp_path / "run.yaml"
    if content is not None:
        config.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        parse_args(["--config", str(config)])


@pytest.mark.parametrize(
    "flags, message",
    [(["--dropout", "1.0"], r"--dropout.*\[0, 1\)"), (["--initializer_range", "0"], "--initializer_range.*positive")],
)
def test_bad_model_arguments(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args(flags)


def test_from_scratch_model_takes_its_initializer_range():
    from lxmert_hf.training.trainer import build_model

    model_args, _, _ = parse_args(["--hidden_size", "32", "--num_attention_heads", "2", "--intermediate_size", "64",
                                   "--l_layers", "1", "--x_layers", "1", "--r_layers", "0",
                                   "--initializer_range", "0.1"])  # fmt: skip

    class Tokenizer:
        pad_token_id = 0

        def __len__(self):
            return 50

    model = build_model(model_args, ["yes", "no"], Tokenizer())
    assert model.config.initializer_range == 0.1
    std = model.lxmert.encoder.visn_fc.visn_fc.weight.std().item()
    assert 0.08 < std < 0.12  # drawn with the wider spread, not the default 0.02


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--early_stopping_patience", "0"], "--early_stopping_patience` must be 1 or more"),
        (["--early_stopping_patience", "2", "--early_stopping_threshold", "-1"], "must be 0 or more"),
        (["--early_stopping_patience", "2", "--load_best_model_at_end", "false"], "needs `--load_best_model_at_end"),
        (["--early_stopping_patience", "2", "--eval_strategy", "no", "--save_strategy", "no",
          "--load_best_model_at_end", "false"], "an `--eval_strategy` other than no"),
    ],
)  # fmt: skip
def test_early_stopping_needs_evaluations_and_the_best_checkpoint(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--output_dir", "out", *flags])


def test_early_stopping_reaches_the_trainer():
    import datasets
    from transformers import EarlyStoppingCallback

    from lxmert_hf.training.trainer import build_trainer

    stopping = ["--early_stopping_patience", "3", "--early_stopping_threshold", "0.5"]
    _, data_args, training_args = parse_args(["--output_dir", "out", "--use_cpu", "true", *stopping])

    class Model(torch.nn.Module):
        config = type("Config", (), {"id2label": {0: "yes"}})()

    questions = datasets.Dataset.from_dict({"question": ["is it?"], "answers": [["yes"] * 10]})
    trainer = build_trainer(Model(), None, training_args, data_args, questions, questions)
    stopping = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
    assert [(c.early_stopping_patience, c.early_stopping_threshold) for c in stopping] == [(3, 0.5)]


def test_help_names_the_run_options():
    help_text = make_parser().format_help()
    for flag in ("--resume_from_checkpoint", "--overwrite_output_dir", "--early_stopping_patience", "--toy_seed"):
        assert flag in help_text
    assert "the newest complete one in --output_dir" in " ".join(help_text.split())
