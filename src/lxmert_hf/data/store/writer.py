"""Writing a feature store: region features in, one image at a time, in bounded memory.

Shards are written under a temporary name and renamed when complete, and the manifest is replaced atomically after
each rename, so an interrupted writer never leaves a shard that a reader could half-read, and a store is only
loadable once its writer has closed cleanly. The layout is described in [`~lxmert_hf.data.store.format`].
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lxmert_hf.data.store.format import (
    DATASET_INFO_NAME,
    DATASET_STATE_NAME,
    EXTRACTOR_KEY,
    FEATURE_DTYPES,
    HUB_DATASET_KEY,
    INDEX_NAME,
    LEGACY_INDEX_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    OPTIONAL_COLUMNS,
    complete_store,
    new_manifest,
    read_manifest,
    read_store_image_ids,
    shard_index,
    shard_index_name,
    store_features,
    write_table,
)
from lxmert_hf.files import atomic_path, write_json_atomic

try:
    import fcntl
except ImportError:  # Windows: a byte-range lock instead
    fcntl = None
    import msvcrt

logger = logging.getLogger(__name__)

# Images buffered before they are appended to the open shard: Arrow batches of this size cost little per image.
DEFAULT_BATCH_SIZE = 64
# Detectors round box corners; a corner this far outside the image (in normalized units) is noise, not a bug.
CLIP_TOLERANCE = 1e-3
# How far below 0 a normalized corner may lie: the original data loaders accept a box when
# `np.testing.assert_array_less(-boxes, 0 + 1e-5)` passes on the float32 normalized boxes, so -1e-5 itself fails.
NEGATIVE_TOLERANCE = 1e-5


def normalize_boxes(boxes: np.ndarray, width: int, height: int, image_id: str = "?") -> tuple[np.ndarray, int]:
    """
    Turn absolute pixel boxes `x1, y1, x2, y2` into coordinates normalized by the image size.

    Coordinates above 1 by at most `CLIP_TOLERANCE` are clipped silently; further out they are clipped too, and
    counted so the caller can warn. Coordinates below 0 are accepted, and clipped to 0, when the original data
    loaders accept them: normalized in float32, they must lie above `-NEGATIVE_TOLERANCE` (-1e-5, excluded);
    a box further out is an error.

    Returns:
        `tuple[np.ndarray, int]`: the normalized float32 boxes and the number of coordinates clipped beyond the
        tolerance.

    Example:
        ```python
        >>> import numpy as np
        >>> pos, clipped = normalize_boxes(np.array([[0.0, 10.0, 50.0, 120.0]]), width=100, height=100)
        >>> pos.tolist(), clipped
        ([[0.0, 0.10000000149011612, 0.5, 1.0]], 1)
        >>> normalize_boxes(np.array([[-0.003, 0.0, 50.0, 100.0]]), width=640, height=480)[0].tolist()
        [[0.0, 0.0, 0.078125, 0.2083333283662796]]
        ```
    """
    if width <= 0 or height <= 0:
        raise ValueError(
            f"image {image_id!r}: image size must be positive, got width={width} height={height}; "
            "give the size of the original image the boxes were detected on."
        )
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"image {image_id!r}: boxes must have shape [num_boxes, 4], got {list(boxes.shape)}.")
    if not np.isfinite(boxes).all():
        raise ValueError(f"image {image_id!r}: boxes contain NaN or infinite values; re-extract this image.")
    pos = boxes / np.array([width, height, width, height], dtype=np.float64)
    # Rounding the float64 quotient of float32 pixels gives the float32 quotient the original computes.
    if (-pos.astype(np.float32) >= np.float32(NEGATIVE_TOLERANCE)).any():
        raise ValueError(
            f"image {image_id!r}: boxes have negative coordinates (min {boxes.min():.3f} px, {pos.min():.2e} of "
            f"the image size; corners less than {NEGATIVE_TOLERANCE:g} below 0 are tolerated); boxes must be "
            "absolute pixels x1, y1, x2, y2 inside the image. Re-extract this image."
        )
    _check_box_order(boxes, pos, image_id)
    clipped = int((pos > 1 + CLIP_TOLERANCE).sum())
    return np.clip(pos, 0.0, 1.0).astype(np.float32), clipped


def _check_box_order(boxes: np.ndarray, pos: np.ndarray, image_id: str) -> None:
    """Refuse inverted (x2 < x1 or y2 < y1) and empty (x2 == x1 or y2 == y1) boxes: normalized, they would pass for
    real regions. `pos` (the boxes normalized) tells whether such a box also lies outside the image."""
    for axis, (low, high) in (("x", (0, 2)), ("y", (1, 3))):
        bad = np.flatnonzero(boxes[:, high] <= boxes[:, low])
        if len(bad):
            box = bad[0]
            inverted = boxes[box, high] < boxes[box, low]
            kind = f"{axis}2 < {axis}1 (inverted)" if inverted else f"{axis}2 == {axis}1 (empty)"
            if (pos[box] > 1 + CLIP_TOLERANCE).any():
                kind += " and lies outside the image (check the image size given)"
            raise ValueError(
                f"image {image_id!r}: box {box} ({', '.join(f'{v:g}' for v in boxes[box])}) has {kind}, "
                f"{len(bad)} such boxes in all; boxes must be x1, y1, x2, y2 with x1 < x2 and y1 < y2. "
                "Re-extract this image."
            )


def _check_features(feats: Any, image_id: str, feature_dim: int | None, dtype: str) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(
            f"image {image_id!r}: visual_feats must have shape [num_boxes >= 1, dim], got {list(feats.shape)}."
        )
    if feature_dim is not None and feats.shape[1] != feature_dim:
        raise ValueError(
            f"image {image_id!r}: visual_feats have dim {feats.shape[1]} but this store holds dim {feature_dim}; "
            "write features of one detector per store."
        )
    with np.errstate(over="ignore"):  # overflow to inf is reported below, with the fix
        stored = feats.astype(dtype, copy=False)
    if not np.isfinite(stored).all():
        hint = " (too large for float16: use dtype float32)" if np.isfinite(feats).all() else ""
        raise ValueError(f"image {image_id!r}: visual_feats contain NaN or infinite values{hint}; re-extract it.")
    return stored


def _list_array(flat: np.ndarray, lengths: list[int]) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _matrix_column(matrices: list[np.ndarray], arrow_type: pa.ExtensionType) -> pa.ExtensionArray:
    """Build a `datasets` Array2D column (list of lists) from [n_i, d] matrices without per-value Python work."""
    width = matrices[0].shape[1]
    values = np.concatenate([m.reshape(-1) for m in matrices])
    rows = _list_array(values, [width] * (len(values) // width))
    storage = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum([len(m) for m in matrices])]).astype(np.int32)), rows
    )
    return pa.ExtensionArray.from_storage(arrow_type, storage)


def _try_lock(handle, wait: bool = False) -> bool:
    """Take an exclusive lock on the open file `handle`; without `wait`, `False` if another process holds it."""
    if fcntl is None:
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_store(store_dir: Path, wait: bool = False):
    """Hold an exclusive lock on the store for one writer (an open file: closing it releases the lock); the system
    drops it if the process dies. With `wait`, wait for the writer holding it (a rank merging parts) to finish."""
    handle = open(store_dir / LOCK_NAME, "a+")  # noqa: SIM115 - kept open while the writer lives
    if not _try_lock(handle, wait):
        handle.close()
        raise FileExistsError(
            f"another process is writing the feature store at {store_dir}; give each writer its own store "
            "(several stores can be prepared in parallel and used one at a time) or wait for it to finish."
        )
    return handle


class FeatureStoreWriter:
    r"""
    Write region features into a feature store, one image at a time, in bounded memory.

    Boxes are normalized at write time from the image size. Completed shards are durable: a writer killed at any
    point leaves only complete shards, and reopening it with `resume=True` continues where it stopped
    ([`~FeatureStoreWriter.done_ids`] says which images are already stored). The store opens with [`FeatureStore`]
    (or [`load_features`]) once the writer is closed without error.

    Args:
        output_dir (`str` or `os.PathLike`):
            Directory of the store; created if missing.
        dtype (`str`, *optional*, defaults to `"float32"`):
            Storage type of `visual_feats`, `"float32"` or `"float16"` (half the size).
        resume (`bool`, *optional*, defaults to `False`):
            Continue an existing store instead of refusing to touch it.
        images_per_shard (`int`, *optional*, defaults to 1000):
            Images per shard file: the unit of durability and of distribution across ranks.
        batch_size (`int`, *optional*):
            Images buffered in memory before they are appended to the open shard; defaults to 64, or to
            `images_per_shard` when that is smaller, so that each shard is on disk as soon as it is full.
        extractor (`dict`, *optional*):
            What made the features ([`~lxmert_hf.hub.describe_visual_features`]), recorded in the manifest and read
            back as [`FeatureStore.extractor`]; a recipe copies it into its checkpoints' `config.visual_features`.
            `None` keeps what the store records (a new store then records nothing: its origin is unknown). A
            description whose `feature_dim` differs from the features' is not recorded (with a warning).
        hub_dataset (`str`, *optional*):
            The Hub dataset repo the features were read from, recorded in the manifest for the model cards of what
            is trained on them.

    Example:
        ```python
        >>> import numpy as np, tempfile
        >>> from lxmert_hf.data.store import FeatureStoreWriter, load_features
        >>> store_dir = tempfile.mkdtemp()
        >>> with FeatureStoreWriter(store_dir, resume=True) as writer:
        ...     writer.add({"image_id": "img0", "visual_feats": np.ones((3, 8), np.float32),
        ...                 "boxes": np.array([[0, 0, 10, 20]] * 3), "image_width": 20, "image_height": 40})
        >>> ds = load_features(store_dir).with_format("numpy")
        >>> ds[0]["visual_pos"][0].tolist(), int(ds[0]["num_boxes"])
        ([0.0, 0.0, 0.5, 0.5], 3)
        ```
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        dtype: str = "float32",
        resume: bool = False,
        images_per_shard: int = 1000,
        batch_size: int | None = None,
        extractor: Mapping[str, Any] | None = None,
        hub_dataset: str | None = None,
    ):
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"`dtype` must be one of {FEATURE_DTYPES}, got {dtype!r}.")
        batch_size = min(DEFAULT_BATCH_SIZE, images_per_shard) if batch_size is None else batch_size
        if images_per_shard < 1 or batch_size < 1:
            raise ValueError("`images_per_shard` and `batch_size` must be >= 1.")
        self.output_dir = Path(output_dir)
        self.dtype = dtype
        self.images_per_shard = images_per_shard
        self.batch_size = batch_size
        self.num_clipped_values = 0
        self.num_clipped_images = 0
        self._clipped_examples: list[str] = []
        self._pending: list[dict] = []
        self._stream: pa.ipc.RecordBatchStreamWriter | None = None
        self._sink: pa.NativeFile | None = None
        self._shard_file: contextlib.ExitStack | None = None
        self._shard_temporary: Path | None = None
        self._shard_rows = 0
        self._new_ids: set[str] = set()
        self._manifest = self._open(resume, extractor, hub_dataset)
        self.done_ids: set[str] = self._read_done_ids()

    # -- opening -------------------------------------------------------------------------------------------------
    def _open(self, resume: bool, extractor: Mapping[str, Any] | None, hub_dataset: str | None) -> dict:
        manifest_path = self.output_dir / MANIFEST_NAME
        # What a failed first write removes again: the folder if this writer creates it, else the files it adds.
        self._created_dir, self._new_store = not self.output_dir.exists(), not manifest_path.exists()
        foreign = self.output_dir.exists() and any(p.name != LOCK_NAME for p in self.output_dir.iterdir())
        if foreign and not manifest_path.exists():
            raise FileExistsError(
                f"{self.output_dir} exists, is not empty and is not a feature store; choose an empty directory."
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock_store(self.output_dir)
        try:
            manifest = self._read_or_create_manifest(manifest_path, resume)
            if extractor is not None:
                self._record_extractor(manifest, json.loads(json.dumps(extractor)))  # as the manifest will hold it
            if hub_dataset is not None:
                manifest[HUB_DATASET_KEY] = str(hub_dataset)
            manifest["complete"] = False
            self._remove_unlisted_files(manifest)
            write_json_atomic(manifest_path, manifest)
        except BaseException:
            self._lock.close()
            raise
        return manifest

    def _read_or_create_manifest(self, manifest_path: Path, resume: bool) -> dict:
        if not manifest_path.exists():
            return new_manifest(self.dtype)
        if not resume:
            raise FileExistsError(
                f"a feature store already exists at {self.output_dir}; pass resume=True (the prepare command "
                "always does) to continue or complete it, or choose another output directory."
            )
        manifest = read_manifest(self.output_dir)
        if manifest["dtype"] != self.dtype:
            raise ValueError(
                f"the store at {self.output_dir} holds {manifest['dtype']} features, not {self.dtype}; "
                f"resume it with dtype={manifest['dtype']!r} or write a new store."
            )
        return manifest

    def _record_extractor(self, manifest: dict, extractor: dict) -> None:
        if not self._extractor_fits(manifest["feature_dim"], extractor):
            return
        recorded = manifest.get(EXTRACTOR_KEY)
        if recorded is not None and recorded != extractor:
            raise ValueError(
                f"the feature store at {self.output_dir} holds features made by {recorded}, not by {extractor} "
                f"({_differences(recorded, extractor)}); write the features of each extractor into a store of their "
                "own (another output directory)."
            )
        if recorded is None and manifest["num_images"]:
            logger.warning(
                f"the {manifest['num_images']} images already in {self.output_dir} record no extractor; the store "
                f"now records {extractor} for all of them."
            )
        manifest[EXTRACTOR_KEY] = extractor

    def _extractor_fits(self, feature_dim: int | None, extractor: dict | None) -> bool:
        """Whether `extractor` can have made features of `feature_dim` (unknown: yes); warns when not."""
        described = (extractor or {}).get("feature_dim")
        if feature_dim is None or described is None or described == feature_dim:
            return True
        logger.warning(
            f"{self.output_dir}: the features are {feature_dim}-dimensional, not the {described} of the extractor "
            f"given ({extractor}); the store records no extractor."
        )
        return False

    def _remove_unlisted_files(self, manifest: dict) -> None:
        # Leftovers of a killed writer: temporary files, and shards renamed before the manifest listed them. The
        # files of a complete store are rewritten when the writer completes; until then the store opens nowhere.
        listed = {shard[key] for shard in manifest["shards"] for key in ("file", "index")} | {MANIFEST_NAME}
        for name in (INDEX_NAME, LEGACY_INDEX_NAME, DATASET_STATE_NAME, DATASET_INFO_NAME):
            (self.output_dir / name).unlink(missing_ok=True)
        for path in self.output_dir.iterdir():
            if path.name not in listed and (path.name.endswith(".tmp") or path.name.startswith("shard-")):
                path.unlink()

    def _read_done_ids(self) -> set[str]:
        return read_store_image_ids(self.output_dir, self._manifest)

    # -- writing -------------------------------------------------------------------------------------------------
    def add(self, example: Mapping[str, Any]) -> None:
        """
        Add one image. `example` holds `image_id` (str), `visual_feats` ([num_boxes, dim]), `boxes`
        ([num_boxes, 4] absolute pixels x1, y1, x2, y2), `image_width`, `image_height` and optionally
        `object_ids`, `object_scores`, `attribute_ids`, `attribute_scores` (one value per box).

        Raises `ValueError` naming the image when it is malformed or already stored.
        """
        row = self._validate(example)
        self._pending.append(row)
        self._new_ids.add(row["image_id"])
        if len(self._pending) >= self.batch_size:
            self._flush()

    def _validate(self, example: Mapping[str, Any]) -> dict:
        missing = [
            key for key in ("image_id", "visual_feats", "boxes", "image_width", "image_height") if key not in example
        ]
        if missing:
            raise ValueError(f"an image record lacks {missing}; give every image these keys.")
        image_id = str(example["image_id"])
        if image_id in self.done_ids or image_id in self._new_ids:
            raise ValueError(f"image {image_id!r} is already in the store (duplicate image id); give each image once.")
        feats = _check_features(example["visual_feats"], image_id, self._manifest["feature_dim"], self.dtype)
        if self._manifest["feature_dim"] is None:
            self._manifest["feature_dim"] = int(feats.shape[1])
            if not self._extractor_fits(self._manifest["feature_dim"], self._manifest.get(EXTRACTOR_KEY)):
                self._manifest[EXTRACTOR_KEY] = None
        width, height = int(example["image_width"]), int(example["image_height"])
        boxes = np.asarray(example["boxes"])
        if boxes.shape[:1] != feats.shape[:1]:
            raise ValueError(
                f"image {image_id!r}: {boxes.shape[0] if boxes.ndim else 0} boxes for {feats.shape[0]} feature rows; "
                "give one box per region feature."
            )
        pos, clipped = normalize_boxes(boxes, width, height, image_id)
        if clipped:
            self.num_clipped_values += clipped
            self.num_clipped_images += 1
            if len(self._clipped_examples) < 5:
                self._clipped_examples.append(image_id)
        row = {"image_id": image_id, "visual_feats": feats, "visual_pos": pos, "image_width": width}
        row.update(image_height=height, num_boxes=len(feats))
        optional = self._check_optional(example, image_id, len(feats))
        row.update(optional)
        return row

    def _check_optional(self, example: Mapping[str, Any], image_id: str, num_boxes: int) -> dict:
        present = {name: example[name] for name in OPTIONAL_COLUMNS if example.get(name) is not None}
        if self._manifest["optional_columns"] is None:
            self._manifest["optional_columns"] = sorted(present)
        elif sorted(present) != self._manifest["optional_columns"]:
            raise ValueError(
                f"image {image_id!r} has detector outputs {sorted(present)} but the store holds "
                f"{self._manifest['optional_columns']}; give every image the same fields."
            )
        checked = {}
        for name, values in present.items():
            values = np.asarray(values, dtype=OPTIONAL_COLUMNS[name]).reshape(-1)
            if len(values) != num_boxes:
                raise ValueError(f"image {image_id!r}: {name} has {len(values)} values for {num_boxes} boxes.")
            checked[name] = values
        return checked

    def _flush(self) -> None:
        while self._pending:
            if self._shard_rows >= self.images_per_shard:
                self._finish_shard()
            room = self.images_per_shard - self._shard_rows
            rows, self._pending = self._pending[:room], self._pending[room:]
            self._write_rows(rows)
            if self._shard_rows >= self.images_per_shard:
                self._finish_shard()

    def _write_rows(self, rows: list[dict]) -> None:
        features = store_features(self._manifest["feature_dim"], self.dtype, self._manifest["optional_columns"])
        schema = features.arrow_schema
        if self._stream is None:
            self._open_shard(schema)
        arrays = []
        for field in schema:
            values = [row[field.name] for row in rows]
            if field.name in ("visual_feats", "visual_pos"):
                arrays.append(_matrix_column(values, field.type))
            elif field.name in OPTIONAL_COLUMNS:
                arrays.append(_list_array(np.concatenate(values), [len(v) for v in values]))
            else:
                arrays.append(pa.array(values, type=field.type))
        self._stream.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
        self._shard_rows += len(rows)

    def _shard_path(self) -> Path:
        return self.output_dir / f"shard-{len(self._manifest['shards']):05d}.arrow"

    def _open_shard(self, schema: pa.Schema) -> None:
        # The shard is written under a temporary name for as long as it is open, across many `add` calls.
        self._shard_file = contextlib.ExitStack()
        self._shard_temporary = self._shard_file.enter_context(atomic_path(self._shard_path()))
        self._sink = pa.OSFile(str(self._shard_temporary), "wb")
        self._stream = pa.ipc.new_stream(self._sink, schema)

    def _finish_shard(self) -> None:
        self._stream.close()
        self._sink.close()
        self._stream = self._sink = None
        final = self._shard_path()
        index = final.with_name(shard_index_name(final.name))
        write_table(shard_index(self._shard_temporary, len(self._manifest["shards"])), index)
        self._shard_file.close()  # flushed to disk, renamed to `final`, the rename flushed
        self._shard_file = self._shard_temporary = None
        self._manifest["shards"].append({"file": final.name, "index": index.name, "num_images": self._shard_rows})
        self._manifest["num_images"] += self._shard_rows
        write_json_atomic(self.output_dir / MANIFEST_NAME, self._manifest)
        self._shard_rows = 0

    def close(self, complete: bool = True) -> None:
        """Write what is buffered and, if `complete`, mark the store complete (loadable)."""
        try:
            self._flush()
            if self._stream is not None:
                self._finish_shard()
            self._warn_clipped()
            if complete:
                if not self._manifest["shards"]:
                    raise ValueError(f"no images were written to {self.output_dir}; the input held no usable image.")
                complete_store(self.output_dir, self._manifest)
            self.done_ids |= self._new_ids
            self._new_ids = set()
        finally:
            self._discard_open_shard()
            self._lock.close()

    def _discard_open_shard(self) -> None:
        """Remove the temporary file of a shard that could not be finished (a full disk): its images were never
        listed in the manifest, so a resumed writer adds them again."""
        if self._sink is not None:
            self._sink.close()
        temporary = self._shard_temporary
        self._stream = self._sink = self._shard_file = self._shard_temporary = None
        if temporary is not None:
            temporary.unlink(missing_ok=True)

    def _warn_clipped(self) -> None:
        if self.num_clipped_values:
            logger.warning(
                f"clipped {self.num_clipped_values} box coordinates in {self.num_clipped_images} images that lay "
                f"outside the image by more than {CLIP_TOLERANCE} (e.g. {self._clipped_examples}); check that "
                "image_width/image_height are the size of the image the boxes were detected on."
            )

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
            return
        # On error keep the completed images durable but leave the store marked incomplete, and let the original
        # error surface rather than one from the cleanup.
        try:
            self.close(complete=False)
        except Exception as error:
            logger.warning(f"could not write the buffered images of {self.output_dir} after an error: {error}")
        self._remove_if_nothing_kept()

    def _remove_if_nothing_kept(self) -> None:
        """After a failed first write that kept no image, leave the disk as it was: remove the folder this writer
        created, or, in a folder that existed (the user's), the files it added."""
        if not self._new_store or self._manifest["num_images"]:
            return
        if self._created_dir:
            shutil.rmtree(self.output_dir, ignore_errors=True)
            return
        for name in (MANIFEST_NAME, LOCK_NAME):
            (self.output_dir / name).unlink(missing_ok=True)


def _differences(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """Where two extractor descriptions differ, e.g. `regions: not recorded in the store, 'given' now`."""
    keys = sorted(key for key in {*recorded, *given} if recorded.get(key) != given.get(key))
    parts = []
    for key in keys:
        before = repr(recorded[key]) if key in recorded else "not recorded"
        after = repr(given[key]) if key in given else "not given"
        parts.append(f"{key}: {before} in the store, {after} now")
    return "; ".join(parts)
