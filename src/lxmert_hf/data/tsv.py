"""The region-feature TSV of LXMERT and bottom-up attention: reading it one line at a time, and writing it.

Each line is one image with ten tab-separated fields and no header: `img_id, img_h, img_w, objects_id, objects_conf,
attrs_id, attrs_conf, num_boxes, boxes, features`. The array fields are base64 of the raw bytes of numpy arrays:
int64 object and attribute ids, float32 confidences, float32 boxes (num_boxes x 4, absolute pixels x1, y1, x2, y2 in
the original image) and float32 features (num_boxes x dim, 2048 for the released files).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lxmert_hf.files import atomic_open

TSV_FIELDS = (
    "img_id",
    "img_h",
    "img_w",
    "objects_id",
    "objects_conf",
    "attrs_id",
    "attrs_conf",
    "num_boxes",
    "boxes",
    "features",
)
# Array field -> (dtype, column of the store it becomes)
_ARRAY_FIELDS = {
    "objects_id": (np.int64, "object_ids"),
    "objects_conf": (np.float32, "object_scores"),
    "attrs_id": (np.int64, "attribute_ids"),
    "attrs_conf": (np.float32, "attribute_scores"),
}
# The longest line `iter_tsv` reads (newline included), so that a file that is no feature TSV (a 2 GB file without
# a newline) is an error after 64 MB read, not after the whole file is in memory. A real record of 36 boxes x 2048
# float32 features is ~400 KB of base64: this allows records of ~5,000 such boxes. Assign a larger value here (or
# pass `max_line_bytes`) for longer records.
MAX_LINE_BYTES = 64 * 2**20
_FIX = "re-extract or re-download the file, or pass --skip-bad (skip_bad=True) to skip such lines"


class BadRecordError(ValueError):
    """A record of a source file that cannot be used; the message names the file, the record and the fix."""


def _decode(field: str, value: bytes, dtype: type, location: str) -> np.ndarray:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRecordError(f"{location}: field `{field}` is not valid base64 ({error}); {_FIX}.") from None
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise BadRecordError(
            f"{location}: field `{field}` holds {len(raw)} bytes, not a whole number of {np.dtype(dtype).name} "
            f"values; {_FIX}."
        )
    return np.frombuffer(raw, dtype=dtype)


def _parse_int(field: str, value: bytes, location: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadRecordError(
            f"{location}: field `{field}` should be an integer, got {value[:20]!r}; {_FIX}."
        ) from None


def parse_tsv_line(line: bytes, location: str = "<line>") -> dict[str, Any]:
    """
    Decode one line of a feature TSV into a record for [`~lxmert_hf.data.FeatureStoreWriter.add`].

    Raises [`BadRecordError`] (a `ValueError`) naming `location` and the fix when the line is malformed.

    Example:
        ```python
        >>> import numpy as np
        >>> from lxmert_hf.data.tsv import format_tsv_line, parse_tsv_line
        >>> line = format_tsv_line({"image_id": "img0", "image_width": 64, "image_height": 48,
        ...                         "boxes": np.zeros((2, 4)), "visual_feats": np.ones((2, 8))})
        >>> record = parse_tsv_line(line)
        >>> record["image_id"], record["visual_feats"].shape, record["image_width"]
        ('img0', (2, 8), 64)
        ```
    """
    fields = line.rstrip(b"\r\n").split(b"\t")
    if len(fields) != len(TSV_FIELDS):
        raise BadRecordError(
            f"{location}: expected {len(TSV_FIELDS)} tab-separated fields ({', '.join(TSV_FIELDS)}), found "
            f"{len(fields)}; is this an LXMERT feature TSV? Otherwise {_FIX}."
        )
    values = dict(zip(TSV_FIELDS, fields, strict=True))
    try:
        image_id = values["img_id"].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRecordError(
            f"{location}: the image id {values['img_id'][:40]!r} is not valid UTF-8; {_FIX}."
        ) from None
    location = f"{location} (image {image_id!r})"
    num_boxes = _parse_int("num_boxes", values["num_boxes"], location)
    if num_boxes <= 0:
        raise BadRecordError(
            f"{location}: num_boxes is {num_boxes}: the image has no regions to answer about; {_FIX}."
        )
    record: dict[str, Any] = {
        "image_id": image_id,
        "image_height": _parse_int("img_h", values["img_h"], location),
        "image_width": _parse_int("img_w", values["img_w"], location),
    }
    for field, (dtype, column) in _ARRAY_FIELDS.items():
        array = _decode(field, values[field], dtype, location)
        if len(array) != num_boxes:
            raise BadRecordError(f"{location}: field `{field}` has {len(array)} values for {num_boxes} boxes; {_FIX}.")
        record[column] = array
    boxes = _decode("boxes", values["boxes"], np.float32, location)
    if len(boxes) != num_boxes * 4:
        raise BadRecordError(
            f"{location}: field `boxes` has {len(boxes)} values, expected num_boxes x 4 = {num_boxes * 4}; {_FIX}."
        )
    features = _decode("features", values["features"], np.float32, location)
    if len(features) % num_boxes:
        raise BadRecordError(
            f"{location}: field `features` has {len(features) * 4} bytes, not num_boxes ({num_boxes}) x dim float32 "
            f"values; {_FIX}."
        )
    record["boxes"] = boxes.reshape(num_boxes, 4)
    record["visual_feats"] = features.reshape(num_boxes, -1)
    return record


def iter_tsv(
    path: str | os.PathLike, skip_ids: set[str] | None = None, max_line_bytes: int | None = None
) -> Iterator[tuple[str, dict | Exception]]:
    """
    Yield `(location, record)` for each line of the feature TSV at `path`, reading one line at a time.

    A malformed line yields `(location, BadRecordError)` instead of stopping, so the caller decides whether to
    raise or to skip. Lines whose image id is in `skip_ids` are not decoded (resuming is cheap). Memory stays
    bounded: a line longer than `max_line_bytes` (default [`MAX_LINE_BYTES`], 64 MB) raises a `ValueError` naming
    the file and the line once that much of it is read, whatever `skip_bad` a caller applies.

    Example:
        ```python
        >>> import numpy as np, os, tempfile
        >>> from lxmert_hf.data.tsv import iter_tsv, write_tsv
        >>> path = os.path.join(tempfile.mkdtemp(), "features.tsv")
        >>> write_tsv(path, [{"image_id": "a", "image_width": 4, "image_height": 4, "boxes": np.zeros((1, 4)),
        ...                   "visual_feats": np.zeros((1, 8))}])
        1
        >>> [(location.rsplit("/", 1)[-1], record["image_id"]) for location, record in iter_tsv(path)]
        [('features.tsv:1', 'a')]
        >>> next(iter_tsv(path, max_line_bytes=100))
        Traceback (most recent call last):
        ...
        ValueError: .../features.tsv: line 1 is longer than 100 bytes: not a feature TSV ...
        ```
    """
    path = Path(path)
    limit = MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes
    if limit < 1:
        raise ValueError(f"`max_line_bytes` must be >= 1, got {max_line_bytes}.")
    empty = True
    with open(path, "rb") as handle:
        for number, line in enumerate(iter(lambda: handle.readline(limit + 1), b""), start=1):
            if len(line) > limit:
                raise ValueError(
                    f"{path}: line {number} is longer than {_size(limit)}: not a feature TSV (a record of 36 boxes x "
                    "2048 features is about 400 KB). Check the file; for longer records raise "
                    "lxmert_hf.data.tsv.MAX_LINE_BYTES."
                )
            if not line.strip():
                continue
            empty = False
            location = f"{path}:{number}"
            if skip_ids and line.split(b"\t", 1)[0].decode("utf-8", errors="replace") in skip_ids:
                continue
            try:
                yield location, parse_tsv_line(line, location)
            except BadRecordError as error:
                yield location, error
    if empty:
        raise ValueError(f"{path} is empty; pass a feature TSV with one image per line.")


def _size(count: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} bytes"


def _b64(array: Any, dtype: type) -> bytes:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes())


def format_tsv_line(record: Mapping[str, Any]) -> bytes:
    """
    Encode one image as a line of the feature TSV. `record` holds `image_id`, `image_width`, `image_height`,
    `boxes` ([num_boxes, 4] absolute pixels), `visual_feats` ([num_boxes, dim]) and optionally `object_ids`,
    `object_scores`, `attribute_ids`, `attribute_scores` (zeros when absent, as the format needs them).
    """
    feats = np.asarray(record["visual_feats"])
    num_boxes = len(feats)
    if feats.ndim != 2 or np.shape(record["boxes"]) != (num_boxes, 4):
        raise ValueError(
            f"image {record['image_id']!r}: need visual_feats [num_boxes, dim] and boxes [num_boxes, 4], got "
            f"{list(feats.shape)} and {list(np.shape(record['boxes']))}."
        )
    fields = [str(record["image_id"]).encode(), b"%d" % record["image_height"], b"%d" % record["image_width"]]
    for dtype, column in _ARRAY_FIELDS.values():
        fields.append(_b64(record.get(column, np.zeros(num_boxes)), dtype))
    fields += [b"%d" % num_boxes, _b64(record["boxes"], np.float32), _b64(feats, np.float32)]
    return b"\t".join(fields) + b"\n"


def write_tsv(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """
    Write images as a feature TSV in the original format (see [`format_tsv_line`]), atomically.

    Returns:
        `int`: the number of images written.

    Example:
        ```python
        >>> import numpy as np, os, tempfile
        >>> from lxmert_hf.data import write_tsv
        >>> path = os.path.join(tempfile.mkdtemp(), "features.tsv")
        >>> write_tsv(path, [{"image_id": "img0", "image_width": 64, "image_height": 48,
        ...                   "boxes": np.array([[0, 0, 32, 24]]), "visual_feats": np.ones((1, 2048))}])
        1
        ```
    """
    count = 0
    with atomic_open(path, "wb") as handle:
        for record in records:
            handle.write(format_tsv_line(record))
            count += 1
    return count
