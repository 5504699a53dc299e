"""Answer-head losses: softmax over answers against soft scores, and the paper's sigmoid BCE."""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, head_loss: str) -> torch.Tensor:
    """Loss of answer `logits` [batch, answers] against `labels`.

    `labels` is either dense soft scores [batch, answers] (float) or answer indices [batch] (int, `-100` =
    ignored). With `head_loss="softmax"` the soft scores of each row are normalized into a distribution and the
    loss is its cross-entropy with the softmax over answers; rows whose scores are all zero (no annotated answer
    in the vocabulary) carry no target and are left out of the mean. With `head_loss="bce"` the loss is the
    sigmoid binary cross-entropy on the soft scores, summed over answers and averaged over the batch, as in the
    paper.

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf.losses import answer_loss
        >>> logits = torch.zeros(1, 4)
        >>> round(answer_loss(logits, torch.tensor([2]), "softmax").item(), 4)  # log(4)
        1.3863
        ```
    """
    logits = logits.float()
    if labels.dtype.is_floating_point:
        targets = labels.to(logits.dtype)
        return _soft_softmax_loss(logits, targets) if head_loss == "softmax" else _bce_loss(logits, targets)
    if head_loss == "softmax":
        return nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    keep = labels != IGNORE_INDEX
    targets = nn.functional.one_hot(labels[keep], logits.shape[-1]).to(logits.dtype)
    return _bce_loss(logits[keep], targets)


def _soft_softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    mass = targets.sum(dim=-1, keepdim=True)
    has_target = mass.squeeze(-1) > 0
    distribution = targets / mass.clamp(min=torch.finfo(targets.dtype).tiny)
    per_example = -(distribution * nn.functional.log_softmax(logits, dim=-1)).sum(dim=-1)
    # Dividing by at least one keeps an all-empty batch finite (zero loss, zero gradient).
    return (per_example * has_target).sum() / has_target.sum().clamp(min=1)


def _bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    per_answer = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return per_answer.sum(dim=-1).mean()
