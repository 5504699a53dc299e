"""Reading answer lists (index = label id) from every form they come in; [`AnswerVocabulary.load`] is the entry.

Accepted sources:

- a list of answer strings (the `trainval_label2ans.json` layout), or of `{"ans": answer, ...}` records (the
  pre-training QA head's `all_ans.json`);
- a dict `{answer: label id}` (`trainval_ans2label.json`) or `{label id: answer}` (a config's `id2label`, whose
  JSON keys are strings); the ids must be exactly 0..n-1;
- a file holding any of these as JSON, or a text file with one answer per line (line n = label n-1);
- an http(s) URL of such a file, downloaded once and cached under `$HF_HOME/lxmert_hf/answers`;
- a file of a Hugging Face Hub repo, `hf://[datasets/|spaces/]owner/name[@revision]/path/in/repo` (the
  `HfFileSystem` form), downloaded and cached by `huggingface_hub`.

The empty string is a valid answer: the original VQA vocabulary has it at label 0.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lxmert_hf.downloads import URL_PREFIXES, URL_TIMEOUT_S, cache_dir, check_url_scheme, read_cached_url
from lxmert_hf.locations import HubUnavailableError, hub_file

__all__ = [
    "HUB_FILE_PREFIX",
    "URL_TIMEOUT_S",
    "answers_cache_dir",
    "check_answer_list",
    "parse_answer_text",
    "parse_answers",
    "parse_hub_file",
    "read_answers",
]

HUB_FILE_PREFIX = "hf://"
_REPO_TYPES = {"datasets": "dataset", "spaces": "space", "models": "model"}
_LAYOUTS = (
    "a list of answers (trainval_label2ans.json), a list of {'ans': answer} records (all_ans.json), an "
    "{answer: label id} dict (trainval_ans2label.json) or a {label id: answer} dict (id2label)"
)
_SOURCES = "a file (JSON, or text with one answer per line), an http(s) URL, an hf:// file or a list of answers"


def answers_cache_dir() -> Path:
    """Where answer lists downloaded from http(s) URLs are cached: `$HF_HOME/lxmert_hf/answers`."""
    return cache_dir("answers")


def read_answers(source: object) -> list[str]:
    """The checked answer list of `source`, in any form the module docstring lists; errors name the source.

    Example:
        ```python
        >>> read_answers({"no": 1, "yes": 0})
        ['yes', 'no']
        ```
    """
    if isinstance(source, str | os.PathLike):
        return _read_reference(source)
    if source is None:
        raise ValueError(f"the answer list is None; pass {_SOURCES}.")
    return parse_answers(source, "`answers`")


def parse_answers(data: object, where: str) -> list[str]:
    """The checked answer list of parsed JSON or Python objects in any accepted layout; errors name `where`."""
    if isinstance(data, Mapping):
        answers = _from_mapping(data, where)
    elif isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise ValueError(f"{where}: expected {_LAYOUTS}; got {type(data).__name__}.")
    else:
        items = list(data)
        answers = _from_records(items, where) if items and isinstance(items[0], Mapping) else items
    return check_answer_list(answers, where)


def check_answer_list(answers: object, where: str = "`answers`") -> list[str]:
    """`answers` as a list, checked: non-empty, strings only, each answer once. Errors name `where`."""
    if isinstance(answers, str) or not isinstance(answers, Iterable):
        raise ValueError(f"{where} must be a non-empty list of answer strings, index = label id.")
    answers = list(answers)
    if not answers:
        raise ValueError(
            f"{where} is empty; an answer list must be a non-empty list of answer strings, index = label id."
        )
    first_label: dict[str, int] = {}
    for label, answer in enumerate(answers):
        if not isinstance(answer, str):
            hint = " (mix of records and strings: use one layout)" if isinstance(answer, Mapping) else ""
            raise ValueError(f"{where}: entry {label} must be an answer string, got {type(answer).__name__}{hint}.")
        if answer in first_label:
            raise ValueError(
                f"{where} repeats {answer!r} at labels {first_label[answer]} and {label}; each label needs its own "
                "answer: remove the repeat."
            )
        first_label[answer] = label
    return answers


def _from_records(records: list, where: str) -> list:
    answers = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(
                f"{where}: entry {index} is a {type(record).__name__} but entry 0 is a record; expected "
                "{'ans': answer, ...} records throughout (the all_ans.json layout)."
            )
        if "ans" not in record:
            raise ValueError(
                f"{where}: record {index} has no 'ans' key (keys {list(record)[:5]}); expected "
                "{'ans': answer, ...} records (the all_ans.json layout)."
            )
        answers.append(record["ans"])
    return answers


def _from_mapping(data: Mapping, where: str) -> list[str]:
    if not data:
        raise ValueError(f"{where} is an empty dict; expected {_LAYOUTS}.")
    values = list(data.values())
    if all(isinstance(value, str) for value in values):
        pairs = [(_label_id(key, where), answer) for key, answer in data.items()]
    elif all(_is_integer(value) for value in values):
        pairs = [(int(label), answer) for answer, label in data.items()]
    else:
        raise ValueError(
            f"{where}: a dict must map answers to label ids or label ids to answers, not mix them (values of types "
            f"{sorted({type(value).__name__ for value in values})}); expected {_LAYOUTS}."
        )
    return _by_label(pairs, where)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _label_id(key: object, where: str) -> int:
    if _is_integer(key):
        return int(key)
    if isinstance(key, str) and key.isdecimal():
        return int(key)
    raise ValueError(
        f"{where}: key {key!r} is not a label id; a dict of answers must be {{label id: answer}} (id2label) or "
        "{answer: label id} (trainval_ans2label.json)."
    )


def _by_label(pairs: list[tuple[int, object]], where: str) -> list:
    by_label: dict[int, object] = {}
    for label, answer in pairs:
        if label in by_label:
            raise ValueError(
                f"{where}: label id {label} is given to both {by_label[label]!r} and {answer!r}; each label id "
                "names one answer."
            )
        by_label[label] = answer
    expected = range(len(by_label))
    if set(by_label) != set(expected):
        missing = sorted(set(expected) - set(by_label))[:5]
        outside = sorted(set(by_label) - set(expected))[:5]
        raise ValueError(
            f"{where}: the label ids must be exactly 0..{len(by_label) - 1} (one per answer); missing {missing}, "
            f"out of range {outside}. Renumber the answers from 0."
        )
    return [by_label[label] for label in expected]


# -- files, URLs and Hub files ------------------------------------------------------------------------------------
def _read_reference(source: str | os.PathLike) -> list[str]:
    text = os.fspath(source)
    if isinstance(source, str) and source.startswith(URL_PREFIXES):
        return _read_url(source)
    if isinstance(source, str) and source.startswith(HUB_FILE_PREFIX):
        return _read_file(_hub_file(source), source)
    check_url_scheme(source, "answer list", also=("hf",))
    if not text.strip():
        raise ValueError(f"the answer source is an empty string; pass {_SOURCES}.")
    path = Path(text).expanduser()
    if path.is_dir():
        raise ValueError(f"answer list {path} is a folder; pass the answer file inside it.")
    if not path.is_file():
        raise FileNotFoundError(f"answer list {path} does not exist; pass {_SOURCES}.")
    return _read_file(path, text)


def _read_file(path: Path, where: str) -> list[str]:
    return _parse_bytes(path.read_bytes(), where, is_json=path.suffix.lower() == ".json")


def _parse_bytes(data: bytes, where: str, is_json: bool) -> list[str]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{where} is not UTF-8 text ({error}); expected {_LAYOUTS}, or one answer per line."
        ) from None
    return parse_answer_text(text, where, is_json=is_json)


def parse_answer_text(text: str, where: str, is_json: bool = False) -> list[str]:
    """The answer list of a file's text: JSON when `is_json` or when it starts with `[` or `{`, otherwise one
    answer per line (trailing blank lines are ignored)."""
    if not text.strip():
        raise ValueError(f"{where} is empty; expected {_LAYOUTS}, or one answer per line.")
    if is_json or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error}); expected {_LAYOUTS}.") from None
        return parse_answers(data, where)
    lines = text.splitlines()
    while not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(
                f"{where}: line {number} is blank; write one answer per line (an empty answer needs the JSON "
                "list layout)."
            )
    return check_answer_list(lines, where)


def _read_url(url: str) -> list[str]:
    is_json = Path(urlsplit(url).path).suffix.lower() == ".json"
    return read_cached_url(
        url,
        "answers",
        lambda data, where: _parse_bytes(data, where, is_json),
        "the answer list",
        "download it and pass the file.",
    )


def parse_hub_file(reference: str) -> tuple[str, str, str | None, str]:
    """Split `hf://[datasets/|spaces/]owner/name[@revision]/path` into `(repo_type, repo_id, revision, path)`.

    Example:
        ```python
        >>> parse_hub_file("hf://datasets/me/vqa@v1/answers/label2ans.json")
        ('dataset', 'me/vqa', 'v1', 'answers/label2ans.json')
        ```
    """
    parts = reference[len(HUB_FILE_PREFIX) :].split("/")
    repo_type = _REPO_TYPES[parts.pop(0)] if parts[0] in _REPO_TYPES else "model"
    if len(parts) < 3 or not all(parts):
        raise ValueError(
            f"{reference} is not a Hub file; write hf://owner/name/path/to/file (a model repo), "
            "hf://datasets/owner/name/path/to/file, and @revision after the name if needed."
        )
    owner, name, *path = parts
    name, _, revision = name.partition("@")
    return repo_type, f"{owner}/{name}", unquote(revision) or None, "/".join(path)


def _hub_file(reference: str) -> Path:
    repo_type, repo_id, revision, filename = parse_hub_file(reference)
    fix = "check the repo, the path and your access, or download the file and pass it."
    try:
        path = hub_file(repo_id, filename, "answer list", repo_type=repo_type, revision=revision)
    except HubUnavailableError:
        raise
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot download the answer list {reference}: {error}; {fix}") from error
    if path is None:
        raise ValueError(f"cannot download the answer list {reference}: {repo_id} has no file {filename!r}; {fix}")
    return Path(path)
