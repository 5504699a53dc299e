"""What a feature store is on disk: its file names, its manifest, its shard schema and its index of byte offsets.

A store is a folder of Arrow IPC stream shards (`shard-00000.arrow`, ...; the format `datasets` memory-maps), a
`store.json` manifest listing the completed shards, and indexes. Parsing an Arrow stream touches the metadata of
every record batch, one random read per batch on a cold page cache (seconds for a large store); instead each
finished shard gets a small index (`shard-00000.index`: image id, byte offsets of its feature and box values in the
shard file, box count), and a complete store one `store.index` gathering them. Opening a store reads that one file;
an image's features are then a known byte range of a known shard. Indexes are Arrow streams too, named so that no
`*.arrow` pattern takes them for data (stores written before were named `*.index.arrow` and `index.arrow`: they are
read as well).

A complete store is also a saved `datasets.Dataset`: `state.json` lists the shards and `dataset_info.json` holds the
`datasets.Features`, so `datasets.load_from_disk(store_dir)` memory-maps the shards where they are.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Array2D, Features, List, Value

from lxmert_hf.files import atomic_path, write_json_atomic

MANIFEST_NAME = "store.json"
INDEX_NAME = "store.index"
# What stores written before named their indexes: `index.arrow`, and `shard-00000.index.arrow` per shard.
LEGACY_INDEX_NAME = "index.arrow"
INDEX_SUFFIX = ".index"
# The files that make a complete store a saved `datasets.Dataset` (`datasets.config.DATASET_STATE_JSON_FILENAME`
# and `DATASET_INFO_FILENAME`): written when the store completes, removed while a writer has it open.
DATASET_STATE_NAME = "state.json"
DATASET_INFO_NAME = "dataset_info.json"
LOCK_NAME = ".writer.lock"
STORE_FORMAT = "lxmert_hf.feature_store"
STORE_VERSION = 1
FEATURE_DTYPES = ("float32", "float16")
OPTIONAL_COLUMNS = {
    "object_ids": "int64",
    "object_scores": "float32",
    "attribute_ids": "int64",
    "attribute_scores": "float32",
}
INDEX_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("shard", pa.int32()),
        ("feats_offset", pa.int64()),
        ("pos_offset", pa.int64()),
        ("num_boxes", pa.int32()),
    ]
)


def store_features(feature_dim: int, dtype: str = "float32", optional_columns: Iterable[str] = ()) -> Features:
    """Return the `datasets.Features` of a store with `feature_dim`-dimensional region features."""
    columns = {
        "image_id": Value("string"),
        "visual_feats": Array2D(shape=(None, feature_dim), dtype=dtype),
        "visual_pos": Array2D(shape=(None, 4), dtype="float32"),
        "image_width": Value("int32"),
        "image_height": Value("int32"),
        "num_boxes": Value("int32"),
    }
    for name in OPTIONAL_COLUMNS:
        if name in optional_columns:
            columns[name] = List(Value(OPTIONAL_COLUMNS[name]))
    return Features(columns)


# -- the manifest -------------------------------------------------------------------------------------------------
# The manifest key describing what made the features (`lxmert_hf.hub.describe_visual_features`): the detector, its
# preset and settings; `null` when unknown. Stores written before it existed lack the key: unknown too.
EXTRACTOR_KEY = "extractor"
# The key (of a manifest, or of a prepared directory's metadata) naming the Hub dataset repo the data was made from,
# for the model cards of what is trained on it.
HUB_DATASET_KEY = "hub_dataset"
# The file beside exported parquet features (a folder, or a Hub dataset repo) that carries what the manifest says
# about their origin: parquet has no manifest, and the store prepared back from it records this again.
PROVENANCE_NAME = "lxmert_hf_features.json"


def new_manifest(dtype: str) -> dict:
    """The manifest of an empty store of `dtype` features."""
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "complete": False,
        "dtype": dtype,
        "feature_dim": None,
        "optional_columns": None,
        "num_images": 0,
        "shards": [],
        EXTRACTOR_KEY: None,
    }


def read_manifest(store_dir: str | os.PathLike) -> dict:
    """Read and check the manifest of the store at `store_dir` (complete or not)."""
    path = Path(store_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{store_dir} is not a feature store (no {MANIFEST_NAME}); create one with "
            "`lxmert-hf prepare features --tsv FILE --output DIR`."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise damaged_store(path, "not valid JSON", error) from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise ValueError(f"{path}: not an lxmert_hf feature store manifest; prepare the store again.")
    if manifest.get("version") != STORE_VERSION:
        raise ValueError(
            f"{path}: not a version {STORE_VERSION} lxmert_hf feature store manifest; prepare the store again."
        )
    missing = [key for key in ("complete", "dtype", "feature_dim", "num_images", "shards") if key not in manifest]
    if missing:
        raise damaged_store(path, f"the manifest lacks {', '.join(missing)}")
    return manifest


def damaged_store(path: str | os.PathLike, what: str, error: BaseException | None = None) -> ValueError:
    """The error for a file of a store that cannot be read: it names the file and says what to do."""
    lines = str(error).strip().splitlines() if error is not None else []
    detail = f" ({lines[0]})" if lines else ""
    return ValueError(f"{path}: {what}{detail}; {_redo(path)}")


def missing_store_file(path: str | os.PathLike) -> FileNotFoundError:
    """The error for a file that a store's manifest or index names but that is not there."""
    return FileNotFoundError(f"{path} is missing; {_redo(path)}")


def _redo(path: str | os.PathLike) -> str:
    return (
        f"the feature store at {Path(path).parent} is damaged: delete that folder and prepare it again "
        "(`lxmert-hf prepare features`)."
    )


