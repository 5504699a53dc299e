"""Joining questions to the feature store by image id, at read time, so features are never copied per question.

[`FeatureLookup`] serves the region features of an image as zero-copy views of the memory-mapped store shards,
and [`attach_features`] turns a dataset of questions into one whose examples carry `visual_feats`, `visual_pos`
and the dense soft-score `labels` that [`~lxmert_hf.data.collator.VQADataCollator`] consumes.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lxmert_hf.data.index import INDEX_NAME, read_table
from lxmert_hf.data.store import read_manifest

# Mapped pages count towards a process's RSS until unmapped; dropping them now and then keeps the RSS of a reader
# bounded however large the store is (the pages stay in the page cache, so re-reading them costs no disk I/O).
DEFAULT_MAPPED_BYTES = 256 * 1024 * 1024
# Linux >= 5.14 maps a whole range of cached pages in one call, instead of one page fault per 4 KB page when the
# view is first read; Python does not name the constant before 3.13.
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform == "linux" else None)


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

    Opening reads only the store's small index; features come back as read-only views of the memory-mapped shards
    (no copy until the collator batches them). Mapped pages are dropped after every `max_mapped_bytes` read, so the
    reader's RSS stays bounded. A lookup pickles as its path, so it can be sent to `DataLoader` workers.

    Args:
        store_dir (`str` or `os.PathLike`): a complete store written by [`FeatureStoreWriter`].
        max_mapped_bytes (`int`, *optional*, defaults to 256 MiB): bytes read between two releases of mapped pages.

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
        ```
    """

    def __init__(self, store_dir: str | os.PathLike, max_mapped_bytes: int = DEFAULT_MAPPED_BYTES):
        self.store_dir = Path(store_dir)
        self.max_mapped_bytes = max_mapped_bytes
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
        self._maps = [_map(self.store_dir / shard["file"]) for shard in manifest["shards"]]
        self._mapped_bytes = 0
        self._populate = MADV_POPULATE_READ is not None

    def __getstate__(self) -> dict:
        return {"store_dir": self.store_dir, "max_mapped_bytes": self.max_mapped_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["store_dir"], state["max_mapped_bytes"])

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


def dense_labels(answers: Sequence[Sequence[str]], scores: Sequence[Sequence[float]], label2id: Mapping) -> np.ndarray:
    """Dense soft-score targets `[len(answers), len(label2id)]`; answers outside the vocabulary are dropped."""
    labels = np.zeros((len(answers), len(label2id)), dtype=np.float32)
    for row, (names, values) in enumerate(zip(answers, scores, strict=True)):
        for name, value in zip(names, values, strict=True):
            label = label2id.get(name)
            if label is not None:
                labels[row, label] = value
    return labels


class JoinFeatures:
    """The batched transform that adds features (and `labels`) to a batch of questions."""

    def __init__(self, lookup: FeatureLookup, label2id: Mapping[str, int] | None, image_columns: Sequence[str]):
        self.lookup = lookup
        self.label2id = dict(label2id) if label2id is not None else None
        self.image_columns = tuple(image_columns)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        batch = dict(batch)
        if len(self.image_columns) == 1:
            regions = self.lookup.get_many(batch[self.image_columns[0]])
            batch["visual_feats"] = [r["visual_feats"] for r in regions]
            batch["visual_pos"] = [r["visual_pos"] for r in regions]
        else:
            batch.update(self._pairs(batch))
        if self.label2id is not None and "label_answers" in batch:
            labels = dense_labels(batch["label_answers"], batch["label_scores"], self.label2id)
            batch["labels"] = list(labels)
        elif "label" in batch:  # a class index (NLVR2: does the sentence hold for the pair)
            batch["labels"] = batch["label"]
        return batch

    def _pairs(self, batch: dict[str, list]) -> dict[str, list]:
        # Two images per example (NLVR2): stacked as [2, num_boxes, dim], padded to the larger box count.
        feats, pos, masks = [], [], []
        for ids in zip(*(batch[column] for column in self.image_columns), strict=True):
            regions = self.lookup.get_many(ids)
            longest = max(len(r["visual_feats"]) for r in regions)
            f = np.zeros((len(ids), longest, self.lookup.feature_dim), dtype=regions[0]["visual_feats"].dtype)
            p = np.zeros((len(ids), longest, 4), dtype=np.float32)
            m = np.zeros((len(ids), longest), dtype=np.int64)
            for index, region in enumerate(regions):
                count = len(region["visual_feats"])
                f[index, :count], p[index, :count], m[index, :count] = region["visual_feats"], region["visual_pos"], 1
            feats.append(f)
            pos.append(p)
            masks.append(m)
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
