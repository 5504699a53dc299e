"""Box head: RoI pooling, res5 on each region, the class / box / attribute predictors and the box selection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import nms, roi_pool

from lxmert_hf.detection.backbone import BACKBONE_STRIDE, make_res5_head
from lxmert_hf.detection.boxes import clip_boxes, decode_boxes, per_class_nms_caffe
from lxmert_hf.detection.config import RegionFeatureExtractorConfig

POOLER_RESOLUTION = 14
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class BoxPredictor(nn.Module):
    """
    Class logits, class-specific box deltas and attribute logits of each region feature.

    Following detectron2, the background is the LAST class logit (index `num_classes`) and "no attribute" the
    last attribute logit. Box deltas exist for the foreground classes only.
    """

    def __init__(self, config: RegionFeatureExtractorConfig):
        super().__init__()
        num_classes, features, embedding = config.num_classes, config.feature_dim, config.class_embedding_dim
        self.cls_score = nn.Linear(features, num_classes + 1)
        self.bbox_pred = nn.Linear(features, num_classes * 4)
        self.cls_embedding = nn.Embedding(num_classes + 1, embedding)
        self.fc_attr = nn.Linear(features + embedding, config.attribute_hidden_dim)
        self.attr_score = nn.Linear(config.attribute_hidden_dim, config.num_attributes + 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        class_logits = self.cls_score(features)
        box_deltas = self.bbox_pred(features)
        # The attribute branch is conditioned on the predicted class, background included, as it was trained.
        class_embedding = self.cls_embedding(class_logits.argmax(dim=1))
        hidden = torch.relu(self.fc_attr(torch.cat((features, class_embedding), dim=1)))
        return class_logits, box_deltas, self.attr_score(hidden)


class Res5ROIHeads(nn.Module):
    """RoIPool 14x14 on res4, res5 (dilated, stride 1), mean over the 14x14 cells: a `config.feature_dim` (2048)
    feature per region."""

    def __init__(self, config: RegionFeatureExtractorConfig):
        super().__init__()
        self.config = config
        self.res5 = make_res5_head(config)
        self.box_predictor = BoxPredictor(config)

    def pool(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Max-pool each box of `boxes` (one tensor per image of `features`) into 14x14 cells (caffe quantization)."""
        boxes = [box.to(features.dtype) for box in boxes]
        return roi_pool(features, boxes, POOLER_RESOLUTION, spatial_scale=1.0 / BACKBONE_STRIDE)

    def region_features(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """
        Pool each image's `boxes` on its own res4 map (`features[i]`, `[1, backbone_channels, H_i, W_i]`) and run
        res5 on the regions of all images together, `config.roi_chunk_size` at a time so that memory stays bounded
        however large the batch. Returns one `[R_i, feature_dim]` tensor per image.
        """
        chunk_size = self.config.roi_chunk_size
        outputs: list[torch.Tensor] = []
        pending: list[torch.Tensor] = []
        for image_features, image_boxes in zip(features, boxes, strict=True):
            pending.append(self.pool(image_features, [image_boxes]))
            while sum(len(item) for item in pending) >= chunk_size:
                merged = torch.cat(pending)
                outputs.append(self._pooled_res5(merged[:chunk_size]))
                pending = [merged[chunk_size:]]
        if sum(len(item) for item in pending):
            outputs.append(self._pooled_res5(torch.cat(pending)))
        merged = torch.cat(outputs) if outputs else features[0].new_zeros((0, self.config.feature_dim))
        return list(merged.split([len(image_boxes) for image_boxes in boxes]))

    def _pooled_res5(self, pooled: torch.Tensor) -> torch.Tensor:
        # Averaged in the pooled regions' dtype: float32 region features even when res5 runs under autocast.
        return self.res5(pooled).mean(dim=(2, 3), dtype=pooled.dtype)


@dataclass
class Detections:
    """The regions kept for one image, boxes in resized-image pixels, in the order of the procedure's selection."""

    index: torch.Tensor
    boxes: torch.Tensor
    object_ids: torch.Tensor
    object_scores: torch.Tensor
    attribute_ids: torch.Tensor
    attribute_scores: torch.Tensor


def select_detections(
    class_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    attribute_logits: torch.Tensor,
    proposals: torch.Tensor,
    image_size: tuple[int, int],
    config: RegionFeatureExtractorConfig,
) -> Detections:
    """
    Pick the regions of one image from its proposals' predictions.

    Each proposal gets its most likely foreground class and that class's regressed box (clipped to the image).
    Class-agnostic NMS then runs at each of `config.nms_thresholds` in turn until at least `config.min_boxes`
    boxes survive (else the last threshold's result stands). Boxes scoring below `config.score_threshold` are
    dropped unless needed to reach `min_boxes`, and at most `config.max_boxes` are kept.

    Scores:
        `object_scores` is the softmax over all classes, background included, at the chosen class (not
        renormalized over the foreground). `attribute_scores` is the softmax over the attribute logits without the
        "no attribute" one, at the most likely attribute.
    """
    num_regions = len(proposals)
    object_probs = class_logits.float().softmax(dim=-1)[:, :-1]
    object_scores, object_ids = object_probs.max(dim=1)
    # Only the chosen class's box is ever used, so only that one is decoded.
    deltas = box_deltas.float().view(num_regions, config.num_classes, 4)[
        torch.arange(num_regions, device=proposals.device), object_ids
    ]
    boxes = clip_boxes(decode_boxes(deltas, proposals.float(), BOX_WEIGHTS), *image_size)
    keep = _nms_until_enough(boxes, object_scores, config)
    above = int((object_scores[keep] >= config.score_threshold).sum())
    keep = keep[: min(max(above, config.min_boxes), config.max_boxes)]
    attribute_scores, attribute_ids = attribute_predictions(attribute_logits[keep], "detectron2")
    return Detections(keep, boxes[keep], object_ids[keep], object_scores[keep], attribute_ids, attribute_scores)


def _nms_until_enough(boxes: torch.Tensor, scores: torch.Tensor, config: RegionFeatureExtractorConfig) -> torch.Tensor:
    keep = boxes.new_zeros(0, dtype=torch.long)
    for threshold in config.nms_thresholds:
        keep = nms(boxes, scores, threshold)
        if len(keep) >= config.min_boxes:
            break
    return keep


def select_caffe_detections(
    class_logits: torch.Tensor,
    attribute_logits: torch.Tensor,
    proposals: torch.Tensor,
    image_scale: torch.Tensor,
    config: RegionFeatureExtractorConfig,
) -> Detections:
    """
    Pick the regions of one image as LXMERT's Caffe extraction (`extract_coco_image.py`) does.

    The regions are the proposals themselves (no class-specific regression). Each proposal's score (`max_conf`)
    is its best class score among the classes whose NMS (per class, over all proposals, at
    `config.nms_thresholds[0]`, "+1" IoU on the boxes in original-image pixels, i.e. `proposals / image_scale`)
    keeps it, 0 when none does. Proposals scoring at least `config.score_threshold` are kept, in proposal order;
    when fewer than `config.min_boxes` or more than `config.max_boxes` pass, the best `min_boxes` / `max_boxes` by
    score are taken instead (ties as numpy's reversed ascending sort leaves them: the later proposal first).

    Scores:
        `object_scores` is the softmax over all classes, background included, at the most likely foreground
        class; `attribute_scores` likewise the softmax over all attribute logits, "no attribute" included, at the
        most likely attribute (Caffe's `cls_prob[:, 1:]` and `attr_prob[:, 1:]`).
    """
    class_probs = class_logits.float().softmax(dim=-1)[:, :-1]
    original = proposals.float() / image_scale
    kept_by_class = per_class_nms_caffe(original, class_probs, config.nms_thresholds[0])
    max_conf = torch.where(kept_by_class, class_probs, torch.zeros_like(class_probs)).amax(dim=1)
    keep = _caffe_keep(max_conf, config)
    object_scores, object_ids = class_probs[keep].max(dim=1)
    attribute_scores, attribute_ids = attribute_predictions(attribute_logits[keep], "caffe")
    return Detections(keep, proposals[keep].float(), object_ids, object_scores, attribute_ids, attribute_scores)


def _caffe_keep(max_conf: torch.Tensor, config: RegionFeatureExtractorConfig) -> torch.Tensor:
    # numpy compares the float32 scores with the threshold in double.
    passing = torch.nonzero(max_conf.double() >= config.score_threshold).flatten()
    if config.min_boxes <= len(passing) <= config.max_boxes:
        return passing
    limit = config.min_boxes if len(passing) < config.min_boxes else config.max_boxes
    best_first = torch.sort(max_conf, stable=True).indices.flip(0)
    return best_first[:limit]


def attribute_predictions(attribute_logits: torch.Tensor, procedure: str) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The most likely attribute of each region and its score: with `"caffe"`, the softmax over all attribute logits
    ("no attribute" included) at the best real attribute; with `"detectron2"`, the softmax over the real
    attributes' logits only.
    """
    if procedure == "caffe":
        return attribute_logits.float().softmax(dim=-1)[:, :-1].max(dim=1)
    return attribute_logits.float()[:, :-1].softmax(dim=-1).max(dim=1)


def describe_given_regions(
    class_logits: torch.Tensor, attribute_logits: torch.Tensor, boxes: torch.Tensor, procedure: str
) -> Detections:
    """
    One prediction per given region, in the given order: no selection, NMS nor box regression. Object and attribute
    scores are those the `procedure`'s selection ([`select_caffe_detections`] / [`select_detections`]) gives a
    region it keeps. `boxes` are returned as they are given (original-image pixels).
    """
    object_scores, object_ids = class_logits.float().softmax(dim=-1)[:, :-1].max(dim=1)
    attribute_scores, attribute_ids = attribute_predictions(attribute_logits, procedure)
    index = torch.arange(len(boxes), device=class_logits.device)
    return Detections(index, boxes.float(), object_ids, object_scores, attribute_ids, attribute_scores)
