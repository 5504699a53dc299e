"""`lxmert-hf extract`: region features for a folder of images, written to a feature store.

Example:
    ```bash
    lxmert-hf extract --images my_images/ --output my_features/ --batch-size 4 --device cuda
    lxmert-hf extract --images my_images/ --output my_box_features/ --boxes my_boxes.json  # features of your boxes
    lxmert-hf extract --images my_images/ --output my_features/ --num-processes 4   # one GPU each
    accelerate launch --num_processes 8 -m lxmert_hf_cli extract --images my_images/ --output /shared/features/
    ```
"""

from __future__ import annotations

import argparse
import sys

import yaml

from lxmert_hf_cli._interrupt import report_interrupted, store_kept
from lxmert_hf_cli.commands._parallel import rank_device, requested_rank, spawn_local_ranks

# `lxmert_hf.detection`'s `DEFAULT_CHECKPOINT`, preset names and default preset, spelled out so that `--help` imports
# no torch (tests/test_cli.py checks that they agree).
DEFAULT_CHECKPOINT = "unc-nlp/frcnn-vg-finetuned"
PRESET_NAMES = ("lxmert", "lxmert-detectron2", "transformers-demo")
DEFAULT_PRESET = "lxmert"
PRECISION_NAMES = ("float32", "bfloat16", "float16")  # `lxmert_hf.detection.config.PRECISIONS`


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `extract` subcommand."""
    parser = subparsers.add_parser(
        "extract",
        help="extract LXMERT region features from images into a feature store",
        description=(
            "Run the Visual Genome Faster R-CNN over a folder (or a list) of images and write their region "
            "features to a feature store. Rerunning the same command resumes: images already stored are skipped. "
            "Unreadable images are skipped and reported."
        ),
    )
    parser.add_argument("--images", required=True, help="a folder (searched recursively) or a text file of paths")
    parser.add_argument("--output", required=True, help="feature store folder (created, or resumed)")
    parser.add_argument(
        "--model", default=DEFAULT_CHECKPOINT, help=f"detector folder or Hub id (default {DEFAULT_CHECKPOINT})"
    )
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default=None,
        help=f"detection settings (default: {DEFAULT_PRESET}, the Caffe extraction LXMERT's own features were made "
        "with, which resizes with OpenCV: pip install 'lxmert-hf[vision]', or --set resize_backend=torch; "
        "lxmert-detectron2: py-bottom-up-attention's detectron2 script; transformers-demo: the transformers demo)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one detector setting, e.g. --set max_boxes=50 --set min_boxes=10 (repeatable)",
    )
    parser.add_argument(
        "--boxes",
        default=None,
        metavar="FILE",
        help="describe these boxes instead of detecting: pixels x1, y1, x2, y2 of the original images, any number "
        "per image, every image needs some; FILE is .json {image_id: [[x1, y1, x2, y2], ...]}, .jsonl (one "
        '{"image_id": ..., "boxes": [...]} a line), .parquet, .arrow or a datasets save_to_disk folder with image_id '
        "and a boxes column. Image ids: the path inside --images without the extension",
    )
    parser.add_argument(
        "--boxes-column", default=None, metavar="NAME", help="the boxes column of a --boxes table (default boxes)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--no-tf32",
        action="store_true",
        help="on a GPU, compute convolutions in full fp32 instead of PyTorch's default TF32: features within ~1e-5 "
        "of the CPU's instead of ~1e-3 (relative), about 2.5x slower on an H100",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISION_NAMES,
        default=None,
        help="arithmetic of the backbone and res5 (default float32): bfloat16 / float16 (GPU only) autocast them, "
        "faster on GPUs (and bfloat16 on CPUs with bf16 instructions), features within ~1e-3 of float32's; boxes and "
        "scores stay float32 (recorded in the store)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="convolutions in the channels-last memory layout, faster on GPUs (most with --precision bfloat16)",
    )
    parser.add_argument("--num-workers", type=int, default=2, help="image decoding processes (default 2)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored feature type")
    parser.add_argument("--images-per-shard", type=int, default=1000, help="images per store shard (default 1000)")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.add_argument(
        "--num-processes",
        type=int,
        default=None,
        metavar="N",
        help="extract with N processes on this machine (one GPU each, in turn; on the CPU the cores are shared), "
        "writing one store; rerunning the same command resumes every process. Under accelerate launch or torchrun "
        "leave it out: each launched process is one of WORLD_SIZE ranks",
    )
    parser.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict:
    """Parse `KEY=VALUE` strings; values are read as YAML (`64`, `0.5`, `[0.5, 0.7]`, `BGR`)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set max_boxes=50.")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ValueError(f"--set {item!r}: cannot parse the value ({error}).") from error
    return overrides


