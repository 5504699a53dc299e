"""Time region-feature extraction with 1, 2, ... processes writing one store, on the CPU and on CUDA when present.

Each row runs the library's own paths on the same JPEG files: one process is `extract_to_store` (what
`lxmert-hf extract` runs), N processes are N ranks of `extract_rank` (what `lxmert-hf extract --num-processes N`
runs), each writing its part, the last one merging the parts into the store. On the CPU each rank gets
`cores // N` threads, as `--num-processes` gives them; on CUDA rank i runs on GPU `i % count`. Time runs from the
moment every rank has loaded the detector and run one warm-up image to the moment the store is merged (loading
Python and the detector, a few seconds once per process, is left out: it does not grow with the images). The table
gives images/s (of the fastest of `--repeats` runs: on a shared machine other work only ever slows a run down), the
ratio to one process, and the largest feature difference of the merged store against the
one-process store over the same images (they must hold the same images). With the same threads in every process
(`--threads`) that difference is 0; with other thread counts float sums differ in their last bits, and with random
weights, whose proposals have near-equal scores, such a difference can swap which of two boxes is kept.

The detector has random weights (the cost does not depend on them); `--detector` picks its size: `tiny` (the test
detector, 2M parameters), `mid` (ResNet-50-like depth at half width) or `full` (the published ResNet-101 shapes,
65M parameters). Images are drawn scenes (coloured shapes on a sky and ground) of `--height` x `--width`, half of
them rotated, resized by the preset as real photos are.

Run:
    ```bash
    PYTHONPATH=src python benchmarks/extract_scaling.py [--images 16] [--processes 1 2] [--detector mid]
    PYTHONPATH=src python benchmarks/extract_scaling.py --detector full --device cuda --images 256 --processes 1 2 4
    ```
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig
from lxmert_hf.data.store import FeatureStore
from lxmert_hf.detection.extraction import extract_to_store, list_images
from lxmert_hf.detection.parallel import cpu_threads, extract_rank

DETECTORS = {
    "tiny": dict(stage_blocks=(1, 1, 1, 1), stem_channels=8, res2_channels=16, rpn_channels=16),
    "mid": dict(stage_blocks=(3, 4, 6, 3), stem_channels=32, res2_channels=128, rpn_channels=256),
    "full": {},
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="images per row (default 16)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    parser.add_argument("--detector", choices=sorted(DETECTORS), default="mid", help="detector size (default mid)")
    parser.add_argument("--height", type=int, default=480, help="image height; half the images are rotated")
    parser.add_argument("--width", type=int, default=640, help="image width")
    parser.add_argument("--preset", default="lxmert", help="detection settings (default lxmert)")
    parser.add_argument("--proposals", type=int, default=300, help="proposals per image through res5 (default 300)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding processes per rank (default 0)")
    parser.add_argument(
        "--threads", type=int, help="CPU threads of every process (default: the cores shared out, cores // processes)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each row; the fastest counts (default 1)")
    parser.add_argument("--device", action="append", help="devices to time (default: cpu, and cuda if present)")
    return parser


def draw_scene(index: int, height: int, width: int) -> Image.Image:
    """A picture with sky, ground and a few coloured shapes: edges and flat areas, as photos have."""
    rng = np.random.default_rng(index)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(120, 230, 3)))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height * 0.6, width, height), fill=tuple(int(v) for v in rng.integers(30, 140, 3)))
    for _ in range(8):
        x, y = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 12, width // 3), rng.integers(height // 12, height // 3)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)), outline=(0, 0, 0))
    return image


def write_images(folder: Path, count: int, height: int, width: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        h, w = (height, width) if index % 2 == 0 else (width, height)
        draw_scene(index, h, w).save(folder / f"scene{index:05d}.jpg", quality=90)
    return folder


def _rank(rank, world, device, threads, detector, images_dir, output, options, barrier, results) -> None:
    """One rank: load, warm up, wait for the others, extract (and, for the last rank, merge)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        device = f"cuda:{rank % torch.cuda.device_count()}"
    extractor = RegionFeatureExtractor.from_pretrained(detector).to(device)
    images = list_images(images_dir)
    extractor(images[0][1])
    barrier.wait()
    start = time.monotonic()  # the system-wide clock: comparable across processes
    if world == 1:
        extract_to_store(extractor, images, output, progress=False, **options)
    else:
        extract_rank(extractor, images, output, rank, world, progress=False, **options)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    results.put((start, time.monotonic()))