def read_complete_manifest(store_dir: str | os.PathLike) -> dict:
    """The manifest of the store at `store_dir`, which must be complete (its writer closed without error)."""
    manifest = read_manifest(store_dir)
    if not manifest["complete"]:
        raise ValueError(
            f"the feature store at {store_dir} is incomplete ({manifest['num_images']} images in "
            f"{len(manifest['shards'])} shards): its writer was interrupted. Rerun the same "
            "`lxmert-hf prepare features` command (or FeatureStoreWriter(..., resume=True)) to complete it."
        )
    return manifest


# -- the index ----------------------------------------------------------------------------------------------------
def shard_index_name(shard_name: str) -> str:
    """`shard-00000.arrow` -> `shard-00000.index`."""
    return shard_name.removesuffix(".arrow") + INDEX_SUFFIX


def store_index_path(store_dir: str | os.PathLike) -> Path:
    """The index of the complete store at `store_dir`: `store.index`, or `index.arrow` in a store written before."""
    path = Path(store_dir) / INDEX_NAME
    legacy = Path(store_dir) / LEGACY_INDEX_NAME
    return legacy if not path.is_file() and legacy.is_file() else path


def _value_offsets(rows: pa.ListArray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets (from `base`) of the first value of each row of a list<list<float>> column, and box counts."""
    boxes, values = rows.values, rows.values.values
    box_offsets = rows.offsets.to_numpy()
    value_offsets = boxes.offsets.to_numpy()
    start = values.buffers()[1].address - base + values.offset * values.type.byte_width
    return start + value_offsets[box_offsets[:-1]].astype(np.int64) * values.type.byte_width, np.diff(box_offsets)


def shard_index(path: str | os.PathLike, shard: int) -> pa.Table:
    """The index of the shard file at `path` (number `shard` in its store).

    The shard is memory-mapped whole, so the address of a value buffer minus the address of the mapping is the
    byte offset of those values in the file.
    """
    with pa.memory_map(str(path)) as source:
        buffer = source.read_buffer()
    columns: dict[str, list] = {name: [] for name in INDEX_SCHEMA.names if name != "shard"}
    for batch in pa.ipc.open_stream(buffer):
        feats, counts = _value_offsets(batch.column("visual_feats").storage, buffer.address)
        pos, _ = _value_offsets(batch.column("visual_pos").storage, buffer.address)
        columns["image_id"].append(batch.column("image_id"))
        columns["feats_offset"].append(pa.array(feats))
        columns["pos_offset"].append(pa.array(pos))
        columns["num_boxes"].append(pa.array(counts.astype(np.int32)))
    ids = pa.concat_arrays(columns.pop("image_id"))
    arrays = {name: pa.concat_arrays(chunks) for name, chunks in columns.items()}
    arrays["shard"] = pa.array(np.full(len(ids), shard, dtype=np.int32))
    return pa.table({"image_id": ids, **{name: arrays[name] for name in INDEX_SCHEMA.names[1:]}}, schema=INDEX_SCHEMA)


def write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write `table` (an index) as an Arrow stream file, atomically and durably."""
    with (
        atomic_path(path) as temporary,
        pa.OSFile(str(temporary), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as writer,
    ):
        writer.write_table(table)


def read_table(path: str | os.PathLike) -> pa.Table:
    """Read an index written by [`write_table`] (fully: indexes are small)."""
    if not Path(path).is_file():
        raise missing_store_file(path)
    try:
        with pa.OSFile(str(path)) as source:
            return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowException, OSError) as error:
        raise damaged_store(path, "not a readable index", error) from None


# -- the store as a saved `datasets.Dataset` -----------------------------------------------------------------------
def write_dataset_files(store_dir: str | os.PathLike, manifest: dict) -> None:
    """Write `state.json` and `dataset_info.json`, which `datasets.load_from_disk` reads, for the shards of
    `manifest`. `load_from_disk` opens every file of `state.json` as an Arrow stream, the format of the shards."""
    features = store_features(manifest["feature_dim"], manifest["dtype"], manifest["optional_columns"] or ())
    shards = [shard["file"] for shard in manifest["shards"]]
    fingerprint = hashlib.sha256(json.dumps([shards, manifest["num_images"], features.to_dict()]).encode())
    state = {
        "_data_files": [{"filename": name} for name in shards],
        "_fingerprint": fingerprint.hexdigest()[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    info = {
        "description": f"lxmert_hf feature store: region features of {manifest['num_images']} images.",
        "features": features.to_dict(),
    }
    write_json_atomic(Path(store_dir) / DATASET_INFO_NAME, info)
    write_json_atomic(Path(store_dir) / DATASET_STATE_NAME, state)


def complete_store(store_dir: str | os.PathLike, manifest: dict) -> None:
    """Make the store at `store_dir`, whose shards and shard indexes `manifest` lists, complete: write its
    `store.index` (the shard indexes gathered), the files of a saved `datasets.Dataset`, and last the manifest marked
    complete, so that a store whose completion was interrupted still reads as incomplete."""
    shards = [read_table(Path(store_dir) / shard["index"]) for shard in manifest["shards"]]
    write_table(pa.concat_tables(shards), Path(store_dir) / INDEX_NAME)
    write_dataset_files(store_dir, manifest)
    manifest["complete"] = True
    write_json_atomic(Path(store_dir) / MANIFEST_NAME, manifest)


def read_store_image_ids(store_dir: str | os.PathLike, manifest: dict | None = None) -> set[str]:
    """The image ids held by the completed shards of the store at `store_dir` (complete or not)."""
    manifest = manifest or read_manifest(store_dir)
    ids: set[str] = set()
    for shard in manifest["shards"]:
        ids.update(read_table(Path(store_dir) / shard["index"]).column("image_id").to_pylist())
    return ids
