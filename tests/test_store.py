import ast
import json
import logging
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from lxmert_hf.data import FeatureStoreWriter, export_parquet, load_features, push_features_to_hub
from lxmert_hf.data.store import normalize_boxes, open_store_dataset
from lxmert_hf.data.store.format import PROVENANCE_NAME


def make_image(image_id, num_boxes=5, dim=8, width=100, height=50, seed=0, **extra):
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(0, width / 2, num_boxes)
    y1 = rng.uniform(0, height / 2, num_boxes)
    boxes = np.stack([x1, y1, x1 + width / 2, y1 + height / 2], axis=1).astype(np.float32)
    example = {
        "image_id": image_id,
        "visual_feats": rng.standard_normal((num_boxes, dim)).astype(np.float32),
        "boxes": boxes,
        "image_width": width,
        "image_height": height,
    }
    example.update(extra)
    return example


def write_store(path, images, **kwargs):
    with FeatureStoreWriter(path, resume=True, **kwargs) as writer:
        for image in images:
            writer.add(image)
    return path


def test_round_trip_with_variable_box_counts(tmp_path):
    images = [make_image(f"img{i}", num_boxes=3 + i % 4, seed=i) for i in range(11)]
    write_store(tmp_path / "store", images, images_per_shard=4, batch_size=3)
    ds = load_features(tmp_path / "store").with_format("numpy")
    assert len(ds) == 11
    shards = sorted(f.name for f in (tmp_path / "store").glob("shard-*"))
    assert shards == [f"shard-0000{i}{suffix}" for i in range(3) for suffix in (".arrow", ".index")]
    assert (tmp_path / "store" / "store.index").is_file()
    for image, row in zip(images, ds, strict=True):
        assert row["image_id"] == image["image_id"]
        np.testing.assert_array_equal(row["visual_feats"], image["visual_feats"])
        expected = image["boxes"] / np.array([100, 50, 100, 50], dtype=np.float32)
        np.testing.assert_allclose(row["visual_pos"], expected, rtol=1e-6)
        assert row["num_boxes"] == len(image["boxes"])
        assert (row["image_width"], row["image_height"]) == (100, 50)


def test_float16_storage_halves_feature_bytes(tmp_path):
    images = [make_image(f"img{i}", num_boxes=36, dim=256, seed=i) for i in range(20)]
    write_store(tmp_path / "f32", images)
    write_store(tmp_path / "f16", images, dtype="float16")
    size = {name: (tmp_path / name / "shard-00000.arrow").stat().st_size for name in ("f32", "f16")}
    assert size["f16"] < 0.55 * size["f32"]
    ds = load_features(tmp_path / "f16")
    assert ds.features["visual_feats"].dtype == "float16"
    row = ds.with_format("numpy")[0]
    np.testing.assert_allclose(row["visual_feats"], images[0]["visual_feats"], atol=2e-3, rtol=1e-3)


def test_detector_outputs_are_kept(tmp_path):
    extra = {
        "object_ids": np.arange(5),
        "object_scores": np.linspace(0, 1, 5),
        "attribute_ids": np.arange(5) + 10,
        "attribute_scores": np.ones(5),
    }
    write_store(tmp_path / "s", [make_image("a", **extra)])
    row = load_features(tmp_path / "s")[0]
    assert row["object_ids"] == [0, 1, 2, 3, 4]
    assert row["attribute_ids"][0] == 10
    with (
        FeatureStoreWriter(tmp_path / "t") as writer,
        pytest.raises(ValueError, match="same fields"),
    ):
        writer.add(make_image("a", **extra))
        writer.add(make_image("b"))


def test_normalize_boxes_clips_and_counts():
    pos, clipped = normalize_boxes(np.array([[0, 0, 100.05, 50], [10, 10, 120, 60]]), width=100, height=50)
    assert pos.max() == 1.0
    assert clipped == 2  # 100.05 is within the tolerance; 120 and 60 are not


@pytest.mark.parametrize(
    ("corner", "width", "accepted"),
    [
        (-5e-6, 1, True),
        (-5e-6 * 640, 640, True),  # the same corner in pixels of a 640-px image
        (-1e-5, 1, False),  # the original's bound, which it rejects too (a strict comparison in float32)
        (-2e-5, 1, False),
        (-2e-5 * 640, 640, False),
    ],
)
def test_normalize_boxes_tolerates_corners_below_zero_as_the_original(corner, width, accepted):
    boxes = np.array([[corner, 0.0, width / 2, 1.0]])
    # The original's check, on the float32 normalized boxes its data loaders compute.
    original = (-(boxes.astype(np.float32) / np.float32(width)) < 0 + 1e-5).all()
    assert original == accepted
    if accepted:
        pos, clipped = normalize_boxes(boxes, width=width, height=1)
        assert pos[0].tolist() == [0.0, 0.0, 0.5, 1.0] and clipped == 0
    else:
        with pytest.raises(ValueError, match="negative coordinates .* less than 1e-05 below 0 are tolerated"):
            normalize_boxes(boxes, width=width, height=1)


