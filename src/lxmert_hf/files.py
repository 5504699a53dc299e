"""Atomic files and folders: a reader sees the old content or the complete new one, never half of either.

Every writer of the package goes through these helpers: the new content is written under a temporary name beside
its target (same file system, so the final rename is atomic), flushed to disk, then renamed over the target; on
error the temporary is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "WriteError",
    "atomic_directory",
    "atomic_open",
    "atomic_path",
    "check_overwrite",
    "check_writable",
    "fsync_directory",
    "replace_directory",
    "write_error",
    "write_json_atomic",
    "write_text_atomic",
]

# The errors of the machine, not of the input: the folder cannot take a new file, or the disk cannot take more bytes.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
NOT_WRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


class WriteError(OSError):
    """
    An output that cannot be written: a read-only or protected folder, a full disk or an exceeded quota. It keeps
    the `errno` of the system's error and, as `filename`, the path it names; its message names the path and what
    to do.
    """

    def __str__(self) -> str:
        return self.strerror


def write_error(error: OSError, path: str | os.PathLike | None = None) -> WriteError | None:
    """
    Return `error` as a [`WriteError`] naming `path` (default: the file the error names) and the fix, or `None`
    when it is not a read-only, permission, full-disk or quota error.

    Example:
        ```python
        >>> import errno
        >>> print(write_error(OSError(errno.ENOSPC, "No space left on device"), "out/metrics.json"))
        cannot write out/metrics.json: no space left on the device (No space left on device); free space there, ...
        >>> write_error(OSError(errno.EIO, "Input/output error")) is None
        True
        ```
    """
    if error.errno not in NO_SPACE_ERRNOS | NOT_WRITABLE_ERRNOS:
        return None
    if isinstance(error, WriteError) and (path is None or os.fspath(path) == error.filename):
        return error
    detail = error.detail if isinstance(error, WriteError) else error.strerror
    path = os.fspath(path) if path is not None else error.filename
    where = f"cannot write {path}" if path is not None else "cannot write the output"
    if error.errno in NO_SPACE_ERRNOS:
        reason = "no space left on the device" if error.errno == errno.ENOSPC else "the disk quota is exceeded"
        fix = "free space there, or choose an output folder on another disk"
    elif error.errno == errno.EROFS:
        reason, fix = "the file system is read-only", "choose an output folder on a writable disk"
    else:
        reason, fix = "permission denied", "choose an output folder you can write to, or change its permissions"
    explained = WriteError(error.errno, f"{where}: {reason}{f' ({detail})' if detail else ''}; {fix}.", path)
    explained.detail = detail
    return explained


def _nearest_existing(folder: Path) -> Path:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def check_writable(path: str | os.PathLike, what: str = "output", inside: bool = False) -> Path:
    """
    Check that the output `path` can be written, before the work that makes it: create a one-byte file in the
    folder that will hold it and remove it. That folder is `path`'s parent, or `path` itself with `inside=True` (a
    folder written into, such as a feature store), or, where it does not exist yet, its nearest existing parent
    (where it will be created). Raises [`WriteError`] naming `what` (the argument, e.g. `--output`), `path`, the
    folder and the fix.

    Returns:
        `Path`: the folder that was probed.

    Example:
        ```python
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> check_writable(folder / "metrics.json") == folder
        True
        >>> check_writable(folder / "new" / "store", inside=True) == folder
        True
        >>> list(folder.iterdir())
        []
        ```
    """
    path = Path(path)
    probed = _nearest_existing(path if inside else path.parent)
    if not probed.is_dir():
        raise FileExistsError(f"{what} {path}: {probed} is a file, not a folder; choose another path.")
    try:
        probe = _create_temporary(probed, prefix=".lxmert-hf-probe-", suffix=".tmp")
        try:
            with open(probe, "wb") as handle:
                handle.write(b"\0")
        finally:
            probe.unlink(missing_ok=True)
    except OSError as error:
        explained = write_error(error, probed)
        if explained is None:
            raise
        message = WriteError(error.errno, f"{what} {path}: {explained}", os.fspath(path))
        message.detail = explained.detail
        raise message from error
    return probed


def fsync_directory(path: str | os.PathLike) -> None:
    """Flush the folder `path` (its entries) or the file `path` to disk: a rename is only durable once its folder
    is flushed."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _create_temporary(parent: Path, prefix: str, suffix: str = "", directory: bool = False) -> Path:
    """Create a new empty file (or folder) in `parent` with the permissions the umask gives to any new file.

    Not `tempfile.mkstemp`/`mkdtemp`: they create it readable by its owner only, and renamed into place it would
    stay so, hiding a shared feature store or checkpoint from the other users of the machine.
    """
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            if directory:
                os.mkdir(candidate, 0o777)
            else:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary name in {parent}; remove its leftover {prefix}* entries.")


