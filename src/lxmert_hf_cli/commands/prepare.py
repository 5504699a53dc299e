"""``lxmert-hf prepare``: region-feature files into a feature store, question files into training splits.

Example:
    ```bash
    lxmert-hf prepare features --tsv train2014_obj36.tsv val2014_obj36.tsv --output data/coco-features
    lxmert-hf prepare features --hub me/coco-lxmert-features --output data/coco-features
    lxmert-hf prepare vqa --features data/coco-features --output data/vqa \\
        --train-questions v2_OpenEnded_mscoco_train2014_questions.json \\
        --train-annotations v2_mscoco_train2014_annotations.json \\
        --val-questions v2_OpenEnded_mscoco_val2014_questions.json \\
        --val-annotations v2_mscoco_val2014_annotations.json
    lxmert-hf prepare gqa --features data/gqa-features --output data/gqa \\
        --split train=train.json,valid.json --split testdev=testdev.json
    lxmert-hf prepare nlvr2 --features data/nlvr2-features --output data/nlvr2 \\
        --split train=train.json --split valid=valid.json --split test=test.json
    ```
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lxmert_hf_cli._interrupt import report_interrupted, store_kept

# Defaults of `lxmert_hf.data` (`store.FEATURE_DTYPES`, `vqa.COCO_IMAGE_ID_FORMAT`, `vqa.MINIVAL_IMAGES`,
# `vqa.VQA_VOCABULARY_RULES`), spelled out so that `--help` imports no torch or datasets (tests/test_cli.py checks
# that they agree).
FEATURE_DTYPES = ("float32", "float16")
COCO_IMAGE_ID_FORMAT = "COCO_{subtype}_{image_id:012d}"
MINIVAL_IMAGES = 5000
VQA_VOCABULARY_RULES = ("original", "train-split")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare`` and its subcommands ``features``, ``vqa``, ``gqa`` and ``nlvr2``."""
    parser = subparsers.add_parser("prepare", help="prepare feature stores and training splits from source files")
    tasks = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    _features_parser(tasks)
    _vqa_parser(tasks)
    for name, help_text in (("gqa", "GQA questions"), ("nlvr2", "NLVR2 sentence/image-pair examples")):
        task = tasks.add_parser(name, help=f"{help_text} joined to a feature store")
        _common_task_arguments(task)
        task.add_argument(
            "--split",
            action="append",
            required=True,
            metavar="SPLIT=FILE[,FILE...]",
            help="question files of a split, repeatable (paper: train=train.json,valid.json "
            "and testdev=testdev.json for GQA; train, valid, test for NLVR2)",
        )
        if name == "gqa":
            _vocabulary_arguments(task, default_min_count=1, counted="train answers, as written (exact strings),")
        task.set_defaults(func=run)


def _features_parser(tasks: argparse._SubParsersAction) -> None:
    parser = tasks.add_parser(
        "features", help="LXMERT feature TSVs (or demo Arrow files), or exported or pushed features, into a store"
    )
    sources = parser.add_mutually_exclusive_group(required=True)
    sources.add_argument("--tsv", nargs="+", metavar="FILE", help="feature files, read in order")
    sources.add_argument(
        "--parquet",
        metavar="DIR",
        help="parquet features: a folder written by export_parquet, or a local copy of a Hub dataset repo",
    )
    sources.add_argument(
        "--hub",
        metavar="REPO",
        help="a Hub dataset repo written by push_features_to_hub (owner/name; hf-hub:owner/name means the Hub even "
        "where a local folder has that name), streamed",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="store directory (resumed if it exists)")
    _store_arguments(parser)
    parser.add_argument("--skip-bad", action="store_true", help="skip and count malformed images instead of failing")
    parser.set_defaults(func=run)


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=FEATURE_DTYPES, default="float32", help="feature storage type")
    parser.add_argument("--images-per-shard", type=int, default=1000, help="images per store shard")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _common_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, metavar="DIR", help="prepared directory to write")
    parser.add_argument("--features", metavar="DIR", help="feature store (default: OUTPUT/features)")
    parser.add_argument("--tsv", nargs="+", default=[], metavar="FILE", help="feature files to prepare into the store")
    parser.add_argument("--skip-missing", action="store_true", help="drop and count questions whose image is missing")
    parser.add_argument("--skip-bad", action="store_true", help="drop and count malformed records")
    parser.add_argument("--cache-dir", metavar="DIR", help="datasets cache directory")
    _store_arguments(parser)