def test_clipping_is_warned_with_a_count(tmp_path, caplog):
    image = make_image("a")
    image["boxes"][0, 2] = 130
    with caplog.at_level(logging.WARNING, logger="lxmert_hf.data.store.writer"):
        write_store(tmp_path / "s", [image])
    assert "clipped 1 box coordinates in 1 images" in caplog.text
    assert load_features(tmp_path / "s").with_format("numpy")[0]["visual_pos"].max() <= 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_width": 0}, "image size must be positive"),
        ({"image_height": -3}, "image size must be positive"),
        ({"boxes": np.full((5, 4), np.nan)}, "boxes contain NaN"),
        ({"boxes": -np.ones((5, 4))}, "negative coordinates"),
        ({"boxes": np.ones((4, 4))}, "4 boxes for 5 feature rows"),
        ({"visual_feats": np.full((5, 8), np.nan)}, "visual_feats contain NaN"),
        ({"visual_feats": np.ones((5,))}, "shape \\[num_boxes >= 1, dim\\]"),
        ({"visual_feats": np.ones((5, 9))}, "dim 9 but this store holds dim 8"),
        ({"object_ids": np.arange(4)}, "object_ids has 4 values for 5 boxes"),
    ],
)
def test_bad_images_are_rejected_by_name(tmp_path, change, message):
    with FeatureStoreWriter(tmp_path / "s") as writer:
        writer.add(make_image("good", object_ids=np.arange(5)))
        bad = make_image("bad", object_ids=np.arange(5))
        bad.update(change)
        with pytest.raises(ValueError, match=message) as error:
            writer.add(bad)
        assert "'bad'" in str(error.value)


def test_float16_overflow_is_an_error(tmp_path):
    image = make_image("a")
    image["visual_feats"][0, 0] = 1e6
    with FeatureStoreWriter(tmp_path / "s", dtype="float16") as writer:
        writer.add(make_image("b"))
        with pytest.raises(ValueError, match="float32"):
            writer.add(image)


def test_duplicate_image_ids_are_rejected(tmp_path):
    with FeatureStoreWriter(tmp_path / "s") as writer:
        writer.add(make_image("a"))
        with pytest.raises(ValueError, match="duplicate image id"):
            writer.add(make_image("a"))


def test_interrupted_writer_leaves_no_loadable_half_store_and_resumes(tmp_path):
    images = [make_image(f"img{i}", seed=i) for i in range(10)]
    with pytest.raises(KeyboardInterrupt), FeatureStoreWriter(tmp_path / "s", images_per_shard=3) as writer:
        for image in images[:7]:
            writer.add(image)
        raise KeyboardInterrupt
    manifest = json.loads((tmp_path / "s" / "store.json").read_text())
    assert manifest["complete"] is False
    with pytest.raises(ValueError, match="incomplete .* Rerun"):
        load_features(tmp_path / "s")
    with FeatureStoreWriter(tmp_path / "s", resume=True, images_per_shard=3) as writer:
        assert writer.done_ids == {f"img{i}" for i in range(7)}
        for image in images:
            if image["image_id"] not in writer.done_ids:
                writer.add(image)
    ds = load_features(tmp_path / "s")
    assert ds["image_id"][:] == [f"img{i}" for i in range(10)]


def test_leftover_temporary_shards_are_removed_on_resume(tmp_path):
    write_store(tmp_path / "s", [make_image("a")])
    (tmp_path / "s" / "shard-00001.arrow.tmp").write_bytes(b"half a shard")
    (tmp_path / "s" / "shard-00001.arrow").write_bytes(b"renamed but never listed")
    with FeatureStoreWriter(tmp_path / "s", resume=True) as writer:
        assert writer.done_ids == {"a"}
    names = sorted(f.name for f in (tmp_path / "s").iterdir())
    assert names == [
        ".writer.lock",
        "dataset_info.json",
        "shard-00000.arrow",
        "shard-00000.index",
        "state.json",
        "store.index",
        "store.json",
    ]


def test_one_writer_at_a_time(tmp_path):
    with FeatureStoreWriter(tmp_path / "s") as writer:
        writer.add(make_image("a"))
        with pytest.raises(FileExistsError, match="another process is writing"):
            FeatureStoreWriter(tmp_path / "s", resume=True)
    with FeatureStoreWriter(tmp_path / "s", resume=True) as writer:  # released on close
        assert writer.done_ids == {"a"}


