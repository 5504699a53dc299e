"""Merging complete feature stores (the parts written by the ranks of a multi-process extraction) into one store.

The shards of each part are moved (renamed, not copied: the parts lie inside the target folder, on its filesystem)
into the target store after its own shards, numbered on from them, and their indexes are written again with the new
shard numbers (byte offsets inside a shard do not change). The target then gets the store index, the files of a saved
`datasets.Dataset` and its manifest, as [`FeatureStoreWriter.close`] writes them. The target may be new, or a
complete store that the parts add images to.

A merge is a plan written to a journal before anything moves, then carried out in steps that can each be done
again: a merge interrupted at any point is finished by [`merge_stores`] called again with the same journal (or by
[`finish_merge`]). The caller holds the target's writer lock ([`lock_store`]) throughout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from lxmert_hf.data.store.format import (
    DATASET_INFO_NAME,
    DATASET_STATE_NAME,
    EXTRACTOR_KEY,
    INDEX_NAME,
    LEGACY_INDEX_NAME,
    MANIFEST_NAME,
    complete_store,
    new_manifest,
    read_complete_manifest,
    read_manifest,
    read_store_image_ids,
    read_table,
    shard_index_name,
    write_table,
)
from lxmert_hf.files import fsync_directory, write_json_atomic

# What must agree between the parts and the target for their shards to be one dataset.
_SHARED_KEYS = ("dtype", "feature_dim", "optional_columns", EXTRACTOR_KEY)


def merge_stores(
    parts: Sequence[str | os.PathLike], output_dir: str | os.PathLike, journal: str | os.PathLike
) -> dict:
    """
    Move the shards of the complete stores `parts` (in that order) into the store at `output_dir` (new, or
    complete), which ends complete; returns its manifest. The plan is written to `journal` first (a file the
    caller removes with the parts afterwards); if `journal` exists, the merge it describes is finished instead.

    Raises `ValueError` when a part is incomplete, holds an image another part or the target holds, or holds
    features of another type, size or extractor than the others.

    Example:
        ```python
        >>> import numpy as np, tempfile
        >>> from pathlib import Path
        >>> from lxmert_hf.data.store import FeatureStore, FeatureStoreWriter
        >>> root = Path(tempfile.mkdtemp())
        >>> for part, image_id in (("p0", "a"), ("p1", "b")):
        ...     with FeatureStoreWriter(root / part) as writer:
        ...         writer.add({"image_id": image_id, "visual_feats": np.ones((2, 4), np.float32),
        ...                     "boxes": np.array([[0, 0, 5, 5]] * 2), "image_width": 10, "image_height": 10})
        >>> manifest = merge_stores([root / "p0", root / "p1"], root / "store", root / "merge.json")
        >>> sorted(FeatureStore(root / "store").image_ids), [shard["file"] for shard in manifest["shards"]]
        (['a', 'b'], ['shard-00000.arrow', 'shard-00001.arrow'])
        ```
    """
    output_dir, journal = Path(output_dir), Path(journal)
    if not journal.exists():
        write_json_atomic(journal, _plan(parts, output_dir))
    return finish_merge(output_dir, journal)


def _plan(parts: Sequence[str | os.PathLike], output_dir: Path) -> dict:
    """The moves of a merge and the manifest the target ends with."""
    manifests = [read_complete_manifest(part) for part in parts]
    if (output_dir / MANIFEST_NAME).exists():
        target = read_manifest(output_dir)
        if not target["complete"]:
            raise ValueError(
                f"the feature store at {output_dir} is incomplete (its writer was interrupted); complete it by "
                "rerunning the command that wrote it, then merge again."
            )
        seen = dict.fromkeys(read_store_image_ids(output_dir, target), str(output_dir))
    else:
        target, seen = new_manifest(manifests[0]["dtype"] if manifests else "float32"), {}
    moves = []
    for part, manifest in zip(parts, manifests, strict=True):
        _check_compatible(target, manifest, Path(part), output_dir)
        _check_disjoint(seen, read_store_image_ids(part, manifest), Path(part))
        for shard in manifest["shards"]:
            number = len(target["shards"])
            name = f"shard-{number:05d}.arrow"
            moves.append({"file": str(Path(part) / shard["file"]), "index": str(Path(part) / shard["index"])})
            target["shards"].append({"file": name, "index": shard_index_name(name), "num_images": shard["num_images"]})
            target["num_images"] += shard["num_images"]
    target["complete"] = False
    return {"moves": moves, "manifest": target}


def _check_compatible(target: dict, part: dict, part_dir: Path, output_dir: Path) -> None:
    for key in _SHARED_KEYS:
        mine, theirs = target.get(key), part.get(key)
        if theirs is not None and mine is not None and mine != theirs:
            raise ValueError(
                f"the feature store {part_dir} has {key} {theirs}, but {output_dir} (or a part merged before it) "
                f"has {mine}; merge only stores written by the same extraction (same detector, settings and "
                "--dtype)."
            )
        if mine is None:
            target[key] = theirs


def _check_disjoint(seen: dict[str, str], image_ids: set[str], part_dir: Path) -> None:
    twice = sorted(image_ids & seen.keys())
    if twice:
        raise ValueError(
            f"image {twice[0]!r} ({len(twice)} images in all) is both in {part_dir} and in {seen[twice[0]]}; "
            "each image must be in one store only. Delete one of them and extract its images again."
        )
    seen.update(dict.fromkeys(image_ids, str(part_dir)))


def finish_merge(output_dir: str | os.PathLike, journal: str | os.PathLike) -> dict:
    """Carry out (or finish) the merge planned in `journal` into the store at `output_dir`; returns its manifest."""
    output_dir = Path(output_dir)
    plan = json.loads(Path(journal).read_text(encoding="utf-8"))
    manifest = plan["manifest"]
    if (output_dir / MANIFEST_NAME).exists() and read_manifest(output_dir) == {**manifest, "complete": True}:
        return read_manifest(output_dir)  # done: only the parts were left to remove
    output_dir.mkdir(parents=True, exist_ok=True)
    # Until it is complete again the store opens nowhere, as while a writer has it open.
    for name in (INDEX_NAME, LEGACY_INDEX_NAME, DATASET_STATE_NAME, DATASET_INFO_NAME):
        (output_dir / name).unlink(missing_ok=True)
    write_json_atomic(output_dir / MANIFEST_NAME, manifest)
    first = len(manifest["shards"]) - len(plan["moves"])
    for number, move in enumerate(plan["moves"], start=first):
        _move_shard(move, output_dir, manifest["shards"][number], number)
    fsync_directory(output_dir)
    complete_store(output_dir, manifest)
    return manifest


def _move_shard(move: dict, output_dir: Path, shard: dict, number: int) -> None:
    """Move one part's shard in as shard `number`, and write its index with that number; both can be done again."""
    index = read_table(move["index"])
    numbers = pa.array([number] * len(index), type=pa.int32())
    write_table(index.set_column(index.schema.get_field_index("shard"), "shard", numbers), output_dir / shard["index"])
    source, target = Path(move["file"]), output_dir / shard["file"]
    if source.exists():
        os.replace(source, target)
    elif not target.exists():
        raise FileNotFoundError(
            f"{source} is missing and was not moved to {target}; the merge into {output_dir} cannot be finished. "
            f"Delete {source.parent.parent} and extract the images missing from {output_dir} again."
        )
