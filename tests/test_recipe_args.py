"""The recipes' argument parsing: `--help`, YAML config files, command-line overrides, paper defaults."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from guards import HANG_GUARD_S

from lxmert_hf.training import make_parser, parse_args

ROOT = Path(__file__).resolve().parents[1]
TOY_YAML = ROOT / "recipes" / "configs" / "vqa_toy.yaml"


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


# -- layered config files -----------------------------------------------------------------------------------------
def _write(folder: Path, text: str, name: str = "run.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def _as_dicts(parsed) -> list[dict]:
    model_args, data_args, training_args = parsed
    return [dataclasses.asdict(model_args), dataclasses.asdict(data_args), training_args.to_dict()]


def test_a_config_file_changes_only_the_keys_it_names(tmp_path):
    toy = _as_dicts(parse_args([], default_config=TOY_YAML))
    short = _as_dicts(parse_args(["--config", _write(tmp_path, "num_train_epochs: 1\n")], default_config=TOY_YAML))
    assert short[2]["num_train_epochs"] == 1 and toy[2]["num_train_epochs"] == 8
    toy[2]["num_train_epochs"] = 1
    assert short == toy  # every other vqa_toy.yaml value (model size, splits, toy world, output_dir) is kept


def test_the_command_line_beats_every_file(tmp_path):
    first = _write(tmp_path, "num_train_epochs: 1\nlearning_rate: 2.0e-3\n", "first.yaml")
    second = _write(tmp_path, "learning_rate: 3.0e-3\n", "second.yaml")
    argv = ["--config", first, "--config", second, "--num_train_epochs", "3"]
    model_args, data_args, training_args = parse_args(argv, default_config=TOY_YAML)
    assert training_args.num_train_epochs == 3  # the flag over the first file
    assert training_args.learning_rate == 3e-3  # the second file over the first
    assert model_args.hidden_size == 128 and data_args.eval_split == "val"  # vqa_toy.yaml under both


@pytest.mark.parametrize(
    "file_text, flags, toy_defaults",
    [
        ("dataset: data/vqa\nnum_train_epochs: 1\n", [], False),
        ("num_train_epochs: 1\n", ["--dataset", "data/vqa"], False),
        ("dataset: data/vqa\n", ["--dataset", "toy"], True),
        ("dataset: toy\n", [], True),
    ],
)
def test_the_toy_defaults_follow_the_final_dataset(tmp_path, file_text, flags, toy_defaults):
    argv = ["--config", _write(tmp_path, file_text), *flags]
    model_args, data_args, training_args = parse_args(argv, default_config=TOY_YAML)
    toy_values = (128, "val", "outputs/toy-vqa", 1e-3)
    # No eval split yet: `check_splits` takes the first of the task's preferred splits the data has (minival).
    paper_values = (768, None, "outputs/vqa", 5e-5)
    got = (model_args.hidden_size, data_args.eval_split, training_args.output_dir, training_args.learning_rate)
    assert got == (toy_values if toy_defaults else paper_values)


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate: fast\n", r": `learning_rate: fast` is not a number \(float\)"),
        ("per_device_train_batch_size: 2.5\n", r": `per_device_train_batch_size: 2.5` is not an integer"),
        ("toy_mask_background: maybe\n", r": `toy_mask_background: maybe` is not true or false"),
        ("eval_strategy: sometimes\n", r": `eval_strategy: sometimes` is not one of no, steps, epoch"),
        ("num_train_epochs: 1\nlearning_rate: [1\n", r", line 3, column 1: not valid YAML: .*expected ',' or ']'"),
        ("learning_rate: !!python/object/apply:os.system ['true']\n",
         r", line 1, column 16: not valid YAML: could not determine a constructor .*python/object/apply:os.system"),
    ],
)  # fmt: skip
def test_bad_values_name_the_file_the_key_and_the_type(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=r"^Config file '.*run\.yaml'" + message) as caught:
        parse_args(["--config", path])
    assert "\n" not in str(caught.value)


def test_a_number_written_without_a_dot_is_a_number(tmp_path):
    # YAML reads 1e-4 as a string; the command line as a number: a config file follows the command line.
    _, _, training_args = parse_args(["--config", _write(tmp_path, "learning_rate: 1e-4\n"), "--output_dir", "o"])
    assert training_args.learning_rate == 1e-4


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--config", "{config}"], r"^vqa\.py: error: Config file '.*bad\.yaml': `learning_rate: fast` is not a"),
        (["--eval_split", "minival"], r"^vqa\.py: error: `--eval_split minival`: the toy world has no split "
                                      r"'minival'; it has \['test', 'train', 'val'\]\.$"),
    ],
)  # fmt: skip
def test_the_recipe_refuses_bad_arguments_in_one_line_before_any_work(tmp_path, flags, message):
    config = _write(tmp_path, "learning_rate: fast\n", "bad.yaml")
    cache = tmp_path / "cache"
    argv = [arg.format(config=config) for arg in flags] + ["--cache_dir", str(cache), "--output_dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "vqa.py"), *argv], capture_output=True, text=True,
        timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert result.returncode == 2
    assert re.match(message, result.stderr.strip()) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not cache.exists()  # no toy world generated


def test_a_split_the_prepared_data_lacks_is_named_with_the_ones_it_has(tmp_path):
    import datasets

    from lxmert_hf.data.builder import METADATA_NAME
    from lxmert_hf.training import check_splits

    (tmp_path / METADATA_NAME).write_text(json.dumps({"task": "vqa", "features": "features"}))
    questions = datasets.Dataset.from_dict({"question": ["is it?"]})
    datasets.DatasetDict({"train": questions, "minival": questions}).save_to_disk(str(tmp_path / "questions"))
    _, data_args, _ = parse_args(["--dataset", str(tmp_path), "--output_dir", "out"])
    check_splits(data_args)  # train and minival: the defaults
    _, data_args, _ = parse_args(["--dataset", str(tmp_path), "--train_split", "trainval", "--output_dir", "out"])
    with pytest.raises(ValueError, match=r"`--train_split trainval`: .* has no split 'trainval'; it has \['minival'"):
        check_splits(data_args)
