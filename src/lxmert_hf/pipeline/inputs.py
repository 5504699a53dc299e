"""What the pipelines ([`VQAPipeline`], [`NLVR2Pipeline`]) accept, turned into one form: question strings and the
regions of each image.

An image reaches the model as region features. They come either from the user (precomputed features, with boxes
normalized or in pixels) or from the region detector run on a picture (path, URL, PIL image, array). Everything
here validates at the boundary, so a bad input fails with a message naming the argument and the fix.
[`PipelineInputs`] is what both pipelines share: the detector, loaded on first use, and the batched question encoder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from lxmert_hf.data.store import normalize_boxes
from lxmert_hf.data.tokens import backend_encoder, encode_questions
from lxmert_hf.detection.preprocessing import (
    decode_image_bytes,
    download_image,
    load_image,
)
from lxmert_hf.downloads import URL_PREFIXES

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
# PIL's own limit: the same bound the detector applies when it reads files.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
# Region metadata carried through to the output when the input has it.
REGION_METADATA = ("object_ids", "object_scores", "attribute_ids", "attribute_scores")
REGION_NAMES = ("object_names", "attribute_names")


class Regions(dict):
    """The regions of one image, ready for the model: `visual_feats` [n, dim], `visual_pos` [n, 4] (normalized),
    `visual_attention_mask` [n], plus whatever the source knew (`boxes` in pixels, `image_size` as (height, width),
    object and attribute ids, scores and names)."""


def check_question(question: Any) -> str:
    """Return `question` stripped, or raise a `ValueError` saying what a question must be."""
    if not isinstance(question, str):
        raise ValueError(
            f"`question` must be a string, got {type(question).__name__}; pass a list of strings to ask several."
        )
    if not question.strip():
        raise ValueError("`question` is empty; ask something about the image, e.g. 'What color is the car?'.")
    return question.strip()


def is_features(value: Any) -> bool:
    """Whether `value` holds precomputed region features rather than a picture."""
    return isinstance(value, Mapping) and "visual_feats" in value


def read_image(image: Any, timeout: float, max_pixels: int) -> np.ndarray:
    """Read a picture (path, http(s) URL, PIL image, numpy array or torch tensor) as RGB uint8 `[H, W, 3]`.

    Grayscale, palette, RGBA, CMYK and 16-bit images are converted; images of more than `max_pixels` pixels are
    refused before they are decoded. Raises an `ImageLoadError` (a `ValueError`) naming the image.
    """
    if isinstance(image, str) and image.startswith(URL_PREFIXES):
        return decode_image_bytes(download_image(image, timeout), image, max_pixels)
    return load_image(image, max_pixels)


def describe_image(image: Any) -> str:
    """A short name for an image in error messages."""
    if isinstance(image, str | os.PathLike):
        return str(image)
    if isinstance(image, np.ndarray | torch.Tensor):
        return f"{type(image).__name__} of shape {list(image.shape)}"
    return type(image).__name__


def regions_from_features(features: Mapping[str, Any], feat_dim: int, check_finite: bool = True) -> Regions:
    """Check precomputed features and return them as [`Regions`]. With `check_finite=False` the features' values
    are left for the caller to check (the pipeline does it once per batch); boxes are always checked.

    `features` holds `visual_feats` [n, dim] and either `visual_pos` [n, 4] (boxes normalized to [0, 1]) or `boxes`
    [n, 4] in pixels with the image size as `image_size` (height, width) or `image_width` / `image_height`.
    Optional: `visual_attention_mask` [n], object / attribute ids, scores and names.
    """
    feats = _as_float_matrix(features["visual_feats"], "visual_feats", check_finite)
    if feats.shape[1] != feat_dim:
        raise ValueError(
            f"`visual_feats` has {feats.shape[1]} features per region but the model takes {feat_dim} "
            "(`config.visual_feat_dim`); pass features from the detector the checkpoint was trained with."
        )
    size = _image_size(features)
    regions = Regions(visual_feats=feats, visual_pos=_normalized_boxes(features, len(feats), size))
    if size is not None:
        regions["image_size"] = size
        regions["boxes"] = regions["visual_pos"] * torch.tensor([size[1], size[0], size[1], size[0]])
    regions["visual_attention_mask"] = _mask(features.get("visual_attention_mask"), len(feats))
    for key in REGION_METADATA:
        if features.get(key) is not None:
            regions[key] = _tensor(features[key])
    for key in REGION_NAMES:
        if features.get(key) is not None:
            regions[key] = list(features[key])
    return regions


def regions_from_detector(detected: Mapping[str, Any]) -> Regions:
    """Wrap one image's output of the region detector as [`Regions`] (all its regions are real)."""
    regions = Regions(detected)
    regions["visual_attention_mask"] = torch.ones(len(detected["visual_feats"]), dtype=torch.long)
    return regions


