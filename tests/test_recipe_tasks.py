"""The recipe family: one `Task` per task, each recipe's defaults, config files, `--help`, evaluation split, report,
and the refusal of a prepared directory of another task."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from data_factory import gqa_official, make_store
from guards import HANG_GUARD_S

from lxmert_hf.data import prepare_gqa
from lxmert_hf.data.builder import METADATA_NAME
from lxmert_hf.training import TASKS, ModelArguments, check_splits, format_report, parse_args
from lxmert_hf.training.recipe import check_model_arguments, toy_config_path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
# The original run scripts (airsplay/lxmert run/<task>_finetune.bash): the learning rate of each task; all three
# use batch 32, 4 epochs and BertAdam (AdamW, 10% linear warm-up then linear decay) with clipping 5.0.
PAPER_LEARNING_RATE = {"vqa": 5e-5, "gqa": 1e-5, "nlvr2": 5e-5}


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=ROOT)


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", RECIPES / f"{name}.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def fake_prepared(folder: Path, task: str, splits: list[str]) -> Path:
    """A prepared directory's metadata and question splits (no features: nothing here reads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METADATA_NAME).write_text(json.dumps({"task": task, "features": "features"}))
    questions = datasets.Dataset.from_dict({"question": ["is it?"]})
    datasets.DatasetDict({name: questions for name in splits}).save_to_disk(str(folder / "questions"))
    return folder


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_a_short_recipe_and_its_configs(name):
    recipe = RECIPES / f"{name}.py"
    assert len(recipe.read_text().splitlines()) <= 40  # the recipe is its docstring and one call
    assert toy_config_path(name, recipe) == RECIPES / "configs" / f"{name}_toy.yaml"
    assert (RECIPES / "configs" / f"{name}_toy.yaml").is_file() and (RECIPES / "configs" / f"{name}.yaml").is_file()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_paper_defaults_of_each_task(name):
    task = TASKS[name]
    _, data_args, training_args = parse_args(["--dataset", "data/x"], toy_config_path(name, RECIPES / "x"), task)
    assert training_args.learning_rate == PAPER_LEARNING_RATE[name]
    assert (training_args.per_device_train_batch_size, training_args.num_train_epochs) == (32, 4)
    assert (training_args.warmup_steps, training_args.lr_scheduler_type, training_args.max_grad_norm) == (
        0.1, "linear", 5.0,
    )  # fmt: skip
    assert str(training_args.optim.value).startswith("adamw") and training_args.metric_for_best_model == task.metric
    assert training_args.output_dir == f"outputs/{name}" and data_args.eval_split is None


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shipped_configs_of_each_task(name):
    task = TASKS[name]
    paper = RECIPES / "configs" / f"{name}.yaml"
    model_args, data_args, training_args = parse_args(["--config", str(paper), "--dataset", "data/x"], task=task)
    assert model_args.model_name_or_path == "unc-nlp/lxmert-base-uncased"
    assert training_args.learning_rate == PAPER_LEARNING_RATE[name] and data_args.eval_split == task.eval_splits[0]
    assert training_args.metric_for_best_model == task.metric
    # The toy settings apply with no --dataset: a small model, the task's toy output folder.
    model_args, data_args, training_args = parse_args([], toy_config_path(name, RECIPES / "x"), task)
    assert data_args.dataset == "toy" and model_args.hidden_size < 768
    assert training_args.output_dir == f"outputs/toy-{name}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASKS))
