"""NLVR2: the official JSON-lines files and LXMERT's NLVR2 JSON, as a `datasets` builder joined to the store.

Each example is a sentence about a pair of images (`img0`, `img1`) and a label: 1 when the sentence is true of
the pair, 0 when false (-1 when unknown). Splits are named after the files given to them (`train`, `valid`,
`test`, as the paper used them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets

from lxmert_hf.data.builder import QuestionsBuilder, build_task_splits, write_prepared
from lxmert_hf.data.sources import BadRecords, check_source_file, iter_json_lines, load_json, require_keys

NLVR2_FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "identifier": datasets.Value("string"),
        "img0": datasets.Value("string"),
        "img1": datasets.Value("string"),
        "question": datasets.Value("string"),
        "label": datasets.Value("int32"),
    }
)
_OFFICIAL = "an official NLVR2 JSON-lines file (one {identifier, sentence, label} object per line)"
_LXMERT = "LXMERT's NLVR2 JSON (a list of {identifier, img0, img1, label, sent, uid})"
_LABELS = {"true": 1, "false": 0, "1": 1, "0": 0}


def _label(value: Any) -> int | None:
    if value is None:
        return -1
    return _LABELS.get(str(value).strip().lower())


def _images(identifier: str) -> tuple[str, str] | None:
    # "split-set-pair-sentence" names the images "split-set-pair-img0" and "...-img1".
    parts = identifier.split("-")
    if len(parts) != 4:
        return None
    stem = "-".join(parts[:3])
    return f"{stem}-img0", f"{stem}-img1"


def read_nlvr2(path: str | os.PathLike, bad: BadRecords) -> Iterator[tuple[str, dict]]:
    """Yield `(location, example)` from an NLVR2 file in either layout (told apart by its first character)."""
    check_source_file(path, f"{_OFFICIAL} or {_LXMERT}")
    with open(path, "rb") as handle:
        first = handle.read(4096).lstrip()[:1]
    if first == b"[":
        yield from _read_lxmert(path, bad)
    else:
        yield from _read_official(path, bad)


def _read_official(path: str | os.PathLike, bad: BadRecords) -> Iterator[tuple[str, dict]]:
    for location, record in iter_json_lines(path, _OFFICIAL):
        if not require_keys(record, ("identifier", "sentence"), location, "an NLVR2 example", bad):
            continue
        images, label = _images(str(record["identifier"])), _label(record.get("label"))
        if images is None:
            bad(location, f"identifier {record['identifier']!r} is not split-set-pair-sentence", "fix the file")
            continue
        if label is None:
            bad(location, f"label {record.get('label')!r} is not True/False", "fix the file")
            continue
        identifier = str(record["identifier"])
        yield location, _example(identifier, identifier, *images, record["sentence"], label)


def _read_lxmert(path: str | os.PathLike, bad: BadRecords) -> Iterator[tuple[str, dict]]:
    data = load_json(path, _LXMERT)
    if not data:
        raise ValueError(f"{path} holds no examples; expected {_LXMERT}.")
    for index, record in enumerate(data):
        location = f"{path}: record {index}"
        if not require_keys(record, ("identifier", "img0", "img1", "sent"), location, "an NLVR2 example", bad):
            continue
        label = _label(record.get("label"))
        if label is None:
            bad(location, f"label {record.get('label')!r} is not 0/1", "fix the file")
            continue
        question_id = str(record.get("uid") or record["identifier"])
        yield (
            location,
            _example(question_id, record["identifier"], record["img0"], record["img1"], record["sent"], label),
        )


def _example(question_id: str, identifier: str, img0: str, img1: str, sentence: str, label: int) -> dict:
    return {
        "question_id": question_id,
        "identifier": str(identifier),
        "img0": str(img0),
        "img1": str(img1),
        "question": sentence,
        "label": label,
    }


class NLVR2Builder(QuestionsBuilder):
    r"""
    `datasets` builder of NLVR2 examples. Each source of `split_sources` is `{"path": PATH}`, an official
    JSON-lines file or LXMERT's NLVR2 JSON. Both images of a pair must be in the store.

    Example:
        ```python
        >>> from lxmert_hf.data import NLVR2Builder
        >>> sources = {"train": [{"path": "train.json"}], "valid": [{"path": "valid.json"}]}
        >>> builder = NLVR2Builder(split_sources=sources, features_dir="features/nlvr2")  # doctest: +SKIP
        >>> builder.download_and_prepare()  # doctest: +SKIP
        ```
    """

    IMAGE_COLUMNS = ("img0", "img1")

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="NLVR2 examples (features joined by image id).", features=NLVR2_FEATURES
        )

    def read_source(self, source: Mapping[str, Any], bad: BadRecords) -> Iterator[tuple[str, dict]]:
        return read_nlvr2(source["path"], bad)


def prepare_nlvr2(
    output_dir: str | os.PathLike,
    splits: Mapping[str, Sequence[str | os.PathLike]],
    features_dir: str | os.PathLike | None = None,
    feature_files: Sequence[str | os.PathLike] = (),
    skip_missing: bool = False,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> datasets.DatasetDict:
    r"""
    Prepare NLVR2 for training: the store (from `feature_files`, when given) and the splits. `labels` of the
    loaded examples are the class index (1 = true).

    Example:
        ```python
        >>> from lxmert_hf.data import prepare_nlvr2
        >>> splits = {"train": ["nlvr2/train.json"], "valid": ["nlvr2/valid.json"]}
        >>> prepare_nlvr2("data/nlvr2", splits, feature_files=["train_obj36.tsv", "valid_obj36.tsv"])  # doctest: +SKIP
        ```
    """
    builder, prepared, features_dir = build_task_splits(
        NLVR2Builder, output_dir, features_dir, feature_files, _split_sources(splits),
        skip_missing, skip_bad, cache_dir, progress,
    )  # fmt: skip
    write_prepared(output_dir, "nlvr2", prepared, features_dir, None, builder.stats)
    return prepared


def _split_sources(splits: Mapping[str, Sequence[str | os.PathLike]]) -> dict[str, list[dict]]:
    return {split: [{"path": str(path)} for path in paths] for split, paths in splits.items()}
