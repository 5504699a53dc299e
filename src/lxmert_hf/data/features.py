"""Preparing a feature store from region-feature files: LXMERT TSVs, the Arrow files of the transformers demo, and
the parquet features of another store (exported, or pushed to the Hub)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from lxmert_hf.data.store import FeatureStoreWriter
from lxmert_hf.data.store.format import (
    EXTRACTOR_KEY,
    MANIFEST_NAME,
    OPTIONAL_COLUMNS,
    PROVENANCE_NAME,
    read_manifest,
)
from lxmert_hf.data.store.parquet import (
    hub_provenance,
    load_hub_features,
    load_parquet_folder,
    read_provenance,
    row_group_scan,
)
from lxmert_hf.data.tsv import BadRecordError, iter_tsv
from lxmert_hf.locations import locate

logger = logging.getLogger(__name__)

# Columns of the Arrow file written by the LXMERT demo extractor of transformers (`extracting_data.py`).
DEMO_ARROW_COLUMNS = {"img_id", "boxes", "roi_features", "sizes", "preds_per_image"}
DEMO_EXTRACTOR = "the transformers LXMERT demo extractor (examples/research_projects/lxmert/extracting_data.py)"
_ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"


@dataclasses.dataclass
class PrepareReport:
    """What a preparation did: images written, images already in the store, bad records skipped."""

    written: int = 0
    already_done: int = 0
    skipped_bad: int = 0
    bad_examples: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.written} images written, {self.already_done} already in the store"
        if self.skipped_bad:
            text += f", {self.skipped_bad} bad records skipped (e.g. {'; '.join(self.bad_examples)})"
        return text


def _is_demo_arrow(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == _ARROW_STREAM_MAGIC


def iter_demo_arrow(path: str | os.PathLike, skip_ids: set[str] | None = None) -> Iterator[tuple[str, dict]]:
    """
    Yield `(location, record)` for each image of an Arrow file written by the transformers LXMERT demo extractor.

    The demo stores boxes already normalized, padded to a fixed number of detections (`preds_per_image` are real),
    and `sizes` = (height, width) of the resized detector input rather than of the original image. Boxes are
    therefore scaled by `sizes` here so that the store normalizes them back exactly, and `image_width` /
    `image_height` record the detector input size.
    """
    path = Path(path)
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        missing = DEMO_ARROW_COLUMNS - set(reader.schema.names)
        if missing:
            raise ValueError(
                f"{path}: an Arrow file without the demo extractor's columns {sorted(missing)}; pass LXMERT TSVs or "
                "Arrow files written by transformers' examples/research_projects/lxmert/extracting_data.py."
            )
        row = 0
        for batch in reader:
            for record in batch.to_pylist():
                row += 1
                image_id = str(record["img_id"])
                if skip_ids and image_id in skip_ids:
                    continue
                yield f"{path}:record {row}", _demo_record(image_id, record)


def _demo_record(image_id: str, record: dict[str, Any]) -> dict:
    count = int(record["preds_per_image"])
    height, width = (int(round(v)) for v in record["sizes"])
    boxes = np.asarray(record["boxes"], dtype=np.float64)[:count] * [width, height, width, height]
    out = {
        "image_id": image_id,
        "visual_feats": np.asarray(record["roi_features"], dtype=np.float32)[:count],
        "boxes": boxes,
        "image_width": width,
        "image_height": height,
    }
    for source, column in (("obj_ids", "object_ids"), ("obj_probs", "object_scores")):
        if record.get(source) is not None:
            out[column] = np.asarray(record[source])[:count]
    for source, column in (("attr_ids", "attribute_ids"), ("attr_probs", "attribute_scores")):
        if record.get(source) is not None:
            out[column] = np.asarray(record[source])[:count]
    return out


def iter_feature_file(path: str | os.PathLike, skip_ids: set[str] | None = None) -> Iterator[tuple[str, Any]]:
    """Yield `(location, record or BadRecordError)` from a feature TSV or a demo Arrow file (told apart by content)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature file {path} does not exist.")
    if path.is_dir():
        raise ValueError(f"--tsv {path} is a folder; pass the feature files in it (e.g. --tsv {path}/*.tsv).")
    # Pipes (e.g. `--tsv <(zcat features.tsv.gz)`) can be read once only: they are taken as TSV without sniffing.
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path} is empty; pass a feature TSV with one image per line.")
    if path.is_file() and _is_demo_arrow(path):
        return iter_demo_arrow(path, skip_ids)
    return iter_tsv(path, skip_ids)


