"""`lxmert-hf predict` across tasks: NLVR2 submission CSVs from an LxmertForNLVR2 checkpoint, GQA submissions from
the VQA-style checkpoint a GQA fine-tuning saves, and the task inferred from the checkpoint and the prepared
directory, with an error when they disagree."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from data_factory import gqa_official, make_store, nlvr2_official
from transformers import BertTokenizer

from lxmert_hf import LxmertForNLVR2, LxmertForVQA, LxmertNLVR2Config, LxmertVQAConfig
from lxmert_hf.cli import main
from lxmert_hf.data import load_answer_vocabulary, load_prepared, prepare_gqa, prepare_nlvr2
from lxmert_hf.data.collator import NLVR2DataCollator
from lxmert_hf.predict import check_submission_format, predict_answers, predict_nlvr2, resolve_task
from lxmert_hf.submission import read_gqa_submission, read_nlvr2_submission

FEATURE_DIM = 8  # the region features of `data_factory.image_record`
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "sentence", "what", "is", "on", "?", "dev", "test", "-", "0",
         "1", "2", "3"]  # fmt: skip
SIZES = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1, x_layers=1, r_layers=1,
             visual_feat_dim=FEATURE_DIM, vocab_size=len(WORDS))  # fmt: skip
# The same sentence about several pairs (dev-1-*), and one pair described by two sentences (dev-1-0-*).
VALID = {"dev-1-0-0": "True", "dev-1-0-1": "False", "dev-1-1-0": "False", "dev-1-2-0": "True", "dev-2-0-0": "True"}
TEST = {"test1-3-0-0": "True", "test1-3-0-1": "False"}


def tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={word: index for index, word in enumerate(WORDS)})


def pair_images(identifiers) -> list[str]:
    stems = dict.fromkeys(identifier.rsplit("-", 1)[0] for identifier in identifiers)
    return [f"{stem}-img{side}" for stem in stems for side in (0, 1)]


@pytest.fixture(scope="module")
def nlvr2(tmp_path_factory):
    root = tmp_path_factory.mktemp("nlvr2")
    make_store(root / "store", pair_images([*VALID, *TEST]))
    valid = nlvr2_official(root / "dev.json", list(VALID), list(VALID.values()))
    test = nlvr2_official(root / "test1.json", list(TEST), list(TEST.values()))
    prepare_nlvr2(root / "prepared", {"valid": [valid], "test": [test]}, features_dir=root / "store",
                  cache_dir=root / "cache", progress=False)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    root = tmp_path_factory.mktemp("gqa")
    make_store(root / "store", ["2375429", "2375430", "n161313"])
    train = gqa_official(
        root / "train_balanced_questions.json",
        [("07333408", "2375429", "pipe"), ("1", "2375430", "yes"), ("2", "n161313", "t-shirt")],
    )
    testdev = gqa_official(
        root / "testdev_balanced_questions.json",
        [("201", "n161313", "pipe"), ("0202", "2375429", "t-shirt"), ("203", "2375430", "no")],
    )
    prepare_gqa(root / "prepared", {"train": [train], "testdev": [testdev]}, features_dir=root / "store",
                cache_dir=root / "cache", progress=False)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def nlvr2_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nlvr2-checkpoint")
    torch.manual_seed(0)
    LxmertForNLVR2(LxmertNLVR2Config(**SIZES)).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gqa_checkpoint(tmp_path_factory, gqa):
    """What fine-tuning on GQA saves: an LxmertForVQA over the prepared GQA answers, with its tokenizer."""
    folder = tmp_path_factory.mktemp("gqa-checkpoint")
    answers = load_answer_vocabulary(gqa / "prepared").answers
    torch.manual_seed(0)
    LxmertForVQA(LxmertVQAConfig.from_answers(answers, **SIZES)).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


def predict(checkpoint, root, split, output, *extra) -> int:
    argv = ["predict", "--model", str(checkpoint), "--prepared", str(root / "prepared"), "--split", split]
    return main([*argv, "--output", str(output), "--no-progress", *extra])


# -- NLVR2 ---------------------------------------------------------------------------------------------------------
def test_nlvr2_submission_covers_the_split_and_evaluates(nlvr2_checkpoint, nlvr2, tmp_path, capsys):
    output = tmp_path / "dev_predict.csv"
    assert predict(nlvr2_checkpoint, nlvr2, "valid", output, "--task", "nlvr2", "--batch-size", "2") == 0
    predictions = read_nlvr2_submission(output)  # strict: identifier,True|False lines, no repeats
    assert list(predictions) == list(VALID)
    assert all(line.endswith((",True", ",False")) for line in output.read_text().splitlines())

    metrics_file = tmp_path / "metrics.json"
    argv = ["evaluate", "nlvr2", "--annotations", str(nlvr2 / "dev.json"), "--predictions", str(output)]
    assert main([*argv, "--output", str(metrics_file)]) == 0
    metrics = json.loads(metrics_file.read_text())
    right = sum(predictions[i] == (label == "True") for i, label in VALID.items())
    assert metrics["accuracy"] == pytest.approx(100 * right / len(VALID), abs=0.01)
    assert 0 <= metrics["consistency"] <= 100


def test_nlvr2_task_is_read_from_the_checkpoint(nlvr2_checkpoint, nlvr2, tmp_path):
    asked, inferred = tmp_path / "asked.csv", tmp_path / "inferred.csv"
    assert predict(nlvr2_checkpoint, nlvr2, "test", asked, "--task", "nlvr2") == 0
    assert predict(nlvr2_checkpoint, nlvr2, "test", inferred, "--num-workers", "1") == 0
    assert read_nlvr2_submission(inferred) == read_nlvr2_submission(asked)
    assert list(read_nlvr2_submission(inferred)) == list(TEST)


def test_nlvr2_predictions_are_the_models_one_example_at_a_time(nlvr2_checkpoint, nlvr2):
    model = LxmertForNLVR2.from_pretrained(nlvr2_checkpoint)
    dataset = load_prepared(nlvr2 / "prepared", "valid")
    batched = predict_nlvr2(model, tokenizer(), dataset, batch_size=3, device="cpu", progress=False)
    collate = NLVR2DataCollator(tokenizer())
    compared = 0
    with torch.no_grad():
        for example in dataset:
            batch = collate([example])
            batch.pop("labels")
            logits = model(**batch).logits[0]
            if abs(float(logits[1] - logits[0])) > 1e-4:  # a near tie may fall either way between batch sizes
                assert batched[example["identifier"]] == bool(logits.argmax() == 1)
                compared += 1
    assert list(batched) == list(VALID) and compared >= 3
    assert not model.training


def test_nlvr2_predictions_refuse_single_images_and_need_identifiers(nlvr2_checkpoint, gqa):
    model = LxmertForNLVR2.from_pretrained(nlvr2_checkpoint)
    single = list(load_prepared(gqa / "prepared", "testdev"))
    with pytest.raises(ValueError, match="must be \\[2, num_boxes, dim\\].*one image each"):
        predict_nlvr2(model, tokenizer(), single, progress=False)
    pair = {"question": "sentence", "visual_feats": np.zeros((2, 3, FEATURE_DIM)), "visual_pos": np.zeros((2, 3, 4))}
    with pytest.raises(ValueError, match="has no `identifier`"):
        predict_nlvr2(model, tokenizer(), [pair], progress=False)
    with pytest.raises(ValueError, match="identifier 'dev-1-0-0' occurs twice"):
        predict_nlvr2(model, tokenizer(), [{**pair, "identifier": "dev-1-0-0"}] * 2, progress=False)


# -- GQA -----------------------------------------------------------------------------------------------------------
def test_gqa_checkpoint_writes_the_gqa_format(gqa_checkpoint, gqa, tmp_path):
    inferred, asked = tmp_path / "testdev_predict.json", tmp_path / "asked.json"
    assert predict(gqa_checkpoint, gqa, "testdev", inferred) == 0
    assert predict(gqa_checkpoint, gqa, "testdev", asked, "--task", "gqa", "--format", "gqa") == 0
    records = json.loads(inferred.read_text())
    assert [sorted(record) for record in records] == [["prediction", "questionId"]] * 3
    predictions = read_gqa_submission(inferred)  # strict: string ids, string answers
    assert list(predictions) == ["201", "0202", "203"]  # GQA ids are strings: the leading zero stays
    assert set(predictions.values()) <= set(load_answer_vocabulary(gqa / "prepared").answers)
    assert read_gqa_submission(asked) == predictions

    model = LxmertForVQA.from_pretrained(gqa_checkpoint)
    answers = predict_answers(model, tokenizer(), load_prepared(gqa / "prepared", "testdev"), progress=False)
    assert answers == predictions

    metrics_file = tmp_path / "metrics.json"
    argv = ["evaluate", "gqa", "--questions", str(gqa / "testdev_balanced_questions.json"), "--predictions"]
    assert main([*argv, str(inferred), "--output", str(metrics_file)]) == 0
    assert 0 <= json.loads(metrics_file.read_text())["accuracy"] <= 100


# -- the task: asked for, read from the checkpoint and the prepared directory --------------------------------------
@pytest.mark.parametrize(
    ("checkpoint", "data", "extra", "match"),
    [
        ("nlvr2", "nlvr2", ["--task", "vqa"], "`task` \\(--task\\) is 'vqa' but --prepared .* holds NLVR2 examples"),
        ("gqa", "gqa", ["--task", "nlvr2"], "is 'nlvr2' but --prepared .* holds GQA examples; pass --task gqa"),
        ("gqa", "gqa", ["--task", "vqa"], "is 'vqa' but --prepared .* holds GQA examples"),
        ("nlvr2", "gqa", [], "is an LxmertForNLVR2 .* cannot answer the GQA questions of --prepared"),
        ("gqa", "nlvr2", [], "holds NLVR2 examples.*model_type 'lxmert'.* cannot score pairs"),
        ("gqa", "nlvr2", ["--task", "nlvr2"], "cannot score pairs. Predict them with an LxmertForNLVR2 checkpoint"),
        ("nlvr2", "nlvr2", ["--format", "vqa"], "--format\\) 'vqa' cannot hold NLVR2 predictions; use nlvr2"),
        ("gqa", "gqa", ["--format", "nlvr2"], "--format\\) 'nlvr2' cannot hold GQA predictions; use gqa or vqa"),
    ],
    ids=["vqa asked of nlvr2 data", "nlvr2 asked of gqa data", "vqa asked of gqa data", "nlvr2 model on gqa data",
         "vqa model on nlvr2 data", "vqa model asked for nlvr2", "nlvr2 as vqa format", "gqa as nlvr2 format"],
)  # fmt: skip
def test_disagreements_are_one_line_errors_before_loading(
    checkpoint, data, extra, match, request, tmp_path, capsys, monkeypatch
):
    for model_class in (LxmertForNLVR2, LxmertForVQA):
        monkeypatch.setattr(model_class, "from_pretrained", lambda *a, **k: pytest.fail("loaded the weights"))
    folder = request.getfixturevalue(f"{checkpoint}_checkpoint")
    split = {"nlvr2": "valid", "gqa": "testdev"}[data]
    output = tmp_path / "out"
    assert predict(folder, request.getfixturevalue(data), split, output, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("lxmert-hf predict: error: ") and len(err.splitlines()) == 1
    assert re.search(match, err)
    assert not output.exists()


@pytest.mark.parametrize(
    ("prepared", "model_type", "task", "expected"),
    [
        ("nlvr2", "lxmert_nlvr2", None, "nlvr2"),
        ("nlvr2", "lxmert_nlvr2", "nlvr2", "nlvr2"),
        ("vqa", "lxmert", None, "vqa"),
        ("gqa", "lxmert", None, "gqa"),
        ("gqa", "lxmert_vqa", "gqa", "gqa"),  # checkpoints saved by earlier versions
        ("vqa", "lxmert", "gqa", "is 'gqa' but the prepared directory holds VQA"),
        ("vqa", "lxmert", "nli", "must be one of \\['vqa', 'gqa', 'nlvr2'\\], got 'nli'"),
        ("vqa", "lxmert_nlvr2", "vqa", "cannot answer the VQA questions"),
        ("nlvr2", "lxmert", None, "cannot score pairs"),
    ],
)
def test_resolve_task(prepared, model_type, task, expected):
    if expected in ("vqa", "gqa", "nlvr2"):
        assert resolve_task(prepared, model_type, task) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            resolve_task(prepared, model_type, task)


def test_submission_formats(caplog):
    assert [check_submission_format(task, None) for task in ("vqa", "gqa", "nlvr2")] == ["vqa", "gqa", "nlvr2"]
    assert check_submission_format("nlvr2", "nlvr2") == "nlvr2"
    assert check_submission_format("vqa", "gqa") == "gqa"
    assert "writing GQA-format predictions for a VQA split" in caplog.text
    with pytest.raises(ValueError, match="must be one of \\['gqa', 'nlvr2', 'vqa'\\], got 'csv'"):
        check_submission_format("nlvr2", "csv")
