"""VQA v2: the official question/annotation JSONs and LXMERT's JSON, as a `datasets` builder joined to the store.

Splits follow the paper by default: `train` = train2014 + "nominival" (val2014 without minival), `minival` = the
questions on the first 5000 images of val2014 (in the order of the val2014 questions file), and `test` when
test questions are given. `minival_images=0` keeps the official `train` / `val` splits instead.

Labels and vocabulary follow the original data by default (bottom-up-attention-vqa's `tools/compute_softscore.py`,
which made LXMERT's labels and answer list): each annotator answer counts as written toward the soft scores
(`normalize_answers=True` counts them after the official normalization), and the vocabulary is counted on the
train2014 + val2014 annotation files ([`VQA_VOCABULARY`]; `vocabulary_rule="train-split"` counts the prepared
train split instead, [`VQA_TRAIN_SPLIT_VOCABULARY`]).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets

from lxmert_hf.answers import (
    VQA_TRAIN_SPLIT_VOCABULARY,
    VQA_VOCABULARY,
    AnswerVocabulary,
    VocabularyChoice,
    soft_scores,
)
from lxmert_hf.data.builder import QuestionsBuilder, build_task_splits, write_prepared
from lxmert_hf.data.sources import BadRecords, load_json, require_keys

# How LXMERT's feature files name COCO images.
COCO_IMAGE_ID_FORMAT = "COCO_{subtype}_{image_id:012d}"
NUM_ANNOTATORS = 10
MINIVAL_IMAGES = 5000
# The ways `prepare_vqa` builds a vocabulary when none is given, by name (`--vocabulary-rule`).
VQA_VOCABULARY_RULES = {"original": VQA_VOCABULARY, "train-split": VQA_TRAIN_SPLIT_VOCABULARY}

VQA_FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("int64"),
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
_QUESTIONS = "an official VQA questions file (v2_OpenEnded_mscoco_*_questions.json: an object with 'questions')"
_ANNOTATIONS = "an official VQA annotations file (v2_mscoco_*_annotations.json: an object with 'annotations')"
_LXMERT = "LXMERT's VQA JSON (a list of {answer_type, img_id, label, question_id, question_type, sent})"


def _official(path: str, key: str, expected: str, other: str) -> dict:
    data = load_json(path, expected)
    if isinstance(data, list):
        raise ValueError(f"{path} is a JSON list, probably {_LXMERT}; expected {expected}. Pass it with --lxmert.")
    if not isinstance(data, dict) or key not in data:
        hint = f" It holds '{other}': did you swap questions and annotations?" if other in data else ""
        raise ValueError(f"{path}: expected {expected}; found keys {sorted(data)[:6]}.{hint}")
    if not data[key]:
        raise ValueError(f"{path} holds no {key}; expected {expected}.")
    return data


def _annotations(path: str, bad: BadRecords) -> dict[int, dict | None]:
    """Annotations by question id; `None` marks a rejected one, whose question is then dropped without a count."""
    data = _official(path, "annotations", _ANNOTATIONS, "questions")
    by_question: dict[int, dict | None] = {}
    for index, record in enumerate(data["annotations"]):
        location = f"{path}: annotation {index}"
        keys = ("question_id", "answers", "multiple_choice_answer")
        if not require_keys(record, keys, location, "an annotation", bad):
            if isinstance(record, dict) and "question_id" in record:
                by_question.setdefault(record["question_id"], None)
            continue
        location += f" (question_id {record['question_id']})"
        problem = _annotation_problem(record)
        if record["question_id"] in by_question:
            bad(location, f"duplicate question id {record['question_id']}", "give each annotation once")
        elif problem:
            bad(location, problem, "fix the annotations")
            by_question[record["question_id"]] = None
        else:
            by_question[record["question_id"]] = record
    return by_question


def _annotation_problem(record: Mapping[str, Any]) -> str | None:
    answers = record["answers"]
    if not isinstance(answers, list) or len(answers) != NUM_ANNOTATORS:
        count = len(answers) if isinstance(answers, list) else type(answers).__name__
        return f"'answers' has {count} entries, VQA v2 has {NUM_ANNOTATORS}"
    if not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
        return "each of 'answers' must be an object with an 'answer' string"
    return None


def read_official_vqa(
    questions: str | os.PathLike,
    annotations: str | os.PathLike | None,
    bad: BadRecords,
    images: tuple[str, int] | None = None,
    image_id_format: str = COCO_IMAGE_ID_FORMAT,
    normalize_answers: bool = False,
) -> Iterator[tuple[str, dict]]:
    """
    Yield `(location, example)` from an official questions file and its annotations (`None` for test splits).

    `images` selects by image order in the questions file: `("first", n)` keeps the questions on the first `n`
    distinct images, `("after", n)` the others. Image ids become strings by `image_id_format` (`subtype` is the
    file's `data_subtype`, e.g. `train2014`), the way LXMERT's feature files name COCO images. The soft scores
    count the annotators' answers as written, or after the official normalization with `normalize_answers`.
    """
    data = _official(str(questions), "questions", _QUESTIONS, "annotations")
    by_question = _annotations(str(annotations), bad) if annotations else None
    subtype = data.get("data_subtype", "")
    image_rank: dict[Any, int] = {}
    for index, record in enumerate(data["questions"]):
        location = f"{questions}: question {index}"
        if not require_keys(record, ("question_id", "image_id", "question"), location, "a question", bad):
            continue
        rank = image_rank.setdefault(record["image_id"], len(image_rank))
        if images is not None and (rank < images[1]) != (images[0] == "first"):
            continue
        example = _official_example(record, subtype, image_id_format)
        if by_question is not None:
            annotation = by_question.get(record["question_id"])
            if annotation is None and record["question_id"] in by_question:
                continue  # its annotation was rejected (and counted)
            if annotation is None:
                where = f"{location} (question_id {record['question_id']})"
                bad(where, f"no annotation in {annotations}", "pass the annotations of the same split")
                continue
            _add_annotation(example, annotation, normalize_answers)
        yield location, example


def _official_example(record: Mapping[str, Any], subtype: str, image_id_format: str) -> dict:
    image_id = record["image_id"]
    return {
        "question_id": int(record["question_id"]),
        "image_id": image_id_format.format(subtype=subtype, image_id=image_id)
        if isinstance(image_id, int)
        else image_id,
        "question": record["question"],
        "answers": [],
        "answer": "",
        "answer_type": "",
        "question_type": "",
        "label_answers": [],
        "label_scores": [],
    }


def _add_annotation(example: dict, annotation: Mapping[str, Any], normalize_answers: bool) -> None:
    answers = [a["answer"] for a in annotation["answers"]]
    scores = soft_scores(answers, normalize=normalize_answers)
    example.update(
        answers=answers,
        answer=annotation["multiple_choice_answer"],
        answer_type=annotation.get("answer_type", ""),
        question_type=annotation.get("question_type", ""),
        label_answers=list(scores),
        label_scores=list(scores.values()),
    )


def read_lxmert_vqa(path: str | os.PathLike, bad: BadRecords) -> Iterator[tuple[str, dict]]:
    """Yield `(location, example)` from LXMERT's VQA JSON (labels as given, `answers` empty)."""
    data = load_json(path, _LXMERT)
    if isinstance(data, dict):
        raise ValueError(
            f"{path} is a JSON object (keys {sorted(data)[:6]}), not {_LXMERT}; pass official files with "
            "--train-questions/--train-annotations and the like."
        )
    if not data:
        raise ValueError(f"{path} holds no questions; expected {_LXMERT}.")
    for index, record in enumerate(data):
        location = f"{path}: record {index}"
        if not require_keys(record, ("question_id", "img_id", "sent"), location, "a question", bad):
            continue
        label = record.get("label") or {}
        if not isinstance(label, dict) or not all(isinstance(v, (int, float)) for v in label.values()):
            bad(location, "'label' must map answers to scores", "fix the file")
            continue
        yield (
            location,
            {
                "question_id": int(record["question_id"]),
                "image_id": str(record["img_id"]),
                "question": record["sent"],
                "answers": [],
                "answer": max(label, key=label.get) if label else "",
                "answer_type": record.get("answer_type", ""),
                "question_type": record.get("question_type", ""),
                "label_answers": list(label),
                "label_scores": [float(v) for v in label.values()],
            },
        )


class VQABuilder(QuestionsBuilder):
    r"""
    `datasets` builder of VQA v2 questions. Each source of `split_sources` is either
    `{"format": "official", "questions": PATH, "annotations": PATH or None, "images": ["first"|"after", N] or None,
    "image_id_format": ..., "normalize_answers": bool}` or `{"format": "lxmert", "path": PATH}`;
    [`vqa_split_sources`] writes them for the paper's splits.

    Example:
        ```python
        >>> from lxmert_hf.data import VQABuilder, vqa_split_sources
        >>> sources = vqa_split_sources(train_questions="q_train.json", train_annotations="a_train.json")
        >>> builder = VQABuilder(split_sources=sources, features_dir="features/coco")  # doctest: +SKIP
        >>> builder.download_and_prepare()  # doctest: +SKIP
        >>> builder.as_dataset("train")[0]["question"]  # doctest: +SKIP
        'What is this photo taken looking through?'
        ```
    """

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="VQA v2 questions (features joined by image id).", features=VQA_FEATURES
        )

    def read_source(self, source: Mapping[str, Any], bad: BadRecords) -> Iterator[tuple[str, dict]]:
        if source["format"] == "lxmert":
            return read_lxmert_vqa(source["path"], bad)
        images = tuple(source["images"]) if source.get("images") else None
        image_id_format = source.get("image_id_format") or COCO_IMAGE_ID_FORMAT
        normalize = bool(source.get("normalize_answers", False))
        return read_official_vqa(
            source["questions"], source.get("annotations"), bad, images, image_id_format, normalize
        )