def _tensor(value: Any) -> torch.Tensor:
    """A CPU tensor copy of an array-like: datasets hand out read-only arrays, and the result must not alias the
    caller's data."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    array = np.array(value)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"expected an array of numbers, got {type(value).__name__} holding {array.dtype}.")
    return torch.from_numpy(array)


def _as_float_matrix(value: Any, name: str, check_finite: bool = True) -> torch.Tensor:
    if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.flags.writeable:
        tensor = torch.from_numpy(value)  # only read: batching copies it, a single example is only read by the model
    else:
        try:
            tensor = _tensor(value).float()
        except ValueError as error:
            raise ValueError(f"`{name}`: {error} Pass a float array or tensor of shape [num_regions, dim].") from None
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise ValueError(
            f"`{name}` must have shape [num_regions >= 1, {'4' if name != 'visual_feats' else 'dim'}] for one image, "
            f"got {list(tensor.shape)}; pass one dict per image."
        )
    if check_finite and not _all_finite(tensor):
        raise ValueError(f"`{name}` holds NaN or infinite values; re-extract the features of this image.")
    return tensor


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether a CPU float tensor holds no NaN or infinity. Checked with numpy, on one thread: per example, torch
    would start its thread pool for a few microseconds of work, which costs more than the work on a many-core host."""
    return bool(np.isfinite(tensor.numpy()).all())


def _image_size(features: Mapping[str, Any]) -> tuple[int, int] | None:
    if features.get("image_size") is not None:
        size = tuple(int(v) for v in np.asarray(features["image_size"]).reshape(-1))
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"`image_size` must be (height, width) in pixels, got {features['image_size']!r}.")
        return size
    if features.get("image_width") is not None and features.get("image_height") is not None:
        return int(features["image_height"]), int(features["image_width"])
    return None


def _normalized_boxes(features: Mapping[str, Any], count: int, size: tuple[int, int] | None) -> torch.Tensor:
    if features.get("visual_pos") is not None:
        pos = _as_float_matrix(features["visual_pos"], "visual_pos")
        array = pos.numpy()  # numpy: no thread pool for 4n numbers
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"`visual_pos` holds values in [{low:.4g}, {high:.4g}]; it must be boxes normalized to "
                "[0, 1] as (x1 / width, y1 / height, x2 / width, y2 / height). For boxes in pixels pass `boxes` "
                "and `image_size` (height, width) instead."
            )
    elif features.get("boxes") is not None:
        if size is None:
            raise ValueError(
                "`boxes` are in pixels, so the image size is needed to normalize them: add `image_size` "
                "(height, width) or `image_width` and `image_height`."
            )
        boxes = _as_float_matrix(features["boxes"], "boxes").numpy()
        normalized, clipped = normalize_boxes(boxes, width=size[1], height=size[0], image_id="input")
        if clipped:
            raise ValueError(
                f"{clipped} box coordinates lie outside the {size[1]}x{size[0]} image (`image_size` is (height, "
                "width)); check that the size is that of the image the boxes were detected on."
            )
        pos = torch.from_numpy(normalized)
    else:
        raise ValueError(
            "precomputed features need boxes: `visual_pos` (normalized to [0, 1]) or `boxes` (pixels) with "
            "`image_size` (height, width)."
        )
    if pos.shape != (count, 4):
        raise ValueError(f"expected one box per region, {(count, 4)}, got boxes of shape {tuple(pos.shape)}.")
    return pos


