"""`lxmert-hf evaluate`: score a prediction file with the official VQA v2, GQA or NLVR2 metric.

Example:
    ```bash
    lxmert-hf evaluate vqa --questions v2_OpenEnded_mscoco_val2014_questions.json \\
        --annotations v2_mscoco_val2014_annotations.json --predictions val_predict.json --output metrics.json
    lxmert-hf evaluate gqa --questions testdev_balanced_questions.json --predictions testdev_predict.json
    lxmert-hf evaluate nlvr2 --annotations dev.json --predictions dev_predict.csv
    ```
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lxmert_hf_cli._paths import check_output_file


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `evaluate` subcommand and its `vqa`, `gqa` and `nlvr2` tasks."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predictions with the official VQA v2, GQA or NLVR2 metric",
        description="Score a prediction file against the official ground truth, as the official tools do.",
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    vqa = tasks.add_parser(
        "vqa", help="VQA v2 accuracy", description="Official VQA v2 accuracy: overall, per answer and question type."
    )
    vqa.add_argument(
        "--questions", required=True, type=Path, metavar="FILE", help="v2_OpenEnded_mscoco_*_questions.json"
    )
    vqa.add_argument("--annotations", required=True, type=Path, metavar="FILE", help="v2_mscoco_*_annotations.json")
    vqa.add_argument(
        "--predictions", required=True, type=Path, metavar="FILE", help='[{"question_id": int, "answer": str}, ...]'
    )

    gqa = tasks.add_parser("gqa", help="GQA accuracy", description="GQA accuracy on the balanced questions.")
    gqa.add_argument(
        "--questions",
        required=True,
        type=Path,
        metavar="FILE",
        help="official questions, e.g. testdev_balanced_questions.json",
    )
    gqa.add_argument(
        "--predictions", required=True, type=Path, metavar="FILE", help='[{"questionId": str, "prediction": str}, ...]'
    )

    nlvr2 = tasks.add_parser(
        "nlvr2", help="NLVR2 accuracy and consistency", description="NLVR2 accuracy and consistency."
    )
    nlvr2.add_argument(
        "--annotations", required=True, type=Path, metavar="FILE", help="official examples (JSON lines), e.g. dev.json"
    )
    nlvr2.add_argument(
        "--predictions", required=True, type=Path, metavar="FILE", help="CSV lines `identifier,True|False`"
    )

    for task in (vqa, gqa, nlvr2):
        task.add_argument("--output", type=Path, metavar="FILE", help="also write the metrics to this JSON file")
        task.add_argument(
            "--precision", type=int, default=2, metavar="N", help="decimals of the percentages (default: 2)"
        )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the metrics as JSON and write them to `--output` when given."""
    if args.precision < 0:
        raise ValueError(f"--precision must be a non-negative number of decimals, got {args.precision}.")
    if args.output is not None:
        check_output_file(args.output)  # first, so that a typo does not cost a full evaluation
    from lxmert_hf.files import check_writable, write_text_atomic
    from lxmert_hf.metrics import evaluate_gqa_files, evaluate_nlvr2_files, evaluate_vqa_files

    if args.output is not None:
        check_writable(args.output, what="--output")

    if args.task == "vqa":
        metrics = evaluate_vqa_files(args.questions, args.annotations, args.predictions, precision=args.precision)
    elif args.task == "gqa":
        metrics = evaluate_gqa_files(args.questions, args.predictions, precision=args.precision)
    else:
        metrics = evaluate_nlvr2_files(args.annotations, args.predictions, precision=args.precision)
    text = json.dumps(metrics, indent=2, ensure_ascii=False)
    print(text)
    if args.output is not None:
        write_text_atomic(args.output, text + "\n")
    return 0
