"""Region proposal network: one feature level (res4), 12 anchors per location, proposals selected per image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from lxmert_hf.detection.backbone import BACKBONE_STRIDE
from lxmert_hf.detection.boxes import (
    clip_boxes,
    clip_boxes_caffe,
    decode_boxes,
    decode_boxes_caffe,
    nms_caffe,
    nonempty,
)
from lxmert_hf.detection.config import RegionFeatureExtractorConfig

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def make_cell_anchors(sizes: tuple[int, ...], aspect_ratios: tuple[float, ...]) -> torch.Tensor:
    """
    Return `[len(sizes) * len(aspect_ratios), 4]` anchors centred on 0, size-major, aspect ratio = height / width.

    Example:
        ```python
        >>> from lxmert_hf.detection.rpn import make_cell_anchors
        >>> make_cell_anchors((64,), (1.0,)).tolist()
        [[-32.0, -32.0, 32.0, 32.0]]
        ```
    """
    anchors = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            width = math.sqrt(area / ratio)
            height = ratio * width
            anchors.append([-width / 2, -height / 2, width / 2, height / 2])
    return torch.tensor(anchors, dtype=torch.float32)


def make_caffe_cell_anchors(sizes: tuple[int, ...], aspect_ratios: tuple[float, ...]) -> torch.Tensor:
    """
    Return the anchors of Caffe's `generate_anchors` (base 16, which the published weights were trained with) in
    this module's order (size-major): a 16x16 pixel box reshaped to each aspect ratio with sides rounded to whole
    pixels (ties to even), then scaled to each size, centred on pixel 7.5, "+1" sides.

    Example:
        ```python
        >>> from lxmert_hf.detection.rpn import make_caffe_cell_anchors
        >>> make_caffe_cell_anchors((128,), (0.5, 1.0)).tolist()
        [[-84.0, -40.0, 99.0, 55.0], [-56.0, -56.0, 71.0, 71.0]]
        ```
    """
    base = float(BACKBONE_STRIDE)
    center = (base - 1) / 2
    anchors = []
    for size in sizes:
        for ratio in aspect_ratios:
            base_width = round(math.sqrt(base * base / ratio))
            base_height = round(base_width * ratio)
            width, height = base_width * size / base, base_height * size / base
            anchors.append(
                [
                    center - (width - 1) / 2,
                    center - (height - 1) / 2,
                    center + (width - 1) / 2,
                    center + (height - 1) / 2,
                ]
            )
    return torch.tensor(anchors, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Anchors on the stride-16 grid; cell centres sit at `16 * i` (grid offset 0)."""

    def __init__(self, sizes: tuple[int, ...], aspect_ratios: tuple[float, ...]):
        super().__init__()
        # A (frozen) parameter rather than a buffer because the checkpoint stores it as `cell_anchors.0`.
        anchors = nn.Parameter(make_cell_anchors(sizes, aspect_ratios), requires_grad=False)
        self.cell_anchors = nn.ParameterList([anchors])

    def forward(self, height: int, width: int, cell: torch.Tensor | None = None) -> torch.Tensor:
        """
        Return the `[height * width * num_anchors, 4]` anchors of a feature map, ordered (y, x, anchor), from the
        stored cell anchors or from `cell`.
        """
        cell = self.cell_anchors[0] if cell is None else cell.to(self.cell_anchors[0])
        shifts_x = torch.arange(width, device=cell.device, dtype=cell.dtype) * BACKBONE_STRIDE
        shifts_y = torch.arange(height, device=cell.device, dtype=cell.dtype) * BACKBONE_STRIDE
        grid_y, grid_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        grid_x, grid_y = grid_x.reshape(-1), grid_y.reshape(-1)
        shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=1)
        return (shifts[:, None, :] + cell[None]).reshape(-1, 4)