def prepare_features(
    sources: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    dtype: str = "float32",
    skip_bad: bool = False,
    images_per_shard: int = 1000,
    progress: bool = True,
    extractor: Mapping[str, Any] | str | None = "auto",
) -> PrepareReport:
    r"""
    Stream feature files (LXMERT TSVs or demo Arrow files) into a feature store at `output_dir`.

    Memory stays bounded whatever the size of the input. The store is resumed when it exists: images already in it
    are not decoded again, so rerunning after an interruption completes it.

    Args:
        sources (`Sequence[str]`): feature files, read in order.
        output_dir (`str`): the store directory.
        dtype (`str`, *optional*, defaults to `"float32"`): `"float16"` halves the store.
        skip_bad (`bool`, *optional*, defaults to `False`): skip and count malformed images instead of raising a
            `ValueError` naming the file, the line and the fix.
        images_per_shard (`int`, *optional*, defaults to 1000): images per shard file.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar in images/s (where the
            output is a terminal).
        extractor (`dict`, `"auto"` or `None`, *optional*, defaults to `"auto"`): what made the features, recorded
            in the store's manifest ([`FeatureStore.extractor`]). `"auto"`: LXMERT TSVs are the original
            bottom-up-attention extractor's ([`~lxmert_hf.hub.describe_bottom_up_features`]), demo Arrow files the
            transformers demo's; features of another width than those extractors' are recorded as unknown (with a
            warning). A dict ([`~lxmert_hf.hub.describe_visual_features`]) is recorded as given; `None` records
            nothing.

    Example:
        ```python
        >>> import numpy as np, os, tempfile
        >>> from lxmert_hf.data import load_features, prepare_features, write_tsv
        >>> folder = tempfile.mkdtemp()
        >>> tsv = os.path.join(folder, "features.tsv")
        >>> images = [{"image_id": f"img{i}", "image_width": 64, "image_height": 48,
        ...            "boxes": np.array([[0, 0, 32, 24]]), "visual_feats": np.ones((1, 16))} for i in range(3)]
        >>> _ = write_tsv(tsv, images)
        >>> report = prepare_features([tsv], os.path.join(folder, "store"), progress=False)
        >>> str(report), len(load_features(os.path.join(folder, "store")))
        ('3 images written, 0 already in the store', 3)
        ```
    """
    if not sources:
        raise ValueError("`sources` is empty; pass at least one feature TSV or demo Arrow file.")
    report = PrepareReport()
    extractor = describe_feature_files(sources) if extractor == "auto" else extractor
    writer = FeatureStoreWriter(output_dir, dtype, resume=True, images_per_shard=images_per_shard, extractor=extractor)
    with _saying_what_was_kept(output_dir), writer:
        done = set(writer.done_ids)
        bar = tqdm(desc="preparing features", unit="img", disable=None if progress else True)
        for source in sources:
            for location, record in iter_feature_file(source, skip_ids=done):
                _add(writer, location, record, report, skip_bad)
                bar.update(1)
        bar.close()
        report.already_done = len(done)
    if report.skipped_bad:
        logger.warning(f"skipped {report.skipped_bad} bad records: {'; '.join(report.bad_examples)}")
    return report


