"""Region features for given boxes: the extractor, box checks, box files, `extract_to_store` and `extract --boxes`."""

from __future__ import annotations

import json
import logging
import re

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import vqa_helpers as vh
from PIL import Image
from tiny import TINY_DETECTOR

from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig, load_features
from lxmert_hf.cli import main
from lxmert_hf.data.store import FeatureStore
from lxmert_hf.detection.extraction import extract_to_store, list_images
from lxmert_hf.detection.given_boxes import read_boxes
from lxmert_hf.model_card import model_card

TINY = {
    **TINY_DETECTOR,
    **{"min_size": 64, "max_size": 96, "rpn_post_nms_topk": 10, "score_threshold": 0.0},
    **{"min_boxes": 2, "max_boxes": 6},
    "resize_backend": "torch",  # the "lxmert" preset's Caffe procedure without OpenCV
}
SIZES = [(40, 56), (50, 38)]  # (height, width)


def tiny_extractor(preset="lxmert", **names):
    torch.manual_seed(0)
    overrides = TINY if preset == "lxmert" else {**TINY, "resize_backend": "pil"}
    return RegionFeatureExtractor(RegionFeatureExtractorConfig.from_preset(preset, **overrides), **names)


@pytest.fixture(scope="module")
def extractor():
    return tiny_extractor()


@pytest.fixture(scope="module")
def checkpoint(extractor, tmp_path_factory):
    folder = tmp_path_factory.mktemp("detector")
    extractor.save_pretrained(folder)
    return folder


def make_images(folder, sizes=SIZES, seed=1):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, size in enumerate(sizes):
        paths.append(folder / f"img{index}.png")
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


# -- the extractor -------------------------------------------------------------------------------------------------
def test_the_detectors_own_boxes_give_its_own_features(extractor, images):
    detected = extractor(images)
    assert all(len(regions["boxes"]) >= 2 for regions in detected)
    given = extractor(images, boxes=[regions["boxes"] for regions in detected])
    prepared = [extractor.prepare(path) for path in images]
    by_detect = extractor.detect(prepared, boxes=[regions["boxes"].tolist() for regions in detected])
    for own, again, direct in zip(detected, given, by_detect, strict=True):
        for result in (again, direct):
            assert (result["visual_feats"] - own["visual_feats"]).abs().max() <= 1e-5
            assert torch.equal(result["boxes"], own["boxes"])
            assert result["object_ids"].tolist() == own["object_ids"].tolist()
            assert result["attribute_ids"].tolist() == own["attribute_ids"].tolist()
            torch.testing.assert_close(result["object_scores"], own["object_scores"])
            torch.testing.assert_close(result["attribute_scores"], own["attribute_scores"])
            torch.testing.assert_close(result["visual_pos"], own["visual_pos"])
            assert result["image_size"] == own["image_size"]


def test_exactly_the_given_boxes_in_order_without_proposals(images, monkeypatch):
    names = {"object_names": [f"o{i}" for i in range(1600)], "attribute_names": [f"a{i}" for i in range(400)]}
    extractor = tiny_extractor(**names)

    def no_proposals(*args):
        raise AssertionError("the proposal stage ran")

    monkeypatch.setattr(extractor.proposal_generator, "forward", no_proposals)
    boxes = np.array([[x, y, x + 10 + x / 3, y + 9 + y] for x in range(0, 35, 5) for y in (0, 10)], np.float32)
    regions = extractor(images[0], boxes=boxes)
    backwards = extractor(images[0], boxes=torch.from_numpy(boxes[::-1].copy()))
    assert len(regions["visual_feats"]) == len(boxes) == 14  # more than max_boxes: any count
    assert regions["boxes"].tolist() == boxes.tolist()
    torch.testing.assert_close(backwards["visual_feats"], regions["visual_feats"].flip(0))
    assert backwards["object_ids"].tolist() == regions["object_ids"].tolist()[::-1]
    assert regions["object_names"] == [f"o{i}" for i in regions["object_ids"].tolist()]
    assert regions["attribute_names"] == [f"a{i}" for i in regions["attribute_ids"].tolist()]
    height, width = regions["image_size"]
    torch.testing.assert_close(regions["visual_pos"], regions["boxes"] / torch.tensor([width, height] * 2))


