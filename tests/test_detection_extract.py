"""`lxmert-hf extract`: images -> feature store -> `load_features`, resume, unreadable images, drawing."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY_EXTRACTION

from lxmert_hf import RegionFeatureExtractor, draw_regions, load_features
from lxmert_hf.cli import main
from lxmert_hf.detection import extraction
from lxmert_hf.detection.extraction import extract_to_store, list_images
from lxmert_hf_cli._interrupt import Interrupted, signals_as_interrupt
from lxmert_hf_cli.commands.extract import parse_overrides

TINY = TINY_EXTRACTION
RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def checkpoint(tiny_extraction_checkpoint):
    return tiny_extraction_checkpoint


@pytest.fixture(scope="module")
def extractor(checkpoint):
    return RegionFeatureExtractor.from_pretrained(checkpoint)


def make_images(folder, names, size=(40, 56)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(RNG.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(folder / name)
    return folder


def extract(checkpoint, images, output, *extra):
    argv = ["extract", "--images", str(images), "--output", str(output), "--model", str(checkpoint)]
    return main([*argv, "--num-workers", "0", "--no-progress", *extra])


def test_extract_store_load_round_trip(checkpoint, extractor, tmp_path, capsys):
    images = make_images(tmp_path / "images", ["a.png", "b.jpg", "nested/c.png"])
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "notes.txt").write_text("not an image, ignored")
    # On the CPU, as the reference below (a GPU's TF32 convolutions differ by ~1e-3).
    assert extract(checkpoint, images, tmp_path / "store", "--batch-size", "2", "--device", "cpu") == 0
    captured = capsys.readouterr()
    assert "extracted 3 images" in captured.out and "1 skipped" in captured.out
    assert "skipped broken:" in captured.err and "broken.jpg" in captured.err

    dataset = load_features(tmp_path / "store").with_format("numpy")
    assert sorted(dataset["image_id"]) == ["a", "b", "nested/c"]
    row = dataset[[str(i) for i in dataset["image_id"]].index("nested/c")]
    expected = extractor(images / "nested" / "c.png")
    np.testing.assert_allclose(row["visual_feats"], expected["visual_feats"].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(row["visual_pos"], expected["visual_pos"].numpy(), atol=1e-5)
    assert (row["image_width"], row["image_height"], row["num_boxes"]) == (56, 40, 3)
    assert row["object_ids"].tolist() == expected["object_ids"].tolist()


def test_missing_opencv_is_one_clear_error(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` fail
    images = make_images(tmp_path / "images", ["a.png"])
    assert extract(checkpoint, images, tmp_path / "store", "--set", "resize_backend=opencv") == 2
    assert 'pip install "lxmert-hf[vision]"' in capsys.readouterr().err


def test_rerun_resumes_without_redoing_finished_images(checkpoint, tmp_path, capsys):
    images = make_images(tmp_path / "images", ["a.png", "b.png"])
    assert extract(checkpoint, images, tmp_path / "store") == 0
    make_images(images, ["c.png"])
    capsys.readouterr()
    assert extract(checkpoint, images, tmp_path / "store") == 0
    out = capsys.readouterr().out
    assert "extracted 1 images" in out and "2 already there" in out
    assert sorted(load_features(tmp_path / "store")["image_id"]) == ["a", "b", "c"]


def test_interrupted_run_keeps_finished_images(extractor, tmp_path, monkeypatch):
    images = list_images(make_images(tmp_path / "images", ["a.png", "b.png", "c.png"]))
    calls = []
    real_batch = extraction._extract_batch

    def interrupt_on_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_batch(*args)

    monkeypatch.setattr(extraction, "_extract_batch", interrupt_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store(extractor, images, tmp_path / "store", batch_size=1, progress=False)
    monkeypatch.setattr(extraction, "_extract_batch", real_batch)
    with pytest.raises(ValueError, match="incomplete"):
        load_features(tmp_path / "store")
    report = extract_to_store(extractor, images, tmp_path / "store", batch_size=2, progress=False)
    assert (report.already_done, report.written) == (1, 2)
    assert sorted(load_features(tmp_path / "store")["image_id"]) == ["a", "b", "c"]


def test_sigterm_is_turned_into_an_interrupt():
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as interrupted, signals_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler fires before this returns
    assert interrupted.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sigterm_keeps_the_finished_images_and_exits_143(checkpoint, tmp_path, capsys, monkeypatch):
    images = make_images(tmp_path / "images", ["a.png", "b.png", "c.png"])
    real_batch = extraction._extract_batch
    calls = []

    def terminate_on_third_image(*args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        real_batch(*args)

    monkeypatch.setattr(extraction, "_extract_batch", terminate_on_third_image)
    assert extract(checkpoint, images, tmp_path / "store", "--batch-size", "1", "--images-per-shard", "2") == 143
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM; 2 images kept in" in err and "rerun the same command to continue" in err
    manifest = json.loads((tmp_path / "store" / "store.json").read_text())
    assert [shard["num_images"] for shard in manifest["shards"]] == [2] and not manifest["complete"]


def test_each_shard_is_written_once_full(checkpoint, tmp_path, monkeypatch):
    images = make_images(tmp_path / "images", [f"{i}.png" for i in range(5)])
    real_batch = extraction._extract_batch
    shards_on_disk = []  # the shards the store lists when each image is about to be extracted

    def record_shards(extractor, batch, writer, report):
        manifest = json.loads((tmp_path / "store" / "store.json").read_text())
        shards_on_disk.append([shard["num_images"] for shard in manifest["shards"]])
        real_batch(extractor, batch, writer, report)

    monkeypatch.setattr(extraction, "_extract_batch", record_shards)
    assert extract(checkpoint, images, tmp_path / "store", "--batch-size", "1", "--images-per-shard", "2") == 0
    assert shards_on_disk == [[], [], [2], [2], [2, 2]]
    manifest = json.loads((tmp_path / "store" / "store.json").read_text())
    assert [shard["num_images"] for shard in manifest["shards"]] == [2, 2, 1]


def test_list_file_with_ids_and_relative_paths(tmp_path):
    make_images(tmp_path / "pics", ["x.png", "y.png"])
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\npics/x.png\tfirst\n\npics/y.png\n")
    assert list_images(listing) == [("first", tmp_path / "pics" / "x.png"), ("y", tmp_path / "pics" / "y.png")]
    listing.write_text("pics/x.png\npics/x.png\n")
    with pytest.raises(ValueError, match="both get the image id 'x'"):
        list_images(listing)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--set", "max_boxes"], "expected KEY=VALUE"),
        (["--set", "boxes=3"], "Unknown detector setting"),
    ],
)
def test_bad_arguments_exit_2(checkpoint, tmp_path, capsys, extra, match):
    images = make_images(tmp_path / "images", ["a.png"])
    assert extract(checkpoint, images, tmp_path / "store", *extra) == 2
    assert match in capsys.readouterr().err


def test_images_without_regions_are_skipped(checkpoint, tmp_path, capsys):
    images = make_images(tmp_path / "images", ["a.png"])
    assert extract(checkpoint, images, tmp_path / "store", "--set", "rpn_min_box_size=10000") == 2
    assert "no image gave region features: a: no region found" in capsys.readouterr().err


def test_missing_images_and_unavailable_cuda(checkpoint, tmp_path, capsys):
    assert extract(checkpoint, tmp_path / "nowhere", tmp_path / "store") == 2
    assert "no such folder or list file" in capsys.readouterr().err
    if not torch.cuda.is_available():
        images = make_images(tmp_path / "images", ["a.png"])
        assert extract(checkpoint, images, tmp_path / "store", "--device", "cuda") == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--help"])
    assert exit_info.value.code == 0
    assert "--images" in capsys.readouterr().out


def test_parse_overrides():
    assert parse_overrides(["min_size=64", "nms_thresholds=[0.5, 0.7]", "input_format=BGR"]) == {
        "min_size": 64,
        "nms_thresholds": [0.5, 0.7],
        "input_format": "BGR",
    }


def test_drawing_labels_attribute_and_object(extractor):
    image = RNG.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    regions = extractor(image)
    objects, attributes = [f"thing{i}" for i in range(1600)], [f"shade{i}" for i in range(400)]
    picture = draw_regions(image, regions, object_names=objects, attribute_names=attributes, attribute_threshold=0)
    assert isinstance(picture, Image.Image) and picture.size == (56, 40) and picture.mode == "RGB"
    assert not np.array_equal(np.asarray(picture), image)
    from lxmert_hf.detection.drawing import region_labels

    labels = region_labels(regions, objects, attributes, attribute_threshold=0)
    first = f"shade{int(regions['attribute_ids'][0])} thing{int(regions['object_ids'][0])}"
    assert labels[0] == first
    assert region_labels(regions, attribute_threshold=2)[0] == f"object {int(regions['object_ids'][0])}"


def test_no_tf32_switches_tf32_off(checkpoint, tmp_path):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        images = make_images(tmp_path / "images", ["a.png"])
        assert extract(checkpoint, images, tmp_path / "store", "--device", "cpu", "--no-tf32") == 0
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_read_only_output_fails_before_loading_the_detector(checkpoint, tmp_path, read_only_folder, capsys):
    images = make_images(tmp_path / "images", ["a.png"])
    assert extract(checkpoint, images, read_only_folder / "store") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lxmert-hf extract: error: --output {read_only_folder / 'store'}: cannot write")
    assert "permission denied" in err and list(read_only_folder.iterdir()) == []
