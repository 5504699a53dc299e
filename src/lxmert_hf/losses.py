"""Answer-head losses: softmax over answers against soft scores, and the paper's sigmoid BCE."""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100


def answer_loss(
    logits: torch.Tensor, labels: torch.Tensor, head_loss: str, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Loss of answer `logits` [batch, answers] against `labels`.

    `labels` is either dense soft scores [batch, answers] (float) or answer indices [batch] (int, `-100` =
    ignored). With `head_loss="softmax"` the soft scores of each row are normalized into a distribution and the
    loss is its cross-entropy with the softmax over answers; rows whose scores are all zero (no annotated answer
    in the vocabulary) carry no target and are left out of the mean. With `head_loss="bce"` the loss is the
    sigmoid binary cross-entropy on the soft scores, summed over answers and averaged over the batch, as in the
    paper.

    The mean is over the questions of this batch that the loss counts ([`counted_questions`]). With
    `num_items_in_batch`, the number of such questions in the whole global batch (every process, every
    gradient-accumulation step), it is the sum over this batch divided by that number instead, so that the
    contributions of the micro-batches of one optimizer step add up to the mean over the global batch.

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf.losses import answer_loss
        >>> logits = torch.zeros(1, 4)
        >>> round(answer_loss(logits, torch.tensor([2]), "softmax").item(), 4)  # log(4)
        1.3863
        >>> round(answer_loss(logits, torch.tensor([2]), "softmax", num_items_in_batch=2).item(), 4)  # half a step
        0.6931
        ```
    """
    per_question = _per_question_loss(logits.float(), labels, head_loss)
    if num_items_in_batch is None:
        num_items_in_batch = counted_questions(labels, head_loss).sum()
    # Dividing by at least one keeps a batch without targets finite (zero loss, zero gradient).
    return per_question.sum() / torch.as_tensor(num_items_in_batch, device=per_question.device).clamp(min=1)


def counted_questions(labels: torch.Tensor, head_loss: str) -> torch.Tensor:
    """Which questions of `labels` [`answer_loss`] averages over (bool [batch]): those with a target for the
    softmax loss (some score > 0, or an index other than `-100`), every one not ignored for BCE. Their number,
    summed over the micro-batches of a step and over the processes, is the `num_items_in_batch` of that step.

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf.losses import counted_questions
        >>> scores = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.3, 0.0]])  # the second question has no target
        >>> counted_questions(scores, "softmax").tolist(), counted_questions(scores, "bce").tolist()
        ([True, False, True], [True, True, True])
        ```
    """
    if not labels.dtype.is_floating_point:
        return labels != IGNORE_INDEX
    if head_loss == "softmax":
        return labels.sum(dim=-1) > 0
    return torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)


def _per_question_loss(logits: torch.Tensor, labels: torch.Tensor, head_loss: str) -> torch.Tensor:
    """The loss of each question [batch], zero for the questions the loss leaves out."""
    if labels.dtype.is_floating_point:
        targets = labels.to(logits.dtype)
        return _soft_softmax_loss(logits, targets) if head_loss == "softmax" else _bce_loss(logits, targets)
    if head_loss == "softmax":
        return nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    keep = labels != IGNORE_INDEX
    targets = nn.functional.one_hot(labels.clamp(min=0), logits.shape[-1]).to(logits.dtype)
    return torch.where(keep, _bce_loss(logits, targets), 0.0)


def _soft_softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    mass = targets.sum(dim=-1, keepdim=True)
    has_target = mass.squeeze(-1) > 0
    distribution = targets / mass.clamp(min=torch.finfo(targets.dtype).tiny)
    return -(distribution * nn.functional.log_softmax(logits, dim=-1)).sum(dim=-1) * has_target


def _bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    per_answer = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return per_answer.sum(dim=-1)
