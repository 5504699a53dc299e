"""`RegionFeatureExtractor`: the Visual Genome Faster R-CNN that turns images into LXMERT inputs."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lxmert_hf.detection import checkpoint
from lxmert_hf.detection.backbone import ResNetC4
from lxmert_hf.detection.config import ARCHITECTURE_FIELDS, RegionFeatureExtractorConfig
from lxmert_hf.detection.given_boxes import check_box_lists, resized_frame, with_boxes
from lxmert_hf.detection.precision import apply_memory_format, convolution_autocast, convolution_input
from lxmert_hf.detection.preprocessing import ImageInput, PreparedImage, describe, is_image_input, prepare_image
from lxmert_hf.detection.roi_heads import (
    Res5ROIHeads,
    describe_given_regions,
    select_caffe_detections,
    select_detections,
)
from lxmert_hf.detection.rpn import RegionProposalNetwork
from lxmert_hf.detection.vocab import load_vocab

# The published Visual Genome detector (config.yaml + pytorch_model.bin).
DEFAULT_CHECKPOINT = "unc-nlp/frcnn-vg-finetuned"
# Settings bound to the weights: kept from the checkpoint when a preset is chosen at load time.
WEIGHT_BOUND_FIELDS = (*ARCHITECTURE_FIELDS, "pixel_mean", "pixel_std", "input_format")
PADDED_KEYS = (
    "visual_feats",
    "visual_pos",
    "boxes",
    "object_ids",
    "object_scores",
    "attribute_ids",
    "attribute_scores",
)


class RegionFeatureExtractor(nn.Module):
    r"""
    The bottom-up-attention Faster R-CNN (ResNet-101 C4, Visual Genome 1600 objects / 400 attributes) whose region
    features LXMERT was trained on, in native PyTorch.

    Calling it on one image or a list returns, per image, a dict with:

    - `visual_feats` (`torch.FloatTensor` `[n, 2048]`, `config.feature_dim` wide): mean-pooled res5 feature of each
      region (>= 0).
    - `visual_pos` (`torch.FloatTensor` `[n, 4]`): the boxes normalized as x1/w, y1/h, x2/w, y2/h, in [0, 1];
      with `visual_feats`, this is what LXMERT takes.
    - `boxes` (`torch.FloatTensor` `[n, 4]`): x1, y1, x2, y2 in pixels of the original image.
    - `object_ids` / `object_scores` (`[n]`): most likely Visual Genome object (0-1599) and its probability, the
      softmax over all 1601 logits (background included, not renormalized).
    - `attribute_ids` / `attribute_scores` (`[n]`): most likely attribute (0-399) and its probability, the softmax
      over the 400 attribute logits (the "no attribute" logit excluded).
    - `image_size` (`tuple[int, int]`): the original `(height, width)`.
    - `object_names` / `attribute_names` (`list[str]`): only when the vocabularies are known.

    Regions come in the order of the original selection: with the default `"lxmert"` preset (Caffe), by the score that
    selected them, best first, except that when exactly `max_boxes` pass the score threshold they keep the proposals'
    order, as in LXMERT's features; with the detectron2 presets, by `object_scores`, best first. `n` is
    `config.max_boxes` (36) for most images; it is smaller when too few regions survive (tiny images, strict
    thresholds), never an error. With `boxes=` (see [`~RegionFeatureExtractor.forward`]), the regions are exactly the
    boxes given, in their order, and nothing is detected. Every image goes through the backbone at its own size, never
    padded to another's (images of one size share a forward pass), so a batch gives the results of the images one by
    one, up to float rounding (~1e-6); all input types reach the model in the same channel order. The default
    `"lxmert"` preset follows the Caffe extraction that made the features LXMERT was trained on, step by step (see
    [`RegionFeatureExtractorConfig`]).

    Args:
        config ([`RegionFeatureExtractorConfig`], *optional*):
            Settings; defaults to the `"lxmert"` preset.
        object_names (`list[str]`, *optional*):
            The 1600 object names, index = object id.
        attribute_names (`list[str]`, *optional*):
            The 400 attribute names, index = attribute id.

    Example:
        ```python
        >>> import numpy as np
        >>> from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig
        >>> config = RegionFeatureExtractorConfig.from_preset(  # resize_backend="torch" needs no OpenCV
        ...     "lxmert", min_size=64, max_size=96, rpn_post_nms_topk=8, resize_backend="torch"
        ... )
        >>> extractor = RegionFeatureExtractor(config)  # random weights; use from_pretrained for real ones
        >>> regions = extractor(np.zeros((48, 64, 3), dtype=np.uint8))
        >>> regions["visual_feats"].shape[1], regions["image_size"]
        (2048, (48, 64))
        ```
    """

    def __init__(
        self,
        config: RegionFeatureExtractorConfig | None = None,
        object_names: Sequence[str] | None = None,
        attribute_names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.config = config if config is not None else RegionFeatureExtractorConfig()
        self.backbone = ResNetC4(self.config)
        self.proposal_generator = RegionProposalNetwork(self.config)
        self.roi_heads = Res5ROIHeads(self.config)
        self.object_names = self._check_names(object_names, self.config.num_classes, "object_names")
        self.attribute_names = self._check_names(attribute_names, self.config.num_attributes, "attribute_names")
        apply_memory_format(self, self.config)
        self.requires_grad_(False)
        super().train(False)

    @staticmethod
    def _check_names(names: Sequence[str] | None, size: int, argument: str) -> list[str] | None:
        if names is None:
            return None
        if isinstance(names, str) or len(names) != size:
            raise ValueError(f"`{argument}` must be a list of {size} names (index = class id).")
        return list(names)

    def train(self, mode: bool = True) -> RegionFeatureExtractor:
        # Training mode would make BatchNorm use batch statistics of the regions: the features would silently change.
        if mode:
            warnings.warn("RegionFeatureExtractor is inference-only; it stays in eval mode.", stacklevel=2)
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """The device of the weights; images are moved there."""
        return self.roi_heads.box_predictor.cls_score.weight.device

    def set_vocab(self, objects: str | os.PathLike | None = None, attributes: str | os.PathLike | None = None) -> None:
        """
        Load object and/or attribute names from vocabulary files (paths or http(s) URLs, cached), e.g.
        [`~lxmert_hf.detection.vocab.VG_OBJECTS_URL`] and [`~lxmert_hf.detection.vocab.VG_ATTRIBUTES_URL`].
        """
        if objects is not None:
            self.object_names = load_vocab(objects, expected_size=self.config.num_classes)
        if attributes is not None:
            self.attribute_names = load_vocab(attributes, expected_size=self.config.num_attributes)

    # -- inference -----------------------------------------------------------------------------------------------
    def prepare(self, image: ImageInput) -> PreparedImage:
        """Load and preprocess one image (see [`~lxmert_hf.detection.preprocessing.prepare_image`])."""
        return prepare_image(image, self.config)

    @torch.inference_mode()
    def forward(
        self,
        images: ImageInput | Sequence[ImageInput],
        batch_size: int = 8,
        padding: bool = False,
        boxes: Any = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        r"""
        Detect regions and return their features (see the class docstring for the fields), or, with `boxes`,
        describe the regions given.

        Args:
            images (`str`, `os.PathLike`, `PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                Paths, http(s) URLs, PIL images, numpy `[H, W, 3]` uint8 RGB arrays or torch `[3, H, W]` tensors
                (uint8, or float in [0, 1]). Grayscale, RGBA, CMYK, 16-bit and EXIF-rotated images are handled.
            batch_size (`int`, *optional*, defaults to 8):
                Images loaded and run together. Results do not depend on it (up to float rounding, ~1e-6).
            padding (`bool`, *optional*, defaults to `False`):
                Return one dict of tensors padded to `config.max_boxes` regions per image, with a
                `visual_attention_mask` (1 = real region), instead of per-image dicts. Padded ids are -1, other
                padded values 0. With `boxes`, padded to the most boxes given for an image when that is more.
            boxes (`[n, 4]` array, list or tensor, or a list of them, one per image, *optional*):
                Regions to describe instead of detecting: pixels x1, y1, x2, y2 of the ORIGINAL image, any number
                (>= 1) per image. The result holds exactly these regions, in this order (`boxes` as given, clipped
                to the image); the proposal stage is skipped: the backbone runs, then each box, scaled into the
                resized image, is pooled and goes through res5 and the predictors, one prediction per box, scored
                as the preset's procedure scores the regions it keeps (no selection, NMS nor box regression).
                A box beyond the image (by more than
                [`~lxmert_hf.detection.given_boxes.OUTSIDE_TOLERANCE`] pixel), with `x2 <= x1` or `y2 <= y1`, or a
                NaN / infinite coordinate, an empty list, a wrong shape or a count of box lists that is not the
                count of images is a `ValueError` naming the image.

                With the default `"lxmert"` preset (Caffe), the detector's regions are its proposals themselves, so
                feeding back the `boxes` it returned for an image gives its own features (within 1e-5 in fp32).
                With the detectron2 presets, the detector's features are those of each region's proposal *before*
                class regression, while its returned `boxes` are the regressed ones: feeding them back gives
                features of slightly different boxes.

        Returns:
            One dict for one image, a list of dicts for a list, or a padded batch dict when `padding=True`.

        Example:
            ```python
            >>> import numpy as np
            >>> from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig
            >>> config = RegionFeatureExtractorConfig.from_preset(
            ...     "lxmert", min_size=64, max_size=96, stage_blocks=(1, 1, 1, 1), res2_channels=16,
            ...     resize_backend="torch"
            ... )
            >>> extractor = RegionFeatureExtractor(config)  # random weights
            >>> image = np.zeros((48, 64, 3), dtype=np.uint8)
            >>> regions = extractor(image, boxes=[[0, 0, 32, 24], [10, 5, 64, 48]])
            >>> regions["boxes"].tolist(), tuple(regions["visual_feats"].shape)
            ([[0.0, 0.0, 32.0, 24.0], [10.0, 5.0, 64.0, 48.0]], (2, 128))
            ```
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        single = is_image_input(images)
        image_list = [images] if single else list(images)
        names = [f"image {index} ({describe(image)})" for index, image in enumerate(image_list)]
        given = None if boxes is None else check_box_lists([boxes] if single else boxes, len(image_list), names)
        results = []
        for start in range(0, len(image_list), batch_size):
            prepared = [self.prepare(image) for image in image_list[start : start + batch_size]]
            if given is not None:
                chosen = range(start, start + len(prepared))
                prepared = [with_boxes(item, given[i], names[i]) for item, i in zip(prepared, chosen, strict=True)]
            results.extend(self.detect(prepared))
        if padding:
            return pad_regions(results, max([self.config.max_boxes, *(len(result["boxes"]) for result in results)]))
        return results[0] if single else results

    @torch.inference_mode()
    def detect(self, prepared: Sequence[PreparedImage], boxes: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """
        Run the detector on preprocessed images; returns one result dict per image (on the CPU).

        `boxes` (one `[n, 4]` per image, original pixels; see [`~RegionFeatureExtractor.forward`]) replaces the
        boxes an image may carry (`PreparedImage.boxes`); images with boxes skip the proposal stage.
        """
        if not prepared:
            return []
        if boxes is not None:
            names = [f"image {index}" for index in range(len(prepared))]
            given = check_box_lists(boxes, len(prepared), names)
            prepared = [with_boxes(item, box, name) for item, box, name in zip(prepared, given, names, strict=True)]
        features, proposals = self._propose(prepared)
        with convolution_autocast(self.config, self.device):
            region_features = self.roi_heads.region_features(features, proposals)
        return [
            self._postprocess(item, feats, boxes)
            for item, feats, boxes in zip(prepared, region_features, proposals, strict=True)
        ]

    def _propose(self, prepared: Sequence[PreparedImage]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Backbone and proposals. Images of equal size share a pass; none is ever padded, so none affects another."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.resized_size, []).append(index)
        features: list[torch.Tensor | None] = [None] * len(prepared)
        proposals: list[torch.Tensor | None] = [None] * len(prepared)
        dtype = self.backbone.stem.conv1.weight.dtype
        for size, indices in groups.items():
            # Each image is copied on its own: a stack made on the host would lose the loader's pinned memory.
            pixels = torch.stack([prepared[i].pixel_values.to(self.device, dtype, non_blocking=True) for i in indices])
            with convolution_autocast(self.config, self.device):
                res4 = self.backbone(convolution_input(pixels, self.config))
            # The RPN and RoI pooling read the RPN's dtype whatever the backbone computed in (see precision.py).
            res4 = res4.to(self.proposal_generator.rpn_head.conv.weight.dtype)
            for position, index in enumerate(indices):
                features[index] = res4[position : position + 1]
                if prepared[index].boxes is not None:  # given regions: no proposals
                    proposals[index] = resized_frame(prepared[index]).to(self.device)
            detected = [position for position, index in enumerate(indices) if prepared[index].boxes is None]
            if not detected:
                continue
            # Caffe's minimum proposal size scales with the resize factor (equal on both sides unless stretched).
            scales = [min(prepared[indices[position]].scale) for position in detected]
            maps = res4 if len(detected) == len(indices) else res4[detected]
            group_proposals = self.proposal_generator(maps, [size] * len(detected), scales)
            for position, found in zip(detected, group_proposals, strict=True):
                proposals[indices[position]] = found
        return features, proposals

    def _postprocess(self, item: PreparedImage, feats: torch.Tensor, proposals: torch.Tensor) -> dict[str, Any]:
        # The predictors run per image so that an image's scores never depend on the size of its batch.
        class_logits, box_deltas, attribute_logits = self.roi_heads.box_predictor(feats)
        height, width = item.image_size
        if item.boxes is not None:
            found = describe_given_regions(class_logits, attribute_logits, item.boxes, self.config.procedure)
            boxes = found.boxes.to(proposals.device)
        elif self.config.procedure == "caffe":
            # Caffe maps boxes back by dividing by the resize factor, in float32.
            scale_y, scale_x = item.scale
            divisor = torch.tensor([scale_x, scale_y] * 2, dtype=torch.float32, device=proposals.device)
            found = select_caffe_detections(class_logits, attribute_logits, proposals, divisor, self.config)
            boxes = found.boxes / divisor
        else:
            found = select_detections(
                class_logits, box_deltas, attribute_logits, proposals, item.resized_size, self.config
            )
            resized_height, resized_width = item.resized_size
            boxes = found.boxes * found.boxes.new_tensor([width / resized_width, height / resized_height] * 2)
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([width, height, width, height]))
        result = {
            "visual_feats": feats[found.index].float().cpu(),
            "visual_pos": (boxes / boxes.new_tensor([width, height, width, height])).clamp(0, 1).cpu(),
            "boxes": boxes.cpu(),
            "object_ids": found.object_ids.cpu(),
            "object_scores": found.object_scores.cpu(),
            "attribute_ids": found.attribute_ids.cpu(),
            "attribute_scores": found.attribute_scores.cpu(),
            "image_size": (height, width),
        }
        if self.object_names is not None:
            result["object_names"] = [self.object_names[i] for i in result["object_ids"].tolist()]
        if self.attribute_names is not None:
            result["attribute_names"] = [self.attribute_names[i] for i in result["attribute_ids"].tolist()]
        return result

    # -- checkpoints ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        preset: str | None = None,
        objects_vocab: str | os.PathLike | None = None,
        attributes_vocab: str | os.PathLike | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        **overrides: Any,
    ) -> RegionFeatureExtractor:
        r"""
        Load a detector from a local folder or a Hub repo id.

        Two layouts are read: the published one (`config.yaml` + `pytorch_model.bin`, e.g.
        `"unc-nlp/frcnn-vg-finetuned"`, loaded with `weights_only=True`) and the one written by
        [`~RegionFeatureExtractor.save_pretrained`]. Every one of the model's 640 state-dict entries must be
        matched exactly; otherwise a `ValueError` lists the missing, unexpected and wrongly shaped entries.

        Args:
            name_or_path (`str` or `os.PathLike`): a folder or a Hub repo id.
            preset (`str`, *optional*): `"lxmert"` (Caffe's extraction, LXMERT's features), `"lxmert-detectron2"`
                or `"transformers-demo"`. Defaults to `"lxmert"` for the published layout (its config.yaml holds the
                demo's test settings) and to the stored settings for the library's own layout. Settings bound to
                the weights always come from the checkpoint.
            objects_vocab / attributes_vocab (`str` or `os.PathLike`, *optional*): vocabulary files (path or URL)
                giving `object_names` / `attribute_names`; they override any stored with the checkpoint.
            revision, cache_dir, token: passed to `huggingface_hub.hf_hub_download` for Hub repo ids.
            overrides: any [`RegionFeatureExtractorConfig`] field, e.g. `max_boxes=50, min_boxes=10`.

        Example:
            ```python
            >>> from lxmert_hf import RegionFeatureExtractor
            >>> from lxmert_hf.detection.vocab import VG_ATTRIBUTES_URL, VG_OBJECTS_URL
            >>> extractor = RegionFeatureExtractor.from_pretrained(  # doctest: +SKIP
            ...     "unc-nlp/frcnn-vg-finetuned", objects_vocab=VG_OBJECTS_URL, attributes_vocab=VG_ATTRIBUTES_URL
            ... )
            ```
        """
        hub_kwargs = {key: value for key, value in (("revision", revision), ("cache_dir", cache_dir)) if value}
        if token is not None:
            hub_kwargs["token"] = token
        files = checkpoint.resolve_checkpoint(name_or_path, **hub_kwargs)
        config = _load_config(files, preset, overrides)
        object_names, attribute_names = checkpoint.read_vocab(files.vocab)
        model = cls(config, object_names=object_names, attribute_names=attribute_names)
        state = checkpoint.load_weights(files)
        expected = model.state_dict()
        checkpoint.check_state_dict(state, expected, str(files.weights))
        model.load_state_dict({key: value.to(expected[key].dtype) for key, value in state.items()}, strict=True)
        model.set_vocab(objects_vocab, attributes_vocab)
        return model

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """
        Save the weights (`model.safetensors`), the settings (`config.json`) and, when known, the class names
        (`vocab.json`) into `save_directory`, atomically; [`~RegionFeatureExtractor.from_pretrained`] reads it back.

        Example:
            ```python
            >>> import tempfile
            >>> from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig
            >>> directory = tempfile.mkdtemp()
            >>> small = RegionFeatureExtractorConfig(stage_blocks=(1, 1, 1, 1), res2_channels=16)  # a tiny random one
            >>> RegionFeatureExtractor(small).save_pretrained(directory)
            >>> RegionFeatureExtractor.from_pretrained(directory).config.feature_dim
            128
            ```
        """
        vocab = None
        if self.object_names is not None or self.attribute_names is not None:
            vocab = {"objects": self.object_names, "attributes": self.attribute_names}
        checkpoint.save_checkpoint(save_directory, self.state_dict(), self.config.to_dict(), vocab)


def _load_config(
    files: checkpoint.CheckpointFiles, preset: str | None, overrides: dict[str, Any]
) -> RegionFeatureExtractorConfig:
    if files.layout == "hub":
        bound = checkpoint.read_hub_config(files.config)
        return RegionFeatureExtractorConfig.from_preset(preset or "lxmert", **{**bound, **overrides})
    stored = checkpoint.read_native_config(files.config)
    if "procedure" not in stored and "nms_thresholds" in stored:
        # Complete settings that name no procedure were written when detectron2's was the only one.
        stored["procedure"] = "detectron2"
    if preset is None:
        return RegionFeatureExtractorConfig.from_dict({**stored, **overrides})
    bound = {key: stored[key] for key in WEIGHT_BOUND_FIELDS if key in stored}
    return RegionFeatureExtractorConfig.from_preset(preset, **{**bound, **overrides})


def pad_regions(results: Sequence[dict[str, Any]], num_boxes: int) -> dict[str, torch.Tensor]:
    """
    Stack per-image results into `[batch, num_boxes, ...]` tensors ready for LXMERT, with a
    `visual_attention_mask` (1 for real regions, 0 for padding). Padded ids are -1, other padded values 0.

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf.detection.model import pad_regions
        >>> one = {"visual_feats": torch.ones(2, 8), "visual_pos": torch.zeros(2, 4), "boxes": torch.zeros(2, 4),
        ...        "object_ids": torch.tensor([3, 4]), "object_scores": torch.ones(2),
        ...        "attribute_ids": torch.tensor([1, 2]), "attribute_scores": torch.ones(2), "image_size": (10, 20)}
        >>> batch = pad_regions([one], num_boxes=3)
        >>> batch["visual_feats"].shape, batch["visual_attention_mask"].tolist(), batch["object_ids"].tolist()
        (torch.Size([1, 3, 8]), [[1, 1, 0]], [[3, 4, -1]])
        ```
    """
    if not results:
        raise ValueError("`results` is empty; pass the output of the extractor for at least one image.")
    longest = max(len(result["visual_feats"]) for result in results)
    if longest > num_boxes:
        raise ValueError(f"`num_boxes` ({num_boxes}) is smaller than the {longest} regions of an image.")
    batch: dict[str, torch.Tensor] = {}
    for key in PADDED_KEYS:
        first = results[0][key]
        fill = -1 if key.endswith("_ids") else 0
        padded = first.new_full((len(results), num_boxes, *first.shape[1:]), fill)
        for row, result in enumerate(results):
            padded[row, : len(result[key])] = result[key]
        batch[key] = padded
    mask = torch.zeros(len(results), num_boxes, dtype=torch.long)
    for row, result in enumerate(results):
        mask[row, : len(result["visual_feats"])] = 1
    batch["visual_attention_mask"] = mask
    batch["image_size"] = torch.tensor([result["image_size"] for result in results], dtype=torch.long)
    return batch
