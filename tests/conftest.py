"""Shared fixtures: a tiny LXMERT config, a local tokenizer, random inputs, and the machine's failures (a read-only
folder, a full disk)."""

from __future__ import annotations

import errno
import os
import sys

import pytest
from tiny import ANSWERS, TINY, random_inputs
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
def read_only_folder(tmp_path):
    """An existing folder nothing can be written into (mode 0o555). Skipped as root, whom permissions do not stop:
    `unshare -U pytest ...` runs the tests as an unprivileged user on a machine where one is root."""
    if sys.platform == "win32" or os.geteuid() == 0:
        pytest.skip("permissions do not stop root (nor apply so on Windows)")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)  # so that pytest can remove it


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
