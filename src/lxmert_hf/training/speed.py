"""The recipes' training-speed options and their defaults: the fast path when training on a CUDA GPU (bf16 autocast
where the GPU has it, static shapes, no host-device synchronisation inside a step, pinned memory,
data loader workers; fused AdamW is transformers' default optimizer everywhere), the faithful fp32 eager path
everywhere else.

Each option left unset (`None`, or `auto` for `--precision`) is settled by [`resolve_speed_options`] when the
arguments are built; any option given keeps its value. The faithful path on a GPU is
`--precision fp32 --static_shapes false --torch_compile false --optim adamw_torch`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import TrainingArguments

from lxmert_hf.base import LxmertTaskModel
from lxmert_hf.validation import check_values

__all__ = [
    "PRECISIONS",
    "SPEED_OPTIONS",
    "HostCheckedCollator",
    "HostValueCheck",
    "host_value_check",
    "resolve_speed_options",
    "training_on_cuda",
]

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# The options left unset by default and settled by the device the run trains on.
SPEED_OPTIONS = ("precision", "static_shapes", "dataloader_num_workers", "logging_nan_inf_filter")
# Data loader processes on a GPU: the store's reads and the collator of the next batches run while the GPU computes.
CUDA_DATALOADER_WORKERS = 4
# The inputs whose values a task model's forward pass checks.
CHECKED_INPUTS = ("input_ids", "token_type_ids", "visual_feats", "visual_pos", "labels")


def training_on_cuda(args: TrainingArguments) -> bool:
    """Whether the run trains on a CUDA GPU (the fast path's defaults then apply)."""
    return not args.use_cpu and torch.cuda.is_available()


def resolve_speed_options(args: TrainingArguments) -> None:
    """Settle the speed options the run left unset, for the device it trains on, in place (before
    `TrainingArguments.__post_init__` checks them).

    On a CUDA GPU: `--precision auto` is bf16 autocast where the GPU supports it (fp32 otherwise: fp16 would need a
    loss scale read back every step), `static_shapes` is on, 4 data loader workers read ahead, and the NaN filter of
    the logged loss (`logging_nan_inf_filter`, which reads the loss back every step) is off. Elsewhere: fp32, dynamic
    shapes, the data read in the main process, the filter on. `torch_compile` is off on every device unless asked for
    (`--torch_compile`, which static shapes let compile one graph): its first steps pay a compilation of about a
    minute, and what it gains on a GPU is what the compile rows of `benchmarks/train_throughput.py` measure. Anywhere,
    `--precision auto` follows `--bf16` / `--fp16`, or `accelerate launch --mixed_precision bf16|fp16`; `--precision
    bf16` / `fp16` set `--bf16` / `--fp16`.

    Raises:
        `ValueError`: an unknown `--precision`, or one that contradicts `--bf16` / `--fp16`.

    Example:
        ```python
        >>> from lxmert_hf.training import RecipeTrainingArguments
        >>> args = RecipeTrainingArguments(output_dir="out", use_cpu=True)
        >>> args.precision, args.static_shapes, args.torch_compile, args.dataloader_num_workers
        ('fp32', False, False, 0)
        >>> RecipeTrainingArguments(output_dir="out", use_cpu=True, precision="bf16").bf16
        True
        ```
    """
    cuda = training_on_cuda(args)
    args.precision = _precision(args, cuda)
    if args.precision == "bf16":
        args.bf16 = True
    elif args.precision == "fp16":
        args.fp16 = True
    if args.static_shapes is None:
        args.static_shapes = cuda
    if args.dataloader_num_workers is None:
        args.dataloader_num_workers = CUDA_DATALOADER_WORKERS if cuda else 0
    if args.logging_nan_inf_filter is None:
        args.logging_nan_inf_filter = not cuda


def _precision(args: TrainingArguments, cuda: bool) -> str:
    precision = str(args.precision).lower()
    if precision not in PRECISIONS:
        raise ValueError(f"`--precision {args.precision}` is not one of {', '.join(PRECISIONS)}.")
    flags = [name for name in ("bf16", "fp16") if getattr(args, name)]
    if len(flags) > 1:
        raise ValueError("`--bf16` and `--fp16` both given: pass one `--precision` (bf16, fp16 or fp32).")
    if precision == "auto":
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if flags or launched in ("bf16", "fp16"):
            return flags[0] if flags else launched
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if flags and flags[0] != precision:
        raise ValueError(f"`--precision {precision}` contradicts `--{flags[0]}`: pass only `--precision`.")
    return precision


@dataclasses.dataclass(frozen=True)
class HostValueCheck:
    """The value checks of a model's forward pass (token ids within the vocabulary, boxes within [0, 1], finite
    region inputs, labels within the classifier; [`~lxmert_hf.validation.check_values`]) run on a collated batch
    on the host, where they wait on nothing. Built by [`host_value_check`]; picklable, for data loader workers."""

    vocab_size: int
    type_vocab_size: int
    num_labels: int
    label_values: str | None = None

    def __call__(self, batch: Mapping[str, Any], check_finite: bool = True) -> None:
        named = {name: batch.get(name) for name in CHECKED_INPUTS}
        check_values(
            named, self.vocab_size, self.type_vocab_size, self.num_labels, check_finite, label_values=self.label_values
        )


@dataclasses.dataclass
class HostCheckedCollator:
    """A collator whose batches are checked by `check` ([`HostValueCheck`]) as they are made, on the host; the
    finiteness of the regions only when the collator has not checked it already (its `check_finite`)."""

    collator: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]
    check: Callable[..., None]

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        self.check(batch, check_finite=not getattr(self.collator, "check_finite", False))
        return batch


def host_value_check(model: torch.nn.Module) -> HostValueCheck | None:
    """The [`HostValueCheck`] of `model`'s forward value checks, or `None` for a model whose forward checks more
    than [`~lxmert_hf.validation.check_values`] of its inputs (or is not one of this library's task models).

    Example:
        ```python
        >>> from lxmert_hf import LxmertForVQA, LxmertVQAConfig
        >>> from lxmert_hf.training.speed import host_value_check
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"], hidden_size=32, num_attention_heads=2,
        ...     intermediate_size=64, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=8, vocab_size=50)
        >>> host_value_check(LxmertForVQA(config))
        HostValueCheck(vocab_size=50, type_vocab_size=2, num_labels=2, label_values=None)
        ```
    """
    if not isinstance(model, LxmertTaskModel) or type(model)._check_inputs is not LxmertTaskModel._check_inputs:
        return None
    config = model.config
    return HostValueCheck(config.vocab_size, config.type_vocab_size, config.num_labels, model.label_values)
