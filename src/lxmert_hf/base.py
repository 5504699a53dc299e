"""`LxmertTaskModel`: the base of this library's LXMERT models, with what training them needs (a loss normalized by
the items of the whole global batch, and activation checkpointing)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LxmertPreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.lxmert.modeling_lxmert import LxmertLayer, LxmertXLayer

from lxmert_hf.validation import check_text_inputs, check_values


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

    - Given `num_items_in_batch`, the number of items its loss averages over in the whole global batch (all
      processes, all gradient-accumulation steps), a model returns the sum of its loss over its own batch divided
      by it, so a step's loss and gradient are those of the global batch however it is split. Which items count is
      the model's `counted_in_loss(labels)` (for VQA: the questions with a target), which the library's `Trainer`
      ([`~lxmert_hf.training.VQATrainer`]) sums over the step and the processes. Called without it, a model
      averages over its own batch.
    - `accepts_loss_kwargs = False`: transformers' own `Trainer` would count the entries of `labels` other than
      -100 (every answer of a row of soft scores, about the vocabulary size per question) and divide the loss by
      that; told that the model takes no `num_items_in_batch`, it averages each micro-batch instead, neither
      multiplying by the number of processes nor skipping the division by the accumulation steps. `VQATrainer`,
      which counts the right items, turns the count on for itself.
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

    def counted_in_loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Which items of a batch's `labels` the loss averages over (bool, one per item); each model defines it."""
        raise NotImplementedError(f"{type(self).__name__} must say which items of its `labels` its loss counts.")

    # How the messages name the integer labels' allowed values (`None`: the answer ids of the vocabulary, or -100).
    label_values: str | None = None

    def _check_regions(self, visual_feats, visual_pos, visual_attention_mask, batch_size: int) -> None:
        """Check the shapes and dtypes of the region inputs; each model defines it."""
        raise NotImplementedError(f"{type(self).__name__} must say which region inputs it takes.")

    def _check_label_shape(self, labels: torch.Tensor, batch_size: int) -> None:
        """Check the shape and dtype of `labels`; each model defines it."""
        raise NotImplementedError(f"{type(self).__name__} must say which `labels` it takes.")

    def _check_inputs(
        self, input_ids, inputs_embeds, attention_mask, token_type_ids, visual_feats, visual_pos,
        visual_attention_mask, labels, check_finite: bool,
    ) -> None:  # fmt: skip
        """Check a forward call's inputs before anything runs, each error naming the input: the text's shapes, the
        model's regions and labels, then every value read back from the device at once."""
        config = self.config
        batch_size = check_text_inputs(
            input_ids, inputs_embeds, attention_mask, token_type_ids, config.hidden_size,
            config.max_position_embeddings,
        )  # fmt: skip
        self._check_regions(visual_feats, visual_pos, visual_attention_mask, batch_size)
        if labels is not None:
            self._check_label_shape(labels, batch_size)
        named = dict(input_ids=input_ids, token_type_ids=token_type_ids, visual_feats=visual_feats,
                     visual_pos=visual_pos, labels=labels)  # fmt: skip
        check_values(
            named, config.vocab_size, config.type_vocab_size, config.num_labels, check_finite,
            label_values=self.label_values,
        )  # fmt: skip

    def post_init(self) -> None:
        # At construction, not when checkpointing is enabled: the layer classes must already be the ones that
        # `_no_split_modules` names when FSDP wraps the model.
        _make_layers_checkpointable(self)
        super().post_init()