def _mask(value: Any, count: int) -> torch.Tensor:
    if value is None:
        return torch.ones(count, dtype=torch.long)
    mask = _tensor(value).long().reshape(-1)
    if mask.shape != (count,) or not bool(((mask == 0) | (mask == 1)).all()) or mask.sum() == 0:
        raise ValueError(
            f"`visual_attention_mask` must hold one 0/1 value per region ({count}) with at least one 1, "
            f"got {np.asarray(value).tolist()!r}."
        )
    return mask


class PipelineInputs:
    """The input handling the LXMERT pipelines share, mixed into a `transformers.Pipeline` that sets `model`,
    `tokenizer`, `device`, `detector` (a module, a folder / Hub id, or `None`), `max_question_length`,
    `_question_encoder` (`None` at first) and `_hub_kwargs`."""

    def _encode_questions(self, questions: list[str]) -> dict[str, torch.Tensor]:
        """The model's text inputs for a batch of questions, [len(questions), longest] each: what the tokenizer
        gives with truncation at `max_question_length` and padding, in one call to a copy of a fast tokenizer's
        backend (a fraction of the tokenizer call's cost)."""
        key = (self.tokenizer, self.max_question_length)
        if self._question_encoder is None or self._question_encoder[:2] != key:
            self._question_encoder = (*key, backend_encoder(self.tokenizer, self.max_question_length))
        return encode_questions(self.tokenizer, self._question_encoder[2], questions, self.max_question_length)

    def _image_regions(self, source: Any, timeout: float, max_image_pixels: int) -> Regions:
        """The regions of one image given as [`Regions`], precomputed features or a picture for the detector."""
        if isinstance(source, Regions):
            return source
        if is_features(source):
            return regions_from_features(source, self.model.config.visual_feat_dim, check_finite=False)
        if source is None or isinstance(source, Mapping):
            raise ValueError(
                "an input has neither `image` nor precomputed features (`visual_feats` with `visual_pos`, or "
                "`boxes` and `image_size`)."
            )
        return self._picture_regions(source, timeout, max_image_pixels)

    def _picture_regions(self, image, timeout: float = DEFAULT_TIMEOUT_S, max_image_pixels: int | None = None):
        rgb = read_image(image, timeout, max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)
        detected = self.load_detector()(rgb)
        if len(detected["visual_feats"]) == 0:
            raise ValueError(
                f"the detector found no region in image {describe_image(image)}; pass precomputed features or a "
                "detector with a lower `score_threshold`."
            )
        dim = detected["visual_feats"].shape[-1]
        if dim != self.model.config.visual_feat_dim:
            raise ValueError(
                f"the detector gives {dim}-dimensional features but the model takes "
                f"{self.model.config.visual_feat_dim}; use the detector the checkpoint was trained with."
            )
        return regions_from_detector(detected)

    def load_detector(self) -> nn.Module:
        """The region detector, loaded on first use from `detector=` or from `config.visual_features`."""
        if isinstance(self.detector, nn.Module):
            return self.detector
        from lxmert_hf.detection import RegionFeatureExtractor

        described = self.model.config.visual_features or {}
        source = self.detector or described.get("detector")
        if not source:
            raise ValueError(
                "answering about a picture needs the region detector the checkpoint's features came from, and this "
                "checkpoint names none (`config.visual_features`): pass `detector=` (e.g. "
                "'unc-nlp/frcnn-vg-finetuned') or precomputed features {'visual_feats', 'visual_pos'}."
            )
        settings = {}
        if source == described.get("detector"):
            settings = {"preset": described.get("preset"), **(described.get("overrides") or {})}
        if settings.get("precision") == "float16" and self.device.type == "cpu":
            # A speed setting of the extraction, not of the features: the CPU has no fast float16, so float32.
            logger.info("The features were extracted in float16 on a GPU; the CPU detects in float32.")
            settings["precision"] = "float32"
        logger.info("Loading the region detector %s.", source)
        detector = RegionFeatureExtractor.from_pretrained(source, **settings, **self._hub_kwargs)
        self.detector = detector.to(self.device)
        return self.detector