def _existing_parent(path: Path) -> Path:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist; create it first.")
    return path.parent


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """
    Yield a temporary path beside `path` for a writer that takes a file name; rename it over `path` on success.

    The writer must have closed the file when the block ends. With `durable=True` the file and its folder are
    flushed to disk before and after the rename. On error the temporary file is removed and `path` is untouched.

    Example:
        ```python
        >>> import tempfile
        >>> from pathlib import Path
        >>> target = Path(tempfile.mkdtemp()) / "numbers.txt"
        >>> with atomic_path(target) as temporary:
        ...     _ = temporary.write_text("1 2 3")
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('1 2 3', ['numbers.txt'])
        ```
    """
    path = Path(path)
    with _naming_target(path):
        temporary = _create_temporary(_existing_parent(path), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with _naming_target(path, temporary):
            yield temporary
            if durable:
                with open(temporary, "rb+") as handle:
                    os.fsync(handle.fileno())
            os.replace(temporary, path)
            if durable:
                fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def _naming_target(target: Path, temporary: Path | None = None) -> Iterator[None]:
    """Turn a full-disk or read-only error of writing `temporary` (a file, or a staging folder: the error names
    something in it, or nothing, as pyarrow's do) into a [`WriteError`] naming `target`, which is what the user
    knows. Without `temporary`, every such error is taken as one of writing `target`."""
    try:
        yield
    except OSError as error:
        named = None if error.filename is None else Path(os.fsdecode(error.filename))
        ours = named is None or temporary is None or named == temporary or temporary in named.parents
        explained = write_error(error, target) if ours else None
        if explained is None:
            raise
        raise explained from error


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", durable: bool = True
) -> Iterator[IO[Any]]:
    """
    Open a temporary file beside `path` for writing (`mode` `"w"` or `"wb"`); it replaces `path` when the block
    ends without error, and is removed otherwise.

    Example:
        ```python
        >>> import tempfile
        >>> from pathlib import Path
        >>> target = Path(tempfile.mkdtemp()) / "answers.txt"
        >>> with atomic_open(target) as handle:
        ...     _ = handle.write("yes\\nno\\n")
        >>> target.read_text().split()
        ['yes', 'no']
        ```
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"`mode` must be 'w' or 'wb', got {mode!r}.")
    with atomic_path(path, durable=durable) as temporary:
        text = {"encoding": encoding, "newline": ""} if mode == "w" else {}
        with open(temporary, mode, **text) as handle:
            yield handle
            handle.flush()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8, newlines as given) to `path` atomically and return the path.

    Example:
        ```python
        >>> import tempfile
        >>> write_text_atomic(f"{tempfile.mkdtemp()}/note.txt", "hello").read_text()
        'hello'
        ```
    """
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int | None = 1) -> Path:
    """Write `payload` as JSON to `path` atomically and return the path.

    Example:
        ```python
        >>> import json, tempfile
        >>> json.loads(write_json_atomic(f"{tempfile.mkdtemp()}/a.json", {"b": [1, 2]}).read_text())
        {'b': [1, 2]}
        ```
    """
    return write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")


def replace_directory(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the complete folder `staging` to `target`, replacing what is there; on failure `target` is kept."""
    staging, target = Path(staging), Path(target)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        if target.is_dir():
            target.rmdir()
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, retired / target.name)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(retired / target.name, target)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def check_overwrite(target: str | os.PathLike, overwrite: bool, option: str = "overwrite=True") -> None:
    """
    Raise `FileExistsError` when `target` is a file or a non-empty folder and `overwrite` is false: the check
    [`atomic_directory`] makes on entry, for writers that want it before any expensive work. `option` names the
    switch that allows replacing, in the message.

    Example:
        ```python
        >>> import tempfile
        >>> check_overwrite(tempfile.gettempdir(), overwrite=False, option="--overwrite")
        Traceback (most recent call last):
        ...
        FileExistsError: ... already exists; pass --overwrite to replace it, or choose a new folder.
        ```
    """
    target = Path(target)
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} already exists; pass {option} to replace it, or choose a new folder.")


def _move_to_new(staging: Path, target: Path) -> None:
    # rename(2) replaces an empty folder but refuses a non-empty one or a file, in one atomic step, so a target
    # filled meanwhile by another process (two ranks preparing one cache) is never clobbered.
    try:
        os.rename(staging, target)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        raise FileExistsError(f"{target} was created while it was being written; it is left as it is.") from error


def _fsync_tree(folder: Path) -> None:
    # The rename makes the folder visible; its files must be on disk first, or a crash could leave it with
    # empty or short files under their final names.
    for parent, _, names in os.walk(folder):
        for name in names:
            fsync_directory(os.path.join(parent, name))  # a read-only descriptor flushes a file as well
        fsync_directory(parent)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """
    Yield an empty staging folder beside `target`; when the block ends without error it becomes `target`.

    An existing non-empty `target` raises `FileExistsError` unless `overwrite=True`, in which case it is replaced
    whole (and kept if the replacement fails). Without `overwrite`, content that another process put at `target`
    while the block ran is not replaced either: the block then ends with `FileExistsError`. On error the staging
    folder is removed and `target` is untouched. The parent folder is created if needed.

    Example:
        ```python
        >>> import tempfile
        >>> from pathlib import Path
        >>> target = Path(tempfile.mkdtemp()) / "checkpoint"
        >>> with atomic_directory(target) as staging:
        ...     _ = (staging / "config.json").write_text("{}")
        >>> sorted(p.name for p in target.iterdir())
        ['config.json']
        ```
    """
    target = Path(target)
    check_overwrite(target, overwrite)
    with _naming_target(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _create_temporary(target.parent, prefix=f".{target.name}.tmp-", directory=True)
    try:
        with _naming_target(target, staging):
            yield staging
            _fsync_tree(staging)
            if overwrite:
                replace_directory(staging, target)
            else:
                _move_to_new(staging, target)
            fsync_directory(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
