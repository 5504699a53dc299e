"""Prediction files in the formats the official evaluation servers and tools accept.

| task  | file                                                  | in Python             |
|-------|-------------------------------------------------------|-----------------------|
| VQA   | JSON `[{"question_id": int, "answer": str}, ...]`     | `{question_id: answer}` |
| GQA   | JSON `[{"questionId": str, "prediction": str}, ...]`  | `{question_id: answer}` |
| NLVR2 | CSV lines `identifier,True` or `identifier,False`     | `{identifier: bool}`    |

Writers replace the file atomically ([`lxmert_hf.files.write_text_atomic`]: a temporary file in the same folder,
then a rename), so an interrupted run never leaves a truncated submission behind. Readers are strict: a wrong type,
a missing key or a repeated id is an error naming the file and the record.

Example:
    ```python
    >>> import os, tempfile
    >>> from lxmert_hf.submission import read_vqa_submission, write_vqa_submission
    >>> path = os.path.join(tempfile.mkdtemp(), "vqa_test.json")
    >>> write_vqa_submission(path, {262144000: "yes", 262144001: "2"}).name
    'vqa_test.json'
    >>> read_vqa_submission(path)
    {262144000: 'yes', 262144001: '2'}
    ```
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lxmert_hf.files import write_text_atomic

__all__ = [
    "read_gqa_submission",
    "read_nlvr2_submission",
    "read_vqa_submission",
    "write_gqa_submission",
    "write_nlvr2_submission",
    "write_vqa_submission",
]

_NLVR2_VALUES = {"true": True, "false": False}


# ---------------------------------------------------------------------------------------------------------------
# Writers


def _check_mapping(predictions: object, what: str) -> None:
    if not isinstance(predictions, Mapping):
        raise ValueError(f"`predictions` must be a mapping {what}, got {type(predictions).__name__}.")
    if not predictions:
        raise ValueError("`predictions` is empty: there is nothing to write.")


def write_vqa_submission(path: str | os.PathLike, predictions: Mapping[int, str]) -> Path:
    """Write a VQA v2 result file, `[{"question_id": int, "answer": str}, ...]`, in the mapping's order.

    Args:
        path (`str` or `os.PathLike`): the file to write (its folder must exist).
        predictions (`Mapping[int, str]`): `{question_id: answer}`.

    Returns:
        `Path`: the written file.
    """
    _check_mapping(predictions, "{question_id (int): answer (str)}")
    records = []
    for question_id, answer in predictions.items():
        if isinstance(question_id, (bool, np.bool_)) or not isinstance(question_id, (int, np.integer)):
            raise ValueError(f"VQA question ids must be integers, got {question_id!r}; convert them with `int()`.")
        if not isinstance(answer, str):
            raise ValueError(f"the answer to question {question_id} must be a string, got {type(answer).__name__}.")
        records.append({"question_id": int(question_id), "answer": answer})
    return write_text_atomic(path, json.dumps(records, ensure_ascii=False))


def write_gqa_submission(path: str | os.PathLike, predictions: Mapping[str, str]) -> Path:
    """Write a GQA predictions file, `[{"questionId": str, "prediction": str}, ...]`, in the mapping's order.

    Args:
        path (`str` or `os.PathLike`): the file to write (its folder must exist).
        predictions (`Mapping[str, str]`): `{question_id: answer}`; GQA question ids are strings.

    Returns:
        `Path`: the written file.
    """
    _check_mapping(predictions, "{question_id (str): answer (str)}")
    records = []
    for question_id, answer in predictions.items():
        if not isinstance(question_id, str):
            raise ValueError(f"GQA question ids are strings, got {question_id!r}; convert them with `str()`.")
        if not isinstance(answer, str):
            raise ValueError(f"the answer to question {question_id!r} must be a string, got {type(answer).__name__}.")
        records.append({"questionId": question_id, "prediction": answer})
    return write_text_atomic(path, json.dumps(records, ensure_ascii=False))


def write_nlvr2_submission(path: str | os.PathLike, predictions: Mapping[str, bool]) -> Path:
    """Write an NLVR2 predictions file: one `identifier,True` or `identifier,False` line per example.

    Args:
        path (`str` or `os.PathLike`): the file to write (its folder must exist).
        predictions (`Mapping[str, bool]`): `{identifier: predicted truth value}` (booleans or 0/1).

    Returns:
        `Path`: the written file.
    """
    _check_mapping(predictions, "{identifier (str): prediction (bool)}")
    lines = []
    for identifier, value in predictions.items():
        if not isinstance(identifier, str) or not identifier or any(c in identifier for c in ",\r\n"):
            raise ValueError(
                f"NLVR2 identifiers must be non-empty strings without commas or newlines, got {identifier!r}."
            )
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
            lines.append(f"{identifier},{bool(value)}\n")
        else:
            raise ValueError(f"the prediction for {identifier!r} must be a boolean (or 0/1), got {value!r}.")
    return write_text_atomic(path, "".join(lines))


# ---------------------------------------------------------------------------------------------------------------
# Readers


def read_utf8(path: Path, what: str) -> str:
    """The text of `path`; a file that is not UTF-8 is a `ValueError` naming it and the `what` expected there."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); expected {what}."
        ) from None


