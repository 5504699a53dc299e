"""Boxes the user already has (ground-truth regions, another detector's boxes): checking them and reading box files.

Boxes are pixels of the ORIGINAL image, `x1, y1, x2, y2` (corners, not x, y, width, height), one `[n, 4]` array per
image, any `n >= 1`. [`RegionFeatureExtractor`] describes exactly these regions, in this order, instead of detecting
its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lxmert_hf.detection.preprocessing import PreparedImage

logger = logging.getLogger(__name__)

# How far (in original pixels) a box may reach beyond the image before it is an error; boxes within it are clipped.
# Annotations often end at `width` or `width - 1` depending on their convention, and rounding adds a fraction.
OUTSIDE_TOLERANCE = 1.0
# What a feature store made from given boxes records as `regions` beside its detector.
GIVEN_REGIONS = "given"
BOX_FILE_FORMATS = ".json ({image_id: [[x1, y1, x2, y2], ...]}), .jsonl, .parquet, .arrow or a `datasets` folder"


def check_boxes(boxes: Any, name: str) -> np.ndarray:
    """
    Return `boxes` (list, numpy array or tensor) as a float32 `[n, 4]` array, or raise a `ValueError` naming the
    image (`name`): not `[n, 4]` numbers, no box, a NaN or infinite coordinate, or `x2 <= x1` / `y2 <= y1`.

    Example:
        ```python
        >>> from lxmert_hf.detection.given_boxes import check_boxes
        >>> check_boxes([[0, 0, 10, 20]], "image 'cat'").tolist()
        [[0.0, 0.0, 10.0, 20.0]]
        >>> check_boxes([[0, 0, 10, 20, 1]], "image 'cat'")
        Traceback (most recent call last):
        ...
        ValueError: image 'cat': boxes must be laid out [n, 4] (x1, y1, x2, y2 in pixels, ...), got shape [1, 5].
        ```
    """
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}: boxes must be numbers laid out [n, 4] (x1, y1, x2, y2 in pixels, one row a box), "
            f"got {_short(boxes)}."
        ) from None
    if array.size == 0:
        raise ValueError(f"{name}: no boxes; give at least one [x1, y1, x2, y2] box, or leave the image out.")
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(
            f"{name}: boxes must be laid out [n, 4] (x1, y1, x2, y2 in pixels, one row a box), "
            f"got shape {list(array.shape)}."
        )
    array = array.astype(np.float32)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: box {index} is {_format(array[index])}: coordinates must be finite numbers.")
    bad = (array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1])
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: box {index} is {_format(array[index])}: it needs x2 > x1 and y2 > y1 (boxes are corners "
            "x1, y1, x2, y2, not x, y, width, height)."
        )
    return array


def fit_to_image(
    boxes: np.ndarray, image_size: tuple[int, int], name: str, tolerance: float = OUTSIDE_TOLERANCE
) -> torch.Tensor:
    """
    Check checked `boxes` ([`check_boxes`]) against the original image `(height, width)` and clip them to it: a box
    reaching more than `tolerance` pixels beyond an edge is a `ValueError` naming the image.

    Example:
        ```python
        >>> from lxmert_hf.detection.given_boxes import check_boxes, fit_to_image
        >>> fit_to_image(check_boxes([[0, 0, 40.5, 30]], "image 'cat'"), (30, 40), "image 'cat'").tolist()
        [[0.0, 0.0, 40.0, 30.0]]
        >>> fit_to_image(check_boxes([[0, 0, 80, 30]], "image 'cat'"), (30, 40), "image 'cat'")
        Traceback (most recent call last):
        ...
        ValueError: image 'cat': box 0 is [0, 0, 80, 30]: it reaches beyond the 40x30 image (width x height) ...
        ```
    """
    height, width = image_size
    limits = np.array([width, height, width, height], dtype=np.float32)
    outside = ((boxes < -tolerance) | (boxes > limits + tolerance)).any(axis=1)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{name}: box {index} is {_format(boxes[index])}: it reaches beyond the {width}x{height} image "
            f"(width x height) by more than {tolerance:g} pixel; boxes are pixels x1, y1, x2, y2 of the original "
            "image (not normalized, not of a resized copy)."
        )
    clipped = np.minimum(np.maximum(boxes, 0), limits)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if empty.any():
        index = int(np.flatnonzero(empty)[0])
        raise ValueError(
            f"{name}: box {index} is {_format(boxes[index])}: nothing of it is inside the {width}x{height} image."
        )
    return torch.from_numpy(clipped)


def with_boxes(item: PreparedImage, boxes: np.ndarray, name: str) -> PreparedImage:
    """
    A copy of `item` that carries `boxes` (checked, fitted to the image) to describe instead of detecting.

    Example:
        ```python
        >>> import numpy as np
        >>> from lxmert_hf import RegionFeatureExtractorConfig
        >>> from lxmert_hf.detection.given_boxes import check_boxes, resized_frame, with_boxes
        >>> from lxmert_hf.detection.preprocessing import prepare_image
        >>> config = RegionFeatureExtractorConfig.from_preset("lxmert", resize_backend="torch")
        >>> prepared = prepare_image(np.zeros((30, 40, 3), np.uint8), config)
        >>> item = with_boxes(prepared, check_boxes([[0, 0, 4, 3]], "image x"), "image x")
        >>> item.boxes.tolist(), resized_frame(item).tolist()  # the image is resized 20 times
        ([[0.0, 0.0, 4.0, 3.0]], [[0.0, 0.0, 80.0, 60.0]])
        ```
    """
    return dataclasses.replace(item, boxes=fit_to_image(boxes, item.image_size, name))


def check_box_lists(boxes: Any, count: int, names: Sequence[str]) -> list[np.ndarray]:
    """
    Check one box list per image (`count` images, named by `names`) before any image is loaded.

    Example:
        ```python
        >>> from lxmert_hf.detection.given_boxes import check_box_lists
        >>> [boxes.shape for boxes in check_box_lists([[[0, 0, 1, 1]], [[0, 0, 2, 2]] * 3], 2, ["a", "b"])]
        [(1, 4), (3, 4)]
        >>> check_box_lists([[[0, 0, 1, 1]]], 2, ["a", "b"])
        Traceback (most recent call last):
        ...
        ValueError: `boxes` holds 1 box lists for 2 images; give exactly one [n, 4] array per image, ...
        ```
    """
    if isinstance(boxes, str | bytes | Mapping) or not isinstance(boxes, Sequence | np.ndarray | torch.Tensor):
        raise ValueError(
            f"`boxes` must be a list with one [n, 4] array of boxes per image ({count} images), "
            f"got {type(boxes).__name__}."
        )
    if len(boxes) != count:
        raise ValueError(
            f"`boxes` holds {len(boxes)} box lists for {count} images; give exactly one [n, 4] array per image, "
            "in the order of the images."
        )
    return [check_boxes(item, name) for item, name in zip(boxes, names, strict=True)]


def resized_frame(item: PreparedImage) -> torch.Tensor:
    """`item.boxes` in pixels of the resized image the detector sees (the inverse of how its boxes are mapped back)."""
    scale_y, scale_x = item.scale
    return item.boxes * torch.tensor([scale_x, scale_y] * 2, dtype=torch.float32)


def match_boxes(
    images: Sequence[tuple[str, Any]], boxes: Mapping[Any, Any], source: str = "`boxes`"
) -> dict[str, np.ndarray]:
    """
    Pick the checked boxes of each of `images` (`(image_id, path)` pairs) from `boxes` (image id -> `[n, 4]`; keys
    are compared as strings). An image without boxes is a `ValueError` naming the first such ids and `source`;
    boxes of ids that are not among the images are ignored with a warning that counts them.

    Example:
        ```python
        >>> from lxmert_hf.detection.given_boxes import match_boxes
        >>> sorted(match_boxes([("cat", "cat.jpg")], {"cat": [[0, 0, 10, 10]]}))
        ['cat']
        >>> match_boxes([("cat", "cat.jpg"), ("dog", "dog.jpg")], {"cat": [[0, 0, 10, 10]]})
        Traceback (most recent call last):
        ...
        ValueError: `boxes`: no boxes for 1 of the 2 images: 'dog'; ...
        ```
    """
    if not isinstance(boxes, Mapping):
        raise ValueError(f"{source}: expected a mapping image_id -> [n, 4] boxes, got {type(boxes).__name__}.")
    by_id = {str(key): value for key, value in boxes.items()}
    missing = [image_id for image_id, _ in images if image_id not in by_id]
    if missing:
        shown = ", ".join(repr(image_id) for image_id in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{source}: no boxes for {len(missing)} of the {len(images)} images: {shown}; give boxes for every "
            "image under its image id (for a folder: the path inside it without the extension), or leave those "
            "images out."
        )
    wanted = {image_id for image_id, _ in images}
    unused = sum(1 for image_id in by_id if image_id not in wanted)
    if unused:
        logger.warning(f"{source}: the boxes of {unused} image ids not among the {len(images)} images are not used.")
    return {image_id: check_boxes(by_id[image_id], f"image {image_id!r} ({source})") for image_id, _ in images}


def read_boxes(path: str | os.PathLike, column: str = "boxes") -> dict[str, np.ndarray]:
    """
    Read a box file into `{image_id: float32 [n, 4] array}`, every box checked ([`check_boxes`]).

    Formats, by extension: `.json` (`{"image_id": [[x1, y1, x2, y2], ...], ...}`), `.jsonl` (one
    `{"image_id": ..., "boxes": [...]}` a line), `.parquet`, `.arrow` (a `datasets` Arrow file) or a folder written
    by `datasets.Dataset.save_to_disk`; tables need an `image_id` column and a `column` of box lists. Ids are read
    as strings. A malformed file is a `ValueError` naming the file and the line or record.

    Example:
        ```python
        >>> import json, tempfile
        >>> from lxmert_hf.detection.given_boxes import read_boxes
        >>> path = tempfile.mkdtemp() + "/boxes.jsonl"
        >>> with open(path, "w") as file:
        ...     print(json.dumps({"image_id": 42, "boxes": [[1, 2, 30, 40], [0, 0, 5, 5]]}), file=file)
        >>> {image_id: boxes.shape for image_id, boxes in read_boxes(path).items()}
        {'42': (2, 4)}
        ```
    """
    path = Path(path)
    if path.is_dir():
        return _read_table(_saved_dataset(path), column, path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file {path}: no such file or folder.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".jsonl":
        return _read_jsonl(path, column)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return _read_table(_guarded(lambda: pq.read_table(path), path, "Parquet"), column, path)
    if suffix == ".arrow":
        import datasets

        return _read_table(
            _guarded(lambda: datasets.Dataset.from_file(str(path)).data.table, path, "Arrow"), column, path
        )
    raise ValueError(f"boxes file {path}: unknown format {suffix or '(no extension)'}; use {BOX_FILE_FORMATS}.")


def _read_json(path: Path) -> dict[str, np.ndarray]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"boxes file {path}: not JSON ({error}).") from None
    if not isinstance(content, dict):
        raise ValueError(
            f"boxes file {path}: expected an object {{image_id: [[x1, y1, x2, y2], ...]}}, got a "
            f"{type(content).__name__} (one record a line is .jsonl)."
        )
    return {str(key): check_boxes(value, f"boxes file {path}: image {key!r}") for key, value in content.items()}


def _read_jsonl(path: Path, column: str) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    lines: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"boxes file {path}: not UTF-8 text.") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"boxes file {path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error}).") from None
        if not isinstance(record, dict) or "image_id" not in record or column not in record:
            raise ValueError(f'{where}: expected {{"image_id": ..., "{column}": [[x1, y1, x2, y2], ...]}}.')
        image_id = str(record["image_id"])
        if image_id in lines:
            raise ValueError(f"{where}: image {image_id!r} already has boxes (line {lines[image_id]}).")
        lines[image_id] = number
        found[image_id] = check_boxes(record[column], f"{where}: image {image_id!r}")
    return found


def _saved_dataset(path: Path):
    import datasets

    loaded = _guarded(lambda: datasets.load_from_disk(str(path)), path, "`datasets` (save_to_disk)")
    if isinstance(loaded, datasets.DatasetDict):
        raise ValueError(
            f"boxes file {path}: a dataset with splits {sorted(loaded)}; pass the folder of one split "
            f"(e.g. {path / sorted(loaded)[0]})."
        )
    return loaded.with_format("arrow")[:]


def _guarded(read, path: Path, kind: str):
    try:
        return read()
    except (OSError, ValueError) as error:
        raise ValueError(f"boxes file {path}: cannot read it as {kind} ({error}).") from None


def _read_table(table, column: str, path: Path) -> dict[str, np.ndarray]:
    """Boxes of a pyarrow table with `image_id` and `column` (a list of 4-number lists a row)."""
    import pyarrow.compute as pc

    missing = [name for name in ("image_id", column) if name not in table.column_names]
    if missing:
        raise ValueError(
            f"boxes file {path}: no column {' or '.join(map(repr, missing))} (columns: {table.column_names}); "
            "it needs `image_id` and the boxes column (choose it with --boxes-column / `column=`)."
        )
    ids = [str(value) for value in table.column("image_id").to_pylist()]
    lists = table.column(column).combine_chunks()
    if not (_is_list(lists.type) and _is_list(lists.type.value_type)):
        raise ValueError(
            f"boxes file {path}: column {column!r} is {lists.type}; it must hold a list of [x1, y1, x2, y2] boxes "
            "a row."
        )
    counts = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    boxes = lists.flatten()
    widths = pc.fill_null(pc.list_value_length(boxes), 0).to_numpy(zero_copy_only=False)
    values = boxes.flatten().to_numpy(zero_copy_only=False).astype(np.float64) if len(boxes) else np.zeros(0)
    if len(values) != 4 * len(boxes) or (widths != 4).any() or lists.null_count or boxes.null_count:
        return _read_rows(ids, table.column(column).to_pylist(), path)  # the slow path finds and names the record
    rows = np.split(values.reshape(-1, 4), np.cumsum(counts)[:-1]) if len(ids) else []
    found: dict[str, np.ndarray] = {}
    for number, (image_id, row) in enumerate(zip(ids, rows, strict=True)):
        if image_id in found:
            raise ValueError(f"boxes file {path}, record {number}: image {image_id!r} already has boxes.")
        found[image_id] = check_boxes(row, f"boxes file {path}, record {number}: image {image_id!r}")
    return found


def _read_rows(ids: list[str], rows: list, path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for number, (image_id, row) in enumerate(zip(ids, rows, strict=True)):
        where = f"boxes file {path}, record {number}: image {image_id!r}"
        if row is None or any(box is None or None in box for box in row):
            raise ValueError(f"{where}: missing boxes or coordinates (null).")
        if image_id in found:
            raise ValueError(f"boxes file {path}, record {number}: image {image_id!r} already has boxes.")
        found[image_id] = check_boxes(row, where)
    return found


def _is_list(arrow_type) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)
    )


def _format(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{value:g}" for value in box.tolist()) + "]"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
