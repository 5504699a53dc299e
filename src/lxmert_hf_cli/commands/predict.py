"""`lxmert-hf predict`: predict a prepared split with a fine-tuned checkpoint and write the submission file.

Example:
    ```bash
    lxmert-hf predict --model output/vqa --prepared data/vqa --split test --output test_predict.json
    lxmert-hf predict --model output/gqa --prepared data/gqa --split testdev --output testdev_predict.json \\
        --batch-size 256 --device cuda --num-workers 4
    lxmert-hf predict --task nlvr2 --model output/nlvr2 --prepared data/nlvr2 --split test --output test_predict.csv
    ```
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lxmert_hf_cli._paths import check_output_file

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")
TASKS = ("vqa", "gqa", "nlvr2")  # `lxmert_hf.predict.TASKS`, spelled here so that `--help` needs no torch


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `predict` subcommand."""
    parser = subparsers.add_parser(
        "predict",
        help="write the submission file of a prepared split from a fine-tuned checkpoint",
        description="Predict every example of a prepared split with a fine-tuned checkpoint and write the file the "
        "evaluation server or official script accepts: VQA and GQA questions are answered by an LxmertForVQA "
        "checkpoint (VQA: [{question_id, answer}], GQA: [{questionId, prediction}]), NLVR2 sentences about image "
        "pairs are judged by an LxmertForNLVR2 checkpoint (CSV lines identifier,True|False).",
    )
    parser.add_argument("--model", required=True, metavar="DIR_OR_ID", help="fine-tuned checkpoint folder or Hub id")
    parser.add_argument("--prepared", required=True, type=Path, metavar="DIR", help="a `lxmert-hf prepare` output")
    parser.add_argument("--split", required=True, metavar="NAME", help="the split to answer, e.g. minival, test")
    parser.add_argument("--output", required=True, type=Path, metavar="FILE", help="the submission file to write")
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="default: nlvr2 for an LxmertForNLVR2 checkpoint, else the prepared directory's task; the checkpoint, "
        "the prepared directory and --task must agree",
    )
    parser.add_argument(
        "--format",
        choices=TASKS,
        dest="submission_format",
        help="the submission format; default: the task's own (VQA answers may be written as GQA and back)",
    )
    parser.add_argument("--tokenizer", metavar="DIR_OR_ID", help="default: the tokenizer saved with --model")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="examples per batch (default 64)")
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
    from lxmert_hf.predict import check_prepared_split, check_submission_format, predict_split, resolve_task

    # Everything that can be checked without the checkpoint's weights is, so that a typo costs no model loading.
    _check_numbers(args)
    check_output_file(args.output)
    check_writable(args.output, what="--output")  # before the split is predicted, not after
    metadata = check_prepared_split(args.prepared, args.split)
    device = resolve_device(args.device)
    _require_tokenizer(args.tokenizer, args.model)
    task = resolve_task(metadata["task"], _model_type(args.model), args.task, where=f"--prepared {args.prepared}")
    check_submission_format(task, args.submission_format)
    model = _load_model(args.model, task)
    tokenizer = _load_tokenizer(args.tokenizer, args.model, model.config)
    path = predict_split(
        model,
        tokenizer,
        args.prepared,
        args.split,
        args.output,
        submission_format=args.submission_format,
        task=task,
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


def _checkpoint(name: str):
    from lxmert_hf.locations import locate

    location = locate(name, what="--model")
    if location.is_local and not location.path.is_dir():
        raise ValueError(f"--model {name} is a file; give the checkpoint folder the fine-tuning run saved.")
    return location


def _model_type(name: str) -> str | None:
    """The checkpoint's `model_type`, read from its config alone (no weights)."""
    from transformers import PretrainedConfig

    try:
        config_dict, _ = PretrainedConfig.get_config_dict(str(_checkpoint(name)))
    except OSError as error:
        raise ValueError(f"--model {name}: cannot load a checkpoint from it ({str(error).rstrip('.')}).") from error
    return config_dict.get("model_type")


def _load_model(name: str, task: str):
    if task == "nlvr2":
        from lxmert_hf.modeling_nlvr2 import LxmertForNLVR2 as model_class
    else:
        from lxmert_hf.modeling import LxmertForVQA as model_class

    try:
        return model_class.from_pretrained(str(_checkpoint(name)))
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
