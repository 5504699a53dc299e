import base64
import logging
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest
from datasets import Array2D, Features, Sequence, Value
from datasets.arrow_writer import ArrowWriter

from lxmert_hf.cli import main
from lxmert_hf.data import load_features, prepare_features, tsv, write_tsv
from lxmert_hf.data.tsv import TSV_FIELDS, BadRecordError, format_tsv_line, iter_tsv, parse_tsv_line


def make_record(image_id, num_boxes=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, 30, num_boxes), rng.uniform(0, 20, num_boxes)
    return {
        "image_id": image_id,
        "image_width": 64,
        "image_height": 48,
        "boxes": np.stack([x1, y1, x1 + 30, y1 + 25], axis=1).astype(np.float32),
        "visual_feats": rng.standard_normal((num_boxes, dim)).astype(np.float32),
        "object_ids": rng.integers(0, 1600, num_boxes),
        "object_scores": rng.uniform(size=num_boxes).astype(np.float32),
        "attribute_ids": rng.integers(0, 400, num_boxes),
        "attribute_scores": rng.uniform(size=num_boxes).astype(np.float32),
    }


def line_fields(record, **replace):
    fields = format_tsv_line(record).rstrip(b"\n").split(b"\t")
    for name, value in replace.items():
        fields[TSV_FIELDS.index(name)] = value
    return b"\t".join(fields) + b"\n"


def test_line_round_trip_matches_numpy_bytes():
    record = make_record("COCO_val2014_000000000042")
    line = format_tsv_line(record)
    fields = line.rstrip(b"\n").split(b"\t")
    assert len(fields) == 10 and fields[0] == b"COCO_val2014_000000000042" and fields[7] == b"4"
    # The array fields are base64 of raw numpy bytes, as in the released files.
    features = np.frombuffer(base64.b64decode(fields[9]), dtype=np.float32).reshape(4, 16)
    np.testing.assert_array_equal(features, record["visual_feats"])
    assert np.frombuffer(base64.b64decode(fields[3]), dtype=np.int64).tolist() == record["object_ids"].tolist()
    parsed = parse_tsv_line(line)
    for key in ("boxes", "visual_feats", "object_ids", "object_scores", "attribute_ids", "attribute_scores"):
        np.testing.assert_array_equal(parsed[key], record[key])
    assert (parsed["image_width"], parsed["image_height"]) == (64, 48)


def test_prepare_from_tsv_files(tmp_path):
    records = [make_record(f"img{i}", num_boxes=2 + i % 3, seed=i) for i in range(7)]
    write_tsv(tmp_path / "a.tsv", records[:4])
    write_tsv(tmp_path / "b.tsv", records[4:])
    report = prepare_features([tmp_path / "a.tsv", tmp_path / "b.tsv"], tmp_path / "store", progress=False)
    assert report.written == 7
    ds = load_features(tmp_path / "store").with_format("numpy")
    assert list(ds["image_id"]) == [f"img{i}" for i in range(7)]
    row = ds[5]
    np.testing.assert_array_equal(row["visual_feats"], records[5]["visual_feats"])
    np.testing.assert_allclose(row["visual_pos"], records[5]["boxes"] / [64, 48, 64, 48], rtol=1e-6)
    np.testing.assert_array_equal(row["object_ids"], records[5]["object_ids"])


