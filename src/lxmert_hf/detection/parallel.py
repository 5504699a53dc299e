"""Extracting region features with several processes, on one machine or many, into one feature store.

How the work is shared, so that any rank can be stopped and started again:

- Split: the images not yet in the store at `output_dir` are dealt round-robin to the `world_size` ranks, in the
  order [`list_images`] gives them (rank `r` takes images `r, r + N, r + 2N, ...`). The split depends only on the
  images and on what the store held when the run began, so a rerun with the same `N` gives each rank the same images.
- Parts: rank `r` writes its images into its own part store, `<output_dir>/.parts/rank-0000r-of-0000N/`, an ordinary
  resumable store (see [`extract_to_store`]): a rank stopped at any point keeps its finished shards, and rerunning it
  continues its part. When its part is complete the rank writes `<output_dir>/.parts/rank-0000r-of-0000N.json`, its
  report. `<output_dir>/.parts/run.json` records `N` and a fingerprint of the images being split: parts made with
  another `N`, or for other images, are refused with what to do.
- Merge: each rank, once its part is complete, takes the store's writer lock (an exclusive file lock: it works across
  machines on a shared filesystem whose locks work, such as NFS v4, and needs no process group); the rank that finds
  every rank's report there merges the parts into the store at `output_dir` ([`merge_stores`]: shards moved in and
  renumbered, one manifest, one index) and removes `.parts`. A merge interrupted at any point is finished by the next
  rank of any run to start. The merged store records the detector like a one-process extraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lxmert_hf.data.store.format import MANIFEST_NAME, read_complete_manifest, read_manifest, read_store_image_ids
from lxmert_hf.data.store.merge import merge_stores
from lxmert_hf.data.store.writer import LOCK_NAME, lock_store
from lxmert_hf.detection.extraction import ExtractionReport, NoFeaturesError, extract_to_store
from lxmert_hf.files import write_json_atomic

PARTS_NAME = ".parts"
RUN_NAME = "run.json"
JOURNAL_NAME = "merge.json"


@dataclass(frozen=True)
class Rank:
    """One process of a multi-process extraction: its `rank` among `world_size`, and its `local_rank` on its machine
    (which picks its GPU)."""

    rank: int
    world_size: int
    local_rank: int


def rank_from_environment(environ: Mapping[str, str] | None = None) -> Rank | None:
    """
    The rank that `accelerate launch`, `torchrun` (or any launcher setting `RANK`, `WORLD_SIZE` and `LOCAL_RANK`)
    gave this process; `None` when `WORLD_SIZE` is unset or 1 (one process).

    Example:
        ```python
        >>> rank_from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
        Rank(rank=3, world_size=4, local_rank=1)
        >>> rank_from_environment({}) is None
        True
        ```
    """
    environ = os.environ if environ is None else environ
    if environ.get("WORLD_SIZE", "1").strip() == "1":
        return None
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        text = environ.get(name, environ.get("RANK", "") if name == "LOCAL_RANK" else "")
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(
                f"environment variable {name}={text!r} is not a whole number; launch with accelerate launch or "
                "torchrun, which set RANK, WORLD_SIZE and LOCAL_RANK, or unset WORLD_SIZE to run one process."
            ) from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"] or values["LOCAL_RANK"] < 0:
        raise ValueError(
            f"RANK={values['RANK']} WORLD_SIZE={values['WORLD_SIZE']} LOCAL_RANK={values['LOCAL_RANK']}: need "
            "WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0."
        )
    return Rank(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def cpu_threads(num_processes: int) -> int:
    """Threads for each of `num_processes` ranks sharing this machine's cores (at least one).

    Example:
        ```python
        >>> cpu_threads(10**6)
        1
        ```
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // num_processes)


def part_name(rank: int, world_size: int) -> str:
    """`rank-00001-of-00004`: the name of a rank's part store (a folder under `<output>/.parts/`) and report."""
    return f"rank-{rank:05d}-of-{world_size:05d}"


def assign_images(images: Sequence[tuple[str, Path]], done_ids: set[str], rank: int, world_size: int) -> list:
    """
    The images rank `rank` of `world_size` extracts: round-robin over the `images` not in `done_ids`.

    Example:
        ```python
        >>> images = [(name, None) for name in "abcdefg"]
        >>> [image_id for image_id, _ in assign_images(images, {"b"}, rank=1, world_size=2)]
        ['c', 'e', 'g']
        ```
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}.")
    return [pair for pair in images if pair[0] not in done_ids][rank::world_size]


@dataclass
class RankResult:
    """What one rank did (`report`, about its part) and, for the rank that merged the parts, the merge: `merged`
    counts the images the parts added (`written`), those the store held before (`already_done`) and every rank's
    skipped images; `num_images` is the store's image count after the merge."""

    rank: Rank
    report: ExtractionReport
    merged: ExtractionReport | None = None
    num_images: int | None = None


