import json
import logging
import re

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from lxmert_hf import LxmertForVQA, LxmertVQAConfig
from lxmert_hf.cli import main
from lxmert_hf.data import load_answer_vocabulary, load_prepared
from lxmert_hf.data.collator import VQADataCollator
from lxmert_hf.predict import predict_answers, predict_split, write_predictions
from lxmert_hf.submission import read_gqa_submission, read_vqa_submission
from lxmert_hf.toy import ToyWorldConfig
from lxmert_hf.training.data import prepare_toy

FEATURE_DIM = 16
# The toy vocabulary keeps answers given at least 9 times in train, hence the 24 training images.
TOY_WORLD = ToyWorldConfig(
    num_images={"train": 24, "validation": 3, "test": 2},
    questions_per_image=5,
    num_regions=10,
    feature_dim=FEATURE_DIM,
)


def tiny_config(answers=None, vocab_size=64):
    sizes = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "l_layers": 1, "x_layers": 1,
             "r_layers": 1, "visual_feat_dim": FEATURE_DIM, "vocab_size": vocab_size}  # fmt: skip
    return LxmertVQAConfig.from_answers(answers, **sizes) if answers is not None else LxmertVQAConfig(**sizes)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return prepare_toy(TOY_WORLD, cache_dir=tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def tokenizer(toy):
    return AutoTokenizer.from_pretrained(toy / "tokenizer")


@pytest.fixture(scope="module")
def answers(toy):
    return load_answer_vocabulary(toy / "prepared").answers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer, answers):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("checkpoint")
    LxmertForVQA(tiny_config(answers, vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def raw_question_ids(toy, split):
    return [q["question_id"] for q in json.loads((toy / "raw" / f"{split}_questions.json").read_text())["questions"]]


def predict(checkpoint, toy, split, output, *extra):
    argv = ["predict", "--model", str(checkpoint), "--prepared", str(toy / "prepared"), "--split", split]
    return main([*argv, "--output", str(output), *extra])


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0
    assert "--batch-size" in capsys.readouterr().out


def test_vqa_submission_covers_the_split_and_evaluates(checkpoint, toy, answers, tmp_path, capsys):
    output = tmp_path / "val_predict.json"
    assert predict(checkpoint, toy, "val", output, "--batch-size", "4", "--device", "auto") == 0
    question_ids = raw_question_ids(toy, "validation")
    assert f"{len(question_ids)}/{len(question_ids)}" in capsys.readouterr().err  # the progress bar

    records = json.loads(output.read_text())
    predictions = read_vqa_submission(output)  # strict: integer ids, string answers, no repeats
    assert len(records) == len(predictions)
    assert sorted(predictions) == sorted(question_ids)
    assert set(predictions.values()) <= set(answers)

    raw = toy / "raw"
    metrics_file = tmp_path / "metrics.json"
    argv = ["evaluate", "vqa", "--questions", str(raw / "validation_questions.json"), "--predictions", str(output),
            "--annotations", str(raw / "validation_annotations.json"), "--output", str(metrics_file)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads(metrics_file.read_text())
    assert 0.0 <= metrics["overall"] <= 100.0
    assert set(metrics["perAnswerType"]) == {"yes/no", "number", "other"}


def test_unlabeled_split_in_gqa_format_with_workers(checkpoint, toy, tmp_path):
    output = tmp_path / "test_predict.json"
    assert predict(checkpoint, toy, "test", output, "--format", "gqa", "--num-workers", "1", "--no-progress") == 0
    predictions = read_gqa_submission(output)
    assert sorted(predictions) == sorted(str(qid) for qid in raw_question_ids(toy, "test"))


def test_answers_match_one_question_at_a_time(checkpoint, toy, tokenizer):
    model = LxmertForVQA.from_pretrained(checkpoint)
    dataset = load_prepared(toy / "prepared", "val")
    batched = predict_answers(model, tokenizer, dataset, batch_size=4, device="cpu", progress=False)

    collate = VQADataCollator(tokenizer)
    expected = {}
    with torch.no_grad():
        for example in dataset:
            batch = collate([example])
            batch.pop("labels")
            expected[example["question_id"]] = model.config.id2label[int(model(**batch).logits.argmax())]
    assert list(batched) == list(expected)  # dataset order
    assert batched == expected
    assert not model.training


def test_warns_about_answers_the_checkpoint_lacks(toy, tokenizer, answers, tmp_path, caplog):
    model = LxmertForVQA(tiny_config(answers[:-2], vocab_size=len(tokenizer)))
    with caplog.at_level(logging.WARNING, logger="lxmert_hf.predict"):
        predict_split(model, tokenizer, toy / "prepared", "val", tmp_path / "val.json", progress=False)
    assert f"2 of the prepared split's {len(answers)} answers" in caplog.text
    assert set(read_vqa_submission(tmp_path / "val.json").values()) <= set(answers[:-2])


@pytest.mark.parametrize(
    ("predictions", "submission_format", "expected"),
    [
        ({"7": "yes", 8: "2"}, "vqa", [{"question_id": 7, "answer": "yes"}, {"question_id": 8, "answer": "2"}]),
        ({7: "yes"}, "gqa", [{"questionId": "7", "prediction": "yes"}]),
        ({"07a": "yes"}, "vqa", "integer question ids, got '07a'; use --format gqa"),
        ({7: "yes"}, "csv", "must be one of \\['gqa', 'nlvr2', 'vqa'\\]"),
        ({"dev-1-0-0": "yes"}, "nlvr2", "the prediction for 'dev-1-0-0' must be a boolean"),
    ],
)
def test_write_predictions(predictions, submission_format, expected, tmp_path):
    path = tmp_path / "predictions.json"
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            write_predictions(path, predictions, submission_format)
        assert not path.exists()
    else:
        write_predictions(path, predictions, submission_format)
        assert json.loads(path.read_text()) == expected


def test_refuses_placeholder_answers(toy, tokenizer, tmp_path):
    model = LxmertForVQA(tiny_config(vocab_size=len(tokenizer)))  # id2label: LABEL_0, LABEL_1
    with pytest.raises(ValueError, match="placeholders"):
        predict_split(model, tokenizer, toy / "prepared", "val", tmp_path / "val.json", progress=False)
    assert not (tmp_path / "val.json").exists()


def test_refuses_image_pairs(checkpoint, tokenizer, tmp_path, capsys):
    prepared = tmp_path / "nlvr2"
    prepared.mkdir()
    metadata = {"task": "nlvr2", "features": "features", "splits": {"valid": 2}, "stats": {}}
    (prepared / "lxmert_hf_data.json").write_text(json.dumps(metadata))
    argv = ["predict", "--model", str(checkpoint), "--prepared", str(prepared), "--split", "valid"]
    assert main([*argv, "--output", str(tmp_path / "valid.csv")]) == 2
    assert "cannot score pairs" in capsys.readouterr().err

    model = LxmertForVQA.from_pretrained(checkpoint)
    pair = {"question_id": "a-0", "question": "what?", "visual_feats": np.zeros((2, 3, FEATURE_DIM)),
            "visual_pos": np.zeros((2, 3, 4)), "visual_attention_mask": np.ones((2, 3))}  # fmt: skip
    with pytest.raises(ValueError, match="cannot score pairs"):
        predict_answers(model, tokenizer, [pair], progress=False)


@pytest.fixture(scope="module")
def checkpoint_without_tokenizer(tmp_path_factory, checkpoint):
    folder = tmp_path_factory.mktemp("no-tokenizer")
    LxmertForVQA.from_pretrained(checkpoint).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"--model": "{tmp}/missing"}, "--model: .*missing does not exist locally and is not a Hub repo id"),
        ({"--model": "{bare}"}, "holds no tokenizer; pass --tokenizer"),
        ({"--prepared": "{tmp}"}, "not a prepared dataset directory"),
        ({"--split": "nope"}, "--split 'nope'.*it has \\['test', 'train', 'val'\\]"),
        ({"--output": "{tmp}/absent/out.json"}, "--output .*does not exist; create it first"),
        ({"--output": "{tmp}"}, "--output .* is a folder"),
        ({"--batch-size": "0"}, "--batch-size must be a positive"),
        ({"--num-workers": "-1"}, "--num-workers must be 0"),
        ({"--device": "tpu9"}, "--device 'tpu9' is not a device"),
    ],
    ids=["missing model", "no tokenizer", "not prepared", "unknown split", "missing output folder",
         "output is a folder", "batch size 0", "negative workers", "unknown device"],
)  # fmt: skip
def test_bad_inputs(arguments, match, checkpoint, checkpoint_without_tokenizer, toy, tmp_path, capsys):
    given = {"--model": str(checkpoint), "--prepared": str(toy / "prepared"), "--split": "val",
             "--output": str(tmp_path / "out.json")}  # fmt: skip
    given.update({k: v.format(tmp=tmp_path, bare=checkpoint_without_tokenizer) for k, v in arguments.items()})
    assert main(["predict", *[item for pair in given.items() for item in pair]]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "out.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda(checkpoint, toy, tmp_path, capsys):
    assert predict(checkpoint, toy, "val", tmp_path / "out.json", "--device", "cuda", "--no-progress") == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_read_only_output_folder_fails_before_answering(checkpoint, toy, read_only_folder, capsys, monkeypatch):
    monkeypatch.setattr(LxmertForVQA, "forward", lambda *a, **k: pytest.fail("answered anyway"))
    assert predict(checkpoint, toy, "val", read_only_folder / "out.json", "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lxmert-hf predict: error: --output {read_only_folder / 'out.json'}: cannot write")
    assert "permission denied" in err and len(err.splitlines()) == 1


def test_full_disk_leaves_no_half_written_submission(checkpoint, toy, tmp_path, full_disk, capsys):
    (tmp_path / "out").mkdir()
    full_disk()
    assert predict(checkpoint, toy, "val", tmp_path / "out" / "val.json", "--no-progress", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'out' / 'val.json'}: no space left on the device" in err
    assert list((tmp_path / "out").iterdir()) == []
