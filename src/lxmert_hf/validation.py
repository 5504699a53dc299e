"""Checks of the tensors given to the model, with errors that name the tensor, its shape and the expected one.

The checks of types, dtypes and shapes read only tensor metadata. The checks of values (token ids within the
vocabulary, boxes within [0, 1], finite features, answer indices within the vocabulary) are reduced to one
tensor of flags read back once, so a forward pass on a GPU waits on the device once for all of them; they are
skipped while `torch.compile` traces the model, where reading a value back would break the graph, and inside
[`values_checked_on_host`], where the caller checked the same values on the host before copying them to the device.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch

_CHECKED_ON_HOST = contextvars.ContextVar("lxmert_hf_values_checked_on_host", default=False)


@contextlib.contextmanager
def values_checked_on_host() -> Iterator[None]:
    """Skip [`check_values`] inside the block: the caller checked these values on the host, where reading them
    waits on nothing, before copying them to the device (the recipes' training batches, checked as they are
    collated), so the forward pass does not wait on the device for them.

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf.validation import check_values, values_checked_on_host
        >>> with values_checked_on_host():
        ...     check_values({"input_ids": torch.tensor([[99]])}, vocab_size=50, type_vocab_size=2, num_labels=3)
        ```
    """
    token = _CHECKED_ON_HOST.set(True)
    try:
        yield
    finally:
        _CHECKED_ON_HOST.reset(token)


# What the message suggests for a tensor whose dtype does not match the model's.
_CAST_HINT = "cast it with `.to(model.dtype)` (or run under `torch.autocast`)"


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def _require_tensor(name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor):
        hint = " (convert it with `torch.from_numpy`)" if type(value).__module__ == "numpy" else ""
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}{hint}.")


def check_text_inputs(
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    hidden_size: int,
    max_positions: int,
) -> int:
    """Raise a `ValueError` unless exactly one of `input_ids` (int [batch, words]) and `inputs_embeds`
    (float [batch, words, hidden_size]) is given, with masks of the same shape; return the batch size."""
    if (input_ids is None) == (inputs_embeds is None):
        given = "both" if input_ids is not None else "neither"
        raise ValueError(
            f"Pass exactly one of `input_ids` (token ids from the tokenizer) and `inputs_embeds`; got {given}."
        )
    if input_ids is not None:
        _require_tensor("input_ids", input_ids)
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise ValueError(f"`input_ids` must hold integer token ids, got dtype {input_ids.dtype} (use `.long()`).")
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` has shape {_shape(input_ids)}, expected (batch, words).")
        text = input_ids
    else:
        _require_tensor("inputs_embeds", inputs_embeds)
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden_size:
            raise ValueError(
                f"`inputs_embeds` has shape {_shape(inputs_embeds)}, expected (batch, words, {hidden_size}) "
                f"(`config.hidden_size` = {hidden_size})."
            )
        text = inputs_embeds
    name = "input_ids" if input_ids is not None else "inputs_embeds"
    if text.shape[1] > max_positions:
        raise ValueError(
            f"`{name}` holds {text.shape[1]} tokens, more than the {max_positions} positions the model has "
            "(`config.max_position_embeddings`): truncate the text (`truncation=True` in the tokenizer)."
        )
    for mask_name, mask in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if mask is not None:
            _require_tensor(mask_name, mask)
            if tuple(mask.shape) != tuple(text.shape[:2]):
                raise ValueError(
                    f"`{mask_name}` has shape {_shape(mask)}, expected {tuple(text.shape[:2])} like `{name}`."
                )
    return text.shape[0]


def check_visual_inputs(
    visual_feats: torch.Tensor | None,
    visual_pos: torch.Tensor | None,
    visual_attention_mask: torch.Tensor | None,
    batch_size: int,
    feat_dim: int,
    pos_dim: int,
    dtype: torch.dtype | None = None,
) -> None:
    """Raise a `ValueError` unless the region inputs are tensors that agree with each other, with the text's batch
    of `batch_size`, with the config and (outside autocast) with the model's `dtype`."""
    if visual_feats is None or visual_pos is None:
        raise ValueError("`visual_feats` and `visual_pos` are required: pass region features and normalized boxes.")
    _require_tensor("visual_feats", visual_feats)
    _require_tensor("visual_pos", visual_pos)
    if visual_feats.dim() != 3 or visual_feats.shape[-1] != feat_dim:
        raise ValueError(
            f"`visual_feats` has shape {_shape(visual_feats)}, expected (batch, num_boxes, {feat_dim}) "
            f"(`config.visual_feat_dim` = {feat_dim})."
        )
    if visual_feats.shape[0] != batch_size:
        raise ValueError(
            f"`visual_feats` holds {visual_feats.shape[0]} images but the text a batch of {batch_size}: pass one "
            "image's regions per question."
        )
    num_boxes = visual_feats.shape[1]
    if num_boxes == 0:
        raise ValueError("`visual_feats` holds no regions (num_boxes = 0): each image needs at least one region.")
    expected = (batch_size, num_boxes, pos_dim)
    if tuple(visual_pos.shape) != expected:
        raise ValueError(
            f"`visual_pos` has shape {_shape(visual_pos)}, expected {expected}: one box per region in "
            f"`visual_feats` {_shape(visual_feats)} and a batch of {batch_size}."
        )
    for name, tensor in (("visual_feats", visual_feats), ("visual_pos", visual_pos)):
        _check_float_dtype(name, tensor, dtype)
    if visual_attention_mask is not None:
        _require_tensor("visual_attention_mask", visual_attention_mask)
        if tuple(visual_attention_mask.shape) != (batch_size, num_boxes):
            raise ValueError(
                f"`visual_attention_mask` has shape {_shape(visual_attention_mask)}, expected "
                f"{(batch_size, num_boxes)}."
            )