def _vocabulary_arguments(
    parser: argparse.ArgumentParser, default_min_count: int, counted: str = "train answers"
) -> argparse._MutuallyExclusiveGroup:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--answers",
        metavar="FILE_OR_URL",
        help="answer list to use, index = label id: JSON (list as trainval_label2ans.json, records as all_ans.json, "
        "or a dict), a text file with one answer per line, an http(s) URL or an hf://owner/name/path file",
    )
    group.add_argument(
        "--min-answer-count",
        type=int,
        default=default_min_count,
        help=f"build the vocabulary from {counted} occurring at least this often",
    )
    return group


def _vqa_parser(tasks: argparse._SubParsersAction) -> None:
    parser = tasks.add_parser("vqa", help="VQA v2 questions joined to a feature store")
    _common_task_arguments(parser)
    for split in ("train", "val"):
        parser.add_argument(f"--{split}-questions", metavar="FILE", help=f"official {split}2014 questions JSON")
        parser.add_argument(f"--{split}-annotations", metavar="FILE", help=f"official {split}2014 annotations JSON")
    parser.add_argument("--test-questions", metavar="FILE", help="official test questions JSON")
    parser.add_argument(
        "--minival-images",
        type=int,
        default=MINIVAL_IMAGES,
        help="val images held out as minival, the rest trains (0: official train/val)",
    )
    parser.add_argument("--image-id-format", default=COCO_IMAGE_ID_FORMAT, help="how feature files name images")
    parser.add_argument(
        "--lxmert",
        action="append",
        metavar="SPLIT=FILE[,FILE...]",
        help="LXMERT JSON files of a split instead of official files, repeatable",
    )
    _vocabulary_arguments(parser, default_min_count=9, counted="answers")
    parser.add_argument(
        "--vocabulary-rule",
        choices=VQA_VOCABULARY_RULES,
        default="original",
        help="how the vocabulary is built without --answers. original (default): as the original (LXMERT's list), the "
        "multiple_choice_answer of all train and val annotations, in the original's label order; train-split: the "
        "prepared train split's answers (train + nominival) after the official normalization, by count",
    )
    parser.add_argument(
        "--normalize-answers",
        action="store_true",
        help="score annotator answers after the official VQA normalization ('two' then scores for '2'); by default "
        "each answer counts as written, as in the original labels",
    )
    parser.set_defaults(func=run)


def parse_splits(values: list[str] | None, flag: str) -> dict[str, list[str]]:
    """Parse repeated ``SPLIT=FILE[,FILE...]`` values."""
    splits: dict[str, list[str]] = {}
    for value in values or []:
        name, sep, files = value.partition("=")
        if not sep or not name or not files:
            raise ValueError(f"{flag} {value!r}: expected SPLIT=FILE[,FILE...], e.g. {flag} train=train.json")
        splits.setdefault(name, []).extend(f for f in files.split(",") if f)
    return splits


def run(args: argparse.Namespace) -> int:
    """Run ``lxmert-hf prepare SOURCE``; on SIGINT or SIGTERM, say what the feature store kept."""
    if args.images_per_shard < 1:
        raise ValueError(f"--images-per-shard must be >= 1, got {args.images_per_shard}.")
    from lxmert_hf.files import check_writable

    check_answers(getattr(args, "answers", None))
    if getattr(args, "cache_dir", None) and Path(args.cache_dir).is_file():
        raise ValueError(f"--cache-dir {args.cache_dir} is a file; give a folder (created if missing).")
    store = _store_written(args)
    check_writable(args.output, what="--output", inside=True)
    if store is not None and store != args.output:
        check_writable(store, what="--features", inside=True)
    try:
        return _prepare(args)
    except KeyboardInterrupt as error:
        return report_interrupted("prepare", error, store_kept(store) if store is not None else None)


