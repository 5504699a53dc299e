"""Where each image's values lie in the store files, so readers open a store without parsing its shards.

Parsing an Arrow stream touches the metadata of every record batch; on a cold page cache that is one random read
per batch, seconds for a large store. Instead, each finished shard gets a small index (image id, byte offsets of its
feature and box values, box count), and a complete store one `index.arrow` gathering them: opening a store reads
that one file, and a feature matrix is then a zero-copy `numpy` view at a known offset of the mapped shard.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

INDEX_NAME = "index.arrow"
INDEX_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("shard", pa.int32()),
        ("feats_offset", pa.int64()),
        ("pos_offset", pa.int64()),
        ("num_boxes", pa.int32()),
    ]
)


def _value_offsets(rows: pa.ListArray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets (from `base`) of the first value of each row of a list<list<float>> column, and box counts."""
    boxes, values = rows.values, rows.values.values
    box_offsets = rows.offsets.to_numpy()
    value_offsets = boxes.offsets.to_numpy()
    start = values.buffers()[1].address - base + values.offset * values.type.byte_width
    return start + value_offsets[box_offsets[:-1]].astype(np.int64) * values.type.byte_width, np.diff(box_offsets)


def shard_index(path: str | os.PathLike, shard: int) -> pa.Table:
    """The index of the shard file at `path` (number `shard` in its store)."""
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


def write_table(table: pa.Table, path: Path) -> None:
    """Write `table` as an Arrow stream file, durably, under a temporary name then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_table(path: str | os.PathLike) -> pa.Table:
    """Read an index written by [`write_table`] (fully: indexes are small)."""
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()
