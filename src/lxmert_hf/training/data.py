"""The recipes' data: the toy world prepared through the same path as real data, and prepared directories."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import datasets
from datasets import config as datasets_config
from transformers import TrainingArguments

from lxmert_hf.data import (
    load_answer_vocabulary,
    load_prepared,
    prepare_features,
    prepare_gqa,
    prepare_nlvr2,
    prepare_vqa,
)
from lxmert_hf.data.builder import METADATA_NAME, VOCABULARY_NAME, read_prepared
from lxmert_hf.data.store.format import read_table, store_index_path
from lxmert_hf.files import atomic_directory
from lxmert_hf.hub import describe_visual_features
from lxmert_hf.toy import (
    CAPTIONS_FILE,
    GENERATIONS,
    IMAGE_ID_FORMAT,
    SPLIT_NAMES,
    SPLITS,
    WORLDS,
    ToySplit,
    ToyWorldConfig,
    question_words,
    write_captions,
)
from lxmert_hf.training.arguments import DataArguments
from lxmert_hf.training.tasks import TASKS, Task, get_task

TOY_SPLITS = SPLIT_NAMES["vqa"]
TOY_FEATURES = describe_visual_features(None, source="the toy world's generator")
# Shards of a streamed training split (rounded to a multiple of the number of processes): enough for each process,
# and each of its data loader workers, to read its own.
STREAM_SHARDS = 64


# Scene sizes of a task's world where the `ToyWorldConfig` defaults do not suit it: an NLVR2 statement is about
# two scenes and true of half its pairs, and a small LXMERT trained from scratch learns such statements in minutes
# only about scenes of a few objects.
TOY_WORLD_DEFAULTS = {"nlvr2": {"min_objects": 1, "max_objects": 4}}


def toy_world_config(data_args: DataArguments, task: str = "vqa") -> ToyWorldConfig:
    """The toy world of `task` described by the data arguments (and the task's `TOY_WORLD_DEFAULTS`). Only their
    `toy_*` fields are read, so the pre-training recipe's data arguments serve too.

    Example:
        ```python
        >>> from lxmert_hf.training import parse_args
        >>> from lxmert_hf.training.data import toy_world_config
        >>> _, data_args, _ = parse_args(["--output_dir", "out"])
        >>> config = toy_world_config(data_args, task="nlvr2")
        >>> config.min_objects, config.max_objects, toy_world_config(data_args).max_objects
        (1, 4, 8)
        ```
    """
    _split_names(task)
    return ToyWorldConfig(
        seed=data_args.toy_seed,
        num_images={"train": data_args.toy_train_images, "validation": data_args.toy_eval_images,
                    "test": data_args.toy_eval_images},
        questions_per_image=data_args.toy_questions_per_image,
        mask_background=data_args.toy_mask_background,
        **TOY_WORLD_DEFAULTS.get(task, {}),
    )  # fmt: skip


def check_splits(data_args: DataArguments, task: Task | str = "vqa") -> None:
    """Check that `--dataset` holds data of the recipe's `task` and that `--train_split` and `--eval_split` name
    splits of it, before anything is built; an `--eval_split` left empty becomes the first of the task's preferred
    splits ([`~lxmert_hf.training.tasks.Task.eval_splits`]) that the data has.

    The toy world's splits follow from its settings (nothing is generated); a prepared directory's task and splits
    are read from its metadata and question splits (nothing is tokenized or joined).

    Raises:
        `ValueError`: a prepared directory of another task (naming its task and the recipe for it), or a split the
            data lacks, naming the argument and the splits there are.
        `FileNotFoundError`: `--dataset` is not a prepared directory.

    Example:
        ```python
        >>> from lxmert_hf.training import parse_args
        >>> from lxmert_hf.training.data import check_splits
        >>> _, data_args, _ = parse_args(["--eval_split", "minival", "--output_dir", "out"])
        >>> check_splits(data_args)
        Traceback (most recent call last):
        ...
        ValueError: `--eval_split minival`: the toy world has no split 'minival'; it has ['test', 'train', 'val'].
        ```
    """
    task = get_task(task)
    if data_args.dataset == "toy":
        available = sorted(toy_splits(task.toy_world, toy_world_config(data_args, task.toy_world)))
        where = "the toy world"
    else:
        check_task(data_args.dataset, task)
        available = sorted(datasets.load_from_disk(str(Path(data_args.dataset) / "questions")))
        where = data_args.dataset
    if data_args.eval_split is None:
        data_args.eval_split = next((name for name in task.eval_splits if name in available), None)
        if data_args.eval_split is None:
            raise ValueError(
                f"`--eval_split`: {where} has none of the splits {task.title} is evaluated on "
                f"({', '.join(task.eval_splits)}); it has {available}. Pass `--eval_split SPLIT`."
            )
    for flag in ("train_split", "eval_split"):
        split = getattr(data_args, flag)
        if split not in available:
            raise ValueError(f"`--{flag} {split}`: {where} has no split {split!r}; it has {available}.")


def check_task(prepared_dir: str | os.PathLike, task: Task | str) -> None:
    """Check that a prepared directory holds data of `task`, the one a recipe trains.

    Raises:
        `ValueError`: the directory holds another task's data: the message names that task and its recipe.
        `FileNotFoundError`: `prepared_dir` is not a prepared directory.
    """
    task = get_task(task)
    found = read_prepared(prepared_dir).get("task")
    if found == task.name:
        return
    title = TASKS[found].title if found in TASKS else str(found)
    recipe = f"recipes/{found}.py --dataset {prepared_dir}" if found in TASKS else "the recipe of that task"
    raise ValueError(
        f"`--dataset {prepared_dir}` holds prepared {title} data ({METADATA_NAME}: task {found!r}), but "
        f"{Path(task.recipe).name} trains {task.title}: run {recipe}, or pass a directory made by "
        f"`lxmert-hf prepare {task.name}`."
    )


def toy_splits(task: str, world_config: ToyWorldConfig) -> list[str]:
    """The names of the splits [`prepare_toy`] prepares for `task` from `world_config`, without generating anything.

    Example:
        ```python
        >>> from lxmert_hf.toy import ToyWorldConfig
        >>> from lxmert_hf.training.data import toy_splits
        >>> config = ToyWorldConfig(num_images={"train": 8, "validation": 4, "test": 4})
        >>> toy_splits("vqa", config), toy_splits("gqa", config), toy_splits("nlvr2", config)
        (['train', 'val', 'test'], ['train', 'val', 'testdev'], ['train', 'valid', 'test'])
        ```
    """
    names = _split_names(task)
    return [names[split] for split in SPLITS if world_config.num_images.get(split)]


def _split_names(task: str) -> dict[str, str]:
    if task not in SPLIT_NAMES:
        raise ValueError(f"`task` {task!r} has no toy world; use one of {sorted(SPLIT_NAMES)}.")
    return SPLIT_NAMES[task]


def prepare_toy(world_config: ToyWorldConfig, cache_dir: str | os.PathLike | None = None, task: str = "vqa") -> Path:
    """Generate the toy world of `task` (`"vqa"`, `"gqa"` or `"nlvr2"`), write it in that task's official files and a
    feature TSV, and prepare it like real data (`prepare_vqa`, `prepare_gqa`, `prepare_nlvr2`).

    The result is cached under `cache_dir` (default: the datasets cache) by a hash of the task and `world_config`; a
    second call returns the cached directory at once. The directory holds `prepared/` (for [`load_prepared`]),
    `tokenizer/`, and `raw/`, the task's official files (for `lxmert-hf evaluate <task>`): VQA question and
    annotation JSON files, GQA balanced questions JSON files (`<split>_balanced_questions.json`), or NLVR2
    JSON-lines files (`<split>.json`). Its splits are [`toy_splits`]`(task, world_config)`. The feature store's
    regions carry detector-like labels (`lxmert_hf.toy.OBJECT_LABELS`, `ATTRIBUTE_LABELS`), and, for pre-training,
    the VQA and GQA worlds' `raw/` holds captions of each split's images (`lxmert_hf.toy.CAPTIONS_FILE`, by the
    prepared split name: `train_captions.jsonl`, `val_captions.jsonl`, ...) in words the tokenizer knows.

    Example:
        ```python
        >>> from lxmert_hf.toy import ToyWorldConfig
        >>> from lxmert_hf.training.data import prepare_toy
        >>> root = prepare_toy(ToyWorldConfig(num_images={"train": 8, "validation": 4}, feature_dim=16))
        >>> sorted(p.name for p in root.iterdir())
        ['prepared', 'raw', 'tokenizer']
        >>> sorted(p.name for p in (root / "raw").glob("*_captions.jsonl"))
        ['train_captions.jsonl', 'val_captions.jsonl']
        >>> root = prepare_toy(ToyWorldConfig(num_images={"train": 16, "test": 8}, feature_dim=16), task="nlvr2")
        >>> sorted(p.name for p in (root / "raw").iterdir())
        ['test.json', 'train.json']
        ```
    """
    _split_names(task)
    root = Path(cache_dir or datasets_config.HF_DATASETS_CACHE) / "lxmert_hf_toy" / _fingerprint(world_config, task)
    if (root / "prepared").is_dir():
        return root
    try:
        with atomic_directory(root) as staging:
            _build_toy(world_config, staging, task)
    except FileExistsError:
        # Another process (a second rank) prepared the same world meanwhile: use its copy.
        if not (root / "prepared").is_dir():
            raise
    return root


def _generate(task: str, world_config: ToyWorldConfig, staging: Path):
    """The world and its splits; its tokenizer, trained on `train`, saved under `staging`."""
    world = WORLDS[task](world_config)
    splits = [world.split(name) for name in SPLITS if world_config.num_images.get(name)]
    train = [s for s in splits if s.name == "train"]
    world.tokenizer(train).save_pretrained(staging / "tokenizer")
    return world, splits


def _store(features_tsv: str, staging: Path) -> Path:
    # The store records that no detector made these features: the toy's checkpoints answer about features only.
    features = staging / "prepared" / "features"
    prepare_features([features_tsv], features, progress=False, extractor=TOY_FEATURES)
    # The store now holds the features; the TSV was only the interchange format.
    os.remove(features_tsv)
    return features


def _write_captions(config: ToyWorldConfig, splits: list[ToySplit], staging: Path, names: dict[str, str]) -> None:
    """`raw/<split>_captions.jsonl` for each split, by its prepared name, in the words of the train questions (those
    the tokenizer is trained on)."""
    train = next(split for split in splits if split.name == "train")
    words = question_words(q["question"] for q in train.questions)
    for split in splits:
        path = staging / "raw" / CAPTIONS_FILE.format(split=names[split.name])
        write_captions(path, split, words, seed=config.seed)


def _build_vqa(world_config: ToyWorldConfig, staging: Path) -> None:
    world, splits = _generate("vqa", world_config, staging)
    paths = world.write_vqa_files(staging / "raw", splits)
    _write_captions(world_config, splits, staging, TOY_SPLITS)
    sources = {}
    for split in splits:
        target = TOY_SPLITS[split.name]
        sources[f"{target}_questions"] = paths[f"{split.name}_questions"]
        if target != "test":
            sources[f"{target}_annotations"] = paths[f"{split.name}_annotations"]
    features = _store(paths["features"], staging)
    prepare_vqa(
        staging / "prepared", features_dir=features, minival_images=0,
        image_id_format=IMAGE_ID_FORMAT, progress=False, cache_dir=staging / "cache", **sources,
    )  # fmt: skip
    shutil.rmtree(staging / "cache", ignore_errors=True)


def _build_gqa(world_config: ToyWorldConfig, staging: Path) -> None:
    world, splits = _generate("gqa", world_config, staging)
    paths = world.write_gqa_files(staging / "raw", splits)
    _write_captions(world_config, splits, staging, {split.name: split.name for split in splits})
    features = _store(paths["features"], staging)
    sources = {split.name: [paths[split.name]] for split in splits}
    prepare_gqa(staging / "prepared", sources, features_dir=features, progress=False, cache_dir=staging / "cache")
    shutil.rmtree(staging / "cache", ignore_errors=True)


def _build_nlvr2(world_config: ToyWorldConfig, staging: Path) -> None:
    world, splits = _generate("nlvr2", world_config, staging)
    paths = world.write_nlvr2_files(staging / "raw", splits)
    features = _store(paths["features"], staging)
    sources = {split.name: [paths[split.name]] for split in splits}
    prepare_nlvr2(staging / "prepared", sources, features_dir=features, progress=False, cache_dir=staging / "cache")
    shutil.rmtree(staging / "cache", ignore_errors=True)


def _build_toy(world_config: ToyWorldConfig, staging: Path, task: str = "vqa") -> None:
    {"vqa": _build_vqa, "gqa": _build_gqa, "nlvr2": _build_nlvr2}[task](world_config, staging)


def _fingerprint(world_config: ToyWorldConfig, task: str = "vqa") -> str:
    # `generation` changes when the toy code makes a different world from the same config, `format` when
    # `prepare_<task>` makes different labels or vocabulary from the same world, the store records more (the regions'
    # detector labels, from format 4), or the directory holds more files (the captions, from format 4). The VQA
    # world's payload names no task, so that its caches stay valid.
    payload = {"format": 4, "generation": GENERATIONS[task], **world_config.__dict__}
    if task != "vqa":
        payload["task"] = task
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_splits(
    prepared_dir: str | os.PathLike,
    train_split: str,
    eval_split: str,
    tokenizer=None,
    max_question_length: int = 20,
    streaming: bool = False,
    seed: int = 42,
    shuffle_buffer_size: int = 10_000,
    num_processes: int = 1,
):
    """Return `(train, eval, answers)` from a prepared directory: two datasets joined to the feature store and
    the answer vocabulary (index = label id; `None` for data without one, NLVR2's). With a `tokenizer`, the
    questions are tokenized once (cached beside the splits). Training examples keep only what the collator reads;
    evaluation examples keep every column (the report groups by `answer_type` and shows `answers`).

    With `streaming`, `train` is a `datasets.IterableDataset` whose questions are shuffled (shard order, then a
    buffer of `shuffle_buffer_size` questions, seeded by `seed` and the epoch) and then joined to the store. Its
    number of shards is a multiple of `num_processes`, so that `accelerate` can give each process the same number
    of shards; they keep `question_id`, so that what a process read can be told. See [`streaming_options`]."""
    read_prepared(prepared_dir)
    # Tasks of fixed classes (NLVR2's true / false) have no answer vocabulary.
    has_vocabulary = (Path(prepared_dir) / VOCABULARY_NAME).is_file()
    answers = load_answer_vocabulary(prepared_dir).answers if has_vocabulary else None
    tokens = {"tokenizer": tokenizer, "max_question_length": max_question_length}
    if streaming:
        stream = {"shuffle_seed": seed, "shuffle_buffer_size": shuffle_buffer_size}
        shards = num_processes * max(1, STREAM_SHARDS // num_processes)
        train = load_prepared(
            prepared_dir, train_split, streaming=True, num_shards=shards, columns=["question", "question_id"],
            **stream, **tokens,
        )  # fmt: skip
    else:
        train = load_prepared(prepared_dir, train_split, columns=["question"], **tokens)
    return train, load_prepared(prepared_dir, eval_split, **tokens), answers


def max_regions(prepared_dir: str | os.PathLike) -> int:
    """The most regions an image of a prepared directory's feature store has (36 for LXMERT's features): what
    static shapes pad every batch's regions to. Reads only the store's index.

    Example:
        ```python
        >>> from lxmert_hf.toy import ToyWorldConfig
        >>> from lxmert_hf.training.data import max_regions, prepare_toy
        >>> root = prepare_toy(ToyWorldConfig(num_images={"train": 8, "validation": 4}, feature_dim=16))
        >>> max_regions(root / "prepared")
        36
        ```
    """
    counts = read_table(store_index_path(read_prepared(prepared_dir)["features"])).column("num_boxes")
    return int(max(counts.to_pylist(), default=1))


def streaming_options(data_args: DataArguments, training_args: TrainingArguments) -> dict:
    """The keyword arguments of [`load_splits`] for a `--streaming` run (none otherwise).

    The stream is not split across processes here: the `Trainer` prepares its data loader with `accelerate`, which
    gives each process its own shards once `dispatch_batches` is off
    ([`~lxmert_hf.training.arguments.check_streaming`] turns it off); splitting here as well would split twice.

    Example:
        ```python
        >>> from lxmert_hf.training import parse_args
        >>> from lxmert_hf.training.data import streaming_options
        >>> _, data_args, training_args = parse_args(["--streaming", "--max_steps", "10", "--eval_strategy", "steps",
        ...                                           "--save_strategy", "steps", "--output_dir", "out"])
        >>> streaming_options(data_args, training_args)
        {'streaming': True, 'seed': 42, 'shuffle_buffer_size': 10000, 'num_processes': 1}
        ```
    """
    if not data_args.streaming:
        return {}
    return {
        "streaming": True,
        "seed": training_args.seed,
        "shuffle_buffer_size": data_args.shuffle_buffer_size,
        "num_processes": training_args.world_size,
    }
