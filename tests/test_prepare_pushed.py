"""`lxmert-hf prepare features --parquet DIR | --hub REPO`: exported or pushed features made into a trainable store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import datasets
import numpy as np
import pytest
from data_factory import image_record
from guards import HANG_GUARD_S

from lxmert_hf.cli import main
from lxmert_hf.data import FeatureStore, FeatureStoreWriter, export_parquet, load_features
from lxmert_hf.data.store import open_store_dataset
from lxmert_hf.data.store.format import HUB_DATASET_KEY, PROVENANCE_NAME, read_complete_manifest
from lxmert_hf.data.store.parquet import provenance

SRC = str(Path(__file__).resolve().parents[1] / "src")
DETECTOR = {"object_ids": np.arange(4), "object_scores": np.linspace(0.1, 0.9, 4)}
EXTRACTOR = {"detector": "me/frcnn", "preset": "lxmert", "overrides": {}}


def write_store(path, records, **kwargs):
    with FeatureStoreWriter(path, **kwargs) as writer:
        for record in records:
            writer.add(record)
    return path


def hub_repo_copy(store, repo: Path, shards: int = 2) -> Path:
    """A folder laid out as `push_features_to_hub` lays out its Hub dataset repo: `data/train-0000i-of-0000n.parquet`
    and a card whose `configs` name the train split."""
    dataset = open_store_dataset(store)
    (repo / "data").mkdir(parents=True)
    for index in range(shards):
        shard = dataset.shard(num_shards=shards, index=index, contiguous=True)
        shard.to_parquet(str(repo / "data" / f"train-{index:05d}-of-{shards:05d}.parquet"))
    (repo / PROVENANCE_NAME).write_text(json.dumps(provenance(store)))  # as push_features_to_hub uploads it
    card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n"
    (repo / "README.md").write_text(card + "Region features.\n")
    return repo


def assert_same_store(copy, records):
    store = FeatureStore(copy)
    assert store.image_ids == [record["image_id"] for record in records]
    for record in records:
        regions = store[record["image_id"]]
        np.testing.assert_array_equal(regions["visual_feats"], record["visual_feats"])
        np.testing.assert_allclose(regions["visual_pos"], record["boxes"] / [64, 48, 64, 48], rtol=1e-6)
    row = load_features(copy)[0]
    assert row["object_ids"] == [0, 1, 2, 3] and (row["image_width"], row["image_height"]) == (64, 48)


def test_prepare_from_exported_parquet_and_resume(tmp_path, capsys):
    records = [{**image_record(f"img{i}", seed=i), **DETECTOR} for i in range(7)]
    write_store(tmp_path / "s", records, images_per_shard=3, extractor=EXTRACTOR)
    export_parquet(tmp_path / "s", tmp_path / "pq")
    argv = ["prepare", "features", "--parquet", str(tmp_path / "pq"), "--output", str(tmp_path / "copy")]
    assert main([*argv, "--images-per-shard", "4", "--no-progress"]) == 0
    assert "7 images written, 0 already in the store" in capsys.readouterr().out
    assert_same_store(tmp_path / "copy", records)
    # The extractor travels with the export, so checkpoints trained on the copy can name their detector.
    assert FeatureStore(tmp_path / "copy").extractor == EXTRACTOR
    assert main([*argv, "--no-progress"]) == 0
    assert "0 images written, 7 already in the store" in capsys.readouterr().out


def test_prepare_from_a_hub_repo_as_push_features_to_hub_writes_it(tmp_path, capsys):
    records = [{**image_record(f"img{i}", seed=i), **DETECTOR} for i in range(5)]
    repo = hub_repo_copy(write_store(tmp_path / "s", records, extractor=EXTRACTOR), tmp_path / "repo")
    load_dataset = datasets.load_dataset

    def hub_offline(path, *args, **kwargs):  # the Hub call, answered from the local copy of the repo
        assert path == "me/coco-features"
        return load_dataset(str(repo), *args, **kwargs)

    def download_offline(repo_id, filename, repo_type=None):
        assert (repo_id, repo_type) == ("me/coco-features", "dataset")
        return str(repo / filename)

    argv = ["prepare", "features", "--hub", "hf-hub:me/coco-features", "--output", str(tmp_path / "copy")]
    with (
        mock.patch("datasets.load_dataset", side_effect=hub_offline) as hub,
        mock.patch("huggingface_hub.hf_hub_download", side_effect=download_offline) as download,
    ):
        assert main([*argv, "--no-progress"]) == 0
    hub.assert_called_once_with("me/coco-features", split="train", streaming=True, fragment_scan_options=mock.ANY)
    download.assert_called_once_with("me/coco-features", PROVENANCE_NAME, repo_type="dataset")
    assert "5 images written" in capsys.readouterr().out
    assert_same_store(tmp_path / "copy", records)
    # The store names the repo (for the model cards of what is trained on it) and the extractor it recorded.
    assert read_complete_manifest(tmp_path / "copy")[HUB_DATASET_KEY] == "me/coco-features"
    assert FeatureStore(tmp_path / "copy").extractor == EXTRACTOR
    # A local copy of the repo, named by --hub or --parquet.
    for flag in ("--hub", "--parquet"):
        assert (
            main(["prepare", "features", flag, str(repo), "--output", str(tmp_path / flag[2:]), "--no-progress"]) == 0
        )
        assert_same_store(tmp_path / flag[2:], records)


def bad_parquet(path: Path) -> Path:
    """Exported features whose second row says it has 5 boxes but holds 4, and whose third has 3 box coordinates."""
    rows = [image_record(f"img{i}", seed=i) for i in range(4)]
    positions = [row["boxes"] / [64, 48, 64, 48] for row in rows]
    positions[2] = positions[2][:, :3]
    columns = {
        "image_id": [row["image_id"] for row in rows],
        "visual_feats": [row["visual_feats"] for row in rows],
        "visual_pos": positions,
        "image_width": [64] * 4,
        "image_height": [48] * 4,
        "num_boxes": [4, 5, 4, 4],
    }
    path.mkdir()
    datasets.Dataset.from_dict(columns).to_parquet(str(path / "shard-00000.parquet"))
    return path


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (["--parquet", "./no/such/folder"], "--parquet: ./no/such/folder does not exist locally"),
        (["--parquet", "me/features"], "--parquet: me/features does not exist locally; give a Hub dataset repo with"),
        (["--parquet", "{store}"], "--parquet: .* is a feature store already; use it as it is"),
        (["--parquet", "{empty}"], "--parquet: .* holds neither a feature store"),
        (["--parquet", "{notes}"], "--parquet: .* is a file"),
        (["--hub", "./no/such/repo"], "--hub: ./no/such/repo does not exist locally"),
        (["--parquet", "{missing}"], "--parquet: .* lacks the columns \\['visual_pos'\\]"),
    ],
)
def test_bad_sources_are_named_by_their_argument(tmp_path, capsys, monkeypatch, source, message):
    monkeypatch.chdir(tmp_path)
    write_store(tmp_path / "store", [image_record("a")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").write_text("x")
    (tmp_path / "missing").mkdir()
    open_store_dataset(tmp_path / "store").remove_columns("visual_pos").to_parquet(
        str(tmp_path / "missing" / "a.parquet")
    )
    argv = [part.format(store="store", empty="empty", notes="notes", missing="missing") for part in source]
    assert main(["prepare", "features", *argv, "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    assert re.search(message, capsys.readouterr().err), message


def test_bad_rows_are_named_and_skipped_with_skip_bad(tmp_path, capsys):
    folder = bad_parquet(tmp_path / "pq")
    argv = ["prepare", "features", "--parquet", str(folder), "--output", str(tmp_path / "s"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--parquet {folder}: row 2: image 'img1': num_boxes is 5 but visual_feats has 4 rows" in err
    assert "--skip-bad" in err
    assert main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "1 images written, 1 already in the store, 2 bad records skipped" in out
    assert "row 3: image 'img2': visual_pos must have shape [num_boxes, 4], got [4, 3]" in out
    assert FeatureStore(tmp_path / "s").image_ids == ["img0", "img3"]


def test_one_source_at_a_time(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "features", "--tsv", "a.tsv", "--parquet", "pq", "--output", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# Writes `count` images of exported features (36 boxes of 2048 floats, row groups of 20 images) into `folder`.
WRITE_PARQUET = """
import sys
import datasets
from data_factory import image_record
from lxmert_hf.data.store.format import store_features