def extract_rank(
    extractor,
    images: Sequence[tuple[str, Path]],
    output_dir: str | os.PathLike,
    rank: int,
    world_size: int,
    local_rank: int | None = None,
    **kwargs,
) -> RankResult:
    """
    Extract this rank's share of `images` into its part of the store at `output_dir`; the last rank to finish merges
    every part into that store (see the module's description). `kwargs` go to [`extract_to_store`] (`batch_size`,
    `num_workers`, `dtype`, `images_per_shard`, `detector`, `group_by_size`, ...) unchanged, but for `boxes`, of which
    each rank passes on those of its images.

    Example:
        ```python
        >>> from lxmert_hf.detection.extraction import list_images
        >>> images = list_images("my_images/")  # doctest: +SKIP
        >>> # on every machine, rank r of N (with the same images, output on a shared filesystem):
        >>> result = extract_rank(extractor, images, "/shared/features", rank=r, world_size=N)  # doctest: +SKIP
        ```
    """
    this = Rank(rank, world_size, rank if local_rank is None else local_rank)
    output_dir = Path(output_dir)
    parts = output_dir / PARTS_NAME
    with _locked(output_dir):
        _finish_interrupted_merge(output_dir)
        done = _store_ids(output_dir)
        _check_run(parts, world_size, [image_id for image_id, _ in images if image_id not in done])
    mine = assign_images(images, done, rank, world_size)
    if kwargs.get("boxes") is not None:  # this rank's boxes: the others' would be warned about as unused
        ids = {image_id for image_id, _ in mine}
        kwargs["boxes"] = {key: value for key, value in kwargs["boxes"].items() if str(key) in ids}
    report = _extract_part(extractor, mine, parts / part_name(rank, world_size), **kwargs)
    write_json_atomic(parts / f"{part_name(rank, world_size)}.json", asdict(report))
    result = RankResult(this, report)
    with _locked(output_dir):
        reports = [parts / f"{part_name(other, world_size)}.json" for other in range(world_size)]
        if all(path.exists() for path in reports):
            result.merged = _merge(output_dir, world_size, len(done), reports)
            result.num_images = read_manifest(output_dir)["num_images"]
    return result


def check_parts(output_dir: str | os.PathLike, world_size: int | None) -> None:
    """
    Refuse to start when `<output_dir>/.parts` holds the parts of an extraction with another number of processes
    (`world_size`; `None` for a one-process run, which must not write into a store whose parts wait to be merged).
    """
    parts = Path(output_dir) / PARTS_NAME
    run = _read_run(parts)
    if run is None or run["world_size"] == world_size:
        return
    raise ValueError(
        f"{parts} holds the unfinished parts of an extraction with {run['world_size']} processes; rerun it with "
        f"--num-processes {run['world_size']} (or WORLD_SIZE={run['world_size']} ranks) to finish and merge them, "
        f"or delete {parts} to start over (its images are then extracted again)."
    )


def _read_run(parts: Path) -> dict | None:
    path = parts / RUN_NAME
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); delete {parts} to start over.") from None


def _check_run(parts: Path, world_size: int, todo_ids: list[str]) -> None:
    """Record (or check) how many ranks share which images, the first time a rank of a run starts."""
    check_parts(parts.parent, world_size)
    fingerprint = hashlib.sha256("\n".join(todo_ids).encode()).hexdigest()
    run = _read_run(parts)
    if run is None:
        parts.mkdir(exist_ok=True)
        write_json_atomic(
            parts / RUN_NAME, {"world_size": world_size, "num_images": len(todo_ids), "images": fingerprint}
        )
    elif run["images"] != fingerprint:
        raise ValueError(
            f"{parts} holds the parts of an extraction of {run['num_images']} other images, not the "
            f"{len(todo_ids)} given; rerun with the same --images to finish it, or delete {parts} to start over."
        )


class _locked:
    """The store's writer lock, waited for: ranks check the run and merge one at a time."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir

    def __enter__(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.handle = lock_store(self.output_dir, wait=True)

    def __exit__(self, *exc) -> None:
        self.handle.close()


def _store_ids(output_dir: Path) -> set[str]:
    """The images the store at `output_dir` holds (none when there is no store yet)."""
    if (output_dir / MANIFEST_NAME).exists():
        return read_store_image_ids(output_dir, read_complete_manifest(output_dir))
    foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in (PARTS_NAME, LOCK_NAME))
    if foreign:
        raise FileExistsError(
            f"{output_dir} is not empty ({', '.join(foreign[:3])}) and is not a feature store; choose an empty "
            "directory for --output."
        )
    return set()


def _extract_part(extractor, mine: list, part_dir: Path, **kwargs) -> ExtractionReport:
    if not mine:
        return ExtractionReport()
    try:
        return extract_to_store(extractor, mine, part_dir, **kwargs)
    except NoFeaturesError as error:  # all of this rank's images failed: other ranks may have done better
        return ExtractionReport(skipped=error.skipped)


def _finish_interrupted_merge(output_dir: Path) -> None:
    parts = output_dir / PARTS_NAME
    if (parts / JOURNAL_NAME).exists():
        merge_stores([], output_dir, parts / JOURNAL_NAME)
        _remove_parts(parts)


def _merge(output_dir: Path, world_size: int, already_done: int, reports: list[Path]) -> ExtractionReport:
    parts = output_dir / PARTS_NAME
    folders = [parts / part_name(rank, world_size) for rank in range(world_size)]
    stores = [folder for folder in folders if (folder / MANIFEST_NAME).exists()]
    merged = ExtractionReport(already_done=already_done)
    for path in reports:
        merged.skipped.extend(tuple(pair) for pair in json.loads(path.read_text(encoding="utf-8"))["skipped"])
    if not stores and not (output_dir / MANIFEST_NAME).exists():
        _remove_parts(parts)
        raise NoFeaturesError(merged.skipped)
    merged.written = sum(read_complete_manifest(store)["num_images"] for store in stores)
    merge_stores(stores, output_dir, parts / JOURNAL_NAME)
    _remove_parts(parts)
    return merged


def _remove_parts(parts: Path) -> None:
    """Remove the parts after a merge: the journal last, so that a removal cut short is finished by the next run."""
    for path in parts.iterdir():
        if path.name == JOURNAL_NAME:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    (parts / JOURNAL_NAME).unlink(missing_ok=True)
    parts.rmdir()