def describe_feature_files(sources: Sequence[str | os.PathLike]) -> dict[str, Any] | None:
    """
    What made the features of these files, as far as their format tells: LXMERT TSVs (or pipes, read as TSV) come
    from the original bottom-up-attention extractor, demo Arrow files from the transformers demo extractor; a mix
    of the two has no single origin (`None`).

    Example:
        ```python
        >>> from lxmert_hf.data.features import describe_feature_files
        >>> describe_feature_files(["train2014_obj36.tsv"])["source"][:19]
        'bottom-up-attention'
        ```
    """
    from lxmert_hf.detection.config import RegionFeatureExtractorConfig
    from lxmert_hf.hub import LXMERT_DETECTOR, describe_bottom_up_features, describe_visual_features

    demo = {Path(source).is_file() and _is_demo_arrow(Path(source)) for source in sources}
    if demo == {False}:
        return describe_bottom_up_features()
    if demo == {True}:
        config = RegionFeatureExtractorConfig.from_preset("transformers-demo")
        return describe_visual_features(LXMERT_DETECTOR, config, source=DEMO_EXTRACTOR)
    return None


def _add(writer: FeatureStoreWriter, location: str, record: Any, report: PrepareReport, skip_bad: bool) -> None:
    try:
        if isinstance(record, Exception):
            raise record
        writer.add(record)
        report.written += 1
    except ValueError as error:
        message = str(error) if isinstance(error, BadRecordError) else f"{location}: {error}"
        if not skip_bad:
            raise BadRecordError(message) from None
        report.skipped_bad += 1
        if len(report.bad_examples) < 5:
            report.bad_examples.append(message)


@contextlib.contextmanager
def _saying_what_was_kept(output_dir: str | os.PathLike) -> Iterator[None]:
    """Add to a failed preparation's error what it left in the store at `output_dir` and the way on."""
    try:
        yield
    except ValueError as error:
        kind = BadRecordError if isinstance(error, BadRecordError) else ValueError
        raise kind(f"{error} {kept_in_store(output_dir, bad_record=kind is BadRecordError)}") from None


def kept_in_store(output_dir: str | os.PathLike, bad_record: bool = True) -> str:
    """
    What a failed preparation left in the store at `output_dir`, and what to do: one sentence for its error.

    Example:
        ```python
        >>> import tempfile
        >>> from lxmert_hf.data.features import kept_in_store
        >>> kept_in_store(tempfile.mkdtemp() + "/store", bad_record=False)
        'Nothing was kept (.../store does not exist); fix the input.'
        ```
    """
    path = Path(output_dir)
    skip = " (or rerun with --skip-bad, skip_bad=True, to skip such records)" if bad_record else ""
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError):
        return (
            f"Nothing was kept ({path} {'is as it was' if path.exists() else 'does not exist'}); fix the input{skip}."
        )
    if manifest["complete"]:
        return f"{path} holds {manifest['num_images']} images from an earlier run."
    way_on = "rerun with --skip-bad (skip_bad=True)" if bad_record else "rerun once the input is fixed"
    return f"{path} is incomplete: {manifest['num_images']} images kept; {way_on}, or delete {path}."


# -- features exported or pushed from a store (`export_parquet`, `push_features_to_hub`) ---------------------------
PUSHED_COLUMNS = ("image_id", "visual_feats", "visual_pos", "image_width", "image_height")


@dataclasses.dataclass
class PushedFeatures:
    """Exported or pushed parquet features, streamed (`rows`), with what they carry about their origin: the
    `extractor` of their store and, read from the Hub, the `hub_dataset` repo id."""

    rows: datasets.IterableDataset
    extractor: dict | None = None
    hub_dataset: str | None = None