@pytest.mark.parametrize("preset", ["lxmert", "lxmert-detectron2"])
def test_scores_are_those_of_the_presets_procedure(images, preset):
    extractor = tiny_extractor(preset)
    regions = extractor(images[1], boxes=[[0, 0, 20, 30], [5, 8, 38, 50], [1, 1, 4, 4]])
    class_logits, _, attribute_logits = extractor.roi_heads.box_predictor(regions["visual_feats"])
    object_scores, object_ids = class_logits.softmax(dim=-1)[:, :-1].max(dim=1)
    if preset == "lxmert":  # Caffe: softmax over all attribute logits, "no attribute" included
        attribute_scores, attribute_ids = attribute_logits.softmax(dim=-1)[:, :-1].max(dim=1)
    else:
        attribute_scores, attribute_ids = attribute_logits[:, :-1].softmax(dim=-1).max(dim=1)
    assert regions["object_ids"].tolist() == object_ids.tolist()
    assert regions["attribute_ids"].tolist() == attribute_ids.tolist()
    torch.testing.assert_close(regions["object_scores"], object_scores)
    torch.testing.assert_close(regions["attribute_scores"], attribute_scores)


def test_padding_with_given_boxes(extractor, images):
    boxes = [np.array([[0, 0, 10, 10]] * 8, np.float32), np.array([[2, 2, 30, 40]], np.float32)]
    batch = extractor(images, boxes=boxes, padding=True)
    assert batch["visual_feats"].shape[:2] == (2, 8)  # more given than max_boxes (6): padded to the most given
    assert batch["visual_attention_mask"].sum(dim=1).tolist() == [8, 1]
    assert batch["object_ids"][1, 1:].tolist() == [-1] * 7
    detected = extractor(images, padding=True)
    assert detected["visual_feats"].shape[1] == extractor.config.max_boxes


@pytest.mark.parametrize(
    "boxes, match",
    [
        ([[0, 0, 80, 20]], r"box 0 is \[0, 0, 80, 20\]: it reaches beyond the 56x40 image"),
        ([[0, 0, 10, 10], [-5, 0, 10, 10]], "box 1 .* beyond"),
        ([[10, 0, 10, 10]], "box 0 .* x2 > x1 and y2 > y1"),
        ([[0, 12, 10, 3]], "x2 > x1 and y2 > y1"),
        ([], "no boxes"),
        ([[0, 0, float("nan"), 10]], "finite"),
        ([[0, 0, 10, float("inf")]], "finite"),
        ([[0, 0, 10]], r"\[n, 4\].*got shape \[1, 3\]"),
        ([0, 0, 10, 10], r"got shape \[4\]"),
        ([["a", 0, 10, 10]], "must be numbers"),
    ],
)
def test_bad_boxes_name_the_image(extractor, images, boxes, match):
    with pytest.raises(ValueError, match=match) as caught:
        extractor(images[0], boxes=boxes)
    assert str(images[0]) in str(caught.value)
    with pytest.raises(ValueError, match=f"image 1 .*{images[1].name}"):
        extractor(images, boxes=[[[0, 0, 5, 5]], boxes])


def test_slightly_outside_is_clipped_and_box_counts_must_match(extractor, images):
    regions = extractor(images[0], boxes=[[-0.5, 0, 56.8, 40.5]])
    assert regions["boxes"].tolist() == [[0.0, 0.0, 56.0, 40.0]]
    with pytest.raises(ValueError, match="1 box lists for 2 images"):
        extractor(images, boxes=[[[0, 0, 5, 5]]])
    with pytest.raises(ValueError, match="one .* per image"):
        extractor(images, boxes={"img0": [[0, 0, 5, 5]]})
    with pytest.raises(ValueError, match="1 box lists for 2 images"):
        extractor.detect([extractor.prepare(path) for path in images], boxes=[[[0, 0, 5, 5]]])


# -- box files -----------------------------------------------------------------------------------------------------
BOXES = {"a": [[0.0, 0.0, 10.0, 12.0], [1.5, 2.0, 30.0, 20.0]], "7": [[3.0, 4.0, 5.0, 6.0]]}


