"""`lxmert-hf ask`: one question about a picture or precomputed features, from a checkpoint folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import vqa_helpers as vh

from lxmert_hf import VQAPipeline
from lxmert_hf.cli import main
from lxmert_hf.hub import save_checkpoint

QUESTION = "what color is the cube?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ask") / "ckpt"
    return save_checkpoint(vh.vqa_model(), folder, tokenizer=vh.tokenizer())


@pytest.fixture
def features_file(tmp_path):
    np.savez(tmp_path / "regions.npz", **vh.features())
    return tmp_path / "regions.npz"


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", "--help"])
    assert exit_info.value.code == 0 and "usage: lxmert-hf ask" in capsys.readouterr().out


def test_features_table_and_json(checkpoint, features_file, capsys):
    expected = VQAPipeline.from_pretrained(checkpoint, device="cpu")(vh.features(), question=QUESTION, top_k=3)
    argv = ["ask", "--model", str(checkpoint), "--features", str(features_file), "--question", QUESTION]
    assert main([*argv, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["score", "answer"]
    assert [line.split()[1] for line in lines[1:]] == [a["answer"] for a in expected]
    assert main([*argv, "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert len(answers) == 5 and answers[0]["answer"] == expected[0]["answer"]


def test_picture_with_a_detector_folder(tmp_path, capsys):
    model = vh.vqa_model(feat_dim=vh.DETECTOR_DIM)
    save_checkpoint(model, tmp_path / "ckpt", tokenizer=vh.tokenizer())
    vh.detector().save_pretrained(tmp_path / "detector")
    (tmp_path / "cube.png").write_bytes(vh.png_bytes("L"))
    argv = ["ask", "--model", str(tmp_path / "ckpt"), "--image", str(tmp_path / "cube.png"), "--question", QUESTION]
    assert main([*argv, "--detector", str(tmp_path / "detector"), "--top-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(argv) == 2  # the checkpoint names no detector
    err = capsys.readouterr().err
    assert "pass --detector DIR_OR_ID" in err and "detector=" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-k", "0"], "--top-k"),
        (["--question", "  "], "question"),
        (["--features", "missing.npz"], "no such file"),
        (["--question-lang", "??"], "question_lang"),
    ],
)
def test_bad_input_exits_2(checkpoint, features_file, capsys, extra, message):
    argv = ["ask", "--model", str(checkpoint), "--features", str(features_file), "--question", QUESTION]
    if extra[0] == "--features":
        argv[4] = str(features_file.parent / extra[1])
        extra = []
    assert main(argv + extra) == 2
    assert message in capsys.readouterr().err


def test_features_file_without_features(checkpoint, tmp_path, capsys):
    np.savez(tmp_path / "empty.npz", boxes=np.zeros((2, 4)))
    argv = ["ask", "--model", str(checkpoint), "--features", str(tmp_path / "empty.npz"), "--question", QUESTION]
    assert main(argv) == 2
    assert "visual_feats" in capsys.readouterr().err


def test_a_device_this_machine_lacks_is_one_line_naming_the_devices_it_has(checkpoint, features_file, capsys):
    argv = ["ask", "--model", str(checkpoint), "--features", str(features_file), "--question", QUESTION]
    assert main([*argv, "--device", "cuda:99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lxmert-hf ask: error: --device cuda:99: ") and "this machine has cpu" in err
    assert len(err.splitlines()) == 1