count, folder = int(sys.argv[1]), sys.argv[2]
names = ("image_id", "visual_feats", "visual_pos", "image_width", "image_height")
records = [image_record(f"i{i}", num_boxes=36, dim=2048, seed=i) for i in range(count)]
columns = {
    "image_id": [record["image_id"] for record in records],
    "visual_feats": [record["visual_feats"] for record in records],
    "visual_pos": [record["boxes"] / [64, 48, 64, 48] for record in records],
    "image_width": [64] * count,
    "image_height": [48] * count,
}
features = datasets.Features({name: store_features(2048)[name] for name in names})
datasets.Dataset.from_dict(columns, features=features).to_parquet(folder + "/shard-00000.parquet", batch_size=20)
"""
# The peak RSS of this process: VmHWM (`ru_maxrss` is kept across `exec`, so it would start at the parent's peak).
PREPARE = """
import sys
import pyarrow.dataset
from lxmert_hf.data import features, prepare_pushed_features

def peak():
    with open("/proc/self/status") as status:
        return next(line.split()[1] for line in status if line.startswith("VmHWM"))

if sys.argv[1] == "pre-buffered":  # the baseline: pyarrow's default, which keeps a file's row groups until its end
    options = pyarrow.dataset.ParquetFragmentScanOptions(pre_buffer=True)
    features.row_group_scan = lambda: {"fragment_scan_options": options}
