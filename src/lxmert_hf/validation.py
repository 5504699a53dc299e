"""Checks of the tensors given to the model, with errors that name the tensor, its shape and the expected one."""

from __future__ import annotations

import torch


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def check_visual_inputs(
    visual_feats: torch.Tensor | None,
    visual_pos: torch.Tensor | None,
    visual_attention_mask: torch.Tensor | None,
    batch_size: int,
    feat_dim: int,
    pos_dim: int,
) -> None:
    """Raise a `ValueError` unless the region inputs agree with each other and with the config."""
    if visual_feats is None or visual_pos is None:
        raise ValueError("`visual_feats` and `visual_pos` are required: pass region features and normalized boxes.")
    if visual_feats.dim() != 3 or visual_feats.shape[-1] != feat_dim:
        raise ValueError(
            f"`visual_feats` has shape {_shape(visual_feats)}, expected (batch, num_boxes, {feat_dim}) "
            f"(`config.visual_feat_dim` = {feat_dim})."
        )
    num_boxes = visual_feats.shape[1]
    expected = (batch_size, num_boxes, pos_dim)
    if tuple(visual_pos.shape) != expected:
        raise ValueError(
            f"`visual_pos` has shape {_shape(visual_pos)}, expected {expected}: one box per region in "
            f"`visual_feats` {_shape(visual_feats)} and a batch of {batch_size}."
        )
    if visual_pos.numel():
        low, high = torch.aminmax(visual_pos.detach())
        if not (low >= 0 and high <= 1):
            raise ValueError(
                f"`visual_pos` holds values in [{low.item():.4g}, {high.item():.4g}], expected boxes normalized to "
                "[0, 1] as (x1 / width, y1 / height, x2 / width, y2 / height)."
            )
    if visual_attention_mask is not None and tuple(visual_attention_mask.shape) != (batch_size, num_boxes):
        raise ValueError(
            f"`visual_attention_mask` has shape {_shape(visual_attention_mask)}, expected {(batch_size, num_boxes)}."
        )


def check_labels(labels: torch.Tensor, batch_size: int, num_labels: int) -> None:
    """Raise a `ValueError` unless `labels` are soft scores [batch, num_labels] or indices [batch]."""
    if labels.dtype.is_floating_point:
        if tuple(labels.shape) != (batch_size, num_labels):
            raise ValueError(
                f"`labels` (soft scores) has shape {_shape(labels)}, expected {(batch_size, num_labels)}: one score "
                f"per answer of the {num_labels}-answer vocabulary."
            )
        return
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(
            f"`labels` (answer indices) has shape {_shape(labels)}, expected {(batch_size,)}; pass float soft "
            f"scores of shape {(batch_size, num_labels)} for soft targets."
        )
    valid = (labels == -100) | ((labels >= 0) & (labels < num_labels))
    if not bool(valid.all()):
        bad = labels[~valid][:5].tolist()
        raise ValueError(f"`labels` holds answer indices {bad} outside [0, {num_labels}) (use -100 to ignore).")
