"""Shared fixtures: a tiny LXMERT config, a local tokenizer, random inputs, and the machine's failures (a read-only
folder, a full disk)."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
from tiny import ANSWERS, TINY, TINY_EXTRACTION, random_inputs
from transformers import BertTokenizer

from lxmert_hf import LxmertVQAConfig


@pytest.fixture
def tiny_config() -> LxmertVQAConfig:
    return LxmertVQAConfig.from_answers(ANSWERS, **TINY)


@pytest.fixture
def tiny_tokenizer() -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "the", "cube", "?", "how", "many"]
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)})


@pytest.fixture
def inputs() -> dict:
    return random_inputs()


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """An existing folder nothing can be written into (mode 0o555). Permissions do not stop root, so as root the
    kernel's refusal is played instead: creating a file or folder in it fails with EACCES, as it does for any other
    user (`unshare -U pytest ...` runs the tests as an unprivileged user, with the real permissions)."""
    if sys.platform == "win32":
        pytest.skip("permissions do not apply so on Windows")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        _refuse_writes_in(folder, monkeypatch)
    yield folder
    folder.chmod(0o755)  # so that pytest can remove it


def _refuse_writes_in(folder: Path, monkeypatch) -> None:
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        return Path(os.fsdecode(path)).resolve().parent == folder.resolve()

    def refused(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise refused(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path):
            raise refused(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.fixture
def full_disk(monkeypatch):
    """
    A function `fill(after=0)` that makes the disk full: from then on, once `after` more flushes went through,
    every `os.fsync` fails with ENOSPC, as flushing the pages of a file written to a full disk does. Every file of
    the package is written through `lxmert_hf.files`, which flushes it before it takes its final name.
    """
    real_fsync = os.fsync
    left = [0]

    def fsync(descriptor):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        left[0] -= 1
        return real_fsync(descriptor)

    def fill(after: int = 0) -> None:
        left[0] = after
        monkeypatch.setattr(os, "fsync", fsync)

    return fill


@pytest.fixture(scope="session")
def tiny_extraction_checkpoint(tmp_path_factory) -> Path:
    """A folder holding a tiny random detector with `TINY_EXTRACTION`'s settings (seed 0), as `--model` takes it."""
    import torch

    from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig

    torch.manual_seed(0)
    extractor = RegionFeatureExtractor(RegionFeatureExtractorConfig.from_preset("lxmert", **TINY_EXTRACTION))
    folder = tmp_path_factory.mktemp("detector")
    extractor.save_pretrained(folder)
    return folder
