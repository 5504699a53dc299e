"""`LxmertTaskModel`: the base of this library's LXMERT models, with what training them needs (a loss the `Trainer`
scales right across processes and accumulation steps, and activation checkpointing)."""

from __future__ import annotations

from torch import nn
from transformers import LxmertPreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.lxmert.modeling_lxmert import LxmertLayer, LxmertXLayer


class CheckpointableLxmertLayer(GradientCheckpointingLayer, LxmertLayer):
    """A language or vision layer that recomputes its activations in the backward pass when checkpointing is on."""


class CheckpointableLxmertXLayer(GradientCheckpointingLayer, LxmertXLayer):
    """A cross-modality layer that recomputes its activations in the backward pass when checkpointing is on."""


_CHECKPOINTABLE_LAYERS = {LxmertLayer: CheckpointableLxmertLayer, LxmertXLayer: CheckpointableLxmertXLayer}


def _make_layers_checkpointable(model: nn.Module) -> nn.Module:
    """Let every encoder layer of `model` take part in transformers' activation checkpointing, in place.

    transformers' LXMERT layers are plain modules; their checkpointable classes add only the switch (off until
    checkpointing is enabled), so parameters, state-dict keys and outputs stay the same. The encoder passes the
    hidden states positionally, as checkpointing a layer's `forward` needs.
    """
    for module in model.modules():
        if type(module) in _CHECKPOINTABLE_LAYERS:
            module.__class__ = _CHECKPOINTABLE_LAYERS[type(module)]
    return model


class LxmertTaskModel(LxmertPreTrainedModel):
    r"""
    The base of this library's LXMERT models (VQA/GQA, and the models of other tasks to come).

    - `accepts_loss_kwargs = False`: the models average their loss over their own batch and take no
      `num_items_in_batch`. Without it, the `Trainer` reads the `**kwargs` of `forward` as a promise to normalize
      by the global item count, so it multiplies the loss by the number of processes and stops dividing it by the
      gradient-accumulation steps. Every model of the library subclasses this class, so the rule holds for all.
    - `supports_gradient_checkpointing = True`: `activation_checkpointing_enable()` (the `Trainer`'s
      `--activation_checkpointing`, or its older name `--gradient_checkpointing`) recomputes each language, vision
      and cross-modality layer in the backward pass instead of keeping its activations, with transformers' options
      (`activation_checkpointing_kwargs` for `torch.utils.checkpoint`, `every_n_layers`, `offload`).

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf import LxmertForVQA, LxmertVQAConfig
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"], hidden_size=32, num_attention_heads=2,
        ...     intermediate_size=64, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=50)
        >>> model = LxmertForVQA(config)
        >>> model.accepts_loss_kwargs
        False
        >>> model.activation_checkpointing_enable()
        >>> out = model(input_ids=torch.tensor([[1, 5, 7, 2]]), visual_feats=torch.randn(1, 36, 16),
        ...             visual_pos=torch.rand(1, 36, 4), labels=torch.tensor([[0.0, 1.0]]))
        >>> out.loss.backward()
        >>> model.is_activation_checkpointing
        True
        ```
    """

    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True
    # The units that sharding (FSDP's transformer-based wrapping) and `device_map` keep whole: the encoder layers.
    _no_split_modules = ["CheckpointableLxmertLayer", "CheckpointableLxmertXLayer"]

    def post_init(self) -> None:
        # At construction, not when checkpointing is enabled: the layer classes must already be the ones that
        # `_no_split_modules` names when FSDP wraps the model.
        _make_layers_checkpointable(self)
        super().post_init()