class RPNHead(nn.Module):
    """A shared 3x3 convolution, then 1x1 convolutions for objectness logits and anchor deltas."""

    def __init__(self, in_channels: int, hidden_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(hidden_channels, num_anchors * 4, kernel_size=1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.conv(features))
        return self.objectness_logits(hidden), self.anchor_deltas(hidden)


class RegionProposalNetwork(nn.Module):
    """Score every anchor, then keep the best non-overlapping proposals of each image (see the config)."""

    def __init__(self, config: RegionFeatureExtractorConfig):
        super().__init__()
        self.config = config
        self.anchor_generator = AnchorGenerator(config.anchor_sizes, config.anchor_aspect_ratios)
        self.rpn_head = RPNHead(config.backbone_channels, config.rpn_channels, config.num_anchors)
        # Caffe's anchors are a function of the settings; the stored ones (detectron2's) serve its procedure.
        caffe = make_caffe_cell_anchors(config.anchor_sizes, config.anchor_aspect_ratios)
        self.register_buffer("caffe_cell_anchors", caffe, persistent=False)

    def forward(
        self,
        features: torch.Tensor,
        image_sizes: list[tuple[int, int]],
        image_scales: list[float] | None = None,
    ) -> list[torch.Tensor]:
        """
        Return, for each image of `features` (`[N, backbone_channels, H, W]`), its proposals `[R_i, 4]` in
        resized-image pixels, best first. `image_sizes` holds each image's resized `(height, width)`;
        `image_scales` its resize factor, which scales Caffe's minimum proposal size (1 when omitted).
        """
        logits, deltas = self.rpn_head(features)
        batch, _, height, width = features.shape
        num_anchors = self.config.num_anchors
        # Lay both out as (y, x, anchor), the order of the anchors.
        logits = logits.permute(0, 2, 3, 1).reshape(batch, -1)
        deltas = deltas.view(batch, num_anchors, 4, height, width).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
        if self.config.procedure == "caffe":
            anchors = self.anchor_generator(height, width, self.caffe_cell_anchors)
            scales = image_scales if image_scales is not None else [1.0] * batch
            return [self._select_caffe(logits[i], deltas[i], anchors, image_sizes[i], scales[i]) for i in range(batch)]
        anchors = self.anchor_generator(height, width)
        return [self._select(logits[i], deltas[i], anchors, image_sizes[i]) for i in range(batch)]

    def _select_caffe(
        self,
        logits: torch.Tensor,
        deltas: torch.Tensor,
        anchors: torch.Tensor,
        image_size: tuple[int, int],
        image_scale: float,
    ) -> torch.Tensor:
        """Caffe's proposal layer: decode every anchor, clip, drop small boxes, then rank, NMS and truncate."""
        config = self.config
        boxes = clip_boxes_caffe(decode_boxes_caffe(deltas.float(), anchors.float()), *image_size)
        # Caffe compares float32 sides with the float32 product of the minimum size and the resize factor.
        min_side = torch.tensor(config.rpn_min_box_size, dtype=torch.float32) * torch.tensor(image_scale).float()
        min_side = min_side.to(boxes.device)
        large = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_side) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_side)
        boxes, logits = boxes[large], logits[large]
        # Ranking logits ranks Caffe's softmax probabilities; ties, which Caffe leaves to its sort, go by anchor.
        order = torch.sort(logits.float(), descending=True, stable=True).indices[: config.rpn_pre_nms_topk]
        boxes = boxes[order]
        return boxes[nms_caffe(boxes, config.rpn_nms_threshold)[: config.rpn_post_nms_topk]]

    def _select(
        self, logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        config = self.config
        # Ranking raw logits is the same as ranking sigmoid scores, and cheaper.
        top_logits, index = logits.topk(min(config.rpn_pre_nms_topk, logits.numel()))
        # Boxes stay float32 whatever the weights' precision: half precision cannot place a 1000-pixel coordinate.
        boxes = decode_boxes(deltas[index].float(), anchors[index].float(), RPN_BOX_WEIGHTS)
        boxes = clip_boxes(boxes, *image_size)
        keep = nonempty(boxes, config.rpn_min_box_size)
        boxes, top_logits = boxes[keep], top_logits[keep]
        keep = nms(boxes, top_logits.float(), config.rpn_nms_threshold)[: config.rpn_post_nms_topk]
        return boxes[keep]
