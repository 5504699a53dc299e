"""The sentences of pre-training, read from each kind of source: one [`Sentence`] per (image, sentence).

- `"lxmert"`: the original pre-training files (`data/lxmert/mscoco_train.json`, `vgnococo.json`, ...): a JSON list
  of records `{"img_id": ..., "sentf": {source: [sentence, ...]}, "labelf": {source: [{answer: score}, ...]}}`.
  A source with an entry in `labelf` holds questions (VQA, GQA, Visual7W); `labelf[source][i]` answers
  `sentf[source][i]`. The other sources hold captions (`mscoco`, `vg`).
- `"prepared"`: one split of a directory written by `prepare_vqa` / `prepare_gqa`: its questions, answered by their
  `label_answers` / `label_scores`.
- `"captions"`: a JSON list, or JSON lines, of `{"image_id": ..., "caption": ...}` records.

Sources are named as [`PretrainingSource`] values or as strings `kind:path` (`prepared:path@split`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import datasets

from lxmert_hf.data.builder import METADATA_NAME, read_prepared

SOURCE_KINDS = ("lxmert", "prepared", "captions")
# The question sets of a prepared directory that pre-training can use: NLVR2 statements describe image pairs.
QUESTION_TASKS = ("vqa", "gqa")


class Sentence(NamedTuple):
    """One pre-training sentence: its id, image, text, source, whether it is a question, and its answers
    (`{answer: score}` as the source gives them; `None` when it has none)."""

    sentence_id: str
    image_id: str
    sentence: str
    source: str
    is_question: bool
    label: dict[str, float] | None


@dataclasses.dataclass(frozen=True)
class PretrainingSource:
    r"""
    One source of pre-training sentences.

    Args:
        kind (`str`): `"lxmert"` (an original `data/lxmert/*.json` file), `"prepared"` (a prepared VQA / GQA
            directory) or `"captions"` (a JSON or JSON-lines file of `{"image_id", "caption"}` records).
        path (`str`): the file or directory.
        split (`str`, *optional*): the split of a prepared directory (required there, refused elsewhere).
        name (`str`, *optional*): the source name recorded with a caption file's sentences (default
            `"captions"`); the other kinds name their sentences themselves.

    Example:
        ```python
        >>> PretrainingSource.parse("prepared:data/vqa@train")
        PretrainingSource(kind='prepared', path='data/vqa', split='train', name=None)
        >>> PretrainingSource.parse("captions:coco_captions.jsonl").kind
        'captions'
        ```
    """

    kind: str
    path: str
    split: str | None = None
    name: str | None = None

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"pre-training source kind must be one of {list(SOURCE_KINDS)}, got {self.kind!r}.")
        if self.kind == "prepared" and not self.split:
            raise ValueError(f"the prepared source {self.path} needs a split: write it `prepared:{self.path}@train`.")
        if self.kind != "prepared" and self.split is not None:
            raise ValueError(f"only prepared directories have splits; the {self.kind} source {self.path} has none.")

    @classmethod
    def parse(cls, text: str | os.PathLike | PretrainingSource) -> PretrainingSource:
        """`kind:path`, or `prepared:path@split`, as a source (a source is returned as is)."""
        if isinstance(text, PretrainingSource):
            return text
        kind, separator, path = str(text).partition(":")
        if not separator or kind not in SOURCE_KINDS or not path:
            raise ValueError(
                f"pre-training source {str(text)!r} must be written `kind:path` with kind one of {list(SOURCE_KINDS)} "
                "(e.g. `lxmert:data/lxmert/mscoco_train.json`, `prepared:data/vqa@train`, `captions:captions.jsonl`)."
            )
        if kind == "prepared":
            path, _, split = path.rpartition("@")
            if not path or not split:
                raise ValueError(f"the prepared source {str(text)!r} needs a split: write it `prepared:DIR@train`.")
            return cls(kind, path, split)
        return cls(kind, path)

    def identity(self) -> str:
        """What the sentences read from this source depend on: the kind, the resolved path, the split, and the size
        and modification time of the file (of the metadata file, for a prepared directory)."""
        path = Path(self.path).resolve()
        stamp = _stamp(path / METADATA_NAME if self.kind == "prepared" else path)
        return f"{self.kind}|{path}|{self.split}|{self.name}|{stamp}"

    def read(self) -> Iterator[Sentence]:
        """The sentences of this source, in file order; a source without any is an error naming it."""
        readers = {"lxmert": read_lxmert_json, "prepared": read_prepared_questions, "captions": read_captions}
        reader = readers[self.kind]
        arguments = (self.path, self.split) if self.kind == "prepared" else (self.path,)
        if self.kind == "captions" and self.name:
            arguments = (self.path, self.name)
        count = 0
        for sentence in reader(*arguments):
            count += 1
            yield sentence
        if not count:
            raise ValueError(f"the {self.kind} source {self.path} holds no sentences; give a source with sentences.")


def _stamp(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"pre-training source {path} does not exist.")
    stat = path.stat()
    return f"{stat.st_size}|{stat.st_mtime_ns}"


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); give the {what} as written.") from None


def read_lxmert_json(path: str | os.PathLike) -> Iterator[Sentence]:
    r"""
    The sentences of an original pre-training file (`data/lxmert/*.json`), one per (image, source, sentence).

    Sentence ids follow the original's `{img_id}_{source}_{index:03d}`. A source listed in `labelf` holds
    questions: its sentences are questions, with their `{answer: score}` label (possibly empty).

    Example:
        ```python
        >>> import json, tempfile
        >>> path = tempfile.mktemp(suffix=".json")
        >>> records = [{"img_id": "COCO_1", "sentf": {"mscoco": ["A cat."], "vqa": ["Is it a cat?"]},
        ...             "labelf": {"vqa": [{"yes": 1.0}]}}]
        >>> _ = open(path, "w").write(json.dumps(records))
        >>> [(s.sentence_id, s.is_question, s.label) for s in read_lxmert_json(path)]
        [('COCO_1_mscoco_000', False, None), ('COCO_1_vqa_000', True, {'yes': 1.0})]
        ```
    """
    path = Path(path)
    records = _load_json(path, "pre-training file")
    if not isinstance(records, list):
        raise ValueError(
            f"{path}: expected a JSON list of records (img_id, sentf, labelf), got {type(records).__name__}."
        )
    for index, record in enumerate(records):
        where = f"{path}: record {index}"
        image_id, sentf, labelf = _lxmert_record(record, where)
        for source, sentences in sentf.items():
            labels = labelf.get(source)
            _check_lxmert_lists(sentences, labels, f"{where} (img_id {image_id!r}), source {source!r}")
            for position, text in enumerate(sentences):
                label = None if labels is None else {str(a): float(s) for a, s in labels[position].items()}
                sentence_id = f"{image_id}_{source}_{position:03d}"
                yield Sentence(sentence_id, image_id, text, str(source), labels is not None, label)


def _lxmert_record(record: object, where: str) -> tuple[str, Mapping, Mapping]:
    if not isinstance(record, Mapping) or "img_id" not in record or not isinstance(record.get("sentf"), Mapping):
        raise ValueError(f"{where}: expected a record with `img_id` and a `sentf` dict of sentence lists.")
    labelf = record.get("labelf", {})
    if not isinstance(labelf, Mapping):
        raise ValueError(f"{where}: `labelf` must be a dict {{source: [{{answer: score}}, ...]}}.")
    return str(record["img_id"]), record["sentf"], labelf


def _check_lxmert_lists(sentences: object, labels: object, where: str) -> None:
    if not isinstance(sentences, list) or not all(isinstance(s, str) and s.strip() for s in sentences):
        raise ValueError(f"{where}: `sentf` must list non-empty sentence strings.")
    if labels is None:
        return
    if not isinstance(labels, list) or len(labels) != len(sentences):
        raise ValueError(f"{where}: `labelf` must give one {{answer: score}} dict per sentence of `sentf`.")
    for label in labels:
        if not isinstance(label, Mapping) or not all(isinstance(v, int | float) for v in label.values()):
            raise ValueError(f"{where}: each `labelf` entry must be a dict {{answer: score}}, got {label!r}.")


def read_prepared_questions(prepared_dir: str | os.PathLike, split: str) -> Iterator[Sentence]:
    r"""
    The questions of one split of a prepared VQA / GQA directory as pre-training sentences, answered by their
    `label_answers` / `label_scores` (a split without answers, such as a test split, gives empty labels).

    Example:
        ```python
        >>> sentences = read_prepared_questions("data/vqa", "train")  # doctest: +SKIP
        >>> next(sentences).source  # doctest: +SKIP
        'vqa'
        ```
    """
    metadata = read_prepared(prepared_dir)
    task = metadata["task"]
    if task not in QUESTION_TASKS:
        raise ValueError(
            f"{prepared_dir} holds {task} data; pre-training reads the questions of prepared "
            f"{' or '.join(QUESTION_TASKS)} directories (NLVR2 statements describe image pairs)."
        )
    splits = datasets.load_from_disk(str(Path(prepared_dir) / "questions"))
    if split not in splits:
        raise ValueError(f"{prepared_dir} has no split {split!r}; it has {sorted(splits)}.")
    columns = ["question_id", "image_id", "question", "label_answers", "label_scores"]
    for batch in splits[split].select_columns(columns).iter(batch_size=10_000):
        for question_id, image_id, text, answers, scores in zip(*(batch[c] for c in columns), strict=True):
            label = dict(zip(answers, (float(score) for score in scores), strict=True))
            yield Sentence(f"{task}_{question_id}", str(image_id), text, task, True, label)


def read_captions(path: str | os.PathLike, name: str = "captions") -> Iterator[Sentence]:
    r"""
    The captions of a JSON list, or JSON lines, of `{"image_id": ..., "caption": ...}` records.

    Example:
        ```python
        >>> import tempfile
        >>> path = tempfile.mktemp(suffix=".jsonl")
        >>> _ = open(path, "w").write('{"image_id": "a", "caption": "A red cube."}\n')
        >>> [tuple(s) for s in read_captions(path)]
        [('captions_0', 'a', 'A red cube.', 'captions', False, None)]
        ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} does not exist.")
    for where, index, record in _caption_records(path):
        if not isinstance(record, Mapping) or not isinstance(record.get("image_id"), str | int):
            raise ValueError(f"{where}: expected a record {{'image_id': ..., 'caption': ...}}, got {record!r}.")
        caption = record.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where} (image {record['image_id']!r}): `caption` must be a non-empty string.")
        yield Sentence(f"{name}_{index}", str(record["image_id"]), caption, name, False, None)


def _caption_records(path: Path) -> Iterator[tuple[str, int, object]]:
    """`(location, index, record)` of a JSON list (told apart by its first character) or of JSON lines."""
    with open(path, encoding="utf-8") as file:
        head = file.read(4096).lstrip()
    if head.startswith("["):
        records = _load_json(path, "caption file")
        for index, record in enumerate(records):
            yield f"{path}: record {index}", index, record
        return
    with open(path, encoding="utf-8") as file:
        index = 0
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not valid JSON ({error}).") from None
            yield f"{path}: line {number}", index, record
            index += 1
