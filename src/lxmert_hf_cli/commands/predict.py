"""`lxmert-hf predict`: answer a prepared split with a fine-tuned checkpoint and write the submission file.

Example:
    ```bash
    lxmert-hf predict --model output/vqa --prepared data/vqa --split test --output test_predict.json
    lxmert-hf predict --model output/gqa --prepared data/gqa --split testdev --output testdev_predict.json \\
        --batch-size 256 --device cuda --num-workers 4
    ```
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lxmert_hf_cli._paths import check_output_file

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `predict` subcommand."""
    parser = subparsers.add_parser(
        "predict",
        help="write the submission file of a prepared split from a fine-tuned checkpoint",
        description="Answer every question of a prepared VQA or GQA split with a fine-tuned LxmertForVQA "
        "checkpoint and write the file the evaluation server accepts (VQA: [{question_id, answer}], GQA: "
        "[{questionId, prediction}]).",
    )
    parser.add_argument("--model", required=True, metavar="DIR_OR_ID", help="fine-tuned checkpoint folder or Hub id")
    parser.add_argument("--prepared", required=True, type=Path, metavar="DIR", help="a `lxmert-hf prepare` output")
    parser.add_argument("--split", required=True, metavar="NAME", help="the split to answer, e.g. minival, test")
    parser.add_argument("--output", required=True, type=Path, metavar="FILE", help="the submission file to write")
    parser.add_argument(
        "--format", choices=("vqa", "gqa"), dest="submission_format", help="default: the prepared directory's task"
    )
    parser.add_argument("--tokenizer", metavar="DIR_OR_ID", help="default: the tokenizer saved with --model")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="questions per batch (default 64)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--num-workers", type=int, default=0, metavar="N", help="data loading processes (default 0)")
    parser.add_argument(
        "--max-question-length", type=int, default=20, metavar="N", help="question tokens kept (default 20)"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check the arguments, load the checkpoint and its tokenizer, answer the split and write `--output`."""
    from lxmert_hf.detection.extraction import resolve_device
    from lxmert_hf.files import check_writable
    from lxmert_hf.predict import check_prepared_split, predict_split

    # Everything that can be checked without the checkpoint is, so that a typo costs no model loading.
    _check_numbers(args)
    check_output_file(args.output)
    check_writable(args.output, what="--output")  # before the split is answered, not after
    check_prepared_split(args.prepared, args.split)
    device = resolve_device(args.device)
    _require_tokenizer(args.tokenizer, args.model)
    model = _load_model(args.model)
    tokenizer = _load_tokenizer(args.tokenizer, args.model, model.config)
    path = predict_split(
        model,
        tokenizer,
        args.prepared,
        args.split,
        args.output,
        submission_format=args.submission_format,
        batch_size=args.batch_size,
        device=device,
        num_workers=args.num_workers,
        max_question_length=args.max_question_length,
        progress=not args.no_progress,
    )
    print(f"wrote the predictions for {args.prepared} split {args.split!r} to {path}")
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive number of questions, got {args.batch_size}.")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be 0 (load in the main process) or more, got {args.num_workers}.")
    if args.max_question_length < 3:
        raise ValueError(
            f"--max-question-length must leave room for [CLS] and [SEP] (>= 3), got {args.max_question_length}."
        )


def _load_model(name: str):
    from lxmert_hf.locations import locate
    from lxmert_hf.modeling import LxmertForVQA

    location = locate(name, what="--model")
    if location.is_local and not location.path.is_dir():
        raise ValueError(f"--model {name} is a file; give the checkpoint folder the fine-tuning run saved.")
    try:
        return LxmertForVQA.from_pretrained(str(location))
    except OSError as error:
        raise ValueError(f"--model {name}: cannot load a checkpoint from it ({str(error).rstrip('.')}).") from error


def _require_tokenizer(tokenizer: str | None, model: str) -> None:
    if tokenizer is None and Path(model).is_dir() and not any((Path(model) / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(
            f"--model {model} holds no tokenizer; pass --tokenizer with the tokenizer it was fine-tuned with "
            "(e.g. unc-nlp/lxmert-base-uncased)."
        )


def _load_tokenizer(tokenizer: str | None, model: str, config):
    from transformers import AutoTokenizer

    from lxmert_hf.locations import locate

    try:
        if tokenizer is not None:
            return AutoTokenizer.from_pretrained(locate(tokenizer, what="--tokenizer").name_or_path)
        # The checkpoint's config is given so that transformers does not re-read it as a config it does not know.
        return AutoTokenizer.from_pretrained(locate(model, what="--model").name_or_path, config=config)
    except OSError as error:
        option, name = ("--tokenizer", tokenizer) if tokenizer is not None else ("--model", model)
        raise ValueError(f"{option} {name}: cannot load a tokenizer from it ({str(error).rstrip('.')}).") from error
