"""Evaluation from the files the official tools read: ground truth in the official formats, predictions in the
submission formats of [`lxmert_hf.submission`].

Like the official tools, the predictions must answer exactly the annotated questions: a missing or an extra id
is an error that says how many there are and lists a few, since a partial file would silently give another
number than the evaluation server.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Collection
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path

from lxmert_hf.metrics.gqa import gqa_accuracy
from lxmert_hf.metrics.nlvr2 import nlvr2_accuracy
from lxmert_hf.metrics.vqa import vqa_accuracy
from lxmert_hf.submission import read_gqa_submission, read_nlvr2_submission, read_utf8, read_vqa_submission

__all__ = [
    "check_coverage",
    "evaluate_gqa_files",
    "evaluate_nlvr2_files",
    "evaluate_vqa_files",
    "read_gqa_questions",
    "read_nlvr2_annotations",
    "read_vqa_annotations",
]

_EXAMPLES_SHOWN = 5


def check_coverage(
    expected: Collection,
    predicted: Collection,
    predictions_path: str | os.PathLike,
    allowed: Collection | None = None,
) -> None:
    """Raise a `ValueError` unless `predicted` holds every id in `expected` and no id outside `allowed`
    (defaults to `expected`).

    The message says how many ids are missing and how many are extra, with a few of each.
    """
    missing = [key for key in expected if key not in predicted]
    allowed = expected if allowed is None else allowed
    extra = [key for key in predicted if key not in allowed]
    if not missing and not extra:
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} annotated question(s) have no prediction (e.g. {_examples(missing)})")
    if extra:
        problems.append(
            f"{len(extra)} prediction(s) are for questions that are not annotated (e.g. {_examples(extra)})"
        )
    raise ValueError(
        f"{predictions_path} does not cover exactly the annotated questions: {'; '.join(problems)}. "
        "Predict every annotated question of this split and nothing else."
    )


def _examples(keys: list) -> str:
    shown = ", ".join(repr(key) for key in keys[:_EXAMPLES_SHOWN])
    return shown + (", ..." if len(keys) > _EXAMPLES_SHOWN else "")


def _load_json(path: str | os.PathLike, what: str) -> tuple[Path, object]:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected {what}, pass the file.")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist.")
    text = read_utf8(path, what)
    if not text.strip():
        raise ValueError(f"{path} is empty; expected {what}.")
    try:
        with _garbage_collection_paused():
            return path, json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); expected {what}.") from None


@contextmanager
def _garbage_collection_paused():
    # Reading and scoring a val split creates millions of small acyclic containers, which set off repeated full
    # collections that find nothing to free and double the running time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ---------------------------------------------------------------------------------------------------------------
# VQA v2


def _vqa_list(path: str | os.PathLike, key: str, other_key: str, what: str) -> tuple[Path, list]:
    path, data = _load_json(path, what)
    if isinstance(data, dict) and isinstance(data.get(key), list):
        if not data[key]:
            raise ValueError(f"{path}: `{key}` is an empty list; expected {what}.")
        return path, data[key]
    hint = ""
    if isinstance(data, dict) and other_key in data:
        hint = f" It holds `{other_key}`: the questions and annotations files look swapped."
    elif isinstance(data, list):
        hint = " It holds a JSON list, like a result file: check the order of the arguments."
    raise ValueError(f"{path} must be a JSON object with a `{key}` list ({what}).{hint}")


def read_vqa_annotations(path: str | os.PathLike) -> list[dict]:
    """Read an official VQA v2 annotations file (`v2_mscoco_*_annotations.json`), checking every record.

    Returns:
        `list[dict]`: in file order, `{"question_id": int, "answers": [str, ...], "answer_type": str,
        "question_type": str}` per question.
    """
    what = "VQA v2 annotations ({'annotations': [{question_id, answers, answer_type, question_type, ...}]})"
    path, records = _vqa_list(path, "annotations", "questions", what)
    annotations, seen = [], set()
    for index, record in enumerate(records):
        # A fast check of every record; the slow, precise diagnosis only runs on a bad one.
        try:
            question_id = record["question_id"]
            texts = [item["answer"] for item in record["answers"]]
            answer_type, question_type = record["answer_type"], record["question_type"]
        except (TypeError, KeyError):
            raise _annotation_error(path, index, record) from None
        valid = type(question_id) is int and type(answer_type) is str and type(question_type) is str
        # `map` with `isinstance` checks the 2 million answers of a val split at C speed.
        if not valid or not texts or not all(map(isinstance, texts, repeat(str))):
            raise _annotation_error(path, index, record)
        if question_id in seen:
            raise ValueError(
                f"{path}: annotation {index} repeats question {question_id}; each question must be annotated once."
            )
        seen.add(question_id)
        annotations.append(
            {"question_id": question_id, "answers": texts, "answer_type": answer_type, "question_type": question_type}
        )
    return annotations


def _annotation_error(path: Path, index: int, record: object) -> ValueError:
    where = f"{path}: annotation {index}"
    if not isinstance(record, dict):
        return ValueError(f"{where} must be an object, got {type(record).__name__}.")
    question_id = record.get("question_id")
    if isinstance(question_id, bool) or not isinstance(question_id, int):
        return ValueError(f"{where} has `question_id` {question_id!r}; it must be an integer.")
    where = f"{where} (question {question_id})"
    for key in ("answer_type", "question_type"):
        if not isinstance(record.get(key), str):
            return ValueError(f"{where} needs a string `{key}`, got {_short(record.get(key))}.")
    return ValueError(f"{where} needs a non-empty `answers` list of {{'answer': str, ...}} objects.")


def _read_vqa_question_ids(path: str | os.PathLike) -> list[int]:
    what = "VQA v2 questions ({'questions': [{question_id, image_id, question}]})"
    path, records = _vqa_list(path, "questions", "annotations", what)
    ids = []
    for index, record in enumerate(records):
        question_id = record.get("question_id") if isinstance(record, dict) else None
        if isinstance(question_id, bool) or not isinstance(question_id, int):
            raise ValueError(f"{path}: question {index} needs an integer `question_id`, got {_short(record)}.")
        ids.append(question_id)
    return ids


@_garbage_collection_paused()
def evaluate_vqa_files(
    questions: str | os.PathLike,
    annotations: str | os.PathLike,
    predictions: str | os.PathLike,
    precision: int | None = 2,
) -> dict:
    """Official VQA v2 accuracy of a result file.

    Args:
        questions (`str` or `os.PathLike`): the official questions file (`v2_OpenEnded_mscoco_*_questions.json`).
        annotations (`str` or `os.PathLike`): the official annotations file (`v2_mscoco_*_annotations.json`).
        predictions (`str` or `os.PathLike`): a result file `[{"question_id": int, "answer": str}, ...]`.
        precision (`int`, *optional*, defaults to 2): decimals of the reported percentages.

    Returns:
        `dict`: `{"overall": float, "perAnswerType": {...}, "perQuestionType": {...}}` in percent, the official
        tool's keys, computed over the questions in annotation-file order.

    Example:
        ```bash
        lxmert-hf evaluate vqa --questions v2_OpenEnded_mscoco_val2014_questions.json \\
            --annotations v2_mscoco_val2014_annotations.json --predictions val_predict.json
        ```
    """
    annotated = read_vqa_annotations(annotations)
    annotated_ids = {record["question_id"]: None for record in annotated}
    question_ids = set(_read_vqa_question_ids(questions))
    if question_ids != annotated_ids.keys():
        unannotated = len(question_ids - annotated_ids.keys())
        unasked = len(annotated_ids.keys() - question_ids)
        raise ValueError(
            f"{questions} and {annotations} describe different questions ({unannotated} question(s) without "
            f"annotation, {unasked} annotation(s) without question); pass the two files of the same split."
        )
    predicted = read_vqa_submission(predictions)
    check_coverage(annotated_ids, predicted, predictions)
    return vqa_accuracy(
        [predicted[record["question_id"]] for record in annotated],
        [record["answers"] for record in annotated],
        answer_types=[record["answer_type"] for record in annotated],
        question_types=[record["question_type"] for record in annotated],
        precision=precision,
    )


# ---------------------------------------------------------------------------------------------------------------
# GQA


def read_gqa_questions(path: str | os.PathLike) -> dict[str, dict]:
    """Read an official GQA questions file (`{questionId: {"answer": ..., "isBalanced": ..., "types": ...}}`).

    Returns:
        `dict[str, dict]`: the questions by id, in file order. A question without `isBalanced` counts as balanced.
    """
    what = "GQA questions ({questionId: {answer, isBalanced, types, ...}}, e.g. testdev_balanced_questions.json)"
    path, data = _load_json(path, what)
    if not isinstance(data, dict) or not data:
        hint = (
            " A list looks like a predictions file: check the order of the arguments."
            if isinstance(data, list)
            else ""
        )
        raise ValueError(f"{path} must be a non-empty JSON object {what}.{hint}")
    for question_id, question in data.items():
        where = f"{path}: question {question_id!r}"
        if not isinstance(question, dict):
            raise ValueError(f"{where} must be an object, got {type(question).__name__}.")
        if not isinstance(question.get("answer"), str):
            raise ValueError(
                f"{where} has no string `answer`; test-split questions are unlabeled: evaluate on val or testdev, "
                "or submit the predictions to the evaluation server."
            )
    return data


@_garbage_collection_paused()
def evaluate_gqa_files(
    questions: str | os.PathLike, predictions: str | os.PathLike, precision: int | None = 2
) -> dict:
    """GQA accuracy of a predictions file on the balanced questions of an official questions file.

    Predictions must answer every balanced question; they may also answer the unbalanced questions of the file
    (which are not scored, as in the official tool), but no question outside it.

    Args:
        questions (`str` or `os.PathLike`): an official GQA questions file, e.g. `testdev_balanced_questions.json`.
        predictions (`str` or `os.PathLike`): a predictions file `[{"questionId": str, "prediction": str}, ...]`.
        precision (`int`, *optional*, defaults to 2): decimals of the reported percentages.

    Returns:
        `dict`: see [`~lxmert_hf.metrics.gqa_accuracy`]; the type breakdowns are present when every scored
        question has `types`.
    """
    questions_by_id = read_gqa_questions(questions)
    balanced = {qid: question for qid, question in questions_by_id.items() if question.get("isBalanced", True)}
    if not balanced:
        raise ValueError(f"{questions} has no balanced question to score; pass a balanced questions file.")
    predicted = read_gqa_submission(predictions)
    # Unbalanced questions may be answered or not, as in the official tool; no other id is allowed.
    check_coverage(balanced, predicted, predictions, allowed=questions_by_id)
    types = [question.get("types") for question in balanced.values()]
    has_types = all(isinstance(kind, dict) and {"structural", "semantic"} <= kind.keys() for kind in types)
    return gqa_accuracy(
        [predicted[qid] for qid in balanced],
        [question["answer"] for question in balanced.values()],
        structural_types=[kind["structural"] for kind in types] if has_types else None,
        semantic_types=[kind["semantic"] for kind in types] if has_types else None,
        precision=precision,
    )


# ---------------------------------------------------------------------------------------------------------------
# NLVR2


def _parse_label(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def read_nlvr2_annotations(path: str | os.PathLike) -> dict[str, bool]:
    """Read NLVR2 labels: the official JSON lines (`{"identifier": ..., "label": "True"|"False", ...}` per line)
    or a JSON list of such records (labels may also be booleans or 0/1).

    Returns:
        `dict[str, bool]`: `{identifier: label}` in file order.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected NLVR2 examples (JSON lines), pass the file.")
    if not path.is_file():
        raise FileNotFoundError(f"NLVR2 annotations file {path} does not exist.")
    text = read_utf8(path, "NLVR2 examples")
    if not text.strip():
        raise ValueError(f"{path} is empty; expected NLVR2 examples (JSON lines with `identifier` and `label`).")
    try:
        if text.lstrip().startswith("["):
            records = list(enumerate(json.loads(text)))
            unit = "record"
        else:
            records = [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
            unit = "line"
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON or JSON lines ({error}).") from None
    labels: dict[str, bool] = {}
    for number, record in records:
        where = f"{path}, {unit} {number}"
        if not isinstance(record, dict) or not isinstance(record.get("identifier"), str):
            raise ValueError(f"{where} must be an object with a string `identifier`, got {_short(record)}.")
        label = _parse_label(record.get("label"))
        if label is None:
            raise ValueError(f"{where} needs a `label` of True/False (or 0/1), got {record.get('label')!r}.")
        if record["identifier"] in labels:
            raise ValueError(f"{where} repeats identifier {record['identifier']!r}.")
        labels[record["identifier"]] = label
    return labels


@_garbage_collection_paused()
def evaluate_nlvr2_files(
    annotations: str | os.PathLike, predictions: str | os.PathLike, precision: int | None = 2
) -> dict:
    """NLVR2 accuracy and consistency of a predictions CSV against the labeled examples.

    Args:
        annotations (`str` or `os.PathLike`): the official examples, e.g. `dev.json` (JSON lines).
        predictions (`str` or `os.PathLike`): a predictions CSV, `identifier,True|False` per line.
        precision (`int`, *optional*, defaults to 2): decimals of the reported percentages.

    Returns:
        `dict`: `{"accuracy": float, "consistency": float}` in percent.
    """
    labels = read_nlvr2_annotations(annotations)
    predicted = read_nlvr2_submission(predictions)
    check_coverage(labels, predicted, predictions)
    identifiers = list(labels)
    return nlvr2_accuracy(
        [predicted[identifier] for identifier in identifiers],
        [labels[identifier] for identifier in identifiers],
        identifiers=identifiers,
        precision=precision,
    )


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
