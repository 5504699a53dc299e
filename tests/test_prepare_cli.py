import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_factory import coco_id, gqa_official, image_record, make_store, nlvr2_official, vqa_official
from guards import HANG_GUARD_S, communicate

from lxmert_hf.cli import main
from lxmert_hf.data import load_features, load_prepared, write_tsv
from lxmert_hf.data.tsv import format_tsv_line

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.parametrize("source", [None, "features", "vqa", "gqa", "nlvr2"])
def test_help(source, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", *([source] if source else []), "--help"])
    assert exit_info.value.code == 0
    assert "usage: lxmert-hf prepare" in capsys.readouterr().out


def test_prepare_features(tmp_path, capsys):
    write_tsv(tmp_path / "f.tsv", [image_record(f"img{i}", seed=i) for i in range(5)])
    argv = ["prepare", "features", "--tsv", str(tmp_path / "f.tsv"), "--output", str(tmp_path / "store")]
    assert main([*argv, "--dtype", "float16", "--no-progress"]) == 0
    assert "5 images written" in capsys.readouterr().out
    assert load_features(tmp_path / "store").features["visual_feats"].dtype == "float16"


def test_bad_input_exits_2_naming_the_line_and_skip_bad_counts(tmp_path, capsys):
    lines = [format_tsv_line(image_record(f"img{i}", seed=i)) for i in range(3)]
    (tmp_path / "f.tsv").write_bytes(lines[0] + b"img9\t1\t2\n" + lines[1] + lines[2])
    argv = [
        "prepare",
        "features",
        "--tsv",
        str(tmp_path / "f.tsv"),
        "--output",
        str(tmp_path / "store"),
        "--no-progress",
    ]
    assert main(argv) == 2
    assert f"{tmp_path / 'f.tsv'}:2: expected 10 tab-separated fields" in capsys.readouterr().err
    assert main([*argv, "--skip-bad"]) == 0
    # the failed run kept the image it had completed before the bad line
    assert "2 images written, 1 already in the store, 1 bad records skipped" in capsys.readouterr().out


def test_prepare_vqa_in_one_command(tmp_path, capsys):
    make_store(tmp_path / "store", [coco_id("train2014", 1), coco_id("val2014", 2)])
    train_q, train_a = vqa_official(tmp_path, "train2014", [1])
    val_q, val_a = vqa_official(tmp_path, "val2014", [2])
    argv = ["prepare", "vqa", "--features", str(tmp_path / "store"), "--output", str(tmp_path / "vqa")]
    argv += ["--train-questions", str(train_q), "--train-annotations", str(train_a), "--val-questions", str(val_q)]
    argv += ["--val-annotations", str(val_a), "--min-answer-count", "1", "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--minival-images", "1"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["splits"] == {"train": 2, "minival": 2}
    assert load_prepared(tmp_path / "vqa", "minival")[0]["visual_feats"].shape == (4, 8)
    # questions passed as annotations: exit 2 with the file named
    bad = [a if a != str(train_a) else str(train_q) for a in argv]
    assert main(bad) == 2
    assert "did you swap questions and annotations" in capsys.readouterr().err


def test_prepare_vqa_original_by_default_ours_by_option(tmp_path, capsys):
    make_store(tmp_path / "store", [coco_id("train2014", 1), coco_id("val2014", 2)])
    pool = ["2", "two", "Two", "yes", "Yes"]
    train_q, train_a = vqa_official(tmp_path, "train2014", [1], per_image=6, pool=pool)
    val_q, val_a = vqa_official(tmp_path, "val2014", [2], per_image=6, seed=1, pool=pool)
    argv = [
        "prepare",
        "vqa",
        "--features",
        str(tmp_path / "store"),
        "--min-answer-count",
        "1",
        "--minival-images",
        "0",
    ]
    argv += ["--train-questions", str(train_q), "--train-annotations", str(train_a), "--val-questions", str(val_q)]
    argv += ["--val-annotations", str(val_a), "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--output", str(tmp_path / "original")]) == 0
    ours = ["--vocabulary-rule", "train-split", "--normalize-answers"]
    assert main([*argv, "--output", str(tmp_path / "ours"), *ours]) == 0
    capsys.readouterr()
    original, normalized = (load_prepared(tmp_path / name, "val")[0] for name in ("original", "ours"))
    answers = original["answers"]
    vocabulary = json.loads((tmp_path / "original" / "label2ans.json").read_text())
    assert sorted(vocabulary) == ["2", "yes"]  # counted on train and val, processed as the original
    ours_vocabulary = json.loads((tmp_path / "ours" / "label2ans.json").read_text())
    assert sorted(ours_vocabulary) == ["2", "yes"]
    # The original scores "2" with the annotators who wrote exactly "2"; ours counts "two" and "Two" too.
    exact, merged = answers.count("2"), sum(a in ("2", "two", "Two") for a in answers)
    assert original["labels"][vocabulary.index("2")] == pytest.approx(min(1.0, 0.3 * exact))
    assert normalized["labels"][ours_vocabulary.index("2")] == pytest.approx(min(1.0, 0.3 * merged))
    assert exact < merged


def test_prepare_split_flags_are_checked(tmp_path, capsys):
    argv = ["prepare", "gqa", "--output", str(tmp_path / "gqa"), "--split", "train"]
    assert main(argv) == 2
    assert "expected SPLIT=FILE[,FILE...]" in capsys.readouterr().err


def child_env() -> dict[str, str]:
    """The environment of a child Python: this checkout's sources first, then whatever path this process has."""
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def open_fifo_for_writing(path, process):
    """Open a FIFO once `process` has opened it for reading; fail (instead of blocking forever) if it exits first."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the process, still running, never opened the pipe (hung?)"
            time.sleep(0.05)
            continue
        os.set_blocking(descriptor, True)  # writes wait for the reader, as with a plain open
        return os.fdopen(descriptor, "wb")


def run_prepare(tsv, store, **kwargs):
    command = [sys.executable, "-m", "lxmert_hf.cli", "prepare", "features", "--tsv", str(tsv), "--output", str(store)]
    command += ["--images-per-shard", "10", "--no-progress"]
    env = child_env()
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for_shards(store: Path, process: subprocess.Popen, count: int) -> None:
    """Wait until the manifest of the store being written by `process` lists `count` shards; fail if the process
    exits first, or if it has not got there within the hang guard."""
    manifest = store / "store.json"
    deadline = time.monotonic() + HANG_GUARD_S
    while not (manifest.exists() and len(json.loads(manifest.read_text())["shards"]) == count):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, f"not {count} shards yet, though the process is running (hung?)"
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_prepare_leaves_no_half_store_and_rerun_completes(tmp_path):
    records = [image_record(f"img{i}", seed=i) for i in range(40)]
    write_tsv(tmp_path / "all.tsv", records)
    lines = (tmp_path / "all.tsv").read_bytes().splitlines(keepends=True)
    # A pipe holds the process mid-file: it has read 25 images and waits for more when it is killed.
    os.mkfifo(tmp_path / "pipe.tsv")
    process = run_prepare(tmp_path / "pipe.tsv", tmp_path / "store")
    with open_fifo_for_writing(tmp_path / "pipe.tsv", process) as pipe:
        pipe.write(b"".join(lines[:25]))
        pipe.flush()
        # The two shards of the 25 images come, or the process exits (an error), or it hangs (the guard).
        wait_for_shards(tmp_path / "store", process, 2)
        process.send_signal(signal.SIGKILL)
        process.wait()
    with pytest.raises(ValueError, match="incomplete"):
        load_features(tmp_path / "store")
    rerun = run_prepare(tmp_path / "all.tsv", tmp_path / "store")
    out, err = communicate(rerun)
    assert rerun.returncode == 0, err.decode()
    assert "20 already in the store" in out.decode()
    ds = load_features(tmp_path / "store").with_format("numpy")
    assert list(ds["image_id"]) == [f"img{i}" for i in range(40)]
    np.testing.assert_array_equal(ds[33]["visual_feats"], records[33]["visual_feats"])
    assert not [p.name for p in (tmp_path / "store").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and FIFOs")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopped_prepare_keeps_its_shards_says_so_and_rerun_completes(tmp_path, signum, code):
    records = [image_record(f"img{i}", seed=i) for i in range(40)]
    write_tsv(tmp_path / "all.tsv", records)
    lines = (tmp_path / "all.tsv").read_bytes().splitlines(keepends=True)
    os.mkfifo(tmp_path / "pipe.tsv")
    # SIGINT as a shell gives it (a CI runner may start the tests with it ignored, which children inherit).
    process = run_prepare(tmp_path / "pipe.tsv", tmp_path / "store", preexec_fn=default_sigint)
    with open_fifo_for_writing(tmp_path / "pipe.tsv", process) as pipe:
        pipe.write(b"".join(lines[:25]))
        pipe.flush()
        wait_for_shards(tmp_path / "store", process, 2)
        process.send_signal(signum)  # while it waits for more lines, some of the 25 possibly still buffered
        out, err = communicate(process)
    assert process.returncode == code, err.decode()
    kept = json.loads((tmp_path / "store" / "store.json").read_text())
    assert 20 <= kept["num_images"] <= 25 and not kept["complete"]
    name = signal.Signals(signum).name
    expected = f"interrupted by {name}; {kept['num_images']} images kept in {tmp_path / 'store'} (marked incomplete)"
    assert expected in err.decode() and "rerun the same command to continue" in err.decode()
    assert "Traceback" not in err.decode()
    assert not [p.name for p in (tmp_path / "store").iterdir() if p.name.endswith(".tmp")]

    (tmp_path / "pipe.tsv").unlink()
    (tmp_path / "pipe.tsv").write_bytes(b"".join(lines))
    argv = ["prepare", "features", "--tsv", str(tmp_path / "pipe.tsv"), "--images-per-shard", "10", "--no-progress"]
    assert main([*argv, "--output", str(tmp_path / "store")]) == 0
    assert main([*argv, "--output", str(tmp_path / "uninterrupted")]) == 0
    resumed = load_features(tmp_path / "store").with_format("numpy")[:]
    uninterrupted = load_features(tmp_path / "uninterrupted").with_format("numpy")[:]
    assert list(resumed["image_id"]) == [f"img{i}" for i in range(40)]
    for column in ("image_id", "visual_feats", "visual_pos", "num_boxes", "image_width", "image_height"):
        np.testing.assert_array_equal(resumed[column], uninterrupted[column])


def default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_peak_rss_of_prepare_does_not_grow_with_the_input(tmp_path):
    script = (
        "import resource, sys\n"
        "from lxmert_hf.data import prepare_features\n"
        "prepare_features([sys.argv[1]], sys.argv[2], progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    peaks = {}
    for count in (100, 400):
        write_tsv(
            tmp_path / f"{count}.tsv", (image_record(f"i{i}", num_boxes=36, dim=2048, seed=i) for i in range(count))
        )
        env = child_env()
        command = [sys.executable, "-c", script, str(tmp_path / f"{count}.tsv"), str(tmp_path / f"store{count}")]
        result = subprocess.run(command, env=env, capture_output=True, check=True, timeout=HANG_GUARD_S)
        peaks[count] = int(result.stdout.split()[-1]) / 1024  # MiB
        (tmp_path / f"{count}.tsv").unlink()
    # 300 more images are 88 MiB more features; the peak may not follow them
    assert peaks[400] - peaks[100] < 30, peaks


def test_prepare_gqa_and_nlvr2_with_their_features(tmp_path, capsys):
    write_tsv(tmp_path / "gqa.tsv", [image_record("2375429"), image_record("n161313", seed=1)])
    train = gqa_official(tmp_path / "train.json", [("07333408", "2375429", "pipe")])
    testdev = gqa_official(tmp_path / "testdev.json", [("201", "n161313", "yes")])
    argv = ["prepare", "gqa", "--tsv", str(tmp_path / "gqa.tsv"), "--output", str(tmp_path / "gqa")]
    argv += ["--split", f"train={train}", "--split", f"testdev={testdev}", "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["splits"] == {"train": 1, "testdev": 1}
    assert load_prepared(tmp_path / "gqa", "testdev")[0]["image_id"] == "n161313"

    write_tsv(tmp_path / "nlvr2.tsv", [image_record("dev-1-0-img0"), image_record("dev-1-0-img1", seed=1)])
    valid = nlvr2_official(tmp_path / "valid.jsonl", ["dev-1-0-0", "dev-1-0-1"], ["True", "False"])
    argv = ["prepare", "nlvr2", "--tsv", str(tmp_path / "nlvr2.tsv"), "--output", str(tmp_path / "nlvr2")]
    argv += ["--split", f"valid={valid}", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    assert [example["labels"] for example in load_prepared(tmp_path / "nlvr2", "valid")] == [1, 0]


def test_read_only_output_fails_before_reading(tmp_path, read_only_folder, capsys):
    write_tsv(tmp_path / "f.tsv", [image_record("img0")])
    argv = ["prepare", "features", "--tsv", str(tmp_path / "f.tsv"), "--output", str(read_only_folder / "store")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lxmert-hf prepare: error: --output {read_only_folder / 'store'}: cannot write")
    assert "permission denied" in err and list(read_only_folder.iterdir()) == []


def test_full_disk_keeps_the_store_resumable(tmp_path, full_disk, capsys):
    write_tsv(tmp_path / "f.tsv", [image_record(f"img{i}", seed=i) for i in range(5)])
    argv = ["prepare", "features", "--tsv", str(tmp_path / "f.tsv"), "--output", str(tmp_path / "store")]
    argv += ["--images-per-shard", "2", "--no-progress"]
    full_disk(after=8)  # the manifest of the new store and the first shard (file, index, manifest) fit
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"lxmert-hf prepare: error: cannot write {tmp_path / 'store'}" in err and "no space left" in err
    manifest = json.loads((tmp_path / "store" / "store.json").read_text())
    assert manifest["num_images"] == 2 and not manifest["complete"]
    assert not [p.name for p in (tmp_path / "store").iterdir() if p.name.endswith(".tmp")]
    full_disk(after=10**6)  # space freed
    assert main(argv) == 0
    assert "3 images written, 2 already in the store" in capsys.readouterr().out
    assert list(load_features(tmp_path / "store")["image_id"]) == [f"img{i}" for i in range(5)]
