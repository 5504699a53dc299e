"""GQA: the official balanced question JSONs and LXMERT's GQA JSON, as a `datasets` builder joined to the store.

The paper trains on `train` + `valid` and reports `testdev`; splits are named after the files given to them.
GQA questions have one answer, scored 1.0; `answers` holds it for exact-match accuracy. Answers are exact strings,
as in the original preprocessing and the official evaluation: the vocabulary keeps them as written and a question's
label is the vocabulary entry spelled exactly like its answer ("t-shirt" stays "t-shirt").
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets

from lxmert_hf.answers import GQA_VOCABULARY, AnswerVocabulary
from lxmert_hf.data.builder import QuestionsBuilder, build_task_splits, write_prepared
from lxmert_hf.data.sources import BadRecords, load_json, require_keys

GQA_FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "answer": datasets.Value("string"),
        "answer_type": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "label_answers": datasets.List(datasets.Value("string")),
        "label_scores": datasets.List(datasets.Value("float32")),
    }
)
_EXPECTED = (
    "GQA questions: an official balanced questions JSON ({question_id: {imageId, question, answer, ...}}) or "
    "LXMERT's GQA JSON (a list of {img_id, label, question_id, sent})"
)


def _example(question_id: str, image_id: str, question: str, label: Mapping[str, float], **extra: str) -> dict:
    answer = max(label, key=label.get) if label else ""
    return {
        "question_id": question_id,
        "image_id": image_id,
        "question": question,
        "answers": [answer] if answer else [],
        "answer": answer,
        "answer_type": extra.get("answer_type", ""),
        "question_type": extra.get("question_type", ""),
        "label_answers": list(label),
        "label_scores": [float(v) for v in label.values()],
    }


def read_gqa(path: str | os.PathLike, bad: BadRecords) -> Iterator[tuple[str, dict]]:
    """Yield `(location, example)` from a GQA questions file in either layout (told apart by its top level)."""
    data = load_json(path, _EXPECTED)
    if not data:
        raise ValueError(f"{path} holds no questions; expected {_EXPECTED}.")
    if isinstance(data, list):
        yield from _read_lxmert(path, data, bad)
    elif isinstance(data, dict) and ("questions" in data or "annotations" in data):
        raise ValueError(f"{path} looks like a VQA file (keys {sorted(data)[:4]}); expected {_EXPECTED}.")
    else:
        yield from _read_official(path, data, bad)


def _read_official(path: str | os.PathLike, data: dict, bad: BadRecords) -> Iterator[tuple[str, dict]]:
    for question_id, record in data.items():
        location = f"{path}: question {question_id!r}"
        if not require_keys(record, ("imageId", "question"), location, "a GQA question", bad):
            continue
        types = record.get("types") or {}
        label = {record["answer"]: 1.0} if isinstance(record.get("answer"), str) else {}
        extra = {"answer_type": types.get("structural", ""), "question_type": types.get("detailed", "")}
        yield location, _example(str(question_id), str(record["imageId"]), record["question"], label, **extra)


def _read_lxmert(path: str | os.PathLike, data: list, bad: BadRecords) -> Iterator[tuple[str, dict]]:
    for index, record in enumerate(data):
        location = f"{path}: record {index}"
        if not require_keys(record, ("question_id", "img_id", "sent"), location, "a GQA question", bad):
            continue
        label = record.get("label") or {}
        if not isinstance(label, dict) or not all(isinstance(v, (int, float)) for v in label.values()):
            bad(location, "'label' must map answers to scores", "fix the file")
            continue
        yield location, _example(str(record["question_id"]), str(record["img_id"]), record["sent"], label)


class GQABuilder(QuestionsBuilder):
    r"""
    `datasets` builder of GQA questions. Each source of `split_sources` is `{"path": PATH}`, an official balanced
    questions JSON or LXMERT's GQA JSON.

    Example:
        ```python
        >>> from lxmert_hf.data import GQABuilder
        >>> sources = {"train": [{"path": "train.json"}, {"path": "valid.json"}],
        ...            "testdev": [{"path": "testdev.json"}]}
        >>> builder = GQABuilder(split_sources=sources, features_dir="features/gqa")  # doctest: +SKIP
        >>> builder.download_and_prepare()  # doctest: +SKIP
        ```
    """

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description="GQA questions (features joined by image id).", features=GQA_FEATURES)

    def read_source(self, source: Mapping[str, Any], bad: BadRecords) -> Iterator[tuple[str, dict]]:
        return read_gqa(source["path"], bad)


def prepare_gqa(
    output_dir: str | os.PathLike,
    splits: Mapping[str, Sequence[str | os.PathLike]],
    features_dir: str | os.PathLike | None = None,
    feature_files: Sequence[str | os.PathLike] = (),
    vocabulary: AnswerVocabulary | str | os.PathLike | Sequence[str] | None = None,
    min_answer_count: int = GQA_VOCABULARY.min_count,
    skip_missing: bool = False,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> datasets.DatasetDict:
    r"""
    Prepare GQA for training: the store (from `feature_files`, when given), the splits and the answer vocabulary.

    Args:
        output_dir (`str`): the prepared directory (read it back with [`load_prepared`]).
        splits (`Mapping[str, Sequence[str]]`): question files per split, e.g. the paper's
            `{"train": ["train.json", "valid.json"], "testdev": ["testdev.json"]}`.
        features_dir, feature_files, vocabulary, skip_missing, skip_bad, cache_dir: as in [`prepare_vqa`]. A given
            `vocabulary` must spell the answers exactly as the question files do: labels match exact strings.
        min_answer_count (`int`, *optional*, defaults to 1): answers kept in a vocabulary built from `train`, counted
            as written ([`GQA_VOCABULARY`]).

    Example:
        ```python
        >>> from lxmert_hf.data import prepare_gqa
        >>> prepare_gqa("data/gqa", {"train": ["gqa/train.json"], "testdev": ["gqa/testdev.json"]},  # doctest: +SKIP
        ...             feature_files=["vg_gqa_obj36.tsv", "gqa_testdev_obj36.tsv"])
        ```
    """
    builder, prepared, features_dir = build_task_splits(
        GQABuilder, output_dir, features_dir, feature_files, _split_sources(splits),
        skip_missing, skip_bad, cache_dir, progress,
    )  # fmt: skip
    choice = dataclasses.replace(GQA_VOCABULARY, min_count=min_answer_count)
    vocabulary = choice.choose(
        {name: prepared[name]["answer"] for name in choice.splits if name in prepared}, vocabulary
    )
    write_prepared(output_dir, "gqa", prepared, features_dir, vocabulary, builder.stats)
    return prepared


def _split_sources(splits: Mapping[str, Sequence[str | os.PathLike]]) -> dict[str, list[dict]]:
    return {split: [{"path": str(path)} for path in paths] for split, paths in splits.items()}