def vqa_split_sources(
    train_questions: str | None = None,
    train_annotations: str | None = None,
    val_questions: str | None = None,
    val_annotations: str | None = None,
    test_questions: str | None = None,
    minival_images: int = MINIVAL_IMAGES,
    lxmert: Mapping[str, Sequence[str]] | None = None,
    image_id_format: str = COCO_IMAGE_ID_FORMAT,
    normalize_answers: bool = False,
) -> dict[str, list[dict]]:
    """
    The `split_sources` of [`VQABuilder`]: the paper's splits from official files (`train` = train + nominival,
    `minival` = the first `minival_images` val images; `minival_images=0` gives `train` and `val`), or LXMERT's
    JSON files per split (`lxmert={"train": ["train.json", "nominival.json"], "minival": ["minival.json"]}`).
    Soft scores count the annotators' answers as written, as the original's, or after the official normalization
    with `normalize_answers` (official files only: LXMERT's JSON files carry their scores).
    """
    if lxmert:
        return {split: [{"format": "lxmert", "path": str(p)} for p in paths] for split, paths in lxmert.items()}
    if not train_questions and not val_questions and not test_questions:
        raise ValueError("give official question files (train/val/test) or LXMERT JSON files per split (`lxmert`).")
    pairs = {"train": (train_questions, train_annotations), "val": (val_questions, val_annotations)}
    for name, (questions_file, annotations_file) in pairs.items():
        if bool(questions_file) != bool(annotations_file):
            raise ValueError(f"give both the {name} questions and the {name} annotations (v2_mscoco_{name}2014_*).")

    def official(questions, annotations, images=None):
        annotations = str(annotations) if annotations else None
        source = {"format": "official", "questions": str(questions), "annotations": annotations}
        return {**source, "images": images, "image_id_format": image_id_format, "normalize_answers": normalize_answers}

    splits: dict[str, list[dict]] = {}
    if train_questions:
        splits["train"] = [official(train_questions, train_annotations)]
    if val_questions and minival_images > 0:
        splits.setdefault("train", []).append(official(val_questions, val_annotations, ["after", minival_images]))
        splits["minival"] = [official(val_questions, val_annotations, ["first", minival_images])]
    elif val_questions:
        splits["val"] = [official(val_questions, val_annotations)]
    if test_questions:
        splits["test"] = [official(test_questions, None)]
    return splits