def test_help_of_each_recipe_shows_its_defaults(name):
    result = run_script(str(RECIPES / f"{name}.py"), "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "--config" in text and "--model_name_or_path" in text
    assert f"first of {', '.join(TASKS[name].eval_splits)} that the data has" in text
    assert re.search(rf"--metric_for_best_model .*\(default: {TASKS[name].metric}\)", text)


def test_config_layering_of_gqa(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 3.0e-5\nnum_train_epochs: 2\n")
    argv = ["--dataset", "data/gqa", "--config", str(config), "--num_train_epochs", "3"]
    _, _, training_args = parse_args(argv, toy_config_path("gqa", RECIPES / "x"), TASKS["gqa"])
    assert training_args.learning_rate == 3e-5 and training_args.num_train_epochs == 3
    assert training_args.metric_for_best_model == "gqa_accuracy"  # the task's, under the file


@pytest.mark.parametrize(
    "splits, expected",
    [(["train", "val", "testdev"], "testdev"), (["train", "val"], "val"), (["train", "valid"], "valid")],
)
def test_gqa_evaluates_on_testdev_when_prepared(tmp_path, splits, expected):
    prepared = fake_prepared(tmp_path / "gqa", "gqa", splits)
    _, data_args, _ = parse_args(["--dataset", str(prepared)], task=TASKS["gqa"])
    check_splits(data_args, "gqa")
    assert data_args.eval_split == expected


def test_no_preferred_eval_split_is_named(tmp_path):
    prepared = fake_prepared(tmp_path / "gqa", "gqa", ["train", "submission"])
    _, data_args, _ = parse_args(["--dataset", str(prepared)], task=TASKS["gqa"])
    message = r"`--eval_split`: .* has none of the splits GQA is evaluated on \(testdev, val, valid\); it has"
    with pytest.raises(ValueError, match=message):
        check_splits(data_args, "gqa")


@pytest.mark.parametrize("found, recipe", [("nlvr2", "vqa")])
def test_a_directory_of_another_task_is_refused_in_one_line(tmp_path, found, recipe):
    prepared = fake_prepared(tmp_path / found, found, ["train", "valid"])
    argv = [str(RECIPES / f"{recipe}.py"), "--dataset", str(prepared), "--output_dir", str(tmp_path / "out")]
    result = run_script(*argv)
    assert result.returncode == 2
    title, expected_title = TASKS[found].title, TASKS[recipe].title
    expected = (
        f"{recipe}.py: error: `--dataset {prepared}` holds prepared {title} data ({METADATA_NAME}: task "
        f"'{found}'), but {recipe}.py trains {expected_title}: run recipes/{found}.py --dataset {prepared}, or pass "
        f"a directory made by `lxmert-hf prepare {recipe}`."
    )
    assert result.stderr.strip() == expected
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("found, recipe", [("vqa", "gqa"), ("gqa", "nlvr2"), ("nlvr2", "gqa")])
def test_check_splits_names_the_task_of_the_directory(tmp_path, found, recipe):
    prepared = fake_prepared(tmp_path / found, found, ["train", "valid", "minival", "testdev"])
    _, data_args, _ = parse_args(["--dataset", str(prepared)], task=TASKS[recipe])
    message = rf"holds prepared {TASKS[found].title} data .* run recipes/{found}\.py --dataset"
    with pytest.raises(ValueError, match=message):
        check_splits(data_args, recipe)


@pytest.mark.parametrize("splits, expected", [(["train", "valid", "dev"], "valid"), (["train", "dev"], "dev")])
def test_nlvr2_evaluates_on_valid_else_dev(tmp_path, splits, expected):
    prepared = fake_prepared(tmp_path / "nlvr2", "nlvr2", splits)
    _, data_args, _ = parse_args(["--dataset", str(prepared)], task=TASKS["nlvr2"])
    check_splits(data_args, "nlvr2")
    assert data_args.eval_split == expected


@pytest.mark.parametrize(
    "model_flags, message",
    [
        ({"pretrain_answers": "all_ans.json"}, r"`--pretrain_answers`: NLVR2 has no answer vocabulary"),
        ({"head_loss": "bce"}, r"`--head_loss bce`: NLVR2's classifier is trained with cross-entropy"),
    ],
)
def test_answer_head_options_are_refused_for_nlvr2(model_flags, message):
    with pytest.raises(ValueError, match=message):
        check_model_arguments(TASKS["nlvr2"], ModelArguments(**model_flags), "nlvr2_accuracy")
    check_model_arguments(TASKS["nlvr2"], ModelArguments(), "nlvr2_consistency")


def test_a_metric_of_another_task_is_refused():
    with pytest.raises(ValueError, match=r"`--metric_for_best_model vqa_accuracy` is not a GQA metric: pass gqa_acc"):
        check_model_arguments(TASKS["gqa"], ModelArguments(), "vqa_accuracy")
    check_model_arguments(TASKS["gqa"], ModelArguments(), "eval_gqa_accuracy_query")
    check_model_arguments(TASKS["vqa"], ModelArguments(), "vqa_soft_score")
    check_model_arguments(TASKS["vqa"], ModelArguments(), "loss")


def test_gqa_report_per_structural_type():
    metrics = {
        "eval_gqa_accuracy": 81.5, "eval_gqa_accuracy_query": 70.0, "eval_gqa_accuracy_verify": 93.0,
        "eval_question_only_gqa_accuracy": 40.25, "eval_question_only_gqa_accuracy_query": 20.0,
        "eval_question_only_gqa_accuracy_verify": 60.5,
    }  # fmt: skip
    lines = format_report(metrics, "gqa").splitlines()
    assert lines[0] == "GQA accuracy, %"
    assert lines[1].split() == ["structural", "type", "LXMERT", "question", "only"]
    assert [line.split() for line in lines[3:]] == [
        ["overall", "81.50", "40.25"], ["query", "70.00", "20.00"], ["verify", "93.00", "60.50"],
    ]  # fmt: skip


def test_nlvr2_report_accuracy_and_consistency():
    metrics = {
        "eval_nlvr2_accuracy": 84.0, "eval_nlvr2_consistency": 52.5,
        "eval_sentence_only_nlvr2_accuracy": 50.5, "eval_sentence_only_nlvr2_consistency": 1.25,
    }  # fmt: skip
    lines = format_report(metrics, "nlvr2").splitlines()
    assert lines[0] == "NLVR2 accuracy, %" and lines[1].split() == ["metric", "LXMERT", "sentence", "only"]
    assert [line.split() for line in lines[3:]] == [["accuracy", "84.00", "50.50"], ["consistency", "52.50", "1.25"]]


# -- GQA end to end on a small prepared directory --------------------------------------------------------------------
TINY_MODEL = [
    "--hidden_size", "32", "--num_attention_heads", "2", "--intermediate_size", "64", "--l_layers", "1",
    "--x_layers", "1", "--r_layers", "0", "--per_device_train_batch_size", "4", "--max_steps", "2",
    "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
    "--logging_steps", "1", "--use_cpu", "true", "--show_examples", "2",
]  # fmt: skip


@pytest.fixture
def gqa_dir(tmp_path, tiny_tokenizer):
    images = [f"n{index}" for index in range(6)]
    make_store(tmp_path / "store", images, dim=2048)  # a new model's region features: 2048, as the detector's
    triples = [
        (f"{index}{k}", image, ["yes", "no", "cube"][k]) for index, image in enumerate(images) for k in range(3)
    ]
    train = gqa_official(tmp_path / "train_balanced_questions.json", triples)
    testdev = gqa_official(tmp_path / "testdev_balanced_questions.json", [(f"t{q}", i, a) for q, i, a in triples[:6]])
    splits = {"train": [train], "testdev": [testdev]}
    prepare_gqa(tmp_path / "gqa", splits, features_dir=tmp_path / "store", cache_dir=tmp_path / "c", progress=False)
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    return tmp_path


def test_gqa_recipe_runs_on_prepared_gqa(gqa_dir, capsys):
    recipe = load_recipe("gqa")
    out = gqa_dir / "out"
    argv = [
        "--dataset",
        str(gqa_dir / "gqa"),
        "--tokenizer_name",
        str(gqa_dir / "tokenizer"),
        "--output_dir",
        str(out),
    ]
    metrics = recipe.main([*argv, *TINY_MODEL])
    assert {"eval_gqa_accuracy", "eval_gqa_accuracy_query", "eval_question_only_gqa_accuracy"} <= set(metrics)
    assert all(0.0 <= value <= 100.0 for value in metrics.values())
    printed = capsys.readouterr().out
    assert "GQA accuracy, %" in printed and printed.count("truth:") == 2 and "(query)" in printed
    card = (out / "README.md").read_text()
    assert "gqa" in card and "gqa_accuracy (%)" in card and "toy" not in card
    assert "recipes/gqa.py --dataset" in card
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["best_metric"] is not None and "eval_gqa_accuracy" in state["log_history"][-1]


# -- the report is what `lxmert-hf evaluate` prints for the checkpoint's predictions ----------------------------------
TINY_TOY = [
    "--toy_train_images", "48", "--toy_eval_images", "16", "--hidden_size", "32", "--num_attention_heads", "2",
    "--intermediate_size", "64", "--max_steps", "6", "--eval_strategy", "no", "--save_strategy", "no",
    "--load_best_model_at_end", "false", "--logging_steps", "3", "--use_cpu", "true", "--show_examples", "0",
    "--question_only_baseline", "false",
]  # fmt: skip
# The official files of each toy world's evaluation split, and how `lxmert-hf evaluate` is pointed at them.
EVALUATE = {
    "gqa": (
        "testdev",
        "testdev_predict.json",
        ["evaluate", "gqa", "--questions", "{raw}/testdev_balanced_questions.json"],
    ),
    "nlvr2": ("valid", "valid_predict.csv", ["evaluate", "nlvr2", "--annotations", "{raw}/valid.json"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EVALUATE))
def test_recipe_report_is_what_evaluate_prints_for_its_predictions(tmp_path, name):
    from lxmert_hf.cli import main as cli
    from lxmert_hf.training import prepare_toy, toy_world_config

    argv = [*TINY_TOY, "--cache_dir", str(tmp_path / "toy"), "--output_dir", str(tmp_path / "out")]
    metrics = load_recipe(name).main(argv)
    _, data_args, _ = parse_args(argv, toy_config_path(name, RECIPES / f"{name}.py"), TASKS[name])
    world = TASKS[name].toy_world
    root = prepare_toy(toy_world_config(data_args, world), data_args.cache_dir, world)  # the cached world
    split, predictions, evaluate = EVALUATE[name]
    predictions = tmp_path / predictions
    predict = ["predict", "--model", str(tmp_path / "out"), "--prepared", str(root / "prepared"), "--split", split]
    assert cli([*predict, "--output", str(predictions), "--no-progress"]) == 0
    evaluate = [arg.format(raw=root / "raw") for arg in evaluate]
    assert cli([*evaluate, "--predictions", str(predictions), "--output", str(tmp_path / "official.json")]) == 0
    official = json.loads((tmp_path / "official.json").read_text())
    expected = {f"eval_{name}_accuracy": official["accuracy"]}
    if "consistency" in official:
        expected[f"eval_{name}_consistency"] = official["consistency"]
    for kind, value in official.get("accuracyPerStructuralType", {}).items():
        expected[f"eval_{name}_accuracy_{kind}"] = value
    assert {key: metrics[key] for key in expected} == expected
