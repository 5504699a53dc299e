"""Joining questions to the feature store by image id, at read time, so features are never copied per question.

[`FeatureLookup`] serves the region features of an image as zero-copy views of the memory-mapped store shards,
and [`attach_features`] turns a dataset of questions into one whose examples carry `visual_feats`, `visual_pos`
and the dense soft-score `labels` that [`~lxmert_hf.data.collator.VQADataCollator`] consumes.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lxmert_hf.answers import encode_soft_labels
from lxmert_hf.data.index import INDEX_NAME, read_table
from lxmert_hf.data.store import read_manifest

# Mapped pages count towards a process's RSS until unmapped; dropping them now and then keeps the RSS of a reader
# bounded however large the store is (the pages stay in the page cache, so re-reading them costs no disk I/O).
DEFAULT_MAPPED_BYTES = 256 * 1024 * 1024
# Linux >= 5.14 maps a whole range of cached pages in one call, instead of one page fault per 4 KB page when the
# view is first read; Python does not name the constant before 3.13.
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform == "linux" else None)
# Batches are read with positioned reads straight into the batch array: one copy from the page cache, no mapping.
# The reads release the GIL, so a few threads copy (or wait for the disk) in parallel.
DEFAULT_READ_THREADS = min(4, os.cpu_count() or 1)


def _map(path: Path) -> mmap.mmap:
    with open(path, "rb") as handle:
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    # Reads are random: no read-around (megabytes of neighbouring images per miss); each image's own range is
    # requested explicitly instead (`_advise`).
    if hasattr(mmap, "MADV_RANDOM"):
        data.madvise(mmap.MADV_RANDOM)
    return data


class FeatureLookup:
    r"""
    Random access to the region features of a feature store by image id.

    Opening reads only the store's small index. Single images (`lookup[image_id]`, [`get_many`]) come back as
    read-only views of the memory-mapped shards; mapped pages are dropped after every `max_mapped_bytes` read, so the
    reader's RSS stays bounded. Batches ([`gather`]) are read straight from the shard files into one zero-padded
    array, the single copy a batch needs, by `read_threads` threads at once. A lookup pickles as its path, so it
    can be sent to `DataLoader` workers.

    Args:
        store_dir (`str` or `os.PathLike`): a complete store written by [`FeatureStoreWriter`].
        max_mapped_bytes (`int`, *optional*, defaults to 256 MiB): bytes read between two releases of mapped pages.
        read_threads (`int`, *optional*, defaults to `min(4, os.cpu_count())`): threads reading a batch.

    Example:
        ```python
        >>> import numpy as np, tempfile
        >>> from lxmert_hf.data import FeatureLookup, FeatureStoreWriter
        >>> store_dir = tempfile.mkdtemp()
        >>> with FeatureStoreWriter(store_dir, resume=True) as writer:
        ...     writer.add({"image_id": "a", "visual_feats": np.ones((2, 4)), "boxes": np.zeros((2, 4)),
        ...                 "image_width": 8, "image_height": 8})
        >>> lookup = FeatureLookup(store_dir)
        >>> lookup["a"]["visual_feats"].shape, "b" in lookup
        ((2, 4), False)
        >>> lookup.gather(["a", "a"]).visual_feats.shape
        (2, 2, 4)
        ```
    """

    def __init__(
        self,
        store_dir: str | os.PathLike,
        max_mapped_bytes: int = DEFAULT_MAPPED_BYTES,
        read_threads: int = DEFAULT_READ_THREADS,
    ):
        if read_threads < 1:
            raise ValueError(f"`read_threads` must be at least 1, got {read_threads}.")
        self.store_dir = Path(store_dir)
        self.max_mapped_bytes = max_mapped_bytes
        self.read_threads = read_threads
        manifest = read_manifest(self.store_dir)
        if not manifest["complete"]:
            raise ValueError(
                f"the feature store at {self.store_dir} is incomplete; rerun `lxmert-hf prepare features` to "
                "complete it."
            )
        self.feature_dim = manifest["feature_dim"]
        self.dtype = np.dtype(manifest["dtype"])
        index = read_table(self.store_dir / INDEX_NAME)
        self._ids = index.column("image_id").to_pylist()
        self._rows = {image_id: row for row, image_id in enumerate(self._ids)}
        self._shard = index.column("shard").to_numpy()
        self._feats_offset = index.column("feats_offset").to_numpy()
        self._pos_offset = index.column("pos_offset").to_numpy()
        self._num_boxes = index.column("num_boxes").to_numpy()
        self._paths = [self.store_dir / shard["file"] for shard in manifest["shards"]]
        self._maps = [_map(path) for path in self._paths]
        self._mapped_bytes = 0
        self._populate = MADV_POPULATE_READ is not None
        self._reader: _BatchReader | None = None

    def __getstate__(self) -> dict:
        return {"store_dir": self.store_dir, "max_mapped_bytes": self.max_mapped_bytes, "threads": self.read_threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["store_dir"], state["max_mapped_bytes"], state.get("threads", DEFAULT_READ_THREADS))

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._rows

    @property
    def image_ids(self) -> list[str]:
        """The image ids of the store, in store order."""
        return list(self._ids)

    def __getitem__(self, image_id: str) -> dict[str, np.ndarray]:
        """`{"visual_feats": [n, d], "visual_pos": [n, 4]}` of `image_id` (read-only views)."""
        return self.get_many([image_id])[0]

    def get_many(self, image_ids: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """The regions of several images, their reads requested all at once (in parallel from a cold cache)."""
        rows = [self._row(image_id) for image_id in image_ids]
        self._mapped_bytes += sum(int(self._num_boxes[row]) * self.feature_dim * self.dtype.itemsize for row in rows)
        if self._mapped_bytes > self.max_mapped_bytes:
            self.release()  # before this batch's pages are mapped, so that they stay mapped while being read
        for row in rows:
            self._advise(row, mmap.MADV_WILLNEED if hasattr(mmap, "MADV_WILLNEED") else None)
        for row in rows:
            self._advise(row, MADV_POPULATE_READ)
        return [self._view(row) for row in rows]

    def gather(self, image_ids: Sequence[str]) -> RegionBatch:
        """The regions of several images copied into one batch, zero-padded to the largest box count.

        Returns a [`RegionBatch`]: `visual_feats` `[len(image_ids), longest, dim]` (float32 whatever the store's
        dtype), `visual_pos` `[len(image_ids), longest, 4]` and `num_boxes` `[len(image_ids)]`. The arrays are
        new and writable; nothing stays mapped, so reading batches does not grow the RSS.
        """
        if not len(image_ids):
            raise ValueError("`image_ids` is empty: gather needs at least one image id.")
        rows = np.array([self._row(image_id) for image_id in image_ids], dtype=np.int64)
        counts = self._num_boxes[rows].astype(np.int64)
        longest = int(counts.max())
        allocate = np.empty if bool((counts == longest).all()) else np.zeros
        raw = allocate((len(rows), longest, self.feature_dim), dtype=self.dtype)
        pos = allocate((len(rows), longest, 4), dtype=np.float32)
        if self._reader is None or not self._reader.usable():
            self._reader = _BatchReader(self._paths, self._maps, self.read_threads)
        self._reader.read(
            self._shard[rows], self._feats_offset[rows], self._pos_offset[rows], counts, raw, pos
        )  # fmt: skip
        feats = raw if raw.dtype == np.float32 else raw.astype(np.float32)
        return RegionBatch(visual_feats=feats, visual_pos=pos, num_boxes=counts)

    def _row(self, image_id: str) -> int:
        try:
            return self._rows[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in the feature store at {self.store_dir}.") from None

    def _view(self, row: int) -> dict[str, np.ndarray]:
        data, count = self._maps[self._shard[row]], int(self._num_boxes[row])
        feats = np.frombuffer(data, self.dtype, count * self.feature_dim, int(self._feats_offset[row]))
        pos = np.frombuffer(data, np.float32, count * 4, int(self._pos_offset[row]))
        return {"visual_feats": feats.reshape(count, self.feature_dim), "visual_pos": pos.reshape(count, 4)}

    def _advise(self, row: int, advice: int | None) -> None:
        """Apply `advice` to the byte ranges of one image (its features, then its boxes)."""
        if advice is None or (advice == MADV_POPULATE_READ and not self._populate):
            return
        data, count = self._maps[self._shard[row]], int(self._num_boxes[row])
        for offset, size in (
            (self._feats_offset[row], count * self.feature_dim * self.dtype.itemsize),
            (self._pos_offset[row], count * 16),
        ):
            start = int(offset) // mmap.PAGESIZE * mmap.PAGESIZE
            try:
                data.madvise(advice, start, int(offset) + size - start)
            except OSError:  # a kernel without MADV_POPULATE_READ: pages are then mapped as they are read
                self._populate = False
                return

    def release(self) -> None:
        """Unmap the pages read so far (views stay valid: they are re-read from the page cache when touched)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            for data in self._maps:
                data.madvise(mmap.MADV_DONTNEED)
        self._mapped_bytes = 0

    def missing(self, image_ids: Sequence[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Boolean mask of the `image_ids` that are not in the store (vectorized)."""
        present = pc.is_in(image_ids, value_set=pa.array(self._ids, type=pa.string()))
        return ~np.asarray(present.to_numpy(zero_copy_only=False), dtype=bool)


@dataclasses.dataclass(frozen=True)
class RegionBatch:
    """The regions of a batch of images, zero-padded to the largest box count (see [`FeatureLookup.gather`])."""

    visual_feats: np.ndarray
    visual_pos: np.ndarray
    num_boxes: np.ndarray

    @property
    def visual_attention_mask(self) -> np.ndarray:
        """`[batch, longest]` int64: 1 for a stored region, 0 for padding."""
        return (np.arange(self.visual_feats.shape[1]) < self.num_boxes[:, None]).astype(np.int64)


class _BatchReader:
    """Positioned reads of many byte ranges into arrays, spread over a few threads (the reads release the GIL).

    Each range is first read without waiting for the disk (`RWF_NOWAIT`: served from the page cache or not at all);
    the ranges that were not cached are then requested from the disk all at once (`POSIX_FADV_WILLNEED`, so the
    disk works on many of them together) and read. Open files and threads do not survive `fork`: a reader is only
    usable in the process that made it.
    """

    def __init__(self, paths: Sequence[Path], maps: Sequence[mmap.mmap], threads: int):
        self._pid = os.getpid()
        self._maps = maps
        self._positioned = hasattr(os, "preadv")
        self._nowait = getattr(os, "RWF_NOWAIT", None) if self._positioned else None
        self._files = [open(path, "rb", buffering=0) for path in paths] if self._positioned else []  # noqa: SIM115
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lxmert-hf-read") if threads > 1 else None
        self._threads = threads

    def usable(self) -> bool:
        return self._pid == os.getpid()

    def read(self, shards, feats_offsets, pos_offsets, counts, feats: np.ndarray, pos: np.ndarray) -> None:
        """Fill `feats[i, :counts[i]]` and `pos[i, :counts[i]]` from the given shard offsets."""
        jobs = [
            (int(shard), int(offset), memoryview(target[index, : int(count)]).cast("B"))
            for offsets, target in ((feats_offsets, feats), (pos_offsets, pos))
            for index, (shard, offset, count) in enumerate(zip(shards, offsets, counts, strict=True))
        ]
        if not self._positioned:  # no preadv (Windows): copy from the mapped shards
            for shard, offset, view in jobs:
                view[:] = self._maps[shard][offset : offset + len(view)]
            return
        pending = self._spread(self._read_cached, jobs) if self._nowait is not None else jobs
        if pending:
            if hasattr(os, "posix_fadvise"):
                for shard, offset, view in pending:
                    os.posix_fadvise(self._files[shard].fileno(), offset, len(view), os.POSIX_FADV_WILLNEED)
            self._spread(self._read_all, pending)

    def _spread(self, work, jobs: list) -> list:
        """Run `work` on `jobs` split over the threads; return the jobs it handed back (not done)."""
        if self._pool is None or len(jobs) < 2 * self._threads:
            return work(jobs)
        parts = [self._pool.submit(work, jobs[k :: self._threads]) for k in range(self._threads)]
        return [job for part in parts for job in part.result()]

    def _read_cached(self, jobs: list) -> list:
        """Read what the page cache holds; return the rest as jobs."""
        pending, flags = [], self._nowait
        for shard, offset, view in jobs:
            done = 0
            try:
                if flags is not None:
                    done = os.preadv(self._files[shard].fileno(), [view], offset, flags)
            except BlockingIOError:
                pass
            except OSError:  # a file system without RWF_NOWAIT: every read waits from now on
                self._nowait = flags = None
            if done < len(view):
                pending.append((shard, offset + done, view[done:]))
        return pending

    def _read_all(self, jobs: list) -> list:
        for shard, offset, view in jobs:
            done = 0
            while done < len(view):  # reads may come back short (a signal, a file system splitting large reads)
                more = os.preadv(self._files[shard].fileno(), [view[done:]], offset + done)
                if more == 0:
                    raise OSError(
                        f"{self._files[shard].name} ends before byte {offset + len(view)}: the feature store is "
                        "truncated; prepare it again."
                    )
                done += more
        return []


def dense_labels(answers: Sequence[Sequence[str]], scores: Sequence[Sequence[float]], label2id: Mapping) -> np.ndarray:
    """Dense soft-score targets `[len(answers), len(label2id)]`; answers outside the vocabulary are dropped."""
    return encode_soft_labels(answers, scores, label2id)


class JoinFeatures:
    """The batched transform that adds features (and `labels`) to a batch of questions."""

    def __init__(self, lookup: FeatureLookup, label2id: Mapping[str, int] | None, image_columns: Sequence[str]):
        self.lookup = lookup
        self.label2id = dict(label2id) if label2id is not None else None
        self.image_columns = tuple(image_columns)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        batch = dict(batch)
        if len(self.image_columns) == 1:
            batch.update(self._single(batch[self.image_columns[0]]))
        else:
            batch.update(self._pairs(batch))
        if self.label2id is not None and "label_answers" in batch:
            batch["labels"] = dense_labels(batch["label_answers"], batch["label_scores"], self.label2id)
        elif "label" in batch:  # a class index (NLVR2: does the sentence hold for the pair)
            batch["labels"] = batch["label"]
        return batch

    def _single(self, image_ids: Sequence[str]) -> dict:
        regions = self.lookup.gather(image_ids)
        if (regions.num_boxes == regions.visual_feats.shape[1]).all():
            # One array for the batch: each example gets a row (a view), and the collator takes the array whole.
            return {"visual_feats": regions.visual_feats, "visual_pos": regions.visual_pos}
        counts = regions.num_boxes.tolist()
        return {
            "visual_feats": [feats[:count] for feats, count in zip(regions.visual_feats, counts, strict=True)],
            "visual_pos": [pos[:count] for pos, count in zip(regions.visual_pos, counts, strict=True)],
        }

    def _pairs(self, batch: dict[str, list]) -> dict[str, list]:
        # Two images per example (NLVR2): stacked as [2, num_boxes, dim], padded to the larger box count.
        feats, pos, masks = [], [], []
        for ids in zip(*(batch[column] for column in self.image_columns), strict=True):
            regions = self.lookup.gather(ids)
            feats.append(regions.visual_feats)
            pos.append(regions.visual_pos)
            masks.append(regions.visual_attention_mask)
        return {"visual_feats": feats, "visual_pos": pos, "visual_attention_mask": masks}


def attach_features(
    questions: datasets.Dataset | datasets.IterableDataset,
    features: str | os.PathLike | FeatureLookup,
    label2id: Mapping[str, int] | None = None,
    image_columns: Sequence[str] = ("image_id",),
    skip_missing: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    r"""
    Join a dataset of questions to a feature store by image id, lazily.

    Map-style datasets get a transform (`with_transform`): random access reads only the rows asked for.
    Iterable datasets get a batched `map`. Each example gains `visual_feats` and `visual_pos` (and `labels`, the
    dense soft scores over `label2id`, when given). With several `image_columns` (NLVR2's `img0`, `img1`), the
    features are stacked as `[num_images, num_boxes, dim]` with a `visual_attention_mask`.

    Questions whose image is not in the store raise a `ValueError` (count and examples), or are dropped and
    counted with `skip_missing=True` (map-style datasets only; iterable ones are checked when prepared).

    When training with `transformers.Trainer`, pass `remove_unused_columns=False`: the question columns feed
    the transform.

    Example:
        ```python
        >>> import numpy as np, tempfile, datasets
        >>> from lxmert_hf.data import FeatureStoreWriter, attach_features
        >>> store_dir = tempfile.mkdtemp()
        >>> with FeatureStoreWriter(store_dir, resume=True) as writer:
        ...     writer.add({"image_id": "a", "visual_feats": np.ones((2, 4)), "boxes": np.zeros((2, 4)),
        ...                 "image_width": 8, "image_height": 8})
        >>> questions = datasets.Dataset.from_dict({"image_id": ["a"], "question": ["what?"],
        ...                                         "label_answers": [["yes"]], "label_scores": [[1.0]]})
        >>> example = attach_features(questions, store_dir, label2id={"no": 0, "yes": 1})[0]
        >>> example["visual_feats"].shape, example["labels"].tolist()
        ((2, 4), [0.0, 1.0])
        ```
    """
    lookup = features if isinstance(features, FeatureLookup) else FeatureLookup(features)
    join = JoinFeatures(lookup, label2id, image_columns)
    if isinstance(questions, datasets.IterableDataset):
        return questions.map(join, batched=True)
    questions = drop_or_report_missing(questions, lookup, image_columns, skip_missing)
    return questions.with_transform(join)


def drop_or_report_missing(
    questions: datasets.Dataset, lookup: FeatureLookup, image_columns: Sequence[str], skip_missing: bool
) -> datasets.Dataset:
    """Raise a `ValueError` counting the questions whose image is not in the store, or drop them."""
    table = questions.with_format("arrow")
    missing = np.zeros(len(questions), dtype=bool)
    for column in image_columns:
        missing |= lookup.missing(table[column])
    if not missing.any():
        return questions
    column = table[image_columns[0]]
    examples = [column[int(i)].as_py() for i in np.flatnonzero(missing)[:5]]
    if not skip_missing:
        raise ValueError(
            f"{int(missing.sum())} of {len(questions)} questions refer to images that are not in the feature store "
            f"at {lookup.store_dir} (e.g. {examples}); prepare features for those images, or pass "
            "skip_missing=True (--skip-missing) to drop these questions."
        )
    return questions.select(np.flatnonzero(~missing))