def prepare_vqa(
    output_dir: str | os.PathLike,
    features_dir: str | os.PathLike | None = None,
    feature_files: Sequence[str | os.PathLike] = (),
    vocabulary: AnswerVocabulary | str | os.PathLike | Sequence[str] | None = None,
    min_answer_count: int = VQA_VOCABULARY.min_count,
    vocabulary_rule: str | VocabularyChoice = "original",
    skip_missing: bool = False,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    **sources: Any,
) -> datasets.DatasetDict:
    r"""
    Prepare VQA v2 for training in one call: the feature store (from `feature_files`, when given), the question
    splits and the answer vocabulary, into `output_dir` (read it back with [`load_prepared`]).

    Args:
        output_dir (`str`): the prepared directory.
        features_dir (`str`, *optional*): an existing store; defaults to `output_dir/features`.
        feature_files (`Sequence[str]`, *optional*): feature TSVs to prepare into the store first (resumed).
        vocabulary ([`AnswerVocabulary`], path, URL or list, *optional*): the answer list to use, in any form
            [`AnswerVocabulary.load`] reads (e.g. `trainval_label2ans.json`); by default, built by `vocabulary_rule`.
        min_answer_count (`int`, *optional*, defaults to 9): the minimum count of an answer kept by
            `vocabulary_rule`.
        vocabulary_rule (`str` or [`VocabularyChoice`], *optional*, defaults to `"original"`): how the vocabulary
            is built when none is given, a name of [`VQA_VOCABULARY_RULES`] or a choice of one's own.
            `"original"` ([`VQA_VOCABULARY`]): the original procedure, which made LXMERT's answer list: the
            `multiple_choice_answer` of all train2014 and val2014 annotations (minival included), in that order,
            as bottom-up-attention-vqa's `compute_softscore.py` counts and lists them; it needs the official
            annotation files. `"train-split"` ([`VQA_TRAIN_SPLIT_VOCABULARY`]): the answers of the prepared `train`
            split (train2014 + nominival, or the labels' best answers of LXMERT's JSON files) after the official
            normalization, by decreasing count.
        skip_missing, skip_bad (`bool`, *optional*): drop and count questions whose image is not in the store /
            malformed records, instead of raising.
        cache_dir (`str`, *optional*): the `datasets` cache.
        **sources: the arguments of [`vqa_split_sources`] (`train_questions`, `train_annotations`, `val_questions`,
            `val_annotations`, `test_questions`, `minival_images`, `lxmert`, `image_id_format`,
            `normalize_answers`).

    Example:
        ```python
        >>> from lxmert_hf.data import load_prepared, prepare_vqa
        >>> prepare_vqa("data/toy-vqa", feature_files=["toy/features.tsv"], minival_images=0,  # doctest: +SKIP
        ...             train_questions="toy/train_questions.json", train_annotations="toy/train_annotations.json",
        ...             val_questions="toy/val_questions.json", val_annotations="toy/val_annotations.json")
        >>> load_prepared("data/toy-vqa", "val")[0]["labels"].shape  # doctest: +SKIP
        (24,)
        ```
    """
    choice = dataclasses.replace(_vocabulary_rule(vocabulary_rule), min_count=min_answer_count)
    builder, splits, features_dir = build_task_splits(
        VQABuilder, output_dir, features_dir, feature_files, vqa_split_sources(**sources),
        skip_missing, skip_bad, cache_dir, progress,
    )  # fmt: skip
    if vocabulary is None:
        vocabulary = choice.choose(_vocabulary_answers(choice, splits, sources))
    write_prepared(output_dir, "vqa", splits, features_dir, AnswerVocabulary.load(vocabulary), builder.stats)
    return splits


