"""Extract region features for a folder (or a list) of images into a feature store, resumably."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lxmert_hf.data.store import FeatureStoreWriter
from lxmert_hf.detection.batching import SizeGroupedBatchSampler
from lxmert_hf.detection.config import RegionFeatureExtractorConfig
from lxmert_hf.detection.given_boxes import GIVEN_REGIONS, match_boxes, with_boxes
from lxmert_hf.detection.model import RegionFeatureExtractor
from lxmert_hf.detection.precision import convolution_autocast
from lxmert_hf.detection.preprocessing import ImageLoadError, PreparedImage, check_resize_backend, prepare_image
from lxmert_hf.downloads import check_url_scheme
from lxmert_hf.hub import describe_visual_features
from lxmert_hf.locations import locate

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


@dataclass
class ExtractionReport:
    """What an extraction run did: images written, images already in the store, images skipped (with why)."""

    written: int = 0
    already_done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


class NoFeaturesError(ValueError):
    """No image of an extraction gave region features; `skipped` lists each image with why (the first few are in
    the message)."""

    def __init__(self, skipped: list[tuple[str, str]]):
        super().__init__(f"no image gave region features: {_summarize(skipped)}")
        self.skipped = skipped


def list_images(source: str | os.PathLike) -> list[tuple[str, Path]]:
    """
    Return `(image_id, path)` pairs for a folder (searched recursively for image files, sorted) or a text file
    listing one image per line, as `path` or `path<TAB>image_id`; relative paths are relative to the list file.

    Image ids are the path relative to the folder without its extension (`val2014/COCO_val2014_000000000042`
    for nested folders), or the file name without extension for lists. Ids must be unique. A single image file
    (by its extension) is a list of one.
    """
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        pairs = [(p.relative_to(source).with_suffix("").as_posix(), p) for p in paths]
    elif source.is_file() and source.suffix.lower() in IMAGE_EXTENSIONS:
        pairs = [(source.stem, source)]
    elif source.is_file():
        pairs = _read_image_list(source)
    else:
        raise ValueError(f"--images {source}: no such folder or list file.")
    if not pairs:
        raise ValueError(f"--images {source}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)}).")
    _check_unique(pairs, source)
    return pairs


def _read_image_list(list_file: Path) -> list[tuple[str, Path]]:
    pairs = []
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"--images {list_file}: not a list of images (not UTF-8 text) nor an image file "
            f"({', '.join(IMAGE_EXTENSIONS)}); pass a folder of images, one image, or a text file with one path "
            "a line."
        ) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path_text, _, image_id = line.rstrip("\n").partition("\t")
        check_url_scheme(path_text.strip(), f"--images {list_file}:{number}:")
        path = Path(path_text.strip()).expanduser()
        path = path if path.is_absolute() else list_file.parent / path
        pairs.append((image_id.strip() or path.stem, path))
    return pairs


def _check_unique(pairs: list[tuple[str, Path]], source: Path) -> None:
    seen: dict[str, Path] = {}
    for image_id, path in pairs:
        if image_id in seen:
            raise ValueError(
                f"--images {source}: {seen[image_id]} and {path} would both get the image id {image_id!r}; "
                "rename one, or give ids explicitly in a list file (`path<TAB>image_id`)."
            )
        seen[image_id] = path


class _ImageFiles(Dataset):
    """Loads and preprocesses images (in DataLoader workers), with their given boxes if any; unreadable images and
    boxes that do not fit their image come back as error messages."""

    def __init__(
        self,
        pairs: Sequence[tuple[str, Path]],
        config: RegionFeatureExtractorConfig,
        boxes: Mapping[str, np.ndarray] | None = None,
    ):
        self.pairs = list(pairs)
        self.config = config
        self.boxes = boxes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[str, PreparedImage | None, str | None]:
        image_id, path = self.pairs[index]
        try:
            prepared = prepare_image(path, self.config)
        except ImageLoadError as error:
            return image_id, None, str(error)
        if self.boxes is None:
            return image_id, prepared, None
        try:  # only now is the image's size known
            return image_id, with_boxes(prepared, self.boxes[image_id], f"image {image_id!r}"), None
        except ValueError as error:
            return image_id, None, str(error)


def _as_list(batch: list) -> list:
    return batch


def store_record(image_id: str, regions: dict) -> dict:
    """Turn one image's extractor output into a feature-store record (numpy, absolute pixel boxes)."""
    height, width = regions["image_size"]
    record = {"image_id": image_id, "image_width": int(width), "image_height": int(height)}
    for key in ("visual_feats", "boxes", "object_ids", "object_scores", "attribute_ids", "attribute_scores"):
        record[key] = regions[key].numpy()
    record["visual_feats"] = record["visual_feats"].astype(np.float32, copy=False)
    return record