def write_box_files(folder):
    """The same boxes in every format `read_boxes` takes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "boxes.json").write_text(json.dumps(BOXES))
    lines = [json.dumps({"image_id": 7 if key == "7" else key, "regions": value}) for key, value in BOXES.items()]
    (folder / "boxes.jsonl").write_text("\n".join(lines) + "\n\n")
    table = pa.table({"image_id": list(BOXES), "boxes": list(BOXES.values())})
    pq.write_table(table, folder / "boxes.parquet")
    datasets.Dataset(table).save_to_disk(folder / "saved")
    return {
        "json": (folder / "boxes.json", "boxes"),
        "jsonl": (folder / "boxes.jsonl", "regions"),
        "parquet": (folder / "boxes.parquet", "boxes"),
        "arrow": (next((folder / "saved").glob("*.arrow")), "boxes"),
        "saved": (folder / "saved", "boxes"),
    }


def test_every_box_file_format_reads_the_same_boxes(tmp_path):
    for name, (path, column) in write_box_files(tmp_path).items():
        read = read_boxes(path, column=column)
        assert list(read) == ["a", "7"], name
        for image_id, boxes in BOXES.items():
            assert read[image_id].dtype == np.float32 and read[image_id].tolist() == boxes, name


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("b.json", "{not json", r"b.json: not JSON"),
        ("b.json", "[[0, 0, 1, 1]]", r"b.json: expected an object"),
        ("b.json", json.dumps({"x": [[5, 0, 1, 1]]}), r"b.json: image 'x': box 0 is \[5, 0, 1, 1\]: it needs x2 > x1"),
        ("b.jsonl", '{"image_id": "x", "boxes": [[0, 0, 1, 1]]}\n{oops', r"b.jsonl, line 2: not JSON"),
        ("b.jsonl", '{"image_id": "x"}', r"b.jsonl, line 1: expected .*boxes"),
        ("b.jsonl", '{"image_id": "x", "boxes": [[0, 0, NaN, 1]]}', r"b.jsonl, line 1: image 'x': box 0 .* finite"),
        ("b.jsonl", '{"image_id": "x", "boxes": []}', r"b.jsonl, line 1: image 'x': no boxes"),
        ("b.jsonl", '{"image_id": 1, "boxes": [[0, 0, 1, 1]]}\n{"image_id": "1", "boxes": [[0, 0, 1, 1]]}',
         r"b.jsonl, line 2: image '1' already has boxes \(line 1\)"),
        ("b.parquet", {"image_id": ["x"], "regions": [[[0, 0, 1, 1]]]}, r"no column 'boxes'.*--boxes-column"),
        ("b.parquet", {"image_id": ["x"], "boxes": ["0 0 1 1"]}, r"b.parquet: column 'boxes' is string"),
        ("b.parquet", {"image_id": ["x", "y"], "boxes": [[[0, 0, 1, 1]], [[0, 0, 1]]]},
         r"b.parquet, record 1: image 'y': .*got shape \[1, 3\]"),
        ("b.parquet", {"image_id": ["x", "y"], "boxes": [[[0, 0, 1, 1]], None]}, r"record 1: image 'y': missing"),
        ("b.parquet", {"image_id": ["x", "x"], "boxes": [[[0, 0, 1, 1]]] * 2}, r"record 1: image 'x' already has"),
        ("b.parquet", "not parquet", r"b.parquet: cannot read it as Parquet"),
        ("b.txt", "x 0 0 1 1", r"b.txt: unknown format .txt; use .json"),
    ],
)  # fmt: skip
def test_bad_box_files_name_the_file_and_record(tmp_path, name, content, match):
    path = tmp_path / name
    if isinstance(content, dict):
        pq.write_table(pa.table(content), path)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_boxes(path)


def test_missing_box_files_and_datasets_with_splits(tmp_path):
    with pytest.raises(FileNotFoundError, match="boxes file .*nowhere.json: no such file"):
        read_boxes(tmp_path / "nowhere.json")
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"image_id": ["x"], "boxes": [[[0, 0, 1, 1]]]})}
    )
    splits.save_to_disk(tmp_path / "splits")
    with pytest.raises(ValueError, match=r"splits \['train'\]; pass the folder of one split"):
        read_boxes(tmp_path / "splits")


# -- extract_to_store ----------------------------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    make_images(tmp_path / "images", sizes=[*SIZES, (36, 36)])
    return tmp_path / "images"


def given_for(folder):
    return {"img0": [[0, 0, 20, 30], [10, 5, 56, 40]], "img1": [[2, 3, 38, 50]], "img2": [[0, 0, 36, 36]] * 3}


def test_store_holds_the_features_of_the_given_boxes_and_says_so(extractor, checkpoint, folder, tmp_path, caplog):
    boxes = {**given_for(folder), "img2": [[0, 0, 50, 36]], "elsewhere": [[0, 0, 1, 1]], 5: [[0, 0, 1, 1]]}
    with caplog.at_level(logging.WARNING):
        report = extract_to_store(
            extractor, list_images(folder), tmp_path / "store", progress=False, detector=checkpoint, boxes=boxes
        )
    assert "the boxes of 2 image ids not among the 3 images are not used" in caplog.text
    assert report.written == 2 and [image_id for image_id, _ in report.skipped] == ["img2"]
    assert "image 'img2': box 0 is [0, 0, 50, 36]: it reaches beyond the 36x36 image" in report.skipped[0][1]
    store = load_features(tmp_path / "store").with_format("numpy")
    for row in store:
        expected = extractor(folder / f"{row['image_id']}.png", boxes=boxes[row["image_id"]])
        np.testing.assert_allclose(row["visual_feats"], expected["visual_feats"].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(row["visual_pos"], expected["visual_pos"].numpy(), atol=1e-6)
        assert row["object_ids"].tolist() == expected["object_ids"].tolist()
    described = FeatureStore(tmp_path / "store").extractor
    assert described["regions"] == "given" and described["detector"] == str(checkpoint.resolve())
    config = vh.vqa_model().config
    config.visual_features = described
    assert "regions were given boxes (e.g. annotated ones), not detected" in model_card(config).text


@pytest.mark.parametrize(
    "change, match",
    [
        ({"img1": None}, r"`boxes`: no boxes for 1 of the 3 images: 'img1'"),
        ({"img1": [[0, 0, float("nan"), 4]]}, r"image 'img1' \(`boxes`\): box 0 is \[0, 0, nan, 4\]"),
        ({"img1": []}, r"image 'img1' \(`boxes`\): no boxes"),
    ],
)
def test_missing_or_malformed_boxes_stop_before_any_work(extractor, folder, tmp_path, change, match):
    boxes = {key: value for key, value in {**given_for(folder), **change}.items() if value is not None}
    with pytest.raises(ValueError, match=match):
        extract_to_store(extractor, list_images(folder), tmp_path / "store", progress=False, boxes=boxes)
    assert not (tmp_path / "store").exists()


def test_a_store_is_resumed_only_as_it_was_made(extractor, checkpoint, folder, tmp_path):
    images = list_images(folder)
    run = dict(progress=False, detector=checkpoint)
    extract_to_store(extractor, images[:1], tmp_path / "detected", **run)
    with pytest.raises(ValueError, match=r"regions: not recorded in the store, 'given' now"):
        extract_to_store(extractor, images, tmp_path / "detected", boxes=given_for(folder), **run)
    extract_to_store(extractor, images[:1], tmp_path / "given", boxes=given_for(folder), **run)
    with pytest.raises(ValueError, match=r"regions: 'given' in the store, not given now"):
        extract_to_store(extractor, images, tmp_path / "given", **run)
    assert len(FeatureStore(tmp_path / "given")) == len(FeatureStore(tmp_path / "detected")) == 1


# -- the command line ----------------------------------------------------------------------------------------------
def extract(checkpoint, images, output, *extra):
    argv = ["extract", "--images", str(images), "--output", str(output), "--model", str(checkpoint)]
    return main([*argv, "--num-workers", "0", "--no-progress", "--device", "cpu", *extra])


def test_cli_extracts_the_boxes_of_a_file(extractor, checkpoint, folder, tmp_path, capsys):
    boxes = given_for(folder)
    lines = [json.dumps({"image_id": key, "areas": value}) for key, value in boxes.items()]
    (tmp_path / "boxes.jsonl").write_text("\n".join(lines))
    argv = ["--boxes", str(tmp_path / "boxes.jsonl"), "--boxes-column", "areas", "--num-workers", "1"]
    assert extract(checkpoint, folder, tmp_path / "store", *argv) == 0
    assert "extracted 3 images" in capsys.readouterr().out
    store = load_features(tmp_path / "store").with_format("numpy")
    row = store[[str(image_id) for image_id in store["image_id"]].index("img2")]
    expected = extractor(folder / "img2.png", boxes=boxes["img2"])
    np.testing.assert_allclose(row["visual_feats"], expected["visual_feats"].numpy(), rtol=1e-5, atol=1e-5)
    assert row["visual_pos"].tolist() == [[0.0, 0.0, 1.0, 1.0]] * 3  # the given boxes, normalized
    assert FeatureStore(tmp_path / "store").extractor["regions"] == "given"


@pytest.mark.parametrize(
    "content, extra, match",
    [
        ('{"img0": [[0, 0, 5, 5]], "img1": [[0, 0, 5, 5]]}', [], r"--boxes .*b.json: no boxes for 1 of the 3 images"),
        ('{"img0": [[0, 0, 5]]}', [], r"boxes file .*b.json: image 'img0': boxes must be laid out \[n, 4\]"),
        ("{oops", [], r"boxes file .*b.json: not JSON"),
        (None, ["--boxes-column", "areas"], r"--boxes-column names a column of the --boxes file; pass --boxes FILE"),
    ],
)  # fmt: skip
def test_cli_bad_boxes_are_one_line_and_exit_2(checkpoint, folder, tmp_path, capsys, content, extra, match):
    if content is not None:
        (tmp_path / "b.json").write_text(content)
        extra = ["--boxes", str(tmp_path / "b.json"), *extra]
    assert extract(checkpoint, folder, tmp_path / "store", *extra) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("lxmert-hf extract: error: ")
    assert re.search(match, error), error
    assert not (tmp_path / "store").exists()
