"""The shared machinery of the VQA, GQA and NLVR2 dataset builders, and of prepared dataset directories.

A builder reads the question files of each split, checks every record, and checks that each question's image is in
the feature store (missing images are an error listing them, or are skipped and counted). It stores questions
only: features stay in the store and are joined at read time ([`~lxmert_hf.data.attach_features`]).

A *prepared directory* holds what training needs besides the store: `questions/` (the splits, a
`datasets.DatasetDict` saved to disk), `label2ans.json` (the answer vocabulary, index = label) and
`lxmert_hf_data.json` (the task and the path of its feature store), written last so that its presence means the
directory is complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetGenerationError

from lxmert_hf.answers import AnswerVocabulary
from lxmert_hf.data.join import attach_features, drop_or_report_missing
from lxmert_hf.data.sources import BadRecords, files_fingerprint
from lxmert_hf.data.store import FeatureStore
from lxmert_hf.data.store.format import MANIFEST_NAME, read_store_image_ids
from lxmert_hf.data.tokens import tokenize_questions
from lxmert_hf.files import atomic_directory, write_json_atomic

logger = logging.getLogger(__name__)

METADATA_NAME = "lxmert_hf_data.json"
VOCABULARY_NAME = "label2ans.json"


@dataclasses.dataclass
class QuestionsConfig(datasets.BuilderConfig):
    """
    Configuration of a question builder.

    Args:
        split_sources (`dict[str, list[dict]]`): for each split, the sources it reads, in order. Each source is a
            dict naming its files and format; the task builders document their keys.
        features_dir (`str`, *optional*): the feature store the questions must find their images in.
        skip_missing (`bool`, *optional*, defaults to `False`): drop and count questions whose image is not in the
            store, instead of raising an error listing them.
        skip_bad (`bool`, *optional*, defaults to `False`): drop and count malformed records instead of raising.
    """

    split_sources: dict[str, list[dict]] | None = None
    features_dir: str | None = None
    skip_missing: bool = False
    skip_bad: bool = False

    def create_config_id(self, config_kwargs: dict, custom_features: datasets.Features | None = None) -> str:
        # The cache must follow the content of the files, not only their paths.
        paths = [value for sources in (self.split_sources or {}).values() for s in sources for value in _paths(s)]
        if self.features_dir:
            paths.append(Path(self.features_dir) / MANIFEST_NAME)
        return super().create_config_id({**config_kwargs, "files": files_fingerprint(paths)}, custom_features)


def _paths(source: Mapping[str, Any]) -> list[str]:
    return [value for key, value in source.items() if key in ("questions", "annotations", "path") and value]


class QuestionsBuilder(datasets.GeneratorBasedBuilder):
    """Base of the task builders: split generators, duplicate-id and missing-image checks."""

    BUILDER_CONFIG_CLASS = QuestionsConfig
    IMAGE_COLUMNS: tuple[str, ...] = ("image_id",)
    DEFAULT_WRITER_BATCH_SIZE = 10_000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stats: dict[str, dict[str, Any]] = {}

    def read_source(self, source: Mapping[str, Any], bad: BadRecords) -> Iterator[tuple[str, dict]]:
        """Yield `(location, example)` for each record of one source."""
        raise NotImplementedError

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        if not self.config.split_sources:
            raise ValueError(f"{type(self).__name__} needs `split_sources`: the question files of each split.")
        return [
            datasets.SplitGenerator(name=name, gen_kwargs={"split": name, "sources": list(sources)})
            for name, sources in self.config.split_sources.items()
        ]

    def _generate_examples(self, split: str, sources: list[dict]) -> Iterator[tuple[str, dict]]:
        store_ids = read_store_image_ids(self.config.features_dir) if self.config.features_dir else None
        bad = BadRecords(skip=self.config.skip_bad)
        seen: set = set()
        missing: list[str] = []
        count = 0
        for source in sources:
            for location, example in self.read_source(source, bad):
                question_id = example["question_id"]
                if question_id in seen:
                    bad(location, f"duplicate question id {question_id!r}", "give each question once")
                    continue
                seen.add(question_id)
                absent = [
                    example[c] for c in self.IMAGE_COLUMNS if store_ids is not None and example[c] not in store_ids
                ]
                if absent:
                    missing.append(f"{location} (image {absent[0]!r})")
                    continue
                count += 1
                yield str(question_id), example
        self._finish_split(split, count, missing, bad)

    def _finish_split(self, split: str, count: int, missing: list[str], bad: BadRecords) -> None:
        self.stats[split] = {"questions": count, "skipped_missing": 0, "skipped_bad": bad.count}
        if bad.count:
            logger.warning(f"{split}: skipped {bad.count} bad records, e.g. {'; '.join(bad.examples)}")
        if missing and not self.config.skip_missing:
            raise ValueError(
                f"{split}: {len(missing)} questions refer to images that are not in the feature store at "
                f"{self.config.features_dir}, e.g. {'; '.join(missing[:5])}. Prepare features for those images "
                "(lxmert-hf prepare features), or pass --skip-missing (skip_missing=True) to drop these questions."
            )
        if missing:
            self.stats[split]["skipped_missing"] = len(missing)
            logger.warning(f"{split}: skipped {len(missing)} questions whose image is not in the store")
        if not count:
            raise ValueError(
                f"{split}: no questions left ({len(missing)} without image in the store, {bad.count} bad records); "
                "check that the feature store and the question files are of the same images."
            )


def build_questions(builder: QuestionsBuilder) -> datasets.DatasetDict:
    """Run `builder` (cached by `datasets`) and return its splits; errors in the sources surface as themselves."""
    try:
        builder.download_and_prepare()
    except DatasetGenerationError as error:
        cause = error.__cause__
        if isinstance(cause, (ValueError, FileNotFoundError)):
            raise cause from None
        raise
    return builder.as_dataset()


def build_task_splits(
    builder_class: type[QuestionsBuilder],
    output_dir: str | os.PathLike,
    features_dir: str | os.PathLike | None,
    feature_files,
    split_sources: Mapping[str, Any],
    skip_missing: bool,
    skip_bad: bool,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> tuple[QuestionsBuilder, datasets.DatasetDict, Path]:
    """The steps every `prepare_<task>` shares: the feature store (from `feature_files`, when given; default
    `output_dir/features`), then the question splits built by `builder_class` against it."""
    from lxmert_hf.data.features import prepare_features

    features_dir = Path(features_dir) if features_dir else Path(output_dir) / "features"
    if feature_files:
        prepare_features(feature_files, features_dir, skip_bad=skip_bad, progress=progress)
    builder = builder_class(
        cache_dir=str(cache_dir) if cache_dir else None,
        split_sources=split_sources,
        features_dir=str(features_dir.resolve()),
        skip_missing=skip_missing,
        skip_bad=skip_bad,
    )
    return builder, build_questions(builder), features_dir


def write_prepared(
    output_dir: str | os.PathLike,
    task: str,
    splits: datasets.DatasetDict,
    features_dir: str | os.PathLike,
    vocabulary: AnswerVocabulary | None,
    stats: Mapping[str, Any] | None = None,
) -> Path:
    """Write a prepared directory (questions, vocabulary, then the metadata file that marks it complete)."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / METADATA_NAME).unlink(missing_ok=True)
    with atomic_directory(output / "questions", overwrite=True) as staging:
        splits.save_to_disk(str(staging))
    if vocabulary is not None:
        vocabulary.save(output / VOCABULARY_NAME)
    metadata = {
        "task": task,
        "features": _relative_or_absolute(Path(features_dir), output),
        "splits": {name: len(split) for name, split in splits.items()},
        "stats": dict(stats or {}),
    }
    write_json_atomic(output / METADATA_NAME, metadata)
    return output


