"""Time region-feature extraction: images one by one against images in batches, on the CPU and on CUDA when present.

The detector has random weights (the cost does not depend on them) and the images are synthetic photos-sized
arrays in two orientations, so several share a resized size as COCO images do. Each path runs the same images
after one warm-up image; the table gives images/s and the ratio to the first row, and checks the batched regions
against the sequential ones: how many of the sequential regions the batched path found too (same box within half a
pixel) and the largest feature difference among those. With random weights many proposals have near-equal scores,
so a float difference (TF32 convolutions on a GPU, another cuDNN algorithm for another batch size) can swap which
of two near-tied boxes is kept; `--no-tf32` runs a GPU in full fp32.

Run:
    ```bash
    PYTHONPATH=src python benchmarks/extract.py [--images 8] [--batch-size 4] [--proposals 300] [--device cpu]
    PYTHONPATH=src python benchmarks/extract.py --images 8 --cuda-images 64 --device cpu --device cuda
    ```
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig
from lxmert_hf.detection.config import PRESETS


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="images per path (default 8)")
    parser.add_argument("--batch-size", type=int, default=4, help="batch size of the batched path (default 4)")
    parser.add_argument("--height", type=int, default=480, help="image height; half the images are rotated")
    parser.add_argument("--width", type=int, default=640, help="image width")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="lxmert")
    parser.add_argument("--proposals", type=int, default=300, help="proposals per image through res5 (default 300)")
    parser.add_argument("--device", action="append", help="devices to time (default: cpu, and cuda if present)")
    parser.add_argument("--cuda-images", type=int, help="images per path on CUDA (default: --images)")
    parser.add_argument(
        "--tf32", action=argparse.BooleanOptionalAction, default=None,
        help="allow TF32 in cuDNN convolutions and matrix products (default: PyTorch's settings, printed)",
    )  # fmt: skip
    return parser


def synthetic_images(count: int, height: int, width: int) -> list[np.ndarray]:
    """Smooth random images (blocky colour fields), landscape and portrait alternately."""
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        h, w = (height, width) if index % 2 == 0 else (width, height)
        coarse = rng.integers(0, 256, size=(h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
        images.append(np.ascontiguousarray(coarse.repeat(32, axis=0).repeat(32, axis=1)[:h, :w]))
    return images


def extract_all(extractor: RegionFeatureExtractor, images: list[np.ndarray], batch_size: int) -> list[dict]:
    if batch_size == 1:
        # The sequential path: one call per image, as a plain loop over files would make.
        return [extractor(image) for image in images]
    return extractor(images, batch_size=batch_size)


def time_path(extractor: RegionFeatureExtractor, images: list[np.ndarray], batch_size: int) -> tuple[float, list]:
    extractor(images[:1])  # warm-up: allocator, kernels, cuDNN autotuning
    start = time.perf_counter()
    results = extract_all(extractor, images, batch_size)
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, results


def compare(results: list[dict], reference: list[dict]) -> str:
    """How many reference regions have a box within half a pixel among `results`, and the largest feature
    difference over those pairs."""
    found, total, worst = 0, 0, 0.0
    for ours, theirs in zip(results, reference, strict=True):
        total += len(theirs["boxes"])
        if len(ours["boxes"]) == 0 or len(theirs["boxes"]) == 0:
            continue
        distance = (theirs["boxes"][:, None, :] - ours["boxes"][None, :, :]).abs().amax(dim=-1)
        nearest, index = distance.min(dim=1)
        hit = nearest < 0.5
        found += int(hit.sum())
        if hit.any():
            difference = (theirs["visual_feats"][hit] - ours["visual_feats"][index[hit]]).abs().max()
            worst = max(worst, float(difference))
    return f"{found}/{total}, {worst:.1e}"


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if any(device.startswith("cuda") for device in devices) and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine; time the CPU only (--device cpu).")
    if args.tf32 is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    config = RegionFeatureExtractorConfig.from_preset(args.preset, rpn_post_nms_topk=args.proposals)
    torch.manual_seed(0)
    extractor = RegionFeatureExtractor(config)
    images = synthetic_images(max(args.images, args.cuda_images or 0), args.height, args.width)
    print(
        f"# extract: {args.images} images {args.height}x{args.width} (both orientations), preset {args.preset}, "
        f"{args.proposals} proposals/image, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"{platform.processor() or platform.machine()}"
        + (
            f", {torch.cuda.get_device_name()}, TF32 convolutions {torch.backends.cudnn.allow_tf32}, "
            f"TF32 matrix products {torch.backends.cuda.matmul.allow_tf32}"
            if "cuda" in devices
            else ""
        )
    )
    print(
        "| device | path | images | batch size | seconds | images/s | ratio | sequential regions found, max abs diff |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    first_rate = None
    for device in devices:
        extractor.to(device)
        count = args.cuda_images if device.startswith("cuda") and args.cuda_images else args.images
        sequential = None
        for path, batch_size in (("sequential", 1), ("batched", args.batch_size)):
            seconds, results = time_path(extractor, images[:count], batch_size)
            rate = count / seconds
            first_rate = first_rate or rate
            check = "-" if sequential is None else compare(results, sequential)
            sequential = sequential or results
            print(
                f"| {device} | {path} | {count} | {batch_size} | {seconds:.1f} | {rate:.3g} | {rate / first_rate:.2f} "
                f"| {check} |"
            )


if __name__ == "__main__":
    main()
