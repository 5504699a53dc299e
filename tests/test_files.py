"""Atomic files and folders (`lxmert_hf.files`): a reader sees the old content or the complete new one, and nothing
is left behind on success or failure."""

from __future__ import annotations

import errno
import json
import os

import pytest

from lxmert_hf import files
from lxmert_hf.files import (
    WriteError,
    atomic_directory,
    atomic_open,
    atomic_path,
    check_overwrite,
    check_writable,
    replace_directory,
    write_error,
    write_json_atomic,
    write_text_atomic,
)


class Interrupted(Exception):
    """An error raised in the middle of a write."""


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


# -- files ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "content"), [("w", "new text\n"), ("wb", b"\x00new bytes")])
def test_atomic_open_replaces_the_file(tmp_path, mode, content):
    target = tmp_path / "file"
    target.write_text("old")
    with atomic_open(target, mode) as handle:
        handle.write(content)
        assert target.read_text() == "old"  # nothing visible before the block ends
    assert (target.read_text() if mode == "w" else target.read_bytes()) == content
    assert names(tmp_path) == ["file"]


def test_atomic_open_keeps_newlines_and_utf8(tmp_path):
    with atomic_open(tmp_path / "text.csv") as handle:
        handle.write("café,1\r\nb,2\n")
    assert (tmp_path / "text.csv").read_bytes() == "café,1\r\nb,2\n".encode()


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_open_leaves_the_old_file_on_an_exception(tmp_path, durable):
    target = tmp_path / "file.json"
    target.write_text("old")
    with pytest.raises(Interrupted), atomic_open(target, durable=durable) as handle:
        handle.write("half of the new")
        raise Interrupted
    assert target.read_text() == "old" and names(tmp_path) == ["file.json"]


def test_a_failed_first_write_creates_nothing(tmp_path):
    with pytest.raises(Interrupted), atomic_open(tmp_path / "new.txt") as handle:
        handle.write("x")
        raise Interrupted
    assert names(tmp_path) == []


def test_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = write_text_atomic(tmp_path / "file", "old")

    def full_disk(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old" and names(tmp_path) == ["file"]


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path):
    target = tmp_path / "weights.bin"
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary != target
        temporary.write_bytes(b"weights")
    assert target.read_bytes() == b"weights" and names(tmp_path) == ["weights.bin"]
    with pytest.raises(Interrupted), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise Interrupted
    assert target.read_bytes() == b"weights" and names(tmp_path) == ["weights.bin"]


def test_write_json_atomic(tmp_path):
    path = write_json_atomic(tmp_path / "a.json", {"b": [1, "é"]})
    assert path == tmp_path / "a.json" and json.loads(path.read_text()) == {"b": [1, "é"]}
    assert path.read_text().endswith("\n")
    assert write_json_atomic(tmp_path / "c.json", [1], indent=None).read_text() == "[1]\n"


def test_write_into_a_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing does not exist; create it first"):
        write_text_atomic(tmp_path / "missing" / "file.json", "[]")


def test_atomic_open_refuses_other_modes(tmp_path):
    with pytest.raises(ValueError, match="`mode` must be 'w' or 'wb'"), atomic_open(tmp_path / "f", "a"):
        pass
    assert names(tmp_path) == []


# -- folders -------------------------------------------------------------------------------------------------------
def fill(folder, **contents) -> None:
    for name, text in contents.items():
        (folder / name).write_text(text)


@pytest.mark.parametrize("existing", ["absent", "empty"])
def test_atomic_directory_creates_the_folder(tmp_path, existing):
    target = tmp_path / "parent" / "checkpoint"
    if existing == "empty":
        target.mkdir(parents=True)
    with atomic_directory(target) as staging:
        fill(staging, a="1", b="2")
        assert staging.parent == target.parent and not (target / "a").exists()
    assert names(target) == ["a", "b"] and names(target.parent) == ["checkpoint"]