def check_answers(answers: str | None) -> None:
    """Refuse an `--answers` that cannot be read, before any work: a URL of another scheme than http(s) or hf://,
    a path that does not exist."""
    from lxmert_hf.answers.sources import HUB_FILE_PREFIX
    from lxmert_hf.downloads import URL_PREFIXES, check_url_scheme

    if answers is None:
        return
    check_url_scheme(answers, "--answers", also=("hf",))
    if not answers.startswith((*URL_PREFIXES, HUB_FILE_PREFIX)) and not Path(answers).expanduser().exists():
        raise FileNotFoundError(
            f"--answers {answers}: no such file; pass an answer list (JSON or one answer a line), an http(s) URL or "
            "an hf://owner/name/path file."
        )


def _store_written(args: argparse.Namespace) -> str | None:
    """The feature store this run writes into, if any."""
    if args.source == "features":
        return args.output
    return (args.features or f"{args.output}/features") if args.tsv else None


def _prepare(args: argparse.Namespace) -> int:
    from lxmert_hf.data import prepare_features, prepare_gqa, prepare_nlvr2, prepare_vqa

    progress = not args.no_progress
    if args.source == "features" and not args.tsv:
        from lxmert_hf.data import prepare_pushed_features

        what, source = ("--hub", args.hub) if args.hub else ("--parquet", args.parquet)
        options = {"skip_bad": args.skip_bad, "images_per_shard": args.images_per_shard, "progress": progress}
        report = prepare_pushed_features(source, args.output, args.dtype, hub=bool(args.hub), what=what, **options)
        print(f"{args.output}: {report}")
        return 0
    if args.source == "features":
        report = prepare_features(args.tsv, args.output, args.dtype, args.skip_bad, args.images_per_shard, progress)
        print(f"{args.output}: {report}")
        return 0
    if args.tsv:
        features = args.features or f"{args.output}/features"
        report = prepare_features(args.tsv, features, args.dtype, args.skip_bad, args.images_per_shard, progress)
        print(f"{features}: {report}")
    common = {
        "features_dir": args.features,
        "skip_missing": args.skip_missing,
        "skip_bad": args.skip_bad,
        "cache_dir": args.cache_dir,
        "progress": progress,
    }
    if args.source == "vqa":
        splits = prepare_vqa(
            args.output,
            vocabulary=args.answers,
            min_answer_count=args.min_answer_count,
            vocabulary_rule=args.vocabulary_rule,
            **common,
            **_vqa_sources(args),
        )
    elif args.source == "gqa":
        splits = prepare_gqa(
            args.output,
            parse_splits(args.split, "--split"),
            vocabulary=args.answers,
            min_answer_count=args.min_answer_count,
            **common,
        )
    else:
        splits = prepare_nlvr2(args.output, parse_splits(args.split, "--split"), **common)
    print(json.dumps({"output": args.output, "splits": {name: len(split) for name, split in splits.items()}}))
    return 0


def _vqa_sources(args: argparse.Namespace) -> dict:
    sources = {
        "train_questions": args.train_questions,
        "train_annotations": args.train_annotations,
        "val_questions": args.val_questions,
        "val_annotations": args.val_annotations,
        "test_questions": args.test_questions,
        "minival_images": args.minival_images,
        "image_id_format": args.image_id_format,
        "lxmert": parse_splits(args.lxmert, "--lxmert") or None,
        "normalize_answers": args.normalize_answers,
    }
    if sources["lxmert"] and any(sources[key] for key in sources if key.endswith(("questions", "annotations"))):
        raise ValueError("give either official files (--train-questions ...) or --lxmert files, not both.")
    return sources