# Both inputs in one process: the second peak is compared with the first, so the imports and the allocator's
# warm-up (tens of MiB that vary from process to process) count in neither difference.
for folder, store in zip(sys.argv[2::2], sys.argv[3::2]):
    prepare_pushed_features(folder, store, progress=False)
    print(peak())
"""


@pytest.mark.slow
def test_peak_rss_of_prepare_from_parquet_does_not_grow_with_the_input(tmp_path):
    """The parquet files are streamed a row group at a time (Hub repos hold row groups of at most 100 MB; these
    hold 20 images), and written to the store a shard at a time: a file twice as large raises the peak much less
    than it does for a reader that keeps a file's row groups (pyarrow's default), measured in the same run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(Path(__file__).parent)]), "OMP_NUM_THREADS": "1"}
    folders = {}
    for count in (600, 1200):
        folders[count] = tmp_path / f"pq{count}"
        folders[count].mkdir()
        command = [sys.executable, "-c", WRITE_PARQUET, str(count), str(folders[count])]
        subprocess.run(command, env=env, capture_output=True, check=True, timeout=HANG_GUARD_S)
    # Freed memory leaves the RSS at once, so the peak is what was held, not what an allocator kept cached for a
    # while (Arrow's jemalloc purges on a timer, glibc's mmap threshold moves up after frees): without these, the
    # peak of the same run varied by over 100 MiB from one run to the next.
    measured = {**env, "ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_MMAP_THRESHOLD_": "131072"}
    growth = {}
    for reader in ("row groups", "pre-buffered"):
        stores = {count: tmp_path / f"{reader}-{count}" for count in folders}
        pairs = [str(path) for count in folders for path in (folders[count], stores[count])]
        command = [sys.executable, "-c", PREPARE, reader, *pairs]
        result = subprocess.run(command, env=measured, capture_output=True, check=True, timeout=HANG_GUARD_S)
        first, second = (int(value) / 1024 for value in result.stdout.split())  # MiB
        growth[reader] = second - first
        assert len(FeatureStore(stores[1200])) == 1200
    # 600 more images are 177 MiB more features in the file, which the pre-buffered reader holds at once.
    assert growth["pre-buffered"] > 120, growth
    assert growth["row groups"] < growth["pre-buffered"] / 2, growth