def extract_to_store(
    extractor: RegionFeatureExtractor,
    images: Sequence[tuple[str, Path]],
    output_dir: str | os.PathLike,
    batch_size: int = 4,
    num_workers: int = 0,
    dtype: str = "float32",
    images_per_shard: int = 1000,
    progress: bool = True,
    detector: str | os.PathLike | None = None,
    boxes: Mapping[str, np.ndarray] | None = None,
    group_by_size: bool = True,
) -> ExtractionReport:
    """
    Extract region features of `images` (`(image_id, path)` pairs, see [`list_images`]) into the feature store
    at `output_dir` (see `lxmert_hf.data.store`).

    Images already in the store are not processed again, so rerunning after an interruption continues where it
    stopped. Unreadable images, and images where no region was found, are skipped and listed in the report.
    Progress (images/s) is shown on stderr.

    With `detector`, the folder or Hub id `extractor` was loaded from, the store records the detector, its preset
    and settings ([`~lxmert_hf.hub.describe_visual_features`]; a folder as an absolute path), so that a model trained
    on the store answers about pictures with the same detector; without it the store does not say what made it.

    With `boxes` (image id -> `[n, 4]` pixel x1, y1, x2, y2 of the original image, e.g. from
    [`~lxmert_hf.detection.given_boxes.read_boxes`]), each image's features are those of its given boxes, in their
    order, instead of detected ones (see [`~RegionFeatureExtractor.forward`]), and the store records
    `regions="given"` beside the detector, so the boxes are never taken for detected ones (a store is resumed only
    with boxes if it was made with them, and without if not). Every image needs boxes, and boxes that are
    malformed (empty, NaN, `x2 <= x1`, not `[n, 4]`) are a `ValueError` naming the image, both before any work;
    boxes of ids not among `images` are ignored with a warning. Whether a box lies inside its image is known only
    once the image is decoded: an image with a box outside it is skipped and listed in the report, like an
    unreadable one, so that a long run is not lost to one bad record; fix its boxes and rerun to add it. Images
    already in the store keep the boxes they were extracted with.

    Images are decoded and resized in `num_workers` DataLoader processes (pinned memory when the extractor is on a
    GPU). With `group_by_size`, batches hold images of one resized size, read from the files' headers (see
    [`~lxmert_hf.detection.batching.SizeGroupedBatchSampler`]): one backbone pass per batch instead of one per size.

    Example:
        ```python
        >>> from lxmert_hf import RegionFeatureExtractor
        >>> from lxmert_hf.detection.extraction import extract_to_store, list_images
        >>> extractor = RegionFeatureExtractor.from_pretrained("unc-nlp/frcnn-vg-finetuned")  # doctest: +SKIP
        >>> images = list_images("my_images/")  # doctest: +SKIP
        >>> detector = "unc-nlp/frcnn-vg-finetuned"
        >>> report = extract_to_store(extractor, images, "features/", detector=detector)  # doctest: +SKIP
        ```
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"`batch_size` must be >= 1 and `num_workers` >= 0, got {batch_size} and {num_workers}.")
    # Here, not in an image-loading worker: a missing OpenCV is one error, not one per image.
    check_resize_backend(extractor.config)
    given = None if boxes is None else match_boxes(images, boxes)
    convolution_autocast(extractor.config, extractor.device)  # an arithmetic the device refuses: before any work
    report = ExtractionReport()
    notes = {} if boxes is None else {"regions": GIVEN_REGIONS}
    described = (
        None if detector is None else describe_visual_features(_detector_id(detector), extractor.config, **notes)
    )
    with FeatureStoreWriter(
        output_dir, dtype=dtype, resume=True, images_per_shard=images_per_shard, extractor=described
    ) as writer:
        todo = [(image_id, path) for image_id, path in images if image_id not in writer.done_ids]
        report.already_done = len(images) - len(todo)
        files = _ImageFiles(todo, extractor.config, given)
        loader = _image_loader(files, extractor, batch_size, num_workers, group_by_size)
        with tqdm(total=len(todo), unit="img", desc="extract", disable=not progress, file=sys.stderr) as bar:
            for batch in loader:
                _extract_batch(extractor, batch, writer, report)
                bar.update(len(batch))
                bar.set_postfix(skipped=len(report.skipped), refresh=False)
        if report.written == 0 and not writer.done_ids:
            raise NoFeaturesError(report.skipped)
    return report


def _image_loader(
    files: _ImageFiles, extractor: RegionFeatureExtractor, batch_size: int, num_workers: int, group_by_size: bool
) -> DataLoader:
    """Batches of prepared images, decoded in `num_workers` processes, in pinned memory for a GPU."""
    if group_by_size:
        paths = [path for _, path in files.pairs]
        batches: dict = {"batch_sampler": SizeGroupedBatchSampler(paths, extractor.config, batch_size)}
    else:
        batches = {"batch_size": batch_size}
    pin_memory = extractor.device.type == "cuda"
    return DataLoader(files, num_workers=num_workers, collate_fn=_as_list, pin_memory=pin_memory, **batches)


def _detector_id(detector: str | os.PathLike) -> str:
    """A Hub id as given; a local folder as its absolute path, which loads from any working directory."""
    location = locate(detector, what="detector")
    return str(location.path.resolve()) if location.is_local else str(detector)


def _extract_batch(
    extractor: RegionFeatureExtractor,
    batch: list[tuple[str, PreparedImage | None, str | None]],
    writer: FeatureStoreWriter,
    report: ExtractionReport,
) -> None:
    readable = [(image_id, prepared) for image_id, prepared, _ in batch if prepared is not None]
    report.skipped.extend((image_id, error) for image_id, _, error in batch if error is not None)
    results = extractor.detect([prepared for _, prepared in readable]) if readable else []
    for (image_id, _), regions in zip(readable, results, strict=True):
        if len(regions["visual_feats"]) == 0:
            report.skipped.append((image_id, "no region found (try a lower score_threshold or min_boxes > 0)"))
            continue
        try:
            writer.add(store_record(image_id, regions))
        except ValueError as error:  # e.g. a region clipped to nothing at the image's edge: skipped, reported
            report.skipped.append((image_id, str(error)))
            continue
        report.written += 1


def _summarize(skipped: list[tuple[str, str]], limit: int = 5) -> str:
    shown = "; ".join(f"{image_id}: {reason}" for image_id, reason in skipped[:limit])
    return shown + (f"; ... ({len(skipped) - limit} more)" if len(skipped) > limit else "")


def available_devices() -> list[str]:
    """The devices this machine can run on, as `--device` takes them: `cpu`, `cuda:N` for each GPU, `mps` on a Mac
    with Metal."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    metal = ["mps"] if torch.backends.mps.is_available() else []
    return ["cpu", *(f"cuda:{index}" for index in range(gpus)), *metal]


def resolve_device(device: str) -> torch.device:
    """
    Return the torch device for `"auto"` (CUDA when available), `"cpu"`, `"cuda"` or `"cuda:N"`; a device this
    machine lacks is a `ValueError` naming `--device` and the devices it has.

    Example:
        ```python
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("cuda:99")
        Traceback (most recent call last):
        ...
        ValueError: --device cuda:99: ...this machine has cpu...
        ```
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N.") from error
    have = f"this machine has {', '.join(available_devices())}"
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine ({have}); use --device cpu.")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: no such GPU ({have}); choose one of them.")
    if resolved.type not in {name.partition(":")[0] for name in available_devices()}:
        raise ValueError(f"--device {device}: not available ({have}); use auto, cpu, cuda or cuda:N.")
    return resolved
