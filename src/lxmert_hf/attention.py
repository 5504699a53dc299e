"""Scaled-dot-product attention for every LXMERT attention layer (language, vision and cross-modality)."""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.lxmert.modeling_lxmert import LxmertAttention

from lxmert_hf.configuration import ATTENTION_BACKENDS


class LxmertSdpaAttention(LxmertAttention):
    """`LxmertAttention` computed with `torch.nn.functional.scaled_dot_product_attention`.

    Same parameters and state-dict keys as the eager layer, so a model switches backend without touching its
    weights. When attention maps are requested the eager computation runs, since SDPA never materializes them.
    """

    def forward(self, hidden_states, context, attention_mask=None, output_attentions=False):
        if output_attentions:
            return super().forward(hidden_states, context, attention_mask, output_attentions=True)
        query = self._heads(self.query(hidden_states))
        key = self._heads(self.key(context))
        value = self._heads(self.value(context))
        if attention_mask is not None:
            # The model builds an additive mask from finfo(model dtype).min; under autocast the queries may be in
            # a narrower dtype, where that value would overflow to -inf and turn fully masked rows into NaN.
            attention_mask = attention_mask.clamp(min=torch.finfo(query.dtype).min).to(query.dtype)
        dropout = self.dropout.p if self.training else 0.0
        context_layer = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout
        )
        context_layer = context_layer.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.head_size)
        return (context_layer,)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:-1], self.num_attention_heads, self.attention_head_size).transpose(1, 2)


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every LXMERT attention layer inside `model` to `backend` (`"eager"` or `"sdpa"`), in place.

    Example:
        ```python
        >>> from lxmert_hf import LxmertForVQA, LxmertVQAConfig, set_attention_backend
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"], hidden_size=32, num_attention_heads=2,
        ...     intermediate_size=64, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=50)
        >>> model = set_attention_backend(LxmertForVQA(config), "eager")
        >>> model.config.attention_backend
        'eager'
        ```
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"`backend` must be one of {ATTENTION_BACKENDS}, got {backend!r}.")
    target = LxmertSdpaAttention if backend == "sdpa" else LxmertAttention
    for module in model.modules():
        if isinstance(module, LxmertAttention):
            # Both classes share __init__ and parameters, so swapping the class swaps only the computation.
            module.__class__ = target
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "attention_backend"):
        config.attention_backend = backend
    return model