def speed_overrides(args: argparse.Namespace) -> dict:
    """`--precision` and `--channels-last` as detector settings, so that the store records them."""
    overrides: dict = {} if args.precision is None else {"precision": args.precision}
    if args.channels_last:
        overrides["channels_last"] = True
    return overrides


def load_extractor(model: str, preset: str | None, overrides: dict):
    """The detector at `model` with `overrides`; an error names the argument at fault: `--set` for settings no
    detector takes, else `--model`."""
    from lxmert_hf.detection.config import RegionFeatureExtractorConfig
    from lxmert_hf.detection.model import RegionFeatureExtractor

    if overrides:
        try:
            RegionFeatureExtractorConfig.from_preset(preset or "lxmert", **overrides)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--set {' '.join(f'{k}={v}' for k, v in overrides.items())}: {error}") from None
    try:
        return RegionFeatureExtractor.from_pretrained(model, preset=preset, **overrides)
    except (ValueError, FileNotFoundError) as error:
        kind = FileNotFoundError if isinstance(error, FileNotFoundError) else ValueError
        raise kind(f"--model {model}: {error}") from None


def run(args: argparse.Namespace) -> int:
    """Run `lxmert-hf extract` with parsed `args`; returns the exit code."""
    from dataclasses import astuple

    import torch

    from lxmert_hf.detection.extraction import extract_to_store, list_images, resolve_device
    from lxmert_hf.detection.parallel import check_parts, extract_rank
    from lxmert_hf.detection.precision import convolution_autocast
    from lxmert_hf.detection.preprocessing import check_resize_backend
    from lxmert_hf.files import check_writable

    for name in ("batch_size", "images_per_shard"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}.")
    rank = requested_rank(args)
    images = list_images(args.images)
    boxes = read_given_boxes(args, images)
    check_writable(args.output, what="--output", inside=True)
    device = resolve_device(args.device)
    processes = rank.world_size if rank else args.num_processes if args.num_processes != 1 else None
    check_parts(args.output, processes)  # before any process starts: parts of another N are one error, not N
    if args.no_tf32:  # process-wide switches: this command is the whole process
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    overrides = {**parse_overrides(args.overrides), **speed_overrides(args)}
    extractor = load_extractor(args.model, args.preset, overrides)
    try:
        check_resize_backend(extractor.config)
    except ImportError as error:
        raise ValueError(str(error)) from error  # a missing extra is a usage error: one line, exit code 2
    if rank is None and processes is not None:  # the detector and its settings checked once, here
        convolution_autocast(extractor.config, device)  # an arithmetic the device refuses (float16 on the CPU)
        del extractor
        return spawn_local_ranks(args, on_cpu=device.type == "cpu")
    extractor = extractor.to(rank_device(device, rank.local_rank) if rank else device)
    options = dict(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        dtype=args.dtype,
        images_per_shard=args.images_per_shard,
        progress=not args.no_progress,
        detector=args.model,
        boxes=boxes,
    )
    try:
        if rank is not None:
            return print_rank_result(extract_rank(extractor, images, args.output, *astuple(rank), **options))
        report = extract_to_store(extractor, images, args.output, **options)
    except KeyboardInterrupt as error:
        return report_interrupted("extract", error, store_kept(args.output))
    print_report(report, f"extracted {report.written} images into {args.output}")
    return 0


def print_report(report, summary: str) -> None:
    """Print `summary` with the counts of `report` (an `ExtractionReport`), and each skipped image on stderr."""
    print(f"{summary} ({report.already_done} already there, {len(report.skipped)} skipped).")
    for image_id, reason in report.skipped:
        print(f"skipped {image_id}: {reason}", file=sys.stderr)


def print_rank_result(result) -> int:
    """Print what one rank did (`RankResult`): its part, and the merge when it merged; returns the exit code."""
    rank, report = result.rank, result.report
    print(
        f"rank {rank.rank} of {rank.world_size}: extracted {report.written} images into its part "
        f"({report.already_done} already there, {len(report.skipped)} skipped)."
    )
    if result.merged is not None:
        merged = result.merged
        print_report(
            merged,
            f"merged the parts of {rank.world_size} processes: {merged.written} new images, "
            f"{result.num_images} in the store",
        )
    return 0


def read_given_boxes(args: argparse.Namespace, images: list) -> dict | None:
    """The boxes of `--boxes` for each of `images`, checked before the detector is loaded (`None` without it)."""
    from lxmert_hf.detection.given_boxes import match_boxes, read_boxes

    if args.boxes is None:
        if args.boxes_column is not None:
            raise ValueError("--boxes-column names a column of the --boxes file; pass --boxes FILE too.")
        return None
    return match_boxes(images, read_boxes(args.boxes, column=args.boxes_column or "boxes"), f"--boxes {args.boxes}")
