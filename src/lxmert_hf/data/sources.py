"""Reading question files: JSON loading with located errors, and the accounting of bad records."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lxmert_hf.data.tsv import BadRecordError


def check_source_file(path: str | os.PathLike, expected: str) -> Path:
    """
    `path` as a `Path` when it is a file; else a `FileNotFoundError` (nothing there) or a `ValueError` (a folder)
    naming it and what was `expected` there.

    Example:
        ```python
        >>> import tempfile
        >>> check_source_file(tempfile.mkdtemp(), "VQA questions")
        Traceback (most recent call last):
        ...
        ValueError: /tmp/... is a folder; expected VQA questions: pass the file.
        ```
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected {expected}: pass the file.")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected {expected}.")
    return path


def load_json(path: str | os.PathLike, expected: str) -> Any:
    """
    Load the JSON file at `path`, raising a `ValueError` that names the file and what was `expected` in it when
    it is missing, empty or not JSON.
    """
    path = check_source_file(path, expected)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); expected {expected}."
        ) from None
    if not text.strip():
        raise ValueError(f"{path} is empty; expected {expected}.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); expected {expected}."
        ) from None


def iter_json_lines(path: str | os.PathLike, expected: str) -> Iterable[tuple[str, Any]]:
    """Yield `(location, object)` for each non-blank line of a JSON-lines file."""
    path = check_source_file(path, expected)
    empty = True
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{number}: not UTF-8 text ({error.reason}); expected {expected}.") from None
            if not line.strip():
                continue
            empty = False
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}); expected {expected}.") from None
    if empty:
        raise ValueError(f"{path} is empty; expected {expected}.")


class BadRecords:
    """Raise on a bad record, or count it (and keep a few examples) when `skip` is set."""

    def __init__(self, skip: bool = False):
        self.skip = skip
        self.count = 0
        self.examples: list[str] = []

    def __call__(self, location: str, problem: str, fix: str) -> None:
        message = f"{location}: {problem}"
        if not self.skip:
            raise BadRecordError(f"{message}; {fix}, or pass --skip-bad (skip_bad=True) to skip such records.")
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(message)


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """A short hash of the paths, sizes and modification times of files (to invalidate caches when they change).

    Missing files are hashed by name only: the readers report them with the fix.
    """
    digest = hashlib.sha256()
    for path in map(Path, paths):
        stat = path.stat() if path.is_file() else None
        digest.update(f"{path.resolve()}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def require_keys(record: Any, keys: Iterable[str], location: str, what: str, bad: BadRecords) -> bool:
    """Check that `record` is a dict holding `keys`; report it to `bad` otherwise. Returns whether it is usable."""
    if not isinstance(record, dict):
        bad(location, f"expected a JSON object ({what}), got {type(record).__name__}", "fix the file")
        return False
    missing = [key for key in keys if key not in record]
    if missing:
        bad(location, f"{what} lacks {missing}", "fix the file")
        return False
    return True
