"""Box arithmetic shared by the proposal and box heads: (x1, y1, x2, y2) boxes, detectron2's continuous convention
and Caffe's "+1" one."""

from __future__ import annotations

import math

import numpy as np
import torch

# Largest log-scale a regression may apply, so exp() cannot blow a box up beyond 1000 / 16 times its size.
SCALE_CLAMP = math.log(1000.0 / 16)


def decode_boxes(
    deltas: torch.Tensor, boxes: torch.Tensor, weights: tuple[float, float, float, float]
) -> torch.Tensor:
    """
    Apply regression `deltas` ([R, 4 * k], (dx, dy, dw, dh) per box) to reference `boxes` ([R, 4]).

    Returns `[R, 4 * k]` boxes: k candidate boxes per reference box (one per class for class-specific regression).
    """
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    center_x = boxes[:, 0] + 0.5 * widths
    center_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=SCALE_CLAMP)
    dh = (deltas[:, 3::4] / wh).clamp(max=SCALE_CLAMP)
    pred_center_x = dx * widths[:, None] + center_x[:, None]
    pred_center_y = dy * heights[:, None] + center_y[:, None]
    half_w = 0.5 * torch.exp(dw) * widths[:, None]
    half_h = 0.5 * torch.exp(dh) * heights[:, None]
    decoded = torch.stack(
        (pred_center_x - half_w, pred_center_y - half_h, pred_center_x + half_w, pred_center_y + half_h), dim=-1
    )
    return decoded.reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Clip `[..., 4]` boxes to the image `[0, width] x [0, height]`."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def nonempty(boxes: torch.Tensor, min_size: float = 0.0) -> torch.Tensor:
    """Return a mask of `[R, 4]` boxes whose width and height are both larger than `min_size`."""
    return ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)


# Caffe's Faster R-CNN (bottom-up-attention's `bbox_transform.py`, `proposal_layer.py`, `cpu_nms.pyx`) counts box
# sides in pixels, "+1": a box from x1 to x2 is x2 - x1 + 1 wide. Its test code uses the functions below.


def decode_boxes_caffe(deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """
    Apply `[R, 4]` (dx, dy, dw, dh) `deltas` to `[R, 4]` `boxes` as Caffe's `bbox_transform_inv` does: "+1" widths,
    centres at `x1 + width / 2`, no weights and no clamp on dw, dh.
    """
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    center_x = boxes[:, 0] + 0.5 * widths
    center_y = boxes[:, 1] + 0.5 * heights
    pred_center_x = deltas[:, 0] * widths + center_x
    pred_center_y = deltas[:, 1] * heights + center_y
    half_w = 0.5 * (torch.exp(deltas[:, 2]) * widths)
    half_h = 0.5 * (torch.exp(deltas[:, 3]) * heights)
    return torch.stack(
        (pred_center_x - half_w, pred_center_y - half_h, pred_center_x + half_w, pred_center_y + half_h), dim=1
    )


def clip_boxes_caffe(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Clip `[R, 4]` boxes to the pixels of an image, `[0, width - 1] x [0, height - 1]` (Caffe's `clip_boxes`)."""
    x = boxes[:, 0::2].clamp(max=width - 1).clamp(min=0)
    y = boxes[:, 1::2].clamp(max=height - 1).clamp(min=0)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def caffe_overlaps(boxes: torch.Tensor, threshold: float, rows: slice = slice(None), start: int = 0) -> torch.Tensor:
    """
    Return a `[len(rows), R - start]` mask: whether box `i` (of `rows`) and box `j` (from `start` on) overlap by an
    IoU of at least `threshold`, computed in float32 with "+1" sides as Caffe's `cpu_nms` does (which compares in
    double).
    """
    x1, y1, x2, y2 = boxes.float().unbind(dim=1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    columns = slice(start, None)
    inter_w = (torch.minimum(x2[rows, None], x2[columns]) - torch.maximum(x1[rows, None], x1[columns]) + 1).clamp(
        min=0
    )
    inter_h = (torch.minimum(y2[rows, None], y2[columns]) - torch.maximum(y1[rows, None], y1[columns]) + 1).clamp(
        min=0
    )
    inter = inter_w * inter_h
    overlap = inter / (areas[rows, None] + areas[columns] - inter)
    return overlap.double() >= threshold


def nms_caffe(boxes: torch.Tensor, threshold: float, chunk: int = 512) -> torch.Tensor:
    """
    Greedy NMS of `[R, 4]` boxes given best first, as Caffe's `cpu_nms`: a box is dropped when its "+1" IoU with
    a kept, better box is at least `threshold`. Returns the indices kept, best first.
    """
    count = len(boxes)
    removed = np.zeros(count, dtype=bool)
    kept = []
    for start in range(0, count, chunk):
        # A box can only remove later (worse) boxes: each block of rows is compared with the boxes from it on.
        overlapping = caffe_overlaps(boxes, threshold, slice(start, start + chunk), start).cpu().numpy()
        for offset, row in enumerate(overlapping):
            if not removed[start + offset]:
                kept.append(start + offset)
                removed[start:] |= row
    return torch.tensor(kept, dtype=torch.long, device=boxes.device)


def per_class_nms_caffe(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """
    Run [`nms_caffe`] once per class over the same `[R, 4]` boxes, each class ranking them by its own column of
    `scores` (`[R, C]`, best first; ties by index). Returns an `[R, C]` mask of the boxes each class keeps.

    All classes advance together, one rank at a time, so the loop is over the R ranks, not over the C classes.
    """
    count, classes = scores.shape
    overlapping = caffe_overlaps(boxes, threshold)
    order = torch.sort(scores.t(), dim=1, descending=True, stable=True).indices  # [C, R]
    rows = torch.arange(classes, device=scores.device)
    removed = torch.zeros(classes, count, dtype=torch.bool, device=scores.device)
    kept = torch.zeros(classes, count, dtype=torch.bool, device=scores.device)
    for rank in range(count):
        candidate = order[:, rank]
        alive = ~removed[rows, candidate]
        kept[rows, candidate] = alive
        removed |= overlapping[candidate] & alive[:, None]
    return kept.t()