def _relative_or_absolute(path: Path, base: Path) -> str:
    path, base = path.resolve(), base.resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def read_prepared(prepared_dir: str | os.PathLike) -> dict:
    """The metadata of a prepared directory, with `features` resolved to an absolute path."""
    prepared = Path(prepared_dir)
    path = prepared / METADATA_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{prepared} is not a prepared dataset directory (no {METADATA_NAME}); create it with "
            "`lxmert-hf prepare vqa|gqa|nlvr2 ... --output DIR`, or rerun that command if it was interrupted."
        )
    metadata = json.loads(path.read_text(encoding="utf-8"))
    metadata["features"] = str((prepared / metadata["features"]).resolve())
    return metadata


def load_answer_vocabulary(prepared_dir: str | os.PathLike) -> AnswerVocabulary:
    """The answer vocabulary of a prepared directory (index = label), read by [`AnswerVocabulary.load`]."""
    return AnswerVocabulary.load(Path(prepared_dir) / VOCABULARY_NAME)


def load_prepared(
    prepared_dir: str | os.PathLike,
    split: str,
    streaming: bool = False,
    vocabulary: AnswerVocabulary | None = None,
    num_shards: int = 64,
    skip_missing: bool = False,
    columns: Sequence[str] | None = None,
    tokenizer: Any = None,
    max_question_length: int = 20,
    shuffle_seed: int | None = None,
    shuffle_buffer_size: int = 10_000,
) -> datasets.Dataset | datasets.IterableDataset:
    r"""
    One split of a prepared directory, joined to its feature store: examples ready for the collator.

    Each example holds the question columns (`question_id`, `image_id`, `question`, `answers`, ...) plus
    `visual_feats`, `visual_pos` and `labels` (dense soft scores over the vocabulary; for NLVR2, the class index).

    Args:
        prepared_dir (`str`): a directory written by `prepare_vqa`, `prepare_gqa` or `prepare_nlvr2`.
        split (`str`): the split name (`"train"`, `"minival"`, `"testdev"`, ...).
        streaming (`bool`, *optional*, defaults to `False`): return a `datasets.IterableDataset` of `num_shards`
            shards (shuffled with `shuffle_seed`); give each rank its own shards with
            `datasets.distributed.split_dataset_by_node`, or let `accelerate` shard it (the recipes' `--streaming`).
        vocabulary ([`AnswerVocabulary`], *optional*): defaults to the directory's `label2ans.json`; pass the
            vocabulary of a checkpoint to line labels up with it.
        num_shards (`int`, *optional*, defaults to 64): shards of the streaming dataset.
        skip_missing (`bool`, *optional*, defaults to `False`): drop questions whose image left the store since
            preparation, instead of raising.
        columns (`list[str]`, *optional*): the question columns to keep, e.g. `["question"]` for training, where
            every other column would only be read and dropped (batches come about 10% faster); the image ids and
            the label columns are always kept. Defaults to all columns.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): tokenize the questions once, into an `input_ids` column
            cached beside the split ([`tokenize_questions`]), so that the collator only pads; batches come about
            25% faster than tokenizing them in the collator.
        max_question_length (`int`, *optional*, defaults to 20): the truncation length when tokenizing.
        shuffle_seed (`int`, *optional*): streaming only: shuffle the shard order and, through a buffer of
            `shuffle_buffer_size` questions, the questions, with this seed (and the epoch set by `set_epoch`). The
            buffer holds questions, before their features are joined, so it costs little memory.
        shuffle_buffer_size (`int`, *optional*, defaults to 10000): questions in the shuffle buffer.

    Example:
        ```python
        >>> from lxmert_hf.data import load_prepared
        >>> train = load_prepared("data/vqa", "train")  # doctest: +SKIP
        >>> train[0]["visual_feats"].shape  # doctest: +SKIP
        (36, 2048)
        ```
    """
    metadata = read_prepared(prepared_dir)
    questions = datasets.load_from_disk(str(Path(prepared_dir) / "questions"))
    if split not in questions:
        raise ValueError(f"{prepared_dir} has no split {split!r}; it has {sorted(questions)}.")
    questions = questions[split]
    if vocabulary is None and (Path(prepared_dir) / VOCABULARY_NAME).is_file():
        vocabulary = load_answer_vocabulary(prepared_dir)
    label2id = vocabulary.label2id if vocabulary is not None else None
    store = FeatureStore(metadata["features"])
    image_columns = ("img0", "img1") if metadata["task"] == "nlvr2" else ("image_id",)
    if tokenizer is not None:
        questions = tokenize_questions(questions, tokenizer, max_question_length)
    if columns is not None:
        questions = _keep_columns(questions, columns, image_columns, f"{prepared_dir} (split {split!r})")
    if streaming:
        questions = drop_or_report_missing(questions, store, image_columns, skip_missing)
        questions = questions.to_iterable_dataset(num_shards=max(1, min(num_shards, len(questions))))
        if shuffle_seed is not None:
            questions = questions.shuffle(seed=shuffle_seed, buffer_size=shuffle_buffer_size)
    return attach_features(questions, store, label2id, image_columns, skip_missing)


# Always kept by `columns`: what the join and the collator read besides the question.
KEPT_COLUMNS = ("label_answers", "label_scores", "label", "input_ids")


def _keep_columns(
    questions: datasets.Dataset, columns: Sequence[str], image_columns: Sequence[str], where: str
) -> datasets.Dataset:
    """`questions` reduced to `columns` plus the image id and label columns (a view: nothing is copied)."""
    if isinstance(columns, str):
        raise ValueError(f"`columns` must be a list of column names, got the string {columns!r}; pass [{columns!r}].")
    unknown = sorted(set(columns) - set(questions.column_names))
    if unknown:
        raise ValueError(f"{where} has no question columns {unknown}; it has {questions.column_names}.")
    needed = {*columns, *image_columns, *KEPT_COLUMNS}
    return questions.select_columns([name for name in questions.column_names if name in needed])
