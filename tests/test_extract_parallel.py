"""`lxmert-hf extract` on several processes: the ranks' parts end as one store equal to a one-process extraction;
ranks resume; parts of another process count, and a merge cut short, are handled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from guards import HANG_GUARD_S
from PIL import Image
from tiny import TINY_EXTRACTION

from lxmert_hf.cli import main
from lxmert_hf.data.store import FeatureStore, FeatureStoreWriter, load_features, read_manifest
from lxmert_hf.data.store import merge as store_merge
from lxmert_hf.detection import extraction
from lxmert_hf.detection.parallel import PARTS_NAME
from lxmert_hf_cli.commands._parallel import rank_device

TINY = TINY_EXTRACTION
NAMES = [f"img{index}.png" for index in range(7)]
# One image a batch and one thread everywhere (ranks and the reference): the same arithmetic in every process.
OPTIONS = ["--batch-size", "1", "--num-workers", "0", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tiny_extraction_checkpoint):
    return tiny_extraction_checkpoint


def make_images(folder: Path, names: list[str], seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), NAMES)


def extract(checkpoint, images, output, *extra) -> int:
    return main(
        ["extract", "--images", str(images), "--output", str(output), "--model", str(checkpoint), *OPTIONS, *extra]
    )


@pytest.fixture(scope="module")
def reference(checkpoint, images, tmp_path_factory):
    """The one-process extraction, on one thread as every rank here."""
    output = tmp_path_factory.mktemp("reference") / "store"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert extract(checkpoint, images, output) == 0
    finally:
        torch.set_num_threads(threads)
    return output


def as_rank(monkeypatch, rank: int, world_size: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def assert_same_store(store_dir: Path, reference_dir: Path) -> None:
    """Same images, each once, with the same regions. Exact equality is what one thread and one image a batch give;
    the check allows float32 rounding (`assert_close`'s default), since BLAS results may change with the machine's
    threading, which a CI runner need not keep equal across processes."""
    store, expected = FeatureStore(store_dir), FeatureStore(reference_dir)
    assert len(store.image_ids) == len(set(store.image_ids)) == read_manifest(store_dir)["num_images"]
    assert sorted(store.image_ids) == sorted(expected.image_ids)
    assert sorted(load_features(store_dir)["image_id"]) == sorted(expected.image_ids)  # as a `datasets` dataset too
    for image_id in expected.image_ids:
        ours, theirs = store[image_id], expected[image_id]
        torch.testing.assert_close(
            torch.from_numpy(ours["visual_feats"].copy()), torch.from_numpy(theirs["visual_feats"].copy())
        )
        torch.testing.assert_close(
            torch.from_numpy(ours["visual_pos"].copy()), torch.from_numpy(theirs["visual_pos"].copy())
        )
    assert store.extractor == expected.extractor and store.extractor["detector"] is not None
    assert not (store_dir / PARTS_NAME).exists()


def test_an_interrupted_rank_resumes_and_the_last_rank_merges(
    checkpoint, images, reference, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "store"
    as_rank(monkeypatch, 0, 2)
    real_batch = extraction._extract_batch
    calls = []

    def interrupt_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(extraction, "_extract_batch", interrupt_on_second_batch)
    assert extract(checkpoint, images, output, "--images-per-shard", "1") == 130
    monkeypatch.setattr(extraction, "_extract_batch", real_batch)
    part = output / PARTS_NAME / "rank-00000-of-00002"
    assert read_manifest(part)["num_images"] == 1 and not (output / "store.json").exists()
    capsys.readouterr()

    assert extract(checkpoint, images, output, "--images-per-shard", "1") == 0  # rank 0 again: resumes its part
    out = capsys.readouterr().out
    assert "rank 0 of 2: extracted 3 images into its part (1 already there, 0 skipped)" in out
    assert "merged" not in out and not (output / "store.json").exists()

    as_rank(monkeypatch, 1, 2)
    assert extract(checkpoint, images, output, "--images-per-shard", "1") == 0
    out = capsys.readouterr().out
    assert "rank 1 of 2: extracted 3 images into its part" in out
    assert "merged the parts of 2 processes: 7 new images, 7 in the store (0 already there, 0 skipped)" in out
    assert [shard["file"] for shard in read_manifest(output)["shards"]] == [f"shard-{n:05d}.arrow" for n in range(7)]
    assert_same_store(output, reference)


def test_a_rerun_extracts_only_new_images_and_idle_ranks_are_fine(checkpoint, images, tmp_path, capsys, monkeypatch):
    output = tmp_path / "store"
    folder = make_images(tmp_path / "images", NAMES[:2])
    for rank in range(4):  # four ranks for two images: two idle
        as_rank(monkeypatch, rank, 4)
        assert extract(checkpoint, folder, output) == 0
    assert "merged the parts of 4 processes: 2 new images, 2 in the store" in capsys.readouterr().out
    make_images(folder, ["new0.png", "new1.png", "new2.png"], seed=2)
    for rank in range(2):
        as_rank(monkeypatch, rank, 2)
        assert extract(checkpoint, folder, output) == 0
    out = capsys.readouterr().out
    assert "rank 1 of 2: extracted 1 images" in out
    assert "3 new images, 5 in the store (2 already there, 0 skipped)" in out
    assert sorted(FeatureStore(output).image_ids) == ["img0", "img1", "new0", "new1", "new2"]


def test_parts_of_another_process_count_are_refused(checkpoint, images, tmp_path, capsys, monkeypatch):
    output = tmp_path / "store"
    as_rank(monkeypatch, 0, 2)
    assert extract(checkpoint, images, output) == 0
    capsys.readouterr()
    as_rank(monkeypatch, 0, 3)
    assert extract(checkpoint, images, output) == 2
    err = capsys.readouterr().err
    assert "unfinished parts of an extraction with 2 processes" in err and "--num-processes 2" in err
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert extract(checkpoint, images, output) == 2  # one process would write beside the parts
    assert extract(checkpoint, images, output, "--num-processes", "3") == 2  # refused before any process starts
    assert capsys.readouterr().err.count("with 2 processes") == 2
    make_images(images.parent / "other", NAMES[:3])
    as_rank(monkeypatch, 1, 2)
    assert extract(checkpoint, images.parent / "other", output) == 2
    assert "of 7 other images, not the 3 given" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "extra", "match"),
    [
        ({}, ["--num-processes", "0"], "--num-processes must be >= 1, got 0"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, ["--num-processes", "2"], "leave --num-processes out under a launcher"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, [], "need WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE"),
        ({"RANK": "one", "WORLD_SIZE": "2"}, [], "RANK='one' is not a whole number"),
    ],
)
def test_bad_process_settings_exit_2(checkpoint, images, tmp_path, capsys, monkeypatch, env, extra, match):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert extract(checkpoint, images, tmp_path / "store", *extra) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def write_store(folder: Path, image_ids: list[str], images_per_shard: int = 1) -> Path:
    with FeatureStoreWriter(folder, images_per_shard=images_per_shard) as writer:
        for number, image_id in enumerate(image_ids):
            feats = np.full((2, 4), number, np.float32)
            writer.add({"image_id": image_id, "visual_feats": feats, "boxes": [[0, 0, 5, 5]] * 2, "image_width": 10,
                        "image_height": 10})  # fmt: skip
    return folder


def test_a_merge_cut_short_is_finished_by_the_next_call(tmp_path, monkeypatch):
    target = write_store(tmp_path / "store", ["a", "b"])
    parts = [write_store(tmp_path / "p0", ["c", "d"]), write_store(tmp_path / "p1", ["e"])]
    real_move, moved = store_merge._move_shard, []

    def fail_on_second_move(*args):
        if len(moved) == 1:
            raise OSError("power cut")
        moved.append(real_move(*args))

    monkeypatch.setattr(store_merge, "_move_shard", fail_on_second_move)
    with pytest.raises(OSError, match="power cut"):
        store_merge.merge_stores(parts, target, tmp_path / "merge.json")
    assert not read_manifest(target)["complete"]
    monkeypatch.setattr(store_merge, "_move_shard", real_move)
    store_merge.merge_stores(parts, target, tmp_path / "merge.json")
    store = FeatureStore(target)
    assert store.image_ids == ["a", "b", "c", "d", "e"]
    assert [float(store[image_id]["visual_feats"][0, 0]) for image_id in store.image_ids] == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match=r"image 'c' \(1 images in all\) is both in"):
        store_merge.merge_stores([write_store(tmp_path / "p2", ["c"])], target, tmp_path / "again.json")


def run_command(command: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


@pytest.mark.slow
def test_two_local_processes_equal_one(checkpoint, images, reference, tmp_path):
    # `python -m lxmert_hf_cli`: the module the processes it starts import again (and must not run again).
    output = tmp_path / "store"
    argv = ["extract", "--images", str(images), "--output", str(output), "--model", str(checkpoint), *OPTIONS]
    out = run_command([sys.executable, "-m", "lxmert_hf_cli", *argv, "--num-processes", "2"])
    assert "rank 0 of 2: extracted 4 images" in out and "rank 1 of 2: extracted 3 images" in out
    assert out.count("merged the parts of 2 processes: 7 new images, 7 in the store") == 1
    assert_same_store(output, reference)


@pytest.mark.slow
def test_accelerate_launch_on_two_cpu_processes_equals_one(checkpoint, images, reference, tmp_path):
    output = tmp_path / "store"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lxmert_hf_cli", "extract",
        "--images", str(images), "--output", str(output), "--model", str(checkpoint), *OPTIONS,
    ]  # fmt: skip
    assert run_command(command).count("merged the parts of 2 processes: 7 new images, 7 in the store") == 1
    assert_same_store(output, reference)


def test_each_local_rank_takes_a_gpu_in_turn(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    devices = [rank_device(torch.device("cuda"), local_rank) for local_rank in range(5)]
    assert [str(device) for device in devices] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert rank_device(torch.device("cuda:1"), 2) == torch.device("cuda:1")  # a GPU named by the user stays
    assert rank_device(torch.device("cpu"), 2) == torch.device("cpu")


@pytest.mark.slow
def test_scaling_benchmark_prints_one_row_per_process_count():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "extract_scaling.py"
    argv = ["--detector", "tiny", "--images", "3", "--height", "48", "--width", "64", "--processes", "1", "2"]
    out = run_command([sys.executable, str(path), *argv, "--threads", "1", "--device", "cpu"])
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| cpu")]
    assert [(row[1].strip(), row[2].strip(), row[3].strip()) for row in rows] == [("1", "1", "3"), ("2", "1", "3")]
    # The same images, with the same regions (one thread in every process: the same arithmetic, up to rounding).
    assert rows[0][6].strip() == "1.00" and all(float(row[7]) <= 1e-5 for row in rows)


def test_given_boxes_reach_every_rank(checkpoint, images, tmp_path, capsys, monkeypatch, caplog):
    boxes = {Path(name).stem: [[0, 0, 28, 20], [10, 5, 56, 40]] for name in NAMES}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    output = tmp_path / "store"
    for rank in range(2):
        as_rank(monkeypatch, rank, 2)
        assert extract(checkpoint, images, output, "--boxes", str(tmp_path / "boxes.json")) == 0
    assert "merged the parts of 2 processes: 7 new images" in capsys.readouterr().out
    assert "ignored" not in caplog.text and "not among" not in caplog.text
    store = FeatureStore(output)
    assert sorted(store.image_ids) == sorted(boxes) and store.extractor["regions"] == "given"
    expected = np.array([[0, 0, 0.5, 0.5], [10 / 56, 5 / 40, 1, 1]], np.float32)
    for image_id in store.image_ids:
        np.testing.assert_allclose(store[image_id]["visual_pos"], expected, atol=1e-6)


def test_settings_the_device_refuses_are_one_error_before_any_process_starts(checkpoint, images, tmp_path, capsys):
    assert extract(checkpoint, images, tmp_path / "store", "--num-processes", "2", "--precision", "float16") == 2
    err = capsys.readouterr().err
    assert err.count("precision='float16' on the CPU") == 1 and "rank" not in err