def open_pushed_features(source: str | os.PathLike, hub: bool, what: str) -> PushedFeatures:
    """Stream the parquet features at `source`: a local folder (`hub=False`: written by [`export_parquet`], or a
    local copy of a Hub dataset repo), or a Hub dataset repo pushed with [`push_features_to_hub`] (`hub=True`; a
    local folder of that name is read instead unless `source` starts with `hf-hub:`). `what` names the argument in
    errors."""
    location = locate(source, what=what)
    if not location.is_local:
        if not hub:
            raise FileNotFoundError(f"{what}: {source} does not exist locally; give a Hub dataset repo with --hub.")
        rows = load_hub_features(location.repo_id, streaming=True, **row_group_scan())
        origin = hub_provenance(location.repo_id)
        return PushedFeatures(rows, origin.get(EXTRACTOR_KEY), location.repo_id)
    if not location.path.is_dir():
        raise FileNotFoundError(f"{what}: {source} is a file; give the folder that holds the parquet files.")
    if (location.path / MANIFEST_NAME).is_file():
        raise ValueError(f"{what}: {source} is a feature store already; use it as it is (--features {source}).")
    try:
        rows = load_parquet_folder(location.path, streaming=True, **row_group_scan())
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{what}: {error}") from None
    try:
        origin = read_provenance(location.path / PROVENANCE_NAME)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None
    return PushedFeatures(rows, origin.get(EXTRACTOR_KEY))


