"""Bad inputs to the `lxmert-hf` command line and the data files it reads: each one exits 2 with one line on stderr
that names the argument, the file or the record, and leaves no output that looks finished."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import vqa_helpers as vh
from data_factory import coco_id, image_record, make_store
from PIL import Image
from tiny import TINY_DETECTOR

from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig
from lxmert_hf.answers.sources import read_answers
from lxmert_hf.cli import main
from lxmert_hf.data import load_features
from lxmert_hf.data.tsv import format_tsv_line
from lxmert_hf.hub import save_checkpoint

DETECTOR = {
    **TINY_DETECTOR,
    **{"min_size": 64, "max_size": 96, "rpn_post_nms_topk": 4, "score_threshold": 0.0, "min_boxes": 3, "max_boxes": 3},
    "resize_backend": "torch",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny VQA checkpoint and a tiny region detector, saved once for the module."""
    folder = tmp_path_factory.mktemp("models")
    save_checkpoint(vh.vqa_model(), folder / "vqa", tokenizer=vh.tokenizer())
    torch.manual_seed(0)
    RegionFeatureExtractor(RegionFeatureExtractorConfig.from_preset("lxmert", **DETECTOR)).save_pretrained(
        folder / "detector"
    )
    return {"vqa": folder / "vqa", "detector": folder / "detector"}


# -- inputs written by the cases ------------------------------------------------------------------------------------
def tsv(folder: Path, *changes: dict, name: str = "f.tsv") -> Path:
    """A feature TSV of one image per item of `changes` (fields of `image_record` replaced); returns its path."""
    records = [{**image_record(f"img{i}", seed=i), **change} for i, change in enumerate(changes)]
    path = folder / name
    path.write_bytes(b"".join(format_tsv_line(record) for record in records))
    return path


def boxes(**corner: float) -> np.ndarray:
    """`image_record`'s four boxes with the first one's corners (x1, y1, x2, y2) replaced."""
    values = image_record("x")["boxes"].copy()
    for key, value in corner.items():
        values[0, ["x1", "y1", "x2", "y2"].index(key)] = value
    return values


def feats(value: float) -> np.ndarray:
    values = image_record("x")["visual_feats"].copy()
    values[1, 2] = value
    return values


BINARY = b"[\xff\xfe]"  # not UTF-8