def test_atomic_directory_refuses_a_non_empty_target_without_overwrite(tmp_path):
    target = tmp_path / "checkpoint"
    target.mkdir()
    fill(target, old="1")
    with pytest.raises(FileExistsError, match="pass overwrite=True"), atomic_directory(target):
        pytest.fail("the block must not run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError), atomic_directory(tmp_path / "file"):
        pass
    assert names(target) == ["old"] and names(tmp_path) == ["checkpoint", "file"]


@pytest.mark.parametrize(
    ("target_is", "refused"), [("absent", False), ("empty", False), ("full", True), ("file", True)]
)
def test_check_overwrite_before_any_work(tmp_path, target_is, refused):
    target = tmp_path / "out"
    if target_is in ("empty", "full"):
        target.mkdir()
    if target_is == "full":
        fill(target, a="1")
    if target_is == "file":
        target.write_text("x")
    check_overwrite(target, overwrite=True)
    if refused:
        with pytest.raises(FileExistsError, match="out already exists; pass --overwrite to replace it"):
            check_overwrite(target, overwrite=False, option="--overwrite")
    else:
        check_overwrite(target, overwrite=False)


@pytest.mark.parametrize("target_is", ["folder", "file"])
def test_atomic_directory_overwrite_replaces_the_whole_target(tmp_path, target_is):
    target = tmp_path / "checkpoint"
    if target_is == "folder":
        target.mkdir()
        fill(target, old="1", stale="2")
    else:
        target.write_text("a file")
    with atomic_directory(target, overwrite=True) as staging:
        fill(staging, new="3")
    assert names(target) == ["new"] and names(tmp_path) == ["checkpoint"]


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_failure_keeps_the_old_folder(tmp_path, overwrite):
    target = tmp_path / "checkpoint"
    target.mkdir()
    if overwrite:
        fill(target, old="1")
    with pytest.raises(Interrupted), atomic_directory(target, overwrite=overwrite) as staging:
        fill(staging, half="x")
        raise Interrupted
    assert names(target) == (["old"] if overwrite else []) and names(tmp_path) == ["checkpoint"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint"
    target.mkdir()
    fill(target, old="1")
    real_replace = os.replace

    def refuse_the_new_folder(source, destination):
        if ".tmp-" in str(source):
            raise OSError("rename refused")
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "replace", refuse_the_new_folder)
    with pytest.raises(OSError, match="rename refused"), atomic_directory(target, overwrite=True) as staging:
        fill(staging, new="2")
    assert names(target) == ["old"] and names(tmp_path) == ["checkpoint"]


def test_without_overwrite_a_folder_filled_meanwhile_is_kept(tmp_path):
    target = tmp_path / "cache"
    with pytest.raises(FileExistsError, match="created while"), atomic_directory(target) as staging:
        fill(staging, mine="1")
        target.mkdir()  # another process finished first
        fill(target, theirs="2")
    assert names(target) == ["theirs"] and names(tmp_path) == ["cache"]


def test_replace_directory_moves_a_staged_folder(tmp_path):
    staging, target = tmp_path / "staging", tmp_path / "target"
    staging.mkdir()
    fill(staging, new="1")
    target.mkdir()
    fill(target, old="2")
    replace_directory(staging, target)
    assert names(target) == ["new"] and names(tmp_path) == ["target"]


# -- the machine's failures: read-only folders, full disks -----------------------------------------------------------
def test_check_writable_probes_the_folder_that_will_hold_the_output_and_leaves_nothing(tmp_path):
    (tmp_path / "store").mkdir()
    assert check_writable(tmp_path / "metrics.json") == tmp_path
    assert check_writable(tmp_path / "store", inside=True) == tmp_path / "store"
    assert check_writable(tmp_path / "new" / "deeper", inside=True) == tmp_path
    assert check_writable(tmp_path / "new" / "checkpoint") == tmp_path
    assert names(tmp_path) == ["store"] and names(tmp_path / "store") == []
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(FileExistsError, match=r"--output .*file/store: .*file is a file, not a folder"):
        check_writable(tmp_path / "file" / "store", what="--output", inside=True)


def test_check_writable_refuses_a_read_only_folder(read_only_folder):
    expected = r"--output .*read-only/a.json: cannot write .*read-only: permission denied"
    with pytest.raises(WriteError, match=expected) as e:
        check_writable(read_only_folder / "a.json", what="--output")
    assert e.value.errno == errno.EACCES and "choose an output folder you can write to" in str(e.value)
    assert names(read_only_folder) == []


@pytest.mark.parametrize(
    ("code", "reason", "fix"),
    [
        (errno.ENOSPC, "no space left on the device", "free space there"),
        (errno.EDQUOT, "the disk quota is exceeded", "free space there"),
        (errno.EROFS, "the file system is read-only", "choose an output folder on a writable disk"),
        (errno.EACCES, "permission denied", "choose an output folder you can write to"),
    ],
)
def test_write_error_names_the_path_the_reason_and_the_fix(code, reason, fix):
    error = write_error(OSError(code, os.strerror(code), "/data/.x.tmp"), "/data/x")
    assert isinstance(error, WriteError) and error.errno == code
    assert str(error).startswith(f"cannot write /data/x: {reason} (") and fix in str(error)
    assert str(write_error(OSError(code, os.strerror(code), "/data/y"))).startswith("cannot write /data/y: ")


def test_write_error_leaves_other_errors_alone():
    assert write_error(OSError(errno.EIO, "Input/output error")) is None
    assert write_error(FileNotFoundError(errno.ENOENT, "No such file or directory")) is None


@pytest.mark.parametrize("where", ["write", "flush"])
def test_a_full_disk_names_the_target_and_leaves_no_temporary(tmp_path, full_disk, where):
    target = tmp_path / "metrics.json"
    full_disk()
    expected = f"cannot write {target}: no space left on the device"
    with pytest.raises(WriteError, match=expected), atomic_path(target) as temporary:
        if where == "write":  # as pyarrow reports it: the error names no file
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        temporary.write_text("{}")
    assert names(tmp_path) == []


def test_a_full_disk_while_a_folder_is_staged_leaves_nothing(tmp_path, full_disk):
    full_disk()
    expected = f"cannot write {tmp_path / 'checkpoint'}: no space"
    with pytest.raises(WriteError, match=expected), atomic_directory(tmp_path / "checkpoint") as staging:
        (staging / "model.safetensors").write_bytes(b"\0" * 100)
    assert names(tmp_path) == []


def test_errors_of_other_files_are_not_renamed(tmp_path):
    other = OSError(errno.EACCES, "Permission denied", str(tmp_path / "input.json"))
    with pytest.raises(OSError) as raised, atomic_path(tmp_path / "out.json"):
        raise other
    assert raised.value is other and names(tmp_path) == []
