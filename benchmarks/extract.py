"""Time region-feature extraction with each speed option, and check each option's regions against float32's.

One row per option and device: float32 (the reference; on a GPU with TF32 off), TF32 (GPU), bf16, fp16 (GPU),
channels-last, bf16 + channels-last, each timing the detector alone on images already decoded and resized, in
batches of one resized size. Then end-to-end rows: `extract_to_store` on JPEG files with `--workers` decoding
processes, batches grouped by resized size or not, with `--loading-option`'s arithmetic. Columns: images/s, the
ratio to the float32 row of the device, and the agreement with float32: for each of float32's kept regions, the
option's region of highest IoU; "matched" counts those with IoU >= 0.9, and the cosine similarity of the two
features is averaged (and its minimum taken) over the matched ones.

The images are drawn, photo-sized scenes (640x480 and 640x427, both orientations): sky and ground gradients,
textured ground, shaded and striped objects, sensor noise, a JPEG round trip. The published detector cannot be
downloaded here, so the detector has random weights, made to behave like a trained one where the agreement columns
depend on it (`--no-decisive` keeps it as initialized; float32 and every option share the same weights):

- each residual branch's last norm layer is scaled by `--residual-gain` (0.3) and every BatchNorm takes the mean and
  variance of its input on two of the images, so activations are standardized as in a trained network. As
  initialized, a perturbation grows block after block (bf16's rounding reaches ~15-20% of res4's output against ~1-5%
  with the gain), and activations grow until fp16 overflows;
- a random detector is not decisive: its class and objectness scores are near-equal random projections, whose
  ranking a 1e-3 feature difference reorders, and its box refinements are large random deltas that move every box.
  The class-score and objectness layers are set to read random combinations of the leading principal components of
  their inputs on the images (scores of a few logits' spread, as a trained detector's), and the box-refinement
  layers to give deltas of about 0.2.

Even so, box agreement is pessimistic: the 36 regions are the best of 300 proposals by scores that remain closer
together than a trained detector's, so a rounding difference swaps more of them. The published detector's figures
need its weights.

Run:
    ```bash
    PYTHONPATH=src python benchmarks/extract.py --device cpu --images 4 --proposals 100
    PYTHONPATH=src python benchmarks/extract.py --device cuda --cuda-images 256 --batch-size 16 --workers 8
    ```
"""

from __future__ import annotations

import argparse
import io
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn
from torchvision.ops import box_iou

from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig, load_features
from lxmert_hf.detection.batching import SizeGroupedBatchSampler
from lxmert_hf.detection.config import PRESETS
from lxmert_hf.detection.extraction import extract_to_store

PHOTO_SIZES = ((480, 640), (640, 480), (427, 640), (640, 427))  # (height, width), COCO's commonest
MATCH_IOU = 0.9
# The random detector made to behave like a trained one (see the module docstring).
RESIDUAL_GAIN = 0.3
SCORE_SPREAD = 3.0
DELTA_SPREAD = 0.2


@dataclass(frozen=True)
class Option:
    name: str
    precision: str = "float32"
    channels_last: bool = False
    tf32: bool | None = None  # None: PyTorch's defaults
    cuda_only: bool = False


