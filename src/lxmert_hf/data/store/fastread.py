"""How the feature-store reader gets bytes out of its shard files: fast on Linux, plainly elsewhere.

[`~lxmert_hf.data.store.FeatureStore`] reads in two ways, both here:

* **Views** ([`MappedShards`]): the shards are memory-mapped read-only and an image's features are a `numpy` view
  at their offset. Page advice makes this cheap where the system has it: `MADV_RANDOM` (no megabytes of read-around
  per miss), `MADV_WILLNEED` for all the ranges of a request at once (the disk works on them together),
  `MADV_POPULATE_READ` (Linux >= 5.14: a whole range mapped in one call instead of one fault per 4 KB page) and
  `MADV_DONTNEED` (mapped pages dropped, so the reader's RSS stays bounded). Without them the views are the same.
* **Copies** into a batch array ([`batch_reader`]): [`PositionedReader`] where `os.preadv` exists (Linux, BSD,
  macOS): each range is first read without waiting for the disk (`RWF_NOWAIT`: served from the page cache or not
  at all), the ranges that were not cached are requested from the disk at once (`POSIX_FADV_WILLNEED`) and then
  read, spread over a few threads (the reads release the GIL). [`PlainReader`] elsewhere (Windows): `seek` and
  `readinto`, one range after the other. Both fill the same bytes.

A job for a reader is `(shard, offset, view)`: fill the writable byte `memoryview` `view` from shard number `shard`
starting at byte `offset`.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# Python names this advice only from 3.13; 22 is its value in the Linux headers (asm-generic/mman-common.h).
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform == "linux" else None)

Job = tuple[int, int, memoryview]


def map_file(path: str | os.PathLike) -> mmap.mmap:
    """Map the file at `path` read-only, for random reads (no read-around, where the system allows advice)."""
    with open(path, "rb") as handle:
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_RANDOM"):
        data.madvise(mmap.MADV_RANDOM)
    return data


def read_ahead(data: mmap.mmap) -> None:
    """Give read-ahead back to a mapping made by [`map_file`], for scans."""
    if hasattr(mmap, "MADV_NORMAL"):
        data.madvise(mmap.MADV_NORMAL)


class MappedShards:
    """The shard files of a store mapped read-only: views at byte offsets, with page advice where available."""

    def __init__(self, paths: Sequence[Path]):
        self.maps = [map_file(path) for path in paths]
        self.populate = MADV_POPULATE_READ is not None

    def view(self, shard: int, offset: int, dtype: np.dtype, count: int) -> np.ndarray:
        """`count` values of `dtype` at byte `offset` of shard `shard`, as a read-only view."""
        return np.frombuffer(self.maps[shard], dtype, count, offset)

    def prefetch(self, ranges: Sequence[tuple[int, int, int]]) -> None:
        """Ask for the pages of all `(shard, offset, size)` ranges at once, then map each range in one call."""
        if hasattr(mmap, "MADV_WILLNEED"):
            for shard, offset, size in ranges:
                self._advise(shard, offset, size, mmap.MADV_WILLNEED)
        for shard, offset, size in ranges:
            if not self.populate:
                return
            self._advise(shard, offset, size, MADV_POPULATE_READ)

    def _advise(self, shard: int, offset: int, size: int, advice: int) -> None:
        start = offset // mmap.PAGESIZE * mmap.PAGESIZE
        try:
            self.maps[shard].madvise(advice, start, offset + size - start)
        except OSError:  # advice is a hint: a kernel without MADV_POPULATE_READ maps the pages as they are read
            if advice == MADV_POPULATE_READ:
                self.populate = False

    def release(self) -> None:
        """Unmap the pages read so far (views stay valid: they are re-read from the page cache when touched)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            for data in self.maps:
                data.madvise(mmap.MADV_DONTNEED)


def _truncated(name: str, end: int) -> OSError:
    return OSError(f"{name} ends before byte {end}: the feature store is truncated; prepare it again.")


class PlainReader:
    """Reads jobs with `seek` and `readinto`, one after the other: the portable way. Usable in the process that
    made it only (open files are shared with a forked child)."""

    def __init__(self, paths: Sequence[Path]):
        self.pid = os.getpid()
        self._files = [open(path, "rb", buffering=0) for path in paths]  # noqa: SIM115 - kept while reading

    def usable(self) -> bool:
        return self.pid == os.getpid()

    def read(self, jobs: Sequence[Job]) -> None:
        """Fill the view of each job."""
        for shard, offset, view in jobs:
            handle = self._files[shard]
            handle.seek(offset)
            done = 0
            while done < len(view):
                more = handle.readinto(view[done:])
                if not more:
                    raise _truncated(handle.name, offset + len(view))
                done += more


class PositionedReader:
    """Reads jobs with positioned reads (`os.preadv`), cached ranges first without waiting for the disk, spread
    over `threads` threads. Open files and threads do not survive `fork`: usable in the process that made it only."""

    def __init__(self, paths: Sequence[Path], threads: int):
        self.pid = os.getpid()
        self.nowait = getattr(os, "RWF_NOWAIT", None)
        self._files = [open(path, "rb", buffering=0) for path in paths]  # noqa: SIM115 - kept while reading
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lxmert-hf-read") if threads > 1 else None
        self._threads = threads

    def usable(self) -> bool:
        return self.pid == os.getpid()

    def read(self, jobs: Sequence[Job]) -> None:
        """Fill the view of each job: what the page cache holds at once, then the rest requested together."""
        pending = self._spread(self._read_cached, list(jobs)) if self.nowait is not None else list(jobs)
        if pending:
            if hasattr(os, "posix_fadvise"):
                for shard, offset, view in pending:
                    os.posix_fadvise(self._files[shard].fileno(), offset, len(view), os.POSIX_FADV_WILLNEED)
            self._spread(self._read_all, pending)

    def _spread(self, work: Callable[[list[Job]], list[Job]], jobs: list[Job]) -> list[Job]:
        """Run `work` on `jobs` split over the threads; return the jobs it handed back (not done)."""
        if self._pool is None or len(jobs) < 2 * self._threads:
            return work(jobs)
        parts = [self._pool.submit(work, jobs[k :: self._threads]) for k in range(self._threads)]
        return [job for part in parts for job in part.result()]

    def _read_cached(self, jobs: list[Job]) -> list[Job]:
        """Read what the page cache holds; return the rest as jobs."""
        pending, flags = [], self.nowait
        for shard, offset, view in jobs:
            done = 0
            try:
                if flags is not None:
                    done = os.preadv(self._files[shard].fileno(), [view], offset, flags)
            except BlockingIOError:
                pass
            except OSError:  # a file system without RWF_NOWAIT: every read waits from now on
                self.nowait = flags = None
            if done < len(view):
                pending.append((shard, offset + done, view[done:]))
        return pending

    def _read_all(self, jobs: list[Job]) -> list[Job]:
        for shard, offset, view in jobs:
            done = 0
            while done < len(view):  # reads may come back short (a signal, a file system splitting large reads)
                more = os.preadv(self._files[shard].fileno(), [view[done:]], offset + done)
                if more == 0:
                    raise _truncated(self._files[shard].name, offset + len(view))
                done += more
        return []


def batch_reader(paths: Sequence[Path], threads: int) -> PositionedReader | PlainReader:
    """The fastest reader this platform has for the files at `paths`."""
    if hasattr(os, "preadv"):
        return PositionedReader(paths, threads)
    return PlainReader(paths)