def _read_text(path: str | os.PathLike, what: str) -> tuple[Path, str]:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected {what}, pass the file.")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist.")
    text = read_utf8(path, what)
    if not text.strip():
        raise ValueError(f"{path} is empty; expected {what}.")
    return path, text


def _read_json_records(path: str | os.PathLike, layout: str, keys: tuple[str, str]) -> tuple[Path, list[dict]]:
    path, text = _read_text(path, f"a JSON list of {layout}")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); expected a list of {layout}.") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of {layout}, got a JSON {type(records).__name__}.")
    if not records:
        raise ValueError(f"{path} holds an empty list; expected {layout}.")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not all(key in record for key in keys):
            raise ValueError(f"{path}: record {index} must be an object {layout}, got {_shorten(record)}.")
    return path, records


def read_vqa_submission(path: str | os.PathLike) -> dict[int, str]:
    """Read a VQA v2 result file into `{question_id: answer}`, in file order.

    Raises:
        `ValueError`: naming the file and the record, for anything but a non-empty JSON list of
            `{"question_id": int, "answer": str}` with distinct question ids.
    """
    layout = '{"question_id": int, "answer": str}'
    path, records = _read_json_records(path, layout, ("question_id", "answer"))
    predictions: dict[int, str] = {}
    for index, record in enumerate(records):
        question_id, answer = record["question_id"], record["answer"]
        if isinstance(question_id, bool) or not isinstance(question_id, int):
            raise ValueError(f"{path}: record {index} has `question_id` {question_id!r}; it must be an integer.")
        if not isinstance(answer, str):
            raise ValueError(f"{path}: record {index} (question {question_id}) has a non-string `answer` {answer!r}.")
        if question_id in predictions:
            raise ValueError(f"{path}: record {index} repeats question {question_id}; keep one answer per question.")
        predictions[question_id] = answer
    return predictions


def read_gqa_submission(path: str | os.PathLike) -> dict[str, str]:
    """Read a GQA predictions file into `{question_id: answer}`, in file order.

    Raises:
        `ValueError`: naming the file and the record, for anything but a non-empty JSON list of
            `{"questionId": str, "prediction": str}` with distinct question ids.
    """
    layout = '{"questionId": str, "prediction": str}'
    path, records = _read_json_records(path, layout, ("questionId", "prediction"))
    predictions: dict[str, str] = {}
    for index, record in enumerate(records):
        question_id, answer = record["questionId"], record["prediction"]
        if not isinstance(question_id, str):
            raise ValueError(f"{path}: record {index} has `questionId` {question_id!r}; GQA question ids are strings.")
        if not isinstance(answer, str):
            raise ValueError(f"{path}: record {index} ({question_id!r}) has a non-string `prediction` {answer!r}.")
        if question_id in predictions:
            raise ValueError(f"{path}: record {index} repeats question {question_id!r}; keep one answer per question.")
        predictions[question_id] = answer
    return predictions


def read_nlvr2_submission(path: str | os.PathLike) -> dict[str, bool]:
    """Read an NLVR2 predictions CSV (`identifier,True|False` per line, no header) into `{identifier: bool}`.

    The values are read case-insensitively, as the official tool compares them. Blank lines are skipped.

    Raises:
        `ValueError`: naming the file and the line, for a line without exactly two fields, a value other than
            True/False, or a repeated identifier.
    """
    path, text = _read_text(path, "NLVR2 predictions (`identifier,True|False` lines)")
    predictions: dict[str, bool] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) != 2 or not fields[0]:
            raise ValueError(f"{path}, line {number}: expected `identifier,True` or `identifier,False`, got {line!r}.")
        identifier, value = fields
        if value.strip().lower() not in _NLVR2_VALUES:
            raise ValueError(f"{path}, line {number}: the prediction must be True or False, got {value!r}.")
        if identifier in predictions:
            raise ValueError(f"{path}, line {number}: repeats identifier {identifier!r}; keep one line per example.")
        predictions[identifier] = _NLVR2_VALUES[value.strip().lower()]
    if not predictions:
        raise ValueError(f"{path} holds no prediction lines; expected `identifier,True|False` lines.")
    return predictions


def _shorten(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