OPTIONS = (
    Option("fp32", tf32=False),
    Option("tf32", tf32=True, cuda_only=True),
    Option("bf16", "bfloat16"),
    Option("fp16", "float16", cuda_only=True),
    Option("channels-last", channels_last=True, tf32=False),
    Option("bf16 + channels-last", "bfloat16", True),
)
BY_NAME = {option.name: option for option in OPTIONS}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4, help="images per row on the CPU (default 4)")
    parser.add_argument("--cuda-images", type=int, default=128, help="images per row on CUDA (default 128)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="lxmert")
    parser.add_argument("--resize-backend", choices=("opencv", "pil", "torch"), help="default: the preset's")
    parser.add_argument("--proposals", type=int, default=300, help="proposals per image through res5 (default 300)")
    parser.add_argument("--device", action="append", help="devices to time (default: cpu, and cuda if present)")
    parser.add_argument("--options", nargs="+", choices=sorted(BY_NAME), help="option rows (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes of the end-to-end rows")
    parser.add_argument(
        "--loading-option", choices=sorted(BY_NAME), default="bf16 + channels-last",
        help="arithmetic of the end-to-end rows (default bf16 + channels-last)",
    )  # fmt: skip
    parser.add_argument("--no-loading", action="store_true", help="skip the end-to-end rows")
    parser.add_argument("--no-decisive", action="store_true", help="keep the random detector as initialized")
    parser.add_argument(
        "--residual-gain", type=float, default=RESIDUAL_GAIN,
        help=f"scale of each residual branch's last norm layer in the decisive detector (default {RESIDUAL_GAIN})",
    )  # fmt: skip
    return parser


# -- images -----------------------------------------------------------------------------------------------------
def draw_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like RGB uint8 scene: sky and textured ground, 4-9 shaded objects standing on it, sensor noise."""
    horizon = int(height * rng.uniform(0.3, 0.6))
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = (1 - rows) * rng.uniform(90, 200, 3) + rows * rng.uniform(150, 250, 3)
    ground = (1 - rows) * rng.uniform(40, 140, 3) + rows * rng.uniform(20, 110, 3)
    canvas = np.where(np.arange(height)[:, None, None] < horizon, sky, ground) * np.ones((1, width, 1))
    canvas[horizon:] *= smooth_noise(rng, height - horizon, width, cell=24, amount=0.25)
    for _ in range(rng.integers(4, 10)):
        paint_object(rng, canvas, horizon)
    canvas += rng.normal(0.0, 3.0, canvas.shape)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
    return np.asarray(image)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int, amount: float) -> np.ndarray:
    """A multiplicative texture around 1: coarse random values bilinearly upsampled, plus fine grain."""
    coarse = rng.uniform(1 - amount, 1 + amount, (height // cell + 2, width // cell + 2)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    return (field * rng.uniform(0.95, 1.05, (height, width)))[..., None]


def paint_object(rng: np.random.Generator, canvas: np.ndarray, horizon: int) -> None:
    """One rectangle, ellipse or polygon, standing below the horizon, shaded along a direction, maybe striped."""
    height, width = canvas.shape[:2]
    box_w, box_h = int(width * rng.uniform(0.08, 0.4)), int(height * rng.uniform(0.08, 0.45))
    x1 = int(rng.integers(0, max(1, width - box_w)))
    bottom = int(rng.integers(min(horizon + 10, height - 1), height))
    box = (x1, max(0, bottom - box_h), x1 + box_w, bottom)
    mask = Image.new("L", (width, height))
    draw = ImageDraw.Draw(mask)
    kind = rng.integers(3)
    if kind == 0:
        draw.rectangle(box, fill=255)
    elif kind == 1:
        draw.ellipse(box, fill=255)
    else:
        corners = rng.uniform((box[0], box[1]), (box[2], box[3]), size=(int(rng.integers(3, 7)), 2))
        draw.polygon([tuple(point) for point in corners], fill=255)
    crop = (slice(box[1], box[3] + 1), slice(box[0], box[2] + 1))
    inside = np.asarray(mask)[crop] > 0
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0 : inside.shape[0], 0 : inside.shape[1]]
    along = (np.cos(angle) * xs + np.sin(angle) * ys) / max(box_w, box_h)
    shade = 0.6 + 0.6 * np.clip(along, 0, 1)
    if rng.random() < 0.4:
        shade *= 1 + 0.25 * np.sign(np.sin(xs * rng.uniform(0.1, 0.5) + ys * rng.uniform(-0.2, 0.2)))
    canvas[crop][inside] = (rng.uniform(20, 235, 3) * shade[..., None])[inside]


def photo_set(count: int, folder: Path) -> tuple[list[np.ndarray], list[tuple[str, Path]]]:
    """`count` scenes of photo sizes, saved as JPEG files; returns the decoded pixels and `(image_id, path)` pairs."""
    rng = np.random.default_rng(0)
    arrays, pairs = [], []
    for index in range(count):
        height, width = PHOTO_SIZES[int(rng.integers(len(PHOTO_SIZES)))]
        buffer = io.BytesIO()
        Image.fromarray(draw_scene(rng, height, width)).save(buffer, format="JPEG", quality=90)
        path = folder / f"scene{index:04d}.jpg"
        path.write_bytes(buffer.getvalue())
        arrays.append(np.asarray(Image.open(path).convert("RGB")))
        pairs.append((path.stem, path))
    return arrays, pairs


# -- a random detector that behaves like a trained one ----------------------------------------------------------
@torch.inference_mode()
def make_decisive(extractor: RegionFeatureExtractor, images: list[np.ndarray], residual_gain: float) -> None:
    """Make residual branches small and standardize every BatchNorm on `images`, then point the scoring layers at
    the leading principal components of their inputs and shrink the box refinements (see the module docstring)."""
    for name, module in extractor.named_modules():
        if name.endswith("conv3.norm"):  # the last norm layer of a residual branch
            module.weight.mul_(residual_gain)
    calibrate_norms(extractor, images)
    regions: list[torch.Tensor] = []
    cells: list[torch.Tensor] = []
    predictor = extractor.roi_heads.box_predictor
    class_scores, rpn = predictor.cls_score, extractor.proposal_generator.rpn_head
    objectness = rpn.objectness_logits
    hooks = [
        class_scores.register_forward_pre_hook(lambda module, inputs: regions.append(inputs[0].float())),
        objectness.register_forward_pre_hook(
            lambda module, inputs: cells.append(inputs[0].float().permute(0, 2, 3, 1).flatten(0, 2))
        ),
    ]
    try:
        extractor(images)
    finally:
        for hook in hooks:
            hook.remove()
    generator = torch.Generator(device=extractor.device).manual_seed(1)
    regions_seen, cells_seen = torch.cat(regions), torch.cat(cells)
    read_components(class_scores, regions_seen, generator, spread=SCORE_SPREAD)
    read_components(objectness, cells_seen, generator, spread=SCORE_SPREAD)
    read_components(rpn.anchor_deltas, cells_seen, generator, spread=DELTA_SPREAD)
    read_components(predictor.bbox_pred, regions_seen, generator, spread=DELTA_SPREAD)


def calibrate_norms(extractor: RegionFeatureExtractor, images: list[np.ndarray]) -> None:
    """One pass in which each BatchNorm first takes the mean and variance of its input as running statistics."""

    def standardize(module: nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        values = inputs[0].float()
        module.running_mean.copy_(values.mean(dim=(0, 2, 3)))
        module.running_var.copy_(values.var(dim=(0, 2, 3)) + module.eps)

    norms = [module for module in extractor.modules() if isinstance(module, nn.BatchNorm2d)]
    hooks = [norm.register_forward_pre_hook(standardize) for norm in norms]
    try:
        extractor(images)
    finally:
        for hook in hooks:
            hook.remove()


def read_components(
    layer: nn.Linear | nn.Conv2d, inputs: torch.Tensor, generator: torch.Generator, spread: float, rank: int = 8
) -> None:
    """Set `layer` (outputs x inputs) to random combinations of the `rank` leading principal components of `inputs`
    (`[samples, features]`), each output centred and scaled to a standard deviation of `spread` on them."""
    centred = inputs - inputs.mean(dim=0)
    _, _, components = torch.linalg.svd(centred[:: max(1, len(centred) // 4096)], full_matrices=False)
    mixing = torch.randn(layer.weight.shape[0], rank, generator=generator, device=inputs.device)
    weight = mixing @ components[:rank]
    outputs = inputs @ weight.T
    scale = spread / outputs.std(dim=0).clamp(min=1e-6)
    layer.weight.copy_((weight * scale[:, None]).reshape(layer.weight.shape))
    layer.bias.copy_(-(outputs.mean(dim=0) * scale))


# -- measuring ---------------------------------------------------------------------------------------------------
def variant(base: RegionFeatureExtractor, option: Option, device: str) -> RegionFeatureExtractor:
    extractor = RegionFeatureExtractor(
        base.config.replace(precision=option.precision, channels_last=option.channels_last)
    )
    extractor.load_state_dict(base.state_dict())
    return extractor.to(device)


def set_tf32(option: Option, defaults: tuple[bool, bool]) -> None:
    allow = defaults if option.tf32 is None else (option.tf32, option.tf32)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allow


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_detector(extractor: RegionFeatureExtractor, prepared: list, batch_size: int, device: str):
    """Seconds and results of the detector on prepared images, in batches of one resized size."""
    sampler = SizeGroupedBatchSampler(
        prepared, extractor.config, batch_size, key=lambda index: prepared[index].resized_size
    )
    batches = list(sampler)
    first_of_size = {}
    for batch in batches:
        first_of_size.setdefault(prepared[batch[0]].resized_size, batch)
    # Warm-up: allocator and kernels; on a GPU also cuDNN's choices, made for each size.
    for batch in list(first_of_size.values())[: None if device.startswith("cuda") else 1]:
        extractor.detect([prepared[i] for i in batch])
    synchronize(device)
    results: list = [None] * len(prepared)
    start = time.perf_counter()
    for batch in batches:
        for index, result in zip(batch, extractor.detect([prepared[i] for i in batch]), strict=True):
            results[index] = result
    synchronize(device)
    return time.perf_counter() - start, results


def time_loading(extractor, pairs, batch_size: int, workers: int, grouped: bool, folder: Path):
    """Seconds of `extract_to_store` on the files, and its stored regions in `pairs` order."""
    output = folder / f"store-{'grouped' if grouped else 'plain'}"
    start = time.perf_counter()
    extract_to_store(
        extractor, pairs, output, batch_size=batch_size, num_workers=workers, progress=False, group_by_size=grouped
    )
    synchronize(str(extractor.device))
    seconds = time.perf_counter() - start
    rows = {str(row["image_id"]): row for row in load_features(output).with_format("torch")}
    results = [
        {"visual_pos": rows[image_id]["visual_pos"], "visual_feats": rows[image_id]["visual_feats"]}
        for image_id, _ in pairs
    ]
    return seconds, results


def agreement(results: list[dict], reference: list[dict]) -> tuple[float, float, float]:
    """Mean and minimum cosine similarity over matched regions, and the share of the reference's regions matched (a
    region of `results` with IoU >= 0.9; normalized boxes, whose IoU is that of the pixel boxes)."""
    cosines, matched, total = [], 0, 0
    for ours, theirs in zip(results, reference, strict=True):
        total += len(theirs["visual_pos"])
        if len(ours["visual_pos"]) == 0 or len(theirs["visual_pos"]) == 0:
            continue
        best, index = box_iou(theirs["visual_pos"].float(), ours["visual_pos"].float()).max(dim=1)
        hit = best >= MATCH_IOU
        matched += int(hit.sum())
        pairs = theirs["visual_feats"][hit].float(), ours["visual_feats"][index[hit]].float()
        cosines.append(torch.nn.functional.cosine_similarity(*pairs, dim=1))
    cosine = torch.cat(cosines) if cosines else torch.zeros(0)
    if len(cosine) == 0:
        return float("nan"), float("nan"), 0.0
    return float(cosine.mean()), float(cosine.min()), matched / max(total, 1)


def print_row(device, name, count, batch_size, seconds, reference_rate, agreed) -> float:
    rate = count / seconds
    ratio = rate / reference_rate if reference_rate else 1.0
    mean, low, share = agreed
    print(
        f"| {device} | {name} | {count} | {batch_size} | {seconds:.1f} | {rate:.3g} | {ratio:.2f} "
        f"| {mean:.5f} | {low:.4f} | {100 * share:.1f}% |",
        flush=True,
    )
    return rate


def run_device(base, device, arrays, pairs, args, folder, tf32_defaults) -> None:
    count = args.cuda_images if device.startswith("cuda") else args.images
    chosen = [BY_NAME[name] for name in args.options] if args.options else list(OPTIONS)
    rows = [option for option in chosen if device.startswith("cuda") or not option.cuda_only]
    if rows[0].name != "fp32":
        rows.insert(0, BY_NAME["fp32"])
    prepared = [base.prepare(array) for array in arrays[:count]]
    reference, reference_rate = None, None
    for option in rows:
        set_tf32(option, tf32_defaults)
        extractor = variant(base, option, device)
        seconds, results = time_detector(extractor, prepared, args.batch_size, device)
        reference = reference or results
        rate = print_row(
            device, option.name, count, args.batch_size, seconds, reference_rate, agreement(results, reference)
        )
        reference_rate = reference_rate or rate
        del extractor
    if args.no_loading:
        return
    option = BY_NAME[args.loading_option]
    set_tf32(option, tf32_defaults)
    extractor = variant(base, option, device)
    for grouped in (False, True):
        seconds, results = time_loading(extractor, pairs[:count], args.batch_size, args.workers, grouped, folder)
        name = f"{option.name}, files, workers {args.workers}, {'grouped' if grouped else 'ungrouped'}"
        print_row(device, name, count, args.batch_size, seconds, reference_rate, agreement(results, reference))


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if any(device.startswith("cuda") for device in devices) and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine; time the CPU only (--device cpu).")
    tf32_defaults = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    overrides = {"rpn_post_nms_topk": args.proposals}
    if args.resize_backend:
        overrides["resize_backend"] = args.resize_backend
    config = RegionFeatureExtractorConfig.from_preset(args.preset, **overrides)
    torch.manual_seed(0)
    base = RegionFeatureExtractor(config)
    on_cuda = any(device.startswith("cuda") for device in devices)
    count = max(args.cuda_images if on_cuda else 0, args.images if "cpu" in devices else 0)
    with tempfile.TemporaryDirectory() as folder:
        arrays, pairs = photo_set(count, Path(folder))
        if not args.no_decisive:
            make_decisive(base.to(devices[-1]), arrays[:2], args.residual_gain)  # on the fastest device
            base.to("cpu")
        print(
            f"# extract: drawn photo-size scenes ({', '.join(f'{w}x{h}' for h, w in PHOTO_SIZES)}), preset "
            f"{args.preset} ({config.resize_backend} resize), {args.proposals} proposals/image, "
            f"{'decisive' if not args.no_decisive else 'plain'} random detector, torch {torch.__version__}, "
            f"{torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}"
            + (f", {torch.cuda.get_device_name()}" if on_cuda else "")
            + f"; TF32 defaults (cuDNN, matmul) {tf32_defaults}"
        )
        print(
            "| device | option | images | batch | seconds | images/s | ratio to fp32 | mean cosine | min cosine "
            f"| fp32 boxes matched (IoU >= {MATCH_IOU}) |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for device in devices:
            run_device(base, device, arrays, pairs, args, Path(folder), tf32_defaults)


if __name__ == "__main__":
    main()
