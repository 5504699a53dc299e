"""The pre-training dataset: every (image, sentence) of the sources, joined to a feature store at read time.

The sentences are written once into an Arrow file of the `datasets` cache (keyed by the sources' paths, sizes and
modification times, and the answer list), so that memory does not grow with their number. Reading a batch gathers
its images' regions from the store, and, for the object and attribute objectives, the detector's labels of those
regions: nothing is copied per sentence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from lxmert_hf.answers import AnswerVocabulary, lxmert_qa_normalize
from lxmert_hf.data.join import JoinFeatures
from lxmert_hf.data.pretraining.sources import PretrainingSource
from lxmert_hf.data.store import FeatureStore, open_store_dataset, read_manifest

SENTENCE_FEATURES = datasets.Features(
    {
        "sentence_id": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "sentence": datasets.Value("string"),
        "source": datasets.Value("string"),
        "is_question": datasets.Value("bool"),
        "qa_answers": datasets.List(datasets.Value("string")),
        "qa_label_ids": datasets.List(datasets.Value("int64")),
        "qa_scores": datasets.List(datasets.Value("float32")),
    }
)
# The store columns each label objective of `LxmertForPreTraining` reads: the detector's label and confidence.
REGION_LABEL_COLUMNS = {"obj": ("object_ids", "object_scores"), "attr": ("attribute_ids", "attribute_scores")}
VISUAL_LOSSES = ("obj", "attr", "feat")
_OBJECTIVE_NAMES = {"obj": "object-label classification", "attr": "attribute classification"}
_FORMAT = 1

logger = logging.getLogger(__name__)


def map_qa_label(label: Mapping[str, float], label2id: Mapping[str, int]) -> dict[str, float]:
    """
    An `{answer: score}` label mapped onto the answers of the pre-training QA head, by the original rule.

    Each answer is converted as the original `AnswerTable.convert_ans` does
    ([`~lxmert_hf.answers.lxmert_qa_normalize`]); an answer whose conversion is not among the head's answers is
    dropped; a converted answer takes the score of the last answer converted to it, in the label's order (the
    original renames in place).

    Example:
        ```python
        >>> map_qa_label({"Two": 0.3, "2": 1.0, "zebra": 0.6, "the man": 0.9}, {"2": 0, "man": 1})
        {'2': 0.3, 'man': 0.9}
        ```
    """
    mapped = dict(label)
    for answer in list(mapped):
        converted = lxmert_qa_normalize(answer)
        if converted not in label2id:
            mapped.pop(answer)
        elif converted != answer:
            mapped[converted] = mapped.pop(answer)
    return mapped


def load_qa_answers(source: object, qa_sets: Collection[str] | None = None) -> AnswerVocabulary:
    """
    The answers of the pre-training QA head (index = row of its classifier), from `all_ans.json` or any answer list
    [`~lxmert_hf.answers.AnswerVocabulary.load`] reads.

    With `qa_sets` (e.g. `{"vqa", "gqa"}`), only the answers whose `dsets` meet those sets are kept, as the
    original's `--qaSets`: `source` must then be `all_ans.json` records (a local file or the parsed list).

    Example:
        ```python
        >>> records = [{"ans": "yes", "dsets": ["vqa", "gqa"]}, {"ans": "pony", "dsets": ["visual7w"]}]
        >>> load_qa_answers(records).answers, load_qa_answers(records, qa_sets={"gqa"}).answers
        (['yes', 'pony'], ['yes'])
        ```
    """
    if qa_sets is None:
        return AnswerVocabulary.load(source)
    if isinstance(qa_sets, str):
        raise ValueError(
            f"`qa_sets` must be a collection of set names, got the string {qa_sets!r}; pass [{qa_sets!r}]."
        )
    wanted = {name.strip().lower() for name in qa_sets}
    records = source
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"answer file {path} does not exist; give the QA head's all_ans.json.")
        records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list) or not all(isinstance(r, Mapping) and "dsets" in r for r in records):
        raise ValueError(
            "`qa_sets` filters all_ans.json records ({'ans': answer, 'dsets': [...]}); "
            f"{source!r} is not such a list."
        )
    kept = [record for record in records if wanted & set(record["dsets"])]
    if not kept:
        raise ValueError(f"no answer of {source!r} belongs to the QA sets {sorted(wanted)}; check `qa_sets`.")
    return AnswerVocabulary.load(kept)


def check_region_labels(store: FeatureStore, visual_losses: Iterable[str]) -> None:
    """Raise a `ValueError` naming the objective and the fix when the store lacks the detector labels it needs."""
    unknown = sorted(set(visual_losses) - set(VISUAL_LOSSES))
    if unknown:
        raise ValueError(f"unknown visual losses {unknown}; choose among {list(VISUAL_LOSSES)}.")
    present = set(read_manifest(store.store_dir).get("optional_columns") or ())
    for objective in (loss for loss in visual_losses if loss in REGION_LABEL_COLUMNS):
        lacking = [column for column in REGION_LABEL_COLUMNS[objective] if column not in present]
        if lacking:
            raise ValueError(
                f"the pre-training objective {objective!r} ({_OBJECTIVE_NAMES[objective]}) needs the detector's "
                f"{' and '.join(lacking)} per region, which the feature store at {store.store_dir} does not hold. "
                "Make the features with the Faster R-CNN extractor (`lxmert-hf extract`), or prepare them from "
                "LXMERT feature TSVs carrying objects_id/attrs_id (`lxmert-hf prepare features --tsv ...`); or "
                f"leave {objective!r} out of the visual losses."
            )


class RegionLabels:
    """The detector's labels and confidences of stored regions, read by image id from the memory-mapped store (one
    `take` per batch). Pickles as its arguments, for `DataLoader` workers."""

    def __init__(self, store_dir: str | os.PathLike, visual_losses: Sequence[str]):
        self.store_dir = Path(store_dir)
        self.visual_losses = tuple(loss for loss in visual_losses if loss in REGION_LABEL_COLUMNS)
        self.columns = [column for loss in self.visual_losses for column in REGION_LABEL_COLUMNS[loss]]
        table = open_store_dataset(self.store_dir).data.table
        self._rows = {image_id: row for row, image_id in enumerate(table.column("image_id").to_pylist())}
        self._table = table.select(self.columns)

    def __reduce__(self):
        return type(self), (self.store_dir, self.visual_losses)

    def __call__(self, image_ids: Sequence[str]) -> dict[str, list[np.ndarray]]:
        """`{column: [values of image 0, values of image 1, ...]}` for each label column."""
        taken = self._table.take(pa.array([self._rows[image_id] for image_id in image_ids], type=pa.int64()))
        return {column: _split_lists(taken.column(column)) for column in self.columns}


def _split_lists(column: pa.ChunkedArray) -> list[np.ndarray]:
    lists = column.combine_chunks()
    values = lists.flatten().to_numpy(zero_copy_only=False)
    offsets = np.asarray(lists.offsets) - lists.offsets[0].as_py()
    return [values[start:end] for start, end in zip(offsets[:-1], offsets[1:], strict=True)]


class JoinPretraining:
    """The batched transform adding each sentence's regions (and, when asked, their detector labels)."""

    def __init__(self, store: FeatureStore, region_labels: RegionLabels | None):
        self.features = JoinFeatures(store, None, ("image_id",))
        self.region_labels = region_labels

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        batch = self.features(batch)
        if self.region_labels is not None:
            batch.update(self.region_labels(batch["image_id"]))
        return batch


