"""`lxmert-hf ask`: answer a question about an image (or its precomputed features) with a checkpoint.

Example:
    ```bash
    lxmert-hf ask --model me/lxmert-vqa --image cat.jpg --question "What color is the cat?" --top-k 3
    lxmert-hf ask --model lxmert-vqa/ --features cat.npz --question "Is the cat sleeping?" --json
    ```
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

FEATURE_KEYS = ("visual_feats", "visual_pos", "boxes", "image_size", "image_width", "image_height")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `ask` subcommand."""
    parser = subparsers.add_parser(
        "ask",
        help="answer a question about an image",
        description="Answer a question about an image with a VQA checkpoint; prints the best answers and scores.",
    )
    parser.add_argument("--model", required=True, metavar="DIR_OR_ID", help="checkpoint folder or Hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="PATH_OR_URL", help="the picture (run through the region detector)")
    source.add_argument(
        "--features",
        type=Path,
        metavar="FILE.npz",
        help="precomputed regions: visual_feats and visual_pos, or boxes with image_size (height, width)",
    )
    parser.add_argument("--question", required=True, help="the question, e.g. 'What color is the car?'")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="answers to print (default 5)")
    parser.add_argument("--detector", metavar="DIR_OR_ID", help="region detector (default: the checkpoint's)")
    parser.add_argument("--revision", help="Hub revision of --model")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto (CUDA when available)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an image URL (default 10)")
    parser.add_argument("--question-lang", metavar="LANG", help="language of the question, e.g. ko (translated)")
    parser.add_argument("--answer-lang", metavar="LANG", help="language of the answers, e.g. ko (translated)")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}.")
    image = read_features(args.features) if args.features is not None else args.image
    from lxmert_hf.detection.extraction import resolve_device
    from lxmert_hf.pipeline import VQAPipeline  # after the checks: a typo costs no torch import

    if args.image is not None:
        check_image(args.image)
    device = resolve_device(args.device)
    pipe = VQAPipeline.from_pretrained(args.model, detector=args.detector, revision=args.revision, device=device)
    if args.image is not None and args.detector is None:
        check_names_detector(args.model, pipe.model.config.visual_features)
    answers = pipe(
        image, question=args.question, top_k=args.top_k, timeout=args.timeout,
        question_lang=args.question_lang, answer_lang=args.answer_lang,
    )  # fmt: skip
    if args.json:
        print(json.dumps(answers, ensure_ascii=False))
        return 0
    print(f"{'score':>7}  answer")
    for answer in answers:
        print(f"{answer['score']:>7.4f}  {answer['answer']}")
    return 0


def check_image(image: str) -> None:
    """Refuse an `--image` that is no picture to read: a URL of another scheme than http(s), a folder."""
    from lxmert_hf.downloads import check_url_scheme

    check_url_scheme(image, "--image")
    if Path(image).is_dir():
        raise ValueError(
            f"--image {image} is a folder; pass one picture (path or http(s) URL), or use `lxmert-hf "
            "extract --images DIR` for a folder."
        )


def check_names_detector(model: str, visual_features: dict | None) -> None:
    """Refuse `--image` for a checkpoint that names no region detector, saying what to pass instead."""
    described = visual_features or {}
    if described.get("detector"):
        return
    origin = f"its features came from {described['source']}" if described.get("source") else "it names none"
    raise ValueError(
        f"--model {model}: answering about a picture needs the region detector the checkpoint was trained on, and "
        f"{origin} (config.visual_features); pass --detector DIR_OR_ID (e.g. unc-nlp/frcnn-vg-finetuned, the one "
        "LXMERT's own features came from) or --features FILE.npz."
    )


def read_features(path: Path) -> dict[str, np.ndarray]:
    """Read precomputed regions of one image from an `.npz` file."""
    import zipfile

    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"--features {path}: no such file.")
    if not zipfile.is_zipfile(path):  # np.load would try other formats, pickles among them
        raise ValueError(f"--features {path}: not a .npz archive; save the regions with numpy.savez(path, ...).")
    try:
        with np.load(path, allow_pickle=False) as archive:
            features = {key: archive[key] for key in FEATURE_KEYS if key in archive.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"--features {path}: not a readable .npz file ({error}).") from error
    if "visual_feats" not in features:
        raise ValueError(f"--features {path}: holds no `visual_feats` array (it has {sorted(archive.files)}).")
    for key, values in features.items():
        if np.issubdtype(values.dtype, np.number) and not np.isfinite(values).all():
            raise ValueError(f"--features {path}: `{key}` holds NaN or infinite values; re-extract these regions.")
    return features
