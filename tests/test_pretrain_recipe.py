"""`recipes/pretrain.py` on generated data: each objective logged, held-out accuracies, QA from its epoch, a saved
model that the task recipes fine-tune with the QA-head transplant, exact resume, two processes, and the refusals of
bad input (one line, exit 2, before any work)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from guards import HANG_GUARD_S
from safetensors.torch import load_file
from test_pretraining_data import write_store

from lxmert_hf import LxmertForVQA

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "pretrain.py"
ANSWERS = ["yes", "no", "2", "red", "cube"]
WORDS = ["a", "red", "cube", "is", "there", "blue", "ball", "how", "many", "what", "color", "the", "on", "left"]
TINY_MODEL = [
    "--hidden_size", "32", "--num_attention_heads", "2", "--intermediate_size", "64", "--l_layers", "1",
    "--x_layers", "1", "--r_layers", "1", "--num_object_labels", "20", "--num_attr_labels", "10",
]  # fmt: skip


def load_recipe():
    spec = importlib.util.spec_from_file_location("pretrain_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lxmert_records(images: list[str], offset: int = 0) -> list[dict]:
    """Records of the original data/lxmert/*.json: two captions and two answered questions per image."""
    records = []
    for index, image_id in enumerate(images):
        color = ("red", "blue")[(index + offset) % 2]
        records.append({
            "img_id": image_id,
            "sentf": {
                "mscoco": [f"a {color} cube on the left", f"there is a {color} ball"],
                "vqa": ["what color is the cube", "how many balls are there"],
            },
            "labelf": {"vqa": [{color: 1.0}, {"2": 0.6, "no": 0.3}]},
        })  # fmt: skip
    return records


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretraining")
    images = [f"img{index}" for index in range(16)]
    write_store(root / "store", {image_id: 3 + index % 3 for index, image_id in enumerate(images)})
    (root / "train.json").write_text(json.dumps(lxmert_records(images[:10])))
    (root / "val.json").write_text(json.dumps(lxmert_records(images[10:], offset=1)))
    (root / "answers.json").write_text(json.dumps(ANSWERS))
    from transformers import BertTokenizer

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={word: index for index, word in enumerate(vocabulary)}).save_pretrained(root / "tokenizer")
    return {name: root / name for name in ("store", "train.json", "val.json", "answers.json", "tokenizer")} | {
        "cache": root / "cache"
    }


def arguments(data: dict[str, Path], out: Path, *flags: str) -> list[str]:
    return [
        "--sources", f"lxmert:{data['train.json']}", "--eval_sources", f"lxmert:{data['val.json']}",
        "--features", str(data["store"]), "--qa_answers", str(data["answers.json"]),
        "--tokenizer_name", str(data["tokenizer"]), "--cache_dir", str(data["cache"]), *TINY_MODEL,
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--max_steps", "8",
        "--qa_from_epoch", "1", "--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "4",
        "--save_steps", "4", "--logging_steps", "1", "--learning_rate", "1e-3", "--warmup_steps", "0",
        "--report_to", "none", "--use_cpu", "true", "--seed", "3", *flags, "--output_dir", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def whole_run(data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "whole"
    metrics = load_recipe().main(arguments(data, out))
    return out, metrics


def test_each_objective_is_logged_and_qa_joins_at_its_epoch(whole_run):
    out, metrics = whole_run
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    training = [entry for entry in history if "loss" in entry]
    assert len(training) == 8
    for entry in training:
        for name in ("lm", "matched", "obj", "attr", "feat"):
            assert f"{name}_loss" in entry, (name, entry)
    # 40 sentences in batches of 8: epoch 1, from which QA counts, starts at step 6.
    assert [entry["step"] for entry in training if "qa_loss" in entry] == [6, 7, 8]
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in training)
    for key in ("masked_lm_accuracy", "matching_accuracy", "object_accuracy", "attribute_accuracy", "qa_accuracy",
                "lm_loss", "qa_loss", "feat_loss"):  # fmt: skip
        assert f"eval_{key}" in metrics, key
    evaluations = [entry for entry in history if "eval_matching_accuracy" in entry]
    assert [entry["step"] for entry in evaluations] == [4, 8]


def test_the_saved_model_fine_tunes_from_its_qa_head(whole_run):
    out, _ = whole_run
    assert json.loads((out / "pretrain_answers.json").read_text()) == ANSWERS
    assert json.loads((out / "checkpoint-4" / "pretrain_answers.json").read_text()) == ANSWERS
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LxmertForPreTraining"]
    model = LxmertForVQA.from_pretrained(
        out, answers=["red", "green"], pretrain_answers=str(out / "pretrain_answers.json")
    )
    saved = load_file(out / "model.safetensors")
    head = saved["answer_head.logit_fc.3.weight"]
    torch.testing.assert_close(model.classifier[-1].weight[0], head[ANSWERS.index("red")])
    assert "transplanted 1 of 2 answers" in str(model.answer_head_transplant)


def test_a_resumed_run_ends_as_the_uninterrupted_one(data, whole_run, tmp_path):
    whole, _ = whole_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-4", resumed / "checkpoint-4")
    load_recipe().main(arguments(data, resumed, "--resume_from_checkpoint", "last"))
    ours, theirs = load_file(resumed / "model.safetensors"), load_file(whole / "model.safetensors")
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], msg=lambda message, name=name: f"{name}: {message}")


def run_recipe_process(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RECIPE), *argv], capture_output=True, text=True, cwd=ROOT, timeout=HANG_GUARD_S,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing_image", r"refer to images that are not in the feature store.*img99"),
        ("no_labels", r"object-label classification.*lxmert-hf extract"),
        ("empty", r"holds no sentences"),
        ("no_answers", r"--task_qa.*needs the QA head's answers"),
        ("label_ids", r"object_ids up to 1\d, but the model's num_object_labels is 5: pass `--num_object_labels"),
    ],
)
def test_bad_input_stops_with_one_line(data, tmp_path, change, message):
    argv = arguments(data, tmp_path / "out")
    if change == "missing_image":
        records = lxmert_records(["img1", "img99"])
        (tmp_path / "train.json").write_text(json.dumps(records))
        argv[argv.index(f"lxmert:{data['train.json']}")] = f"lxmert:{tmp_path / 'train.json'}"
    elif change == "no_labels":
        write_store(tmp_path / "bare", {f"img{index}": 3 for index in range(16)}, labels=False)
        argv[argv.index(str(data["store"]))] = str(tmp_path / "bare")
    elif change == "empty":
        (tmp_path / "empty.jsonl").write_text("")
        argv[argv.index(f"lxmert:{data['train.json']}")] = f"captions:{tmp_path / 'empty.jsonl'}"
    elif change == "no_answers":
        position = argv.index("--qa_answers")
        del argv[position : position + 2]
    else:
        argv[argv.index("--num_object_labels") + 1] = "5"
    result = run_recipe_process(*argv)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert re.search(message, last), last
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_missing_images_can_be_skipped_and_counted(data, tmp_path, caplog):
    records = lxmert_records([f"img{index}" for index in range(10)] + ["img99"])
    (tmp_path / "train.json").write_text(json.dumps(records))
    argv = arguments(data, tmp_path / "out", "--skip_missing_images", "true", "--max_steps", "2",
                     "--eval_strategy", "no", "--save_strategy", "no")  # fmt: skip
    argv[argv.index(f"lxmert:{data['train.json']}")] = f"lxmert:{tmp_path / 'train.json'}"
    with caplog.at_level("WARNING"):
        load_recipe().main(argv)
    assert "skipped 4 of 44 pre-training sentences" in caplog.text


@pytest.mark.slow
def test_two_processes_pretrain_together(data, tmp_path):
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE),
    ]  # fmt: skip
    out = tmp_path / "out"
    result = subprocess.run(
        [*launch, *arguments(data, out, "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2")],
        capture_output=True, text=True, cwd=ROOT, timeout=HANG_GUARD_S,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "Pre-trained with 2 process(es)" in result.stdout
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert all("obj_loss" in entry for entry in history if "loss" in entry)
    assert any("eval_matching_accuracy" in entry for entry in history)
    assert (out / "pretrain_answers.json").is_file()


def test_a_checkpoint_whose_qa_head_does_not_fit_the_answers_is_refused(data, whole_run, tmp_path):
    whole, _ = whole_run
    (tmp_path / "three.json").write_text(json.dumps(ANSWERS[:3]))
    argv = arguments(data, tmp_path / "out", "--model_name_or_path", str(whole))
    argv[argv.index(str(data["answers.json"]))] = str(tmp_path / "three.json")
    result = run_recipe_process(*argv)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "has 5 answers but the QA answers given have 3" in last, last