def _check_float_dtype(name: str, tensor: torch.Tensor, dtype: torch.dtype | None) -> None:
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {tensor.dtype}: {_CAST_HINT}.")
    if dtype is not None and tensor.dtype != dtype and not torch.is_autocast_enabled(tensor.device.type):
        raise ValueError(f"`{name}` has dtype {tensor.dtype} but the model {dtype}: {_CAST_HINT}.")


def check_labels(labels: torch.Tensor, batch_size: int, num_labels: int) -> None:
    """Raise a `ValueError` unless `labels` are soft scores [batch, num_labels] or indices [batch] (their values are
    checked by [`check_values`])."""
    _require_tensor("labels", labels)
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


def check_values(
    named: dict[str, torch.Tensor | None],
    vocab_size: int,
    type_vocab_size: int,
    num_labels: int,
    check_finite: bool = True,
    label_values: str | None = None,
) -> None:
    """Raise a `ValueError` naming the first of the tensors in `named` (keys: `input_ids`, `token_type_ids`,
    `visual_feats`, `visual_pos`, `labels`) whose values are out of range, reading the device once. Integer
    `labels` must be within [0, `num_labels`) or -100; `label_values` says so in the message in the task's words.

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf.validation import check_values
        >>> try:
        ...     check_values({"input_ids": torch.tensor([[1, 99]])}, vocab_size=50, type_vocab_size=2, num_labels=3)
        ... except ValueError as error:
        ...     print(str(error).split(":")[0])
        `input_ids` holds token ids up to 99, outside [0, 50) (`config.vocab_size` = 50)
        ```
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or _CHECKED_ON_HOST.get():
        return
    checks = _value_checks(named, vocab_size, type_vocab_size, num_labels, check_finite, label_values)
    if not checks:
        return
    failed = torch.stack([flag for flag, _ in checks]).tolist()
    for bad, (_, message) in zip(failed, checks, strict=True):
        if bad:
            raise ValueError(message())


def _value_checks(
    named, vocab_size, type_vocab_size, num_labels, check_finite, label_values=None
) -> list[tuple[torch.Tensor, Callable]]:
    """(one-element bool tensor that is True when the check fails, the message then) per check that applies."""
    checks = []
    for name, size, setting in (
        ("input_ids", vocab_size, "vocab_size"),
        ("token_type_ids", type_vocab_size, "type_vocab_size"),
    ):
        ids = named.get(name)
        if ids is not None and ids.numel():
            checks.append(((ids < 0).any() | (ids >= size).any(), _ids_message(name, ids, size, setting)))
    boxes = named.get("visual_pos")
    if boxes is not None:
        checks.append((((boxes < 0) | (boxes > 1)).any(), _boxes_message(boxes)))
    if check_finite:
        for name in ("visual_feats", "visual_pos"):
            tensor = named.get(name)
            if tensor is not None:
                checks.append((_not_finite(tensor), _finite_message(name, tensor)))
    labels = named.get("labels")
    if labels is not None and not labels.dtype.is_floating_point and labels.numel():
        invalid = (labels != -100) & ((labels < 0) | (labels >= num_labels))
        checks.append((invalid.any(), _labels_message(labels, invalid, num_labels, label_values)))
    return [(flag.to(device=checks[0][0].device).reshape(()), message) for flag, message in checks]


def _not_finite(tensor: torch.Tensor) -> torch.Tensor:
    # A NaN or an infinity makes the sum non-finite; summing (in at least float32, so that half-precision features
    # cannot overflow) reads the tensor once instead of writing a mask of its size.
    accumulate = torch.float32 if tensor.element_size() < 4 else tensor.dtype
    return ~torch.isfinite(tensor.sum(dtype=accumulate))


def _ids_message(name: str, ids: torch.Tensor, size: int, setting: str) -> Callable[[], str]:
    def message() -> str:
        low, high = ids.min().item(), ids.max().item()
        value = f"up to {high}" if high >= size else f"down to {low}"
        hint = "tokenize with the model's own tokenizer" if name == "input_ids" else "use 0 or 1"
        return f"`{name}` holds token ids {value}, outside [0, {size}) (`config.{setting}` = {size}): {hint}."

    return message


def _boxes_message(boxes: torch.Tensor) -> Callable[[], str]:
    def message() -> str:
        finite = boxes[torch.isfinite(boxes)]
        low, high = torch.aminmax(finite.detach())
        return (
            f"`visual_pos` holds values in [{low.item():.4g}, {high.item():.4g}], expected boxes normalized to "
            "[0, 1] as (x1 / width, y1 / height, x2 / width, y2 / height)."
        )

    return message


def _finite_message(name: str, tensor: torch.Tensor) -> Callable[[], str]:
    def message() -> str:
        rows = (~torch.isfinite(tensor)).flatten(1).any(1).nonzero().flatten()[:5].tolist()
        return (
            f"`{name}` holds NaN or infinite values (batch rows {rows}): check the features where they were made, "
            "or pass `check_finite=False` to forward to let them through."
        )

    return message


def _labels_message(
    labels: torch.Tensor, invalid: torch.Tensor, num_labels: int, label_values: str | None = None
) -> Callable[[], str]:
    def message() -> str:
        bad = labels[invalid][:5].tolist()
        if label_values is not None:
            rows = invalid.nonzero().flatten()[:5].tolist()
            return f"`labels` holds {bad} (batch rows {rows}); expected {label_values}."
        return f"`labels` holds answer indices {bad} outside [0, {num_labels}) (use -100 to ignore)."

    return message


def check_pair_visual_inputs(
    visual_feats: torch.Tensor | None,
    visual_pos: torch.Tensor | None,
    visual_attention_mask: torch.Tensor | None,
    batch_size: int,
    feat_dim: int,
    pos_dim: int,
    dtype: torch.dtype | None = None,
) -> None:
    """Raise a `ValueError` unless the region inputs hold two images per example: `visual_feats`
    [batch, 2, num_boxes, feat_dim], `visual_pos` [batch, 2, num_boxes, pos_dim] and `visual_attention_mask`
    [batch, 2, num_boxes], with the text's batch of `batch_size` and (outside autocast) the model's `dtype`.

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf.validation import check_pair_visual_inputs
        >>> try:
        ...     check_pair_visual_inputs(torch.rand(3, 36, 16), torch.rand(3, 36, 4), None, 3, 16, 4)
        ... except ValueError as error:
        ...     print(str(error).split(":")[0])
        NLVR2 needs two images per example
        ```
    """
    if visual_feats is None or visual_pos is None:
        raise ValueError(
            "`visual_feats` and `visual_pos` are required: pass the region features and normalized boxes of both "
            "images of each example."
        )
    _require_tensor("visual_feats", visual_feats)
    _require_tensor("visual_pos", visual_pos)
    if visual_feats.dim() != 4 or visual_feats.shape[1] != 2 or visual_feats.shape[-1] != feat_dim:
        raise ValueError(
            f"NLVR2 needs two images per example: `visual_feats` must be [batch, 2, regions, {feat_dim}] "
            f"(`config.visual_feat_dim` = {feat_dim}), got {_shape(visual_feats)}. Stack the regions of each "
            "example's two images (the pair collator, `NLVR2DataCollator`, does)."
        )
    if visual_feats.shape[0] != batch_size:
        raise ValueError(
            f"`visual_feats` holds {visual_feats.shape[0]} image pairs but the text a batch of {batch_size}: pass one "
            "pair of images per sentence."
        )
    num_boxes = visual_feats.shape[2]
    if num_boxes == 0:
        raise ValueError("`visual_feats` holds no regions (num_boxes = 0): each image needs at least one region.")
    expected = (batch_size, 2, num_boxes, pos_dim)
    if tuple(visual_pos.shape) != expected:
        raise ValueError(
            f"`visual_pos` has shape {_shape(visual_pos)}, expected {expected}: one box per region in "
            f"`visual_feats` {_shape(visual_feats)}."
        )
    for name, tensor in (("visual_feats", visual_feats), ("visual_pos", visual_pos)):
        _check_float_dtype(name, tensor, dtype)
    if visual_attention_mask is not None:
        _require_tensor("visual_attention_mask", visual_attention_mask)
        if tuple(visual_attention_mask.shape) != expected[:3]:
            raise ValueError(
                f"`visual_attention_mask` has shape {_shape(visual_attention_mask)}, expected {expected[:3]}: one "
                "flag per region of each image of the pair."
            )


def check_class_labels(labels: torch.Tensor, batch_size: int, classes: str) -> None:
    """Raise a `ValueError` unless `labels` are integer class ids [batch] (values are checked by [`check_values`]);
    `classes` says what they mean, for the message."""
    _require_tensor("labels", labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(
            f"`labels` must hold integer class ids ({classes}), got dtype {labels.dtype} (use `.long()`)."
        )
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(
            f"`labels` has shape {_shape(labels)}, expected {(batch_size,)}: one class id per example ({classes})."
        )