def _vocabulary_rule(rule: str | VocabularyChoice) -> VocabularyChoice:
    if isinstance(rule, VocabularyChoice):
        return rule
    if rule not in VQA_VOCABULARY_RULES:
        raise ValueError(f"`vocabulary_rule` must be one of {sorted(VQA_VOCABULARY_RULES)}, got {rule!r}.")
    return VQA_VOCABULARY_RULES[rule]


# The answer lists a vocabulary choice may name besides the prepared splits: the official annotation files.
_ANNOTATION_FILES = {"train2014": "train_annotations", "val2014": "val_annotations"}


def _vocabulary_answers(
    choice: VocabularyChoice, splits: datasets.DatasetDict, sources: Mapping[str, Any]
) -> dict[str, list[str]]:
    """The answer lists `choice` counts: prepared splits by name, annotation files as `train2014` / `val2014`."""
    answers = {name: splits[name]["answer"] for name in choice.splits if name in splits}
    wanted = [name for name in choice.splits if name in _ANNOTATION_FILES]
    for name in wanted:
        path = sources.get(_ANNOTATION_FILES[name])
        if path:
            answers[name] = read_multiple_choice_answers(path)
    if wanted and not answers:
        raise ValueError(
            "the original VQA vocabulary counts the `multiple_choice_answer` of the official annotation files "
            "(train2014, val2014), and none were given: pass the answer list the labels were made with "
            "(`vocabulary`, --answers; LXMERT's is its trainval_label2ans.json), or build one from the prepared "
            "train split with vocabulary_rule='train-split' (--vocabulary-rule train-split)."
        )
    return answers


def read_multiple_choice_answers(annotations: str | os.PathLike) -> list[str]:
    """The `multiple_choice_answer` of every record of an official annotations file, in file order (records
    without one are left out), what the original vocabulary script counts.

    Example:
        ```python
        >>> import json, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "annotations.json")
        >>> records = [{"question_id": 1, "multiple_choice_answer": "yes"}, {"question_id": 2}]
        >>> with open(path, "w") as handle:
        ...     json.dump({"annotations": records}, handle)
        >>> read_multiple_choice_answers(path)
        ['yes']
        ```
    """
    data = _official(str(annotations), "annotations", _ANNOTATIONS, "questions")
    return [
        record["multiple_choice_answer"]
        for record in data["annotations"]
        if isinstance(record, dict) and isinstance(record.get("multiple_choice_answer"), str)
    ]
