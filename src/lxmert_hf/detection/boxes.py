"""Box arithmetic shared by the proposal and box heads: (x1, y1, x2, y2) boxes, no "+1" pixel convention."""

from __future__ import annotations

import math

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