def _rows(sources: Sequence[PretrainingSource], label2id: Mapping[str, int] | None):
    for source in sources:
        for sentence in source.read():
            label = sentence.label if sentence.label is not None and label2id is not None else {}
            label = map_qa_label(label, label2id) if label else {}
            yield {
                "sentence_id": sentence.sentence_id,
                "image_id": sentence.image_id,
                "sentence": sentence.sentence,
                "source": sentence.source,
                "is_question": sentence.is_question,
                "qa_answers": list(label),
                "qa_label_ids": [label2id[answer] for answer in label],
                "qa_scores": list(label.values()),
            }


def pretraining_sentences(
    sources: Sequence[PretrainingSource | str],
    qa_answers: AnswerVocabulary | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    r"""
    The sentences of `sources`, in order, as a `datasets.Dataset` written to the `datasets` cache (memory-mapped).

    Columns: `sentence_id`, `image_id`, `sentence`, `source`, `is_question`, and the QA label mapped onto
    `qa_answers` by [`map_qa_label`]: `qa_answers` (strings), `qa_label_ids` (rows of the QA head) and `qa_scores`
    (empty when the sentence is no question, has no answer among `qa_answers`, or `qa_answers` is `None`).

    Example:
        ```python
        >>> import tempfile
        >>> path = tempfile.mktemp(suffix=".jsonl")
        >>> _ = open(path, "w").write('{"image_id": "a", "caption": "A red cube."}\n')
        >>> pretraining_sentences([f"captions:{path}"], cache_dir=tempfile.mkdtemp())[0]["sentence"]
        'A red cube.'
        ```
    """
    sources = [PretrainingSource.parse(source) for source in sources]
    if not sources:
        raise ValueError("no pre-training sources given; give at least one (`kind:path`).")
    label2id = qa_answers.label2id if qa_answers is not None else None
    payload = [str(_FORMAT), *(source.identity() for source in sources), json.dumps(qa_answers and qa_answers.answers)]
    fingerprint = hashlib.sha256("\n".join(payload).encode()).hexdigest()[:32]
    try:
        return datasets.Dataset.from_generator(
            _rows,
            features=SENTENCE_FEATURES,
            gen_kwargs={"sources": sources, "label2id": label2id},
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            fingerprint=fingerprint,
        )
    except datasets.exceptions.DatasetGenerationError as error:
        # Our own errors name the file and the record: raise them as they are.
        cause = error.__cause__
        if isinstance(cause, ValueError | FileNotFoundError):
            raise cause from None
        raise


def load_pretraining(
    sources: Sequence[PretrainingSource | str],
    features: str | os.PathLike | FeatureStore,
    qa_answers: object = None,
    qa_sets: Collection[str] | None = None,
    visual_losses: Sequence[str] = VISUAL_LOSSES,
    skip_missing: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    r"""
    Pre-training examples: one per (image, sentence) of `sources`, joined at read time to the feature store.

    Each example holds the columns of [`pretraining_sentences`] plus `visual_feats` and `visual_pos` of its image
    and, for the `"obj"` / `"attr"` objectives among `visual_losses`, the detector's `object_ids` /
    `object_scores` and `attribute_ids` / `attribute_scores` of its regions. The regions of a batch are read from
    the store in one gather when the batch is read: feed the dataset to
    [`~lxmert_hf.data.PretrainingDataCollator`] (with `remove_unused_columns=False` in a `Trainer`).

    Args:
        sources (`list`): [`PretrainingSource`] values or strings `kind:path` (`lxmert:data/lxmert/mscoco_train.json`,
            `prepared:data/vqa@train`, `captions:captions.jsonl`), combined in order.
        features (`str` or [`FeatureStore`]): the store holding the images of every source.
        qa_answers (*optional*): the QA head's answers (`all_ans.json`, any list
            [`~lxmert_hf.answers.AnswerVocabulary.load`] reads, or an `AnswerVocabulary`); `None`: no QA labels.
        qa_sets (`list[str]`, *optional*): keep only the answers of these QA sets (`all_ans.json`'s `dsets`).
        visual_losses (`list[str]`, *optional*, defaults to `("obj", "attr", "feat")`): the visual objectives; the
            store must hold the detector labels of `"obj"` and `"attr"` (a `ValueError` names the fix otherwise).
        skip_missing (`bool`, *optional*, defaults to `False`): drop the sentences whose image is not in the store
            (a warning counts them and names a few) instead of raising a `ValueError` naming them.
        cache_dir (`str`, *optional*): where the sentences are written; defaults to the `datasets` cache.

    Example:
        ```python
        >>> import numpy as np, tempfile
        >>> from lxmert_hf.data import FeatureStoreWriter
        >>> store_dir = tempfile.mkdtemp()
        >>> with FeatureStoreWriter(store_dir, resume=True) as writer:
        ...     writer.add({"image_id": "a", "visual_feats": np.ones((2, 4)), "boxes": [[0, 0, 4, 8]] * 2,
        ...                 "image_width": 8, "image_height": 8, "object_ids": [3, 5], "object_scores": [0.9, 0.4],
        ...                 "attribute_ids": [1, 0], "attribute_scores": [0.5, 0.2]})
        >>> captions = tempfile.mktemp(suffix=".jsonl")
        >>> _ = open(captions, "w").write('{"image_id": "a", "caption": "A red cube."}\n')
        >>> example = load_pretraining([f"captions:{captions}"], store_dir, cache_dir=tempfile.mkdtemp())[0]
        >>> example["visual_feats"].shape, example["object_ids"].tolist(), example["is_question"]
        ((2, 4), [3, 5], False)
        ```
    """
    visual_losses = tuple(visual_losses)
    store = features if isinstance(features, FeatureStore) else FeatureStore(features)
    check_region_labels(store, visual_losses)
    vocabulary = load_qa_answers(qa_answers, qa_sets) if qa_answers is not None else None
    if vocabulary is None and qa_sets is not None:
        raise ValueError("`qa_sets` filters the QA answers: give `qa_answers` (all_ans.json) too.")
    sentences = pretraining_sentences(sources, vocabulary, cache_dir)
    sentences = _drop_or_report_missing(sentences, store, skip_missing)
    region_labels = (
        RegionLabels(store.store_dir, visual_losses) if set(visual_losses) & set(REGION_LABEL_COLUMNS) else None
    )
    return sentences.with_transform(JoinPretraining(store, region_labels))


def _drop_or_report_missing(sentences: datasets.Dataset, store: FeatureStore, skip_missing: bool) -> datasets.Dataset:
    table = sentences.with_format("arrow")
    missing = store.missing(table["image_id"])
    if not missing.any():
        return sentences
    rows = np.flatnonzero(missing)
    examples = [
        f"{table['sentence_id'][int(r)].as_py()} (image {table['image_id'][int(r)].as_py()!r})" for r in rows[:5]
    ]
    if not skip_missing:
        raise ValueError(
            f"{len(rows)} of {len(sentences)} pre-training sentences refer to images that are not in the feature "
            f"store at {store.store_dir}: {', '.join(examples)}; prepare features for those images, or pass "
            "skip_missing=True to drop these sentences."
        )
    kept = sentences.select(np.flatnonzero(~missing))
    if not len(kept):
        raise ValueError(
            f"none of the {len(sentences)} pre-training sentences has its image in the feature store at "
            f"{store.store_dir} (e.g. {examples[0]}); give the store of the sources' images."
        )
    logger.warning(
        f"skipped {len(rows)} of {len(sentences)} pre-training sentences whose image is not in the feature store at "
        f"{store.store_dir}, e.g. {', '.join(examples)}"
    )
    return kept