def _matrix_parts(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A list<list<number>> column (or a `datasets` Array2D) as box offsets, value offsets and values (views)."""
    array = column.combine_chunks()
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    inner = array.values
    return array.offsets.to_numpy(), inner.offsets.to_numpy(), inner.values.to_numpy(zero_copy_only=False)


def _matrix(parts: tuple[np.ndarray, np.ndarray, np.ndarray], row: int, name: str, image_id: str) -> np.ndarray:
    """Row `row` of a column split by [`_matrix_parts`], as a `[num_boxes, width]` array of its own (a view would
    keep the whole row group alive while the writer buffers the image)."""
    boxes, offsets, values = parts
    bounds = offsets[boxes[row] : boxes[row + 1] + 1]
    widths = np.diff(bounds)
    if len(widths) and (widths != widths[0]).any():
        raise ValueError(f"image {image_id!r}: the boxes of {name} have {sorted(set(widths.tolist()))} values each.")
    width = int(widths[0]) if len(widths) else 0
    return values[bounds[0] : bounds[-1]].reshape(len(widths), width).copy()


def _iter_pushed(rows: datasets.IterableDataset) -> Iterator[dict[str, Any]]:
    """The rows of exported features, their matrices as numpy views of the Arrow data: no Python list of floats is
    made. One row at a time: `datasets` then slices each row group without copying it (larger batches are copied
    together, and numpy formatting makes the RSS grow with the input)."""
    for table in rows.with_format("arrow").iter(batch_size=1):
        matrices = {name: _matrix_parts(table.column(name)) for name in ("visual_feats", "visual_pos")}
        plain = {name: table.column(name).to_pylist() for name in table.column_names if name not in matrices}
        for row in range(table.num_rows):
            record = {name: values[row] for name, values in plain.items()}
            record["matrices"] = (matrices, row)
            yield record


def _pushed_record(record: dict[str, Any]) -> dict:
    """A row of exported features as the writer takes it: boxes scaled back to pixels (normalized again exactly)."""
    image_id = str(record["image_id"])
    matrices, row = record["matrices"]
    feats = _matrix(matrices["visual_feats"], row, "visual_feats", image_id)
    pos = _matrix(matrices["visual_pos"], row, "visual_pos", image_id).astype(np.float64)
    if pos.shape[1:] != (4,) and len(pos):
        raise ValueError(f"image {image_id!r}: visual_pos must have shape [num_boxes, 4], got {list(pos.shape)}.")
    if record.get("num_boxes") is not None and int(record["num_boxes"]) != len(feats):
        count = int(record["num_boxes"])
        raise ValueError(f"image {image_id!r}: num_boxes is {count} but visual_feats has {len(feats)} rows.")
    width, height = int(record["image_width"]), int(record["image_height"])
    out = {"image_id": image_id, "visual_feats": feats, "boxes": pos.reshape(-1, 4) * [width, height, width, height]}
    out.update(image_width=width, image_height=height)
    out.update({name: record[name] for name in OPTIONAL_COLUMNS if record.get(name) is not None})
    return out


def prepare_pushed_features(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str = "float32",
    skip_bad: bool = False,
    images_per_shard: int = 1000,
    progress: bool = True,
    hub: bool = False,
    what: str = "source",
) -> PrepareReport:
    r"""
    Stream features exported with [`export_parquet`] or pushed with [`push_features_to_hub`] into a feature store.

    The parquet files are read as a `datasets.IterableDataset`, a row group at a time, so memory stays bounded
    whatever their size. Each image is checked as [`prepare_features`] checks a TSV line (an error names the
    source and the row, or the image is skipped and counted with `skip_bad`); the store is resumed when it exists.
    The store records the extractor the features carry (`lxmert_hf_features.json`, written by the export) and, read
    from the Hub, the repo id, so that what is trained on it names both.

    Args:
        source (`str`): a folder of parquet files (`hub=False`), or a Hub dataset repo id (`hub=True`).
        output_dir (`str`): the store directory.
        dtype, skip_bad, images_per_shard, progress: as for [`prepare_features`].
        hub (`bool`, *optional*, defaults to `False`): `source` names a Hub dataset repo.
        what (`str`, *optional*): the argument that gave `source`, named in errors (`--parquet`, `--hub`).

    Example:
        ```python
        >>> import numpy as np, os, tempfile
        >>> from lxmert_hf.data import FeatureStoreWriter, export_parquet, load_features, prepare_pushed_features
        >>> folder = tempfile.mkdtemp()
        >>> with FeatureStoreWriter(os.path.join(folder, "store")) as writer:
        ...     writer.add({"image_id": "a", "visual_feats": np.ones((2, 4)), "boxes": [[0, 0, 4, 8]] * 2,
        ...                 "image_width": 8, "image_height": 8})
        >>> _ = export_parquet(os.path.join(folder, "store"), os.path.join(folder, "parquet"))
        >>> str(prepare_pushed_features(os.path.join(folder, "parquet"), os.path.join(folder, "copy"), progress=False))
        '1 images written, 0 already in the store'
        >>> load_features(os.path.join(folder, "copy")).with_format("numpy")[0]["visual_pos"][0].tolist()
        [0.0, 0.0, 0.5, 1.0]
        ```
    """
    pushed = open_pushed_features(source, hub, what)
    rows = pushed.rows
    missing = [name for name in PUSHED_COLUMNS if rows.column_names is not None and name not in rows.column_names]
    if missing:
        raise ValueError(
            f"{what}: {source} lacks the columns {missing} of exported features (it has {rows.column_names}); give "
            "features written by export_parquet or push_features_to_hub."
        )
    report = PrepareReport()
    origin = {"extractor": pushed.extractor, "hub_dataset": pushed.hub_dataset}
    writer = FeatureStoreWriter(output_dir, dtype, resume=True, images_per_shard=images_per_shard, **origin)
    with _saying_what_was_kept(output_dir), writer:
        done = set(writer.done_ids)
        bar = tqdm(desc="preparing features", unit="img", disable=None if progress else True)
        for row, record in enumerate(_iter_pushed(rows), start=1):
            if str(record["image_id"]) in done:
                report.already_done += 1
                continue
            try:
                record = _pushed_record(record)
            except (KeyError, ValueError) as error:
                record = ValueError(str(error))
            _add(writer, f"{what} {source}: row {row}", record, report, skip_bad)
            bar.update(1)
        bar.close()
    if report.skipped_bad:
        logger.warning(f"skipped {report.skipped_bad} bad records: {'; '.join(report.bad_examples)}")
    return report
