"""`lxmert-hf convert`: import a published LXMERT checkpoint as an lxmert_hf checkpoint, checked against it.

Example:
    ```bash
    lxmert-hf convert unc-nlp/lxmert-vqa-uncased --output lxmert-vqa \\
        --answers https://raw.githubusercontent.com/airsplay/lxmert/master/data/vqa/trainval_label2ans.json
    lxmert-hf convert snap/vqa/BEST.pth --output lxmert-vqa --answers data/vqa/trainval_label2ans.json
    lxmert-hf convert snap/pretrained/model_LXRT.pth --output lxmert-pretrained --answers data/lxmert/all_ans.json
    ```
"""

from __future__ import annotations

import argparse

# `lxmert_hf.hub.LXMERT_DETECTOR`, spelled out so that `--help` imports no torch (tests/test_cli.py checks it).
LXMERT_DETECTOR = "unc-nlp/frcnn-vg-finetuned"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="import a published LXMERT checkpoint (transformers or the original .pth files)",
        description=(
            "Convert transformers' LxmertForQuestionAnswering checkpoints (unc-nlp/lxmert-vqa-uncased, "
            "unc-nlp/lxmert-gqa-uncased) and the original code's BEST.pth into LxmertForVQA checkpoints, and the "
            "original model_LXRT.pth into transformers' LxmertForPreTraining layout. The output is written only "
            "after the converted model, read back, gave the source model's logits."
        ),
    )
    parser.add_argument("source", metavar="SOURCE", help="a .pth file, or a folder / Hub id of a transformers model")
    parser.add_argument("--output", required=True, metavar="DIR", help="the checkpoint folder to write")
    parser.add_argument(
        "--answers",
        metavar="FILE_OR_URL",
        help="answer list, index = label id (trainval_label2ans.json; all_ans.json for model_LXRT.pth)",
    )
    parser.add_argument(
        "--tokenizer", metavar="DIR_OR_ID", help="default: the source's, or unc-nlp/lxmert-base-uncased for .pth"
    )
    parser.add_argument(
        "--num-attention-heads", type=int, metavar="N", help=".pth only: default hidden size / 64 (12 for LXMERT)"
    )
    parser.add_argument(
        "--detector",
        default=LXMERT_DETECTOR,
        metavar="DIR_OR_ID",
        help=f"region detector recorded in the config (default {LXMERT_DETECTOR}; 'none' records none)",
    )
    parser.add_argument("--revision", help="Hub revision of SOURCE")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest logit difference accepted (default 1e-4)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.num_attention_heads is not None and args.num_attention_heads < 1:
        raise ValueError(f"--num-attention-heads must be >= 1, got {args.num_attention_heads}.")
    if not args.atol >= 0:
        raise ValueError(f"--atol must be >= 0, got {args.atol}.")
    from lxmert_hf.convert import convert_checkpoint  # after the checks: a typo costs no torch import
    from lxmert_hf.files import check_writable
    from lxmert_hf_cli.commands.prepare import check_answers

    check_answers(args.answers)
    check_writable(args.output, what="--output")  # staged beside it, in its parent (atomic_directory)

    report = convert_checkpoint(
        args.source, args.output, answers=args.answers, tokenizer=args.tokenizer,
        num_attention_heads=args.num_attention_heads,
        detector=None if args.detector.lower() == "none" else args.detector,
        overwrite=args.overwrite, atol=args.atol, revision=args.revision,
    )  # fmt: skip
    answers = f"{report.num_answers} answers" if report.num_answers else "no QA head"
    print(
        f"{args.source} ({report.source_format}) -> {report.output_dir} ({report.layout} layout, {answers}); "
        f"largest logit difference {report.max_abs_diff:.2e}"
    )
    return 0