def text(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def a_file(folder: Path, name: str = "file.txt") -> Path:
    (folder / name).write_text("not a folder\n")
    return folder / name


def images(folder: Path) -> Path:
    (folder / "images").mkdir(exist_ok=True)
    Image.fromarray(np.full((40, 56, 3), 128, dtype=np.uint8)).save(folder / "images" / "a.png")
    return folder / "images"


def npz(folder: Path, **change: np.ndarray) -> Path:
    np.savez(folder / "regions.npz", **{**vh.features(), **change})
    return folder / "regions.npz"


def non_utf8_id(folder: Path) -> Path:
    line = format_tsv_line(image_record("imgX"))
    return text(folder, "f.tsv", line.replace(b"imgX", b"img\xff\xfe", 1))


def prepare(path: Path, folder: Path, *extra: str) -> list[str]:
    return ["prepare", "features", "--tsv", str(path), "--output", str(folder / "store"), "--no-progress", *extra]


def extract(folder: Path, models, *extra: str, images_arg: Path | None = None, output: Path | None = None):
    argv = ["extract", "--images", str(images_arg or images(folder)), "--output", str(output or folder / "store")]
    return [*argv, "--model", str(models["detector"]), "--num-workers", "0", "--no-progress", *extra]


def ask(folder: Path, models, *extra: str) -> list[str]:
    return ["ask", "--model", str(models["vqa"]), "--question", "what color is the cube?", *extra]


def vqa(folder: Path, *extra: str) -> list[str]:
    return ["prepare", "vqa", "--features", str(folder / "none"), "--output", str(folder / "vqa"), *extra]


def task(folder: Path, name: str, *extra: str) -> list[str]:
    """`prepare vqa|gqa|nlvr2` on a real store, with the question files in `extra`."""
    make_store(folder / "store", [coco_id("train2014", 1)])
    argv = ["prepare", name, "--features", str(folder / "store"), "--output", str(folder / name), "--no-progress"]
    return [*argv, "--cache-dir", str(folder / "cache"), *extra]


def predict(folder: Path, models, *extra: str) -> list[str]:
    argv = ["predict", "--model", str(models["vqa"]), "--prepared", str(folder), "--split", "val"]
    return [*argv, "--output", str(folder / "p.json"), *extra]


def pth(folder: Path, state: object) -> Path:
    torch.save(state, folder / "model.pth")
    return folder / "model.pth"


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def evaluate(folder: Path, *extra: str) -> list[str]:
    (folder / "annotations.json").write_text(json.dumps({"annotations": []}))
    (folder / "predictions.json").write_text("[]")
    (folder / "questions.json").write_text(json.dumps({"questions": []}))
    argv = ["evaluate", "vqa", "--questions", str(folder / "questions.json")]
    argv += ["--annotations", str(folder / "annotations.json")]
    return [*argv, "--predictions", str(folder / "predictions.json"), *extra]


# Each case: (argv builder taking (tmp_path, models), fragments the one line of stderr must hold).
CASES = {
    # feature TSVs: records that would be stored wrong or not at all
    "inverted-x": (
        lambda t, m: prepare(tsv(t, {}, {"boxes": boxes(x1=50.0, x2=10.0)}), t),
        ["f.tsv:2", "'img1'", "x2 < x1"],
    ),
    "inverted-y": (
        lambda t, m: prepare(tsv(t, {"boxes": boxes(y1=40.0, y2=5.0)}), t),
        ["f.tsv:1", "'img0'", "y2 < y1"],
    ),
    "zero-width": (
        lambda t, m: prepare(tsv(t, {"boxes": boxes(x1=12.0, x2=12.0)}), t),
        ["f.tsv:1", "'img0'", "empty"],
    ),
    "zero-height": (lambda t, m: prepare(tsv(t, {"boxes": boxes(y1=7.0, y2=7.0)}), t), ["f.tsv:1", "'img0'", "empty"]),
    "nan-box": (lambda t, m: prepare(tsv(t, {"boxes": boxes(x2=float("nan"))}), t), ["f.tsv:1", "'img0'", "NaN"]),
    "zero-regions": (
        lambda t, m: prepare(tsv(t, {"boxes": np.zeros((0, 4)), "visual_feats": np.zeros((0, 8))}), t),
        ["f.tsv:1", "'img0'", "no regions"],
    ),
    "nan-features": (lambda t, m: prepare(tsv(t, {"visual_feats": feats(np.nan)}), t), ["f.tsv:1", "'img0'", "NaN"]),
    "inf-features": (lambda t, m: prepare(tsv(t, {"visual_feats": feats(np.inf)}), t), ["f.tsv:1", "infinite"]),
    "fp16-overflow": (
        lambda t, m: prepare(tsv(t, {"visual_feats": feats(1e6)}), t, "--dtype", "float16"),
        ["f.tsv:1", "too large for float16"],
    ),
    "non-utf8-id": (lambda t, m: prepare(non_utf8_id(t), t), ["f.tsv:1", "UTF-8"]),
    "bad-size": (lambda t, m: prepare(tsv(t, {"image_width": 0}), t), ["f.tsv:1", "image size"]),
    "fields": (lambda t, m: prepare(a_file(t, "f.tsv"), t), ["f.tsv:1", "tab-separated fields"]),
    "tsv-empty": (lambda t, m: prepare(text(t, "f.tsv", ""), t), ["f.tsv is empty"]),
    "tsv-dir": (lambda t, m: prepare(t, t), ["--tsv", "is a folder"]),
    "tsv-missing": (lambda t, m: prepare(t / "nope.tsv", t), ["nope.tsv does not exist"]),
    "prepare-output-file": (
        lambda t, m: ["prepare", "features", "--tsv", str(tsv(t, {})), "--output", str(a_file(t) / "store")],
        ["--output", "file.txt is a file"],
    ),
    "prepare-output-is-file": (
        lambda t, m: ["prepare", "features", "--tsv", str(tsv(t, {})), "--output", str(a_file(t))],
        ["--output", "file.txt is a file"],
    ),
    "shard-size": (lambda t, m: prepare(tsv(t, {}), t, "--images-per-shard", "0"), ["--images-per-shard"]),
    # answer lists: only http(s) URLs
    "answers-file-url": (lambda t, m: vqa(t, "--answers", "file:///etc/passwd"), ["--answers", "'file'", "http"]),
    "answers-ftp-url": (lambda t, m: vqa(t, "--answers", "ftp://example.org/a.json"), ["--answers", "'ftp'", "http"]),
    "answers-missing": (lambda t, m: vqa(t, "--answers", str(t / "a.json")), ["--answers", "a.json"]),
    "vqa-output-file": (lambda t, m: vqa(t, "--output", str(a_file(t) / "x")), ["--output", "file.txt is a file"]),
    "vqa-questions-binary": (
        lambda t, m: task(t, "vqa", "--lxmert", "train=" + str(text(t, "q.json", BINARY))),
        ["q.json is not UTF-8"],
    ),
    "gqa-split-folder": (
        lambda t, m: task(t, "gqa", "--split", f"train={t}"),
        ["is a folder; expected GQA"],
    ),
    "nlvr2-split-binary": (
        lambda t, m: task(t, "nlvr2", "--skip-bad", "--split", "train=" + str(text(t, "n.json", b"{}\n" + BINARY))),
        ["n.json:2: not UTF-8"],
    ),
    "cache-dir-file": (
        lambda t, m: task(t, "gqa", "--split", "train=q.json", "--cache-dir", str(a_file(t))),
        ["--cache-dir", "file.txt is a file"],
    ),
    # extract: the argument at fault is named
    "extract-set-key": (lambda t, m: extract(t, m, "--set", "boxes=3"), ["--set", "boxes"]),
    "extract-set-negative": (lambda t, m: extract(t, m, "--set", "max_boxes=-1"), ["--set", "max_boxes"]),
    "extract-no-detector": (lambda t, m: extract(t, {"detector": m["vqa"]}), ["--model", "vqa"]),
    "extract-output-file": (lambda t, m: extract(t, m, output=a_file(t)), ["--output", "file.txt"]),
    "extract-output-under-file": (lambda t, m: extract(t, m, output=a_file(t) / "s"), ["--output", "file.txt"]),
    "extract-images-missing": (lambda t, m: extract(t, m, images_arg=t / "nowhere"), ["--images", "nowhere"]),
    "extract-images-binary": (
        lambda t, m: extract(t, m, images_arg=text(t, "x.bin", b"\xff\xfe\x00")),
        ["--images", "x.bin", "not UTF-8"],
    ),
    "extract-list-url": (
        lambda t, m: extract(t, m, images_arg=text(t, "list.txt", "a.png\nftp://h/a.jpg\n")),
        ["list.txt:2", "'ftp'"],
    ),
    # convert
    "convert-missing": (
        lambda t, m: ["convert", str(t / "missing.pth"), "--output", str(t / "out")],
        ["missing.pth", "does not exist"],
    ),
    "convert-answers-url": (
        lambda t, m: ["convert", str(m["vqa"]), "--output", str(t / "out"), "--answers", "file:///a.json"],
        ["--answers", "'file'"],
    ),
    "convert-output-file": (
        lambda t, m: ["convert", str(m["vqa"]), "--output", str(a_file(t) / "o")],
        ["--output", "file.txt"],
    ),
    "convert-not-torch": (
        lambda t, m: ["convert", str(text(t, "m.pth", "hello")), "--output", str(t / "out")],
        ["m.pth is not a PyTorch file"],
    ),
    "convert-pickled-objects": (
        lambda t, m: ["convert", str(pth(t, {"w": torch.zeros(2), "args": Namespace()})), "--output", str(t / "o")],
        ["model.pth holds Python objects besides tensors (argparse.Namespace)", "weights_only=True"],
    ),
    "convert-not-a-state-dict": (
        lambda t, m: ["convert", str(pth(t, [torch.zeros(2)])), "--output", str(t / "o")],
        ["model.pth does not hold a state dict"],
    ),
    "convert-truncated": (
        lambda t, m: ["convert", str(truncated(pth(t, {"w": torch.zeros(64)}))), "--output", str(t / "o")],
        ["model.pth is not a PyTorch file"],
    ),
    # ask
    "ask-features-not-npz": (lambda t, m: ask(t, m, "--features", str(a_file(t))), ["--features", "not a .npz"]),
    "ask-nan-features": (
        lambda t, m: ask(t, m, "--features", str(npz(t, visual_feats=np.full((6, 16), np.nan, np.float32)))),
        ["--features", "NaN"],
    ),
    "ask-inf-pos": (
        lambda t, m: ask(t, m, "--features", str(npz(t, visual_pos=np.full((6, 4), np.inf, np.float32)))),
        ["--features", "visual_pos"],
    ),
    "ask-image-file-url": (lambda t, m: ask(t, m, "--image", "file:///etc/passwd"), ["--image", "'file'"]),
    "ask-image-ftp-url": (lambda t, m: ask(t, m, "--image", "ftp://example.org/a.jpg"), ["--image", "'ftp'"]),
    "ask-image-dir": (lambda t, m: ask(t, m, "--image", str(t)), ["--image", "folder"]),
    # predict: the output is checked before the model loads
    "predict-output-under-file": (
        lambda t, m: predict(t, m, "--output", str(a_file(t) / "p.json")),
        ["--output", "file.txt is a file, not a folder"],
    ),
    "predict-output-folder": (lambda t, m: predict(t, m, "--output", str(t)), ["--output", "is a folder"]),
    "predict-output-missing-folder": (
        lambda t, m: predict(t, m, "--output", str(t / "no" / "p.json")),
        ["--output", "does not exist; create it first"],
    ),
    "predict-prepared-missing": (
        lambda t, m: predict(t, m, "--prepared", str(t / "nope")),
        ["nope", "not a prepared"],
    ),
    # evaluate
    "evaluate-output-under-file": (
        lambda t, m: evaluate(t, "--output", str(a_file(t) / "m.json")),
        ["--output", "file.txt"],
    ),
    "evaluate-annotations-dir": (lambda t, m: evaluate(t, "--annotations", str(t)), ["is a folder"]),
    "evaluate-nlvr2-folder": (
        lambda t, m: ["evaluate", "nlvr2", "--annotations", str(t), "--predictions", str(a_file(t))],
        ["is a folder; expected NLVR2 examples"],
    ),
    "evaluate-annotations-binary": (
        lambda t, m: evaluate(t, "--annotations", str(text(t, "a.json", b"\xff\xfe{}"))),
        ["a.json is not UTF-8"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_it(case, tmp_path, models, capsys):
    build, fragments = CASES[case]
    argv = build(tmp_path, models)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"lxmert-hf {argv[0]}: error: "), err
    for fragment in fragments:
        assert fragment in line, (fragment, line)


# -- what a failed run leaves ---------------------------------------------------------------------------------------
INVERTED = {"boxes": boxes(x1=50.0, x2=10.0)}


def test_bad_boxes_with_skip_bad_are_counted_and_reported(tmp_path, capsys):
    assert main(prepare(tsv(tmp_path, {}, INVERTED, {}), tmp_path, "--skip-bad")) == 0
    out = capsys.readouterr().out
    assert "2 images written, 0 already in the store, 1 bad records skipped" in out
    assert "f.tsv:2" in out and "x2 < x1" in out
    assert list(load_features(tmp_path / "store")["image_id"]) == ["img0", "img2"]


def test_a_failed_run_names_the_state_of_the_store_it_left(tmp_path, capsys):
    assert main(prepare(tsv(tmp_path, {}, {}, INVERTED), tmp_path)) == 2
    store = tmp_path / "store"
    expected = f"{store} is incomplete: 2 images kept; rerun with --skip-bad (skip_bad=True), or delete {store}."
    assert capsys.readouterr().err.strip().endswith(expected)
    with pytest.raises(ValueError, match="incomplete"):
        load_features(store)
    assert main(prepare(tsv(tmp_path, {}, {}, INVERTED), tmp_path, "--skip-bad")) == 0
    assert "0 images written, 2 already in the store, 1 bad records skipped" in capsys.readouterr().out


def test_a_failed_first_write_removes_the_store_folder_it_created(tmp_path, capsys):
    assert main(prepare(tsv(tmp_path, INVERTED, {}), tmp_path)) == 2
    assert (
        f"Nothing was kept ({tmp_path / 'store'} does not exist); fix the input (or rerun with --skip-bad"
        in capsys.readouterr().err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.tsv"]


def test_a_failed_first_write_leaves_a_folder_the_user_gave_as_it_was(tmp_path, capsys):
    (tmp_path / "store").mkdir()
    assert main(prepare(tsv(tmp_path, INVERTED, {}), tmp_path)) == 2
    assert f"Nothing was kept ({tmp_path / 'store'} is as it was); fix the input" in capsys.readouterr().err
    assert list((tmp_path / "store").iterdir()) == []


# -- what is accepted, and how -------------------------------------------------------------------------------------
def test_extract_takes_a_single_image(tmp_path, models, capsys):
    picture = images(tmp_path) / "a.png"
    assert main(extract(tmp_path, models, images_arg=picture)) == 0, capsys.readouterr().err
    assert list(load_features(tmp_path / "store")["image_id"]) == ["a"]


def test_image_ids_are_never_file_names(tmp_path, models, capsys):
    # Ids that would escape the store, were they used as file names, are stored as data, and nothing else is written.
    picture = images(tmp_path) / "a.png"
    listing = text(tmp_path, "list.txt", f"{picture}\t../../escaped\n")
    assert main(extract(tmp_path, models, images_arg=listing, output=tmp_path / "deep" / "store")) == 0
    assert list(load_features(tmp_path / "deep" / "store")["image_id"]) == ["../../escaped"]
    records = [{**image_record("../escaped-too"), "image_id": "/tmp/escaped/../x"}]
    assert main(prepare(tsv(tmp_path, *records), tmp_path)) == 0
    assert list(load_features(tmp_path / "store")["image_id"]) == ["/tmp/escaped/../x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "f.tsv", "images", "list.txt", "store"]
    capsys.readouterr()


def test_answer_lists_larger_than_the_cap_are_refused_naming_the_url(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from lxmert_hf import downloads

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(downloads, "MAX_LIST_BYTES", 1000)
    big, small = "".join(f"answer {i}\n" for i in range(200)), "yes\nno\n"
    with vh.serve({"/big.txt": (200, big.encode()), "/small.txt": (200, small.encode())}) as base:
        with pytest.raises(ValueError, match=f"cannot download the answer list {base}/big.txt: it is larger than"):
            read_answers(f"{base}/big.txt")
        assert read_answers(f"{base}/small.txt") == ["yes", "no"]
    assert len(list(downloads.cache_dir("answers").iterdir())) == 1  # the refused list is not cached


def test_an_extracted_region_clipped_to_nothing_skips_its_image_and_says_so(tmp_path, models, monkeypatch, capsys):
    real_detect, calls = RegionFeatureExtractor.detect, []

    def detect(self, images, *args, **kwargs):  # one image a batch: the first image's first box made empty
        results = real_detect(self, images, *args, **kwargs)
        calls.append(len(images))
        if len(calls) > 1:
            return results
        boxes = results[0]["boxes"].clone()
        boxes[0, 2] = boxes[0, 0]  # an empty box, as clipping at an edge can give
        results[0]["boxes"] = boxes
        return results

    monkeypatch.setattr(RegionFeatureExtractor, "detect", detect)
    folder = images(tmp_path)
    Image.fromarray(np.full((40, 56, 3), 50, dtype=np.uint8)).save(folder / "b.png")
    assert main(extract(tmp_path, models, "--batch-size", "1", images_arg=folder)) == 0
    captured = capsys.readouterr()
    assert "1 skipped" in captured.out
    assert "skipped a: image 'a': box 0" in captured.err and "x2 == x1 (empty)" in captured.err
    assert list(load_features(tmp_path / "store")["image_id"]) == ["b"]


def test_detector_weights_refused_by_weights_only_are_one_line_naming_the_file(tmp_path):
    from lxmert_hf.detection.checkpoint import CheckpointFiles, load_weights

    weights = pth(tmp_path, {"w": torch.zeros(2), "args": Namespace()})
    files = CheckpointFiles("hub", tmp_path / "config.yaml", weights, None)
    with pytest.raises(ValueError, match=r"model.pth holds Python objects besides tensors \(argparse.Namespace\)"):
        load_weights(files)
    with pytest.raises(ValueError, match="model.pth is not a PyTorch file"):
        load_weights(CheckpointFiles("hub", tmp_path / "config.yaml", truncated(weights), None))