BAD_LINES = {
    "wrong field count": (lambda r: b"\t".join(format_tsv_line(r).split(b"\t")[:9]) + b"\n", "expected 10 tab"),
    "undecodable base64": (lambda r: line_fields(r, features=b"not*base64!"), "not valid base64"),
    "feature bytes": (lambda r: line_fields(r, features=base64.b64encode(b"\0" * 20)), "not num_boxes \\(4\\) x dim"),
    "box count": (lambda r: line_fields(r, boxes=base64.b64encode(b"\0" * 16)), "expected num_boxes x 4"),
    "ids count": (lambda r: line_fields(r, objects_id=base64.b64encode(b"\0" * 8)), "1 values for 4 boxes"),
    "num_boxes": (lambda r: line_fields(r, num_boxes=b"four"), "should be an integer"),
    "nan boxes": (lambda r: format_tsv_line({**r, "boxes": np.full((4, 4), np.nan)}), "boxes contain NaN"),
    "negative boxes": (lambda r: format_tsv_line({**r, "boxes": -np.ones((4, 4))}), "negative coordinates"),
    "nan features": (lambda r: format_tsv_line({**r, "visual_feats": np.full((4, 16), np.nan)}), "contain NaN"),
    "zero width": (lambda r: format_tsv_line({**r, "image_width": 0}), "image size must be positive"),
    "duplicate id": (lambda r: format_tsv_line({**r, "image_id": "img0"}), "duplicate image id"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_lines_name_file_line_and_fix(tmp_path, case):
    make_line, message = BAD_LINES[case]
    good = [format_tsv_line(make_record(f"img{i}", seed=i)) for i in range(3)]
    path = tmp_path / "features.tsv"
    path.write_bytes(good[0] + good[1] + make_line(make_record("bad")) + good[2])
    with pytest.raises(BadRecordError, match=message) as error:
        prepare_features([path], tmp_path / "store", progress=False)
    assert f"{path}:3" in str(error.value)
    assert "--skip-bad" in str(error.value)
    with pytest.raises(ValueError, match="incomplete"):
        load_features(tmp_path / "store")


def test_skip_bad_counts_and_keeps_the_rest(tmp_path, caplog):
    lines = [format_tsv_line(make_record(f"img{i}", seed=i)) for i in range(4)]
    lines.insert(1, b"broken line\n")
    lines.insert(3, line_fields(make_record("bad"), features=b"@@@"))
    path = tmp_path / "features.tsv"
    path.write_bytes(b"".join(lines))
    with caplog.at_level(logging.WARNING):
        report = prepare_features([path], tmp_path / "store", skip_bad=True, progress=False)
    assert (report.written, report.skipped_bad) == (4, 2)
    assert "skipped 2 bad records" in caplog.text and f"{path}:2" in caplog.text
    assert load_features(tmp_path / "store")["image_id"][:] == ["img0", "img1", "img2", "img3"]


def test_empty_and_missing_files_are_errors(tmp_path):
    (tmp_path / "empty.tsv").write_bytes(b"")
    (tmp_path / "blank.tsv").write_bytes(b"\n\n")
    for name in ("empty.tsv", "blank.tsv"):
        with pytest.raises(ValueError, match="is empty"):
            prepare_features([tmp_path / name], tmp_path / f"store-{name}", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_features([tmp_path / "nope.tsv"], tmp_path / "store", progress=False)
    with pytest.raises(ValueError, match="is empty"):
        list(iter_tsv(tmp_path / "blank.tsv"))


def test_resume_does_not_decode_done_images(tmp_path):
    records = [make_record(f"img{i}", seed=i) for i in range(5)]
    write_tsv(tmp_path / "f.tsv", records)
    prepare_features([tmp_path / "f.tsv"], tmp_path / "store", progress=False, images_per_shard=2)
    report = prepare_features([tmp_path / "f.tsv"], tmp_path / "store", progress=False)
    assert (report.written, report.already_done) == (0, 5)


def write_demo_arrow(path, max_detections=5, dim=16, images=3):
    """An Arrow file laid out as the transformers LXMERT demo extractor writes it."""
    features = Features(
        {
            "attr_ids": Sequence(Value("float32"), length=max_detections),
            "attr_probs": Sequence(Value("float32"), length=max_detections),
            "boxes": Array2D((max_detections, 4), dtype="float32"),
            "img_id": Value("int32"),
            "obj_ids": Sequence(Value("float32"), length=max_detections),
            "obj_probs": Sequence(Value("float32"), length=max_detections),
            "roi_features": Array2D((max_detections, dim), dtype="float32"),
            "sizes": Sequence(Value("float32"), length=2),
            "preds_per_image": Value("int32"),
        }
    )
    rng = np.random.default_rng(0)
    rows = []
    with ArrowWriter(features=features, path=str(path)) as writer:
        for image in range(images):
            boxes = np.zeros((max_detections, 4), np.float32)
            boxes[:3] = [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.25, 0.5, 0.75, 1.0]]
            row = {
                "attr_ids": np.arange(max_detections, dtype=np.float32),
                "attr_probs": np.full(max_detections, 0.5, np.float32),
                "boxes": boxes,
                "img_id": 1000 + image,
                "obj_ids": np.arange(max_detections, dtype=np.float32) + 7,
                "obj_probs": np.full(max_detections, 0.9, np.float32),
                "roi_features": rng.standard_normal((max_detections, dim)).astype(np.float32),
                "sizes": np.array([600, 800], np.float32),
                "preds_per_image": 3,
            }
            writer.write(row)
            rows.append(row)
        writer.finalize()
    return rows


def test_prepare_from_demo_arrow(tmp_path):
    rows = write_demo_arrow(tmp_path / "demo.arrow")
    with pa.memory_map(str(tmp_path / "demo.arrow")) as source:
        assert pa.ipc.open_stream(source).schema.names[0] == "attr_ids"
    prepare_features([tmp_path / "demo.arrow"], tmp_path / "store", progress=False)
    ds = load_features(tmp_path / "store").with_format("numpy")
    assert list(ds["image_id"]) == ["1000", "1001", "1002"]
    row = ds[1]
    assert row["num_boxes"] == 3  # padding detections dropped
    np.testing.assert_allclose(row["visual_pos"], rows[1]["boxes"][:3], atol=1e-6)
    np.testing.assert_array_equal(row["visual_feats"], rows[1]["roi_features"][:3])
    assert row["object_ids"].tolist() == [7, 8, 9]
    assert (row["image_width"], row["image_height"]) == (800, 600)


def test_arrow_file_of_another_layout_is_rejected(tmp_path):
    table = pa.table({"x": [1, 2]})
    with pa.OSFile(str(tmp_path / "other.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(ValueError, match="demo extractor's columns"):
        prepare_features([tmp_path / "other.arrow"], tmp_path / "store", progress=False)


def test_a_line_longer_than_the_cap_fails_early_in_bounded_memory(tmp_path, monkeypatch, capsys):
    path = tmp_path / "no-newline.tsv"
    with open(path, "wb") as handle:  # 4 MB without a newline, as a binary file given by mistake
        block = np.random.default_rng(0).integers(0, 256, 2**16, dtype=np.uint8).tobytes().replace(b"\n", b"x")
        for _ in range(64):
            handle.write(block)
    monkeypatch.setattr(tsv, "MAX_LINE_BYTES", 256 * 2**10)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"no-newline.tsv: line 1 is longer than 256 KB: not a feature TSV"):
            next(iter_tsv(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak} bytes allocated to refuse a 4 MB line under a 256 KB cap"
    argv = ["prepare", "features", "--tsv", str(path), "--output", str(tmp_path / "store"), "--skip-bad"]
    assert main([*argv, "--no-progress"]) == 2  # no record to skip: the file is not a feature TSV
    assert "line 1 is longer than 256 KB" in capsys.readouterr().err


def test_the_cap_names_the_line_and_lets_lines_up_to_it_through(tmp_path):
    lines = [format_tsv_line(make_record(f"img{i}", seed=i)) for i in range(3)]
    path = tmp_path / "features.tsv"
    path.write_bytes(b"".join(lines))
    longest = max(len(line) for line in lines)
    assert [record["image_id"] for _, record in iter_tsv(path, max_line_bytes=longest)] == ["img0", "img1", "img2"]
    path.write_bytes(lines[0] + lines[1] + b"x" * (longest + 1) + b"\n")
    records = iter_tsv(path, max_line_bytes=longest)
    assert next(records)[1]["image_id"] == "img0" and next(records)[1]["image_id"] == "img1"
    with pytest.raises(ValueError, match=rf"features.tsv: line 3 is longer than {longest} bytes"):
        next(records)