def test_existing_store_needs_resume_and_same_dtype(tmp_path):
    write_store(tmp_path / "s", [make_image("a")])
    with pytest.raises(FileExistsError, match="resume=True"):
        FeatureStoreWriter(tmp_path / "s")
    with pytest.raises(ValueError, match="dtype='float32'"):
        FeatureStoreWriter(tmp_path / "s", dtype="float16", resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a feature store"):
        FeatureStoreWriter(tmp_path / "other")


def test_load_features_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare features"):
        load_features(tmp_path)
    with pytest.raises(ValueError, match="no images were written"), FeatureStoreWriter(tmp_path / "empty"):
        pass


def test_parquet_export_streams_back(tmp_path):
    images = [make_image(f"img{i}", seed=i) for i in range(5)]
    write_store(tmp_path / "s", images, images_per_shard=2)
    files = export_parquet(tmp_path / "s", tmp_path / "pq")
    assert [f.name for f in files] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    streamed = load_features(tmp_path / "pq", streaming=True)
    assert streamed.num_shards == 3
    rows = list(streamed.with_format("numpy"))
    assert [r["image_id"] for r in rows] == [f"img{i}" for i in range(5)]
    np.testing.assert_array_equal(rows[4]["visual_feats"], images[4]["visual_feats"])
    assert len(load_features(tmp_path / "pq")) == 5


def test_push_to_hub_goes_through_datasets(tmp_path):
    write_store(tmp_path / "s", [make_image("a")], extractor={"detector": "me/frcnn", "preset": "lxmert"})
    with (
        mock.patch("datasets.Dataset.push_to_hub", autospec=True) as push,
        mock.patch("huggingface_hub.HfApi.upload_file", autospec=True) as upload,
    ):
        push_features_to_hub(tmp_path / "s", "me/features", private=True)
    dataset, repo_id = push.call_args.args
    assert repo_id == "me/features" and push.call_args.kwargs == {"split": "train", "private": True}
    assert dataset["image_id"][:] == ["a"]
    # The extractor goes beside the parquet files, where `prepare features --hub` reads it back.
    sent = upload.call_args.kwargs
    assert (sent["repo_id"], sent["repo_type"], sent["path_in_repo"]) == ("me/features", "dataset", PROVENANCE_NAME)
    assert json.loads(sent["path_or_fileobj"])["extractor"] == {"detector": "me/frcnn", "preset": "lxmert"}
    with mock.patch("datasets.load_dataset") as load:
        load_features("me/features", streaming=True)
    load.assert_called_once_with("me/features", split="train", streaming=True)


def test_load_features_reads_a_local_copy_of_a_hub_dataset_repo(tmp_path):
    images = [make_image(f"img{i}", seed=i) for i in range(3)]
    write_store(tmp_path / "s", images)
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text("---\nlicense: cc-by-4.0\n---\nRegion features.\n")
    open_store_dataset(tmp_path / "s").to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    rows = list(load_features(repo, streaming=True).with_format("numpy"))
    assert [row["image_id"] for row in rows] == ["img0", "img1", "img2"]
    np.testing.assert_array_equal(rows[2]["visual_feats"], images[2]["visual_feats"])
    assert load_features(str(repo))["image_id"] == ["img0", "img1", "img2"]


def test_hub_prefix_reads_the_hub_even_where_a_folder_has_that_name(tmp_path, monkeypatch):
    write_store(tmp_path / "me" / "features", [make_image("a")])
    monkeypatch.chdir(tmp_path)
    with mock.patch("datasets.load_dataset") as load:
        assert load_features("me/features")["image_id"] == ["a"]  # the folder
        load.assert_not_called()
        load_features("hf-hub:me/features", streaming=True)
    load.assert_called_once_with("me/features", split="train", streaming=True)


def test_load_features_names_a_path_that_is_neither_local_nor_a_repo_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="features: ./no/such/store does not exist locally"):
        load_features("./no/such/store")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_features(tmp_path / "notes.txt")


def test_store_files_get_the_usual_permissions(tmp_path):
    """Temporary files renamed into place keep the permissions of any new file, so a shared store stays readable."""
    previous = os.umask(0o022)
    try:
        write_store(tmp_path / "s", [make_image(f"img{i}", seed=i) for i in range(3)], images_per_shard=2)
        export_parquet(tmp_path / "s", tmp_path / "pq")
    finally:
        os.umask(previous)
    files = [*(tmp_path / "s").iterdir(), *(tmp_path / "pq").iterdir()]
    assert len(files) == 12  # the store's 9 files; 2 parquet shards and lxmert_hf_features.json
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in files} == {path.name: "0o644" for path in files}


def module_level_imports(path: Path) -> set[str]:
    """The `lxmert_hf` modules a module imports when it is imported (not those imported inside functions)."""
    found, pending = set(), list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lxmert_hf"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lxmert_hf"))
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            pending.extend(ast.iter_child_nodes(node))
    return found


def test_store_modules_import_one_way():
    """No import cycle: the reader knows nothing of parquet or the Hub, and the modules form no loop."""
    import lxmert_hf.data.store as package

    folder = Path(package.__file__).parent
    modules = {
        "lxmert_hf.data.store" + ("" if path.stem == "__init__" else f".{path.stem}"): path
        for path in folder.glob("*.py")
    }
    graph = {name: module_level_imports(path) & modules.keys() for name, path in modules.items()}

    def reachable(start: str) -> set[str]:
        seen, pending = set(), list(graph[start])
        while pending:
            name = pending.pop()
            if name not in seen:
                seen.add(name)
                pending.extend(graph[name])
        return seen

    assert "lxmert_hf.data.store.parquet" not in reachable("lxmert_hf.data.store.reader")
    assert "lxmert_hf.data.store.load" not in reachable("lxmert_hf.data.store.parquet")
    assert [name for name in graph if name in reachable(name)] == []