def time_run(
    world: int, device: str, detector: Path, images_dir: Path, output: Path, options: dict, threads: int | None
) -> float:
    """Seconds from the start of extraction on every rank to the end of the last (the merge included)."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(world), context.Queue()
    threads = (threads or cpu_threads(world)) if device == "cpu" else None
    processes = [
        context.Process(
            target=_rank, args=(rank, world, device, threads, detector, images_dir, output, options, barrier, results)
        )
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    times = [results.get() for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a rank of the {world}-process run failed (exit code {process.exitcode}); see above.")
    return max(end for _, end in times) - min(start for start, _ in times)


def max_difference(store_dir: Path, reference_dir: Path) -> str:
    store, reference = FeatureStore(store_dir), FeatureStore(reference_dir)
    if sorted(store.image_ids) != sorted(reference.image_ids) or len(store.image_ids) != len(set(store.image_ids)):
        return "other images!"
    worst = 0.0
    for image_id in reference.image_ids:
        ours, theirs = store[image_id]["visual_feats"], reference[image_id]["visual_feats"]
        worst = max(
            worst, float(np.abs(ours.astype(np.float64) - theirs).max()) if ours.shape == theirs.shape else np.inf
        )
    return f"{worst:.1e}"


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if min(args.images, args.repeats, *args.processes, args.threads or 1) < 1:
        raise SystemExit("--images, --repeats, --processes and --threads must be >= 1.")
    if any(device.startswith("cuda") for device in devices) and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine; time the CPU only (--device cpu).")
    with tempfile.TemporaryDirectory(prefix="extract-scaling-") as work:
        run(args, devices, Path(work))


def run(args: argparse.Namespace, devices: list[str], work: Path) -> None:
    """Write the detector and the images under `work`, then time and print each row."""
    config = RegionFeatureExtractorConfig.from_preset(
        args.preset, rpn_post_nms_topk=args.proposals, resize_backend="torch", **DETECTORS[args.detector]
    )
    torch.manual_seed(0)
    RegionFeatureExtractor(config).save_pretrained(work / "detector")
    images_dir = write_images(work / "images", args.images, args.height, args.width)
    options = {"batch_size": args.batch_size, "num_workers": args.num_workers}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"# extract_scaling: {args.images} JPEG images {args.height}x{args.width} (both orientations), detector "
        f"{args.detector} ({sum(p.numel() for p in RegionFeatureExtractor(config).parameters()) / 1e6:.1f}M "
        f"parameters), preset {args.preset}, {args.proposals} proposals/image, batch size {args.batch_size}, "
        f"torch {torch.__version__}, {cores} CPU cores, {platform.processor() or platform.machine()}"
        + (f", {torch.cuda.device_count()} x {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
        + f"; load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    first = args.processes[0]
    columns = f"seconds (best of {args.repeats}) | images/s | ratio to {first} | max abs diff to {first}"
    print(f"| device | processes | threads/process | images | {columns} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for device in devices:
        first_rate, reference = None, None
        for world in args.processes:
            runs = []
            for repeat in range(args.repeats):
                output = work / f"store-{device.replace(':', '-')}-{world}-{repeat}"
                runs.append(
                    (time_run(world, device, work / "detector", images_dir, output, options, args.threads), output)
                )
            seconds, output = min(runs)
            rate = args.images / seconds
            first_rate, reference = first_rate or rate, reference or output
            threads = (args.threads or cpu_threads(world)) if device == "cpu" else "-"
            print(
                f"| {device} | {world} | {threads} | {args.images} | {seconds:.1f} | {rate:.3g} | "
                f"{rate / first_rate:.2f} | {max_difference(output, reference)} |",
                flush=True,
            )
    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
