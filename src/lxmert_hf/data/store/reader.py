"""Reading a feature store: where training, prediction and the benchmarks get their region bytes.

[`FeatureStore`] serves the regions of images by id: single images as zero-copy views of the memory-mapped shards,
batches copied straight from the shard files into one zero-padded array (how the bytes move is
[`~lxmert_hf.data.store.fastread`]). [`open_store_dataset`] opens the same store as a memory-mapped
`datasets.Dataset`, for scans and exports.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, IterableDataset, concatenate_datasets
from datasets.table import MemoryMappedTable

from lxmert_hf.data.store.fastread import (
    Job,
    MappedShards,
    PlainReader,
    PositionedReader,
    batch_reader,
    map_file,
    read_ahead,
)
from lxmert_hf.data.store.format import (
    EXTRACTOR_KEY,
    damaged_store,
    missing_store_file,
    read_complete_manifest,
    read_table,
    store_index_path,
)

# Mapped pages count towards a process's RSS until unmapped; dropping them now and then keeps the RSS of a reader
# bounded however large the store is (the pages stay in the page cache, so re-reading them costs no disk I/O).
DEFAULT_MAPPED_BYTES = 256 * 1024 * 1024
# Batches are read by a few threads at once: positioned reads release the GIL.
DEFAULT_READ_THREADS = min(4, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class RegionBatch:
    """The regions of a batch of images, zero-padded to the largest box count (see [`FeatureStore.gather`])."""

    visual_feats: np.ndarray
    visual_pos: np.ndarray
    num_boxes: np.ndarray

    @property
    def visual_attention_mask(self) -> np.ndarray:
        """`[batch, longest]` int64: 1 for a stored region, 0 for padding."""
        return (np.arange(self.visual_feats.shape[1]) < self.num_boxes[:, None]).astype(np.int64)


class FeatureStore:
    r"""
    A complete feature store, opened for random access to the regions of its images by id.

    Opening reads only the store's small index. Single images (`store[image_id]`, [`get_many`]) come back as
    read-only views of the memory-mapped shards; mapped pages are dropped after every `max_mapped_bytes` read, so the
    reader's RSS stays bounded. Batches ([`gather`]) are read straight from the shard files into one zero-padded
    array, the single copy a batch needs, by `read_threads` threads at once. A store pickles as its path, so it can
    be sent to `DataLoader` workers.

    Args:
        store_dir (`str` or `os.PathLike`): a complete store written by [`FeatureStoreWriter`].
        max_mapped_bytes (`int`, *optional*, defaults to 256 MiB): bytes read between two releases of mapped pages.
        read_threads (`int`, *optional*, defaults to `min(4, os.cpu_count())`): threads reading a batch.

    Example:
        ```python
        >>> import numpy as np, tempfile
        >>> from lxmert_hf.data import FeatureStore, FeatureStoreWriter
        >>> store_dir = tempfile.mkdtemp()
        >>> with FeatureStoreWriter(store_dir, resume=True) as writer:
        ...     writer.add({"image_id": "a", "visual_feats": np.ones((2, 4)), "boxes": [[0, 0, 4, 8]] * 2,
        ...                 "image_width": 8, "image_height": 8})
        >>> store = FeatureStore(store_dir)
        >>> store["a"]["visual_feats"].shape, "b" in store
        ((2, 4), False)
        >>> store.gather(["a", "a"]).visual_feats.shape
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
        manifest = read_complete_manifest(self.store_dir)
        self.feature_dim = manifest["feature_dim"]
        self.dtype = np.dtype(manifest["dtype"])
        self._extractor = manifest.get(EXTRACTOR_KEY)
        index = read_table(store_index_path(self.store_dir))
        self._ids = index.column("image_id").to_pylist()
        self._rows = {image_id: row for row, image_id in enumerate(self._ids)}
        self._shard = index.column("shard").to_numpy()
        self._feats_offset = index.column("feats_offset").to_numpy()
        self._pos_offset = index.column("pos_offset").to_numpy()
        self._num_boxes = index.column("num_boxes").to_numpy()
        self._paths = [self.store_dir / shard["file"] for shard in manifest["shards"]]
        self._check_shard_sizes()
        self._mapped = MappedShards(self._paths)
        self._mapped_bytes = 0
        self._reader: PositionedReader | PlainReader | None = None

    def __getstate__(self) -> dict:
        return {"store_dir": self.store_dir, "max_mapped_bytes": self.max_mapped_bytes, "threads": self.read_threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["store_dir"], state["max_mapped_bytes"], state.get("threads", DEFAULT_READ_THREADS))

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.store_dir)!r}, images={len(self)}, feature_dim={self.feature_dim})"

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._rows

    @property
    def extractor(self) -> dict | None:
        """What made the features (detector, preset, settings; see [`~lxmert_hf.hub.describe_visual_features`]), as
        the store's writer recorded it, or `None` when the store does not say (then nor can a model trained on it).
        """
        return copy.deepcopy(self._extractor)

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
        self._mapped.prefetch([byte_range for row in rows for byte_range in self._byte_ranges(row)])
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
            self._reader = batch_reader(self._paths, self.read_threads)
        self._reader.read(self._jobs(rows, counts, raw, pos))
        feats = raw if raw.dtype == np.float32 else raw.astype(np.float32)
        return RegionBatch(visual_feats=feats, visual_pos=pos, num_boxes=counts)

    def missing(self, image_ids: Sequence[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Boolean mask of the `image_ids` that are not in the store (vectorized)."""
        present = pc.is_in(image_ids, value_set=pa.array(self._ids, type=pa.string()))
        return ~np.asarray(present.to_numpy(zero_copy_only=False), dtype=bool)

    def release(self) -> None:
        """Unmap the pages read so far (views stay valid: they are re-read from the page cache when touched)."""
        self._mapped.release()
        self._mapped_bytes = 0

    def _row(self, image_id: str) -> int:
        try:
            return self._rows[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in the feature store at {self.store_dir}.") from None

    def _check_shard_sizes(self) -> None:
        """Refuse a store whose shard files are missing or end before the values its index points at."""
        ends = np.zeros(len(self._paths), dtype=np.int64)
        feats_end = self._feats_offset + self._num_boxes.astype(np.int64) * self.feature_dim * self.dtype.itemsize
        np.maximum.at(ends, self._shard, np.maximum(feats_end, self._pos_offset + self._num_boxes * 16))
        for path, end in zip(self._paths, ends.tolist(), strict=True):
            if not path.is_file():
                raise missing_store_file(path)
            if path.stat().st_size < end:
                raise damaged_store(path, f"the shard ends at byte {path.stat().st_size}, before byte {end}")

    def _byte_ranges(self, row: int) -> list[tuple[int, int, int]]:
        """`(shard, offset, size)` of the features, then the boxes, of one image."""
        shard, count = int(self._shard[row]), int(self._num_boxes[row])
        return [
            (shard, int(self._feats_offset[row]), count * self.feature_dim * self.dtype.itemsize),
            (shard, int(self._pos_offset[row]), count * 4 * 4),
        ]

    def _view(self, row: int) -> dict[str, np.ndarray]:
        shard, count = int(self._shard[row]), int(self._num_boxes[row])
        feats = self._mapped.view(shard, int(self._feats_offset[row]), self.dtype, count * self.feature_dim)
        pos = self._mapped.view(shard, int(self._pos_offset[row]), np.dtype(np.float32), count * 4)
        return {"visual_feats": feats.reshape(count, self.feature_dim), "visual_pos": pos.reshape(count, 4)}

    def _jobs(self, rows: np.ndarray, counts: np.ndarray, feats: np.ndarray, pos: np.ndarray) -> list[Job]:
        """Reads filling `feats[i, :counts[i]]` and `pos[i, :counts[i]]` for each row, features first."""
        shards = self._shard[rows]
        return [
            (int(shard), int(offset), memoryview(target[index, : int(count)]).cast("B"))
            for offsets, target in ((self._feats_offset[rows], feats), (self._pos_offset[rows], pos))
            for index, (shard, offset, count) in enumerate(zip(shards, offsets, counts, strict=True))
        ]


def _open_shard(path: Path) -> Dataset:
    """A shard as a memory-mapped `datasets.Dataset`, opened reading only the headers of its record batches."""
    if not path.is_file():
        raise missing_store_file(path)
    data = map_file(path)  # opening touches one page per record batch: no read-around of megabytes for each
    try:
        table = pa.ipc.open_stream(pa.BufferReader(pa.py_buffer(data))).read_all()
    except (pa.ArrowException, OSError) as error:
        raise damaged_store(path, "not a readable shard (truncated or garbled)", error) from None
    read_ahead(data)  # scans of the data then get read-ahead again
    return Dataset(MemoryMappedTable(table, str(path)))


def open_store_dataset(store_dir: str | os.PathLike, streaming: bool = False) -> Dataset | IterableDataset:
    """A complete store as a memory-mapped `datasets.Dataset` (one shard per store shard when `streaming`)."""
    manifest = read_complete_manifest(store_dir)
    shards = [_open_shard(Path(store_dir) / shard["file"]) for shard in manifest["shards"]]
    dataset = shards[0] if len(shards) == 1 else concatenate_datasets(shards)
    return dataset.to_iterable_dataset(num_shards=len(shards)) if streaming else dataset
