"""`LxmertForNLVR2`: is a sentence true of a pair of images? The original NLVR2 model on transformers' `LxmertModel`:
the sentence is encoded with each image, and the two pooled outputs, side by side, are classified."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, LxmertModel
from transformers.utils import ModelOutput

from lxmert_hf.attention import set_attention_backend
from lxmert_hf.base import LxmertTaskModel
from lxmert_hf.configuration_nlvr2 import NLVR2_MODEL_TYPE, LxmertNLVR2Config
from lxmert_hf.encoder_checkpoints import IGNORED_HEADS, as_task_config, drop_new_head_keys, load_encoder_pretrained
from lxmert_hf.locations import locate
from lxmert_hf.losses import IGNORE_INDEX, answer_loss
from lxmert_hf.validation import check_class_labels, check_pair_visual_inputs

logger = logging.getLogger(__name__)

# How the messages name the labels' values.
NLVR2_LABEL_VALUES = "1 (true), 0 (false) or -100 (ignored)"


@dataclass
class LxmertForNLVR2Output(ModelOutput):
    """Output of [`LxmertForNLVR2`]: `loss` (when `labels` are given), `logits` [batch, 2] (index 1 = "true") and,
    on request, the encoder hidden states and attention maps of the 2 x batch (sentence, image) rows, row 2i with
    the first image of example i and row 2i + 1 with its second (same names as transformers' LXMERT outputs)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    language_hidden_states: tuple[torch.Tensor, ...] | None = None
    vision_hidden_states: tuple[torch.Tensor, ...] | None = None
    language_attentions: tuple[torch.Tensor, ...] | None = None
    vision_attentions: tuple[torch.Tensor, ...] | None = None
    cross_encoder_attentions: tuple[torch.Tensor, ...] | None = None


def build_pair_classifier(hidden_size: int) -> nn.Sequential:
    """The original NLVR2 head on the two pooled outputs side by side: Linear(2h, 2h) -> GeLU -> LayerNorm(2h) ->
    Linear(2h, 2)."""
    return nn.Sequential(
        nn.Linear(hidden_size * 2, hidden_size * 2),
        nn.GELU(),
        nn.LayerNorm(hidden_size * 2, eps=1e-12),
        nn.Linear(hidden_size * 2, 2),
    )


class LxmertForNLVR2(LxmertTaskModel):
    r"""
    LXMERT for NLVR2: is the sentence true of the pair of images? Each sentence is encoded with each of its two
    images by one `LxmertModel` (`lxmert`, one call on the 2 x batch rows, the weights shared), the two pooled
    outputs are concatenated and classified by `classifier`: Linear(2h, 2h) -> GeLU -> LayerNorm -> Linear(2h, 2),
    trained with cross-entropy, as the original `NLVR2Model`. `logits[:, 1]` is "true".

    `from_pretrained` loads this model's own checkpoints and the encoder of every other LXMERT layout (transformers'
    `LxmertForPreTraining` as `unc-nlp/lxmert-base-uncased`, `LxmertModel`, `LxmertForQuestionAnswering` as
    `unc-nlp/lxmert-vqa-uncased`, and [`LxmertForVQA`] checkpoints of every version), the classifier then newly
    initialized (logged); see [`lxmert_hf.encoder_checkpoints.load_encoder_pretrained`]. Importing `lxmert_hf`
    registers it with `AutoConfig`, `AutoModel` and `AutoModelForSequenceClassification`.

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf import LxmertForNLVR2, LxmertNLVR2Config
        >>> config = LxmertNLVR2Config(hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1,
        ...     x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=50)
        >>> model = LxmertForNLVR2(config).eval()
        >>> out = model(input_ids=torch.tensor([[1, 5, 7, 2], [1, 6, 2, 0]]),
        ...             visual_feats=torch.randn(2, 2, 36, 16),  # [batch, 2 images, regions, dim]
        ...             visual_pos=torch.rand(2, 2, 36, 4), labels=torch.tensor([1, 0]))
        >>> out.logits.shape, out.loss.shape
        (torch.Size([2, 2]), torch.Size([]))
        ```
    """

    config_class = LxmertNLVR2Config
    label_values = NLVR2_LABEL_VALUES
    # Heads of other layouts, which this model reads nowhere (see `lxmert_hf.encoder_checkpoints`).
    _keys_to_ignore_on_load_unexpected = IGNORED_HEADS

    def __init__(self, config: LxmertNLVR2Config):
        # Any other LxmertConfig (what `AutoConfig` reads from another layout's folder) gives its encoder settings.
        config = as_task_config(config, LxmertNLVR2Config)
        super().__init__(config)
        self.lxmert = LxmertModel(config)
        self.classifier = build_pair_classifier(config.hidden_size)
        set_attention_backend(self, config.attention_backend)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        _drop_answer_options(kwargs)
        location = locate(pretrained_model_name_or_path, what="pretrained_model_name_or_path")
        return load_encoder_pretrained(
            super().from_pretrained, LxmertNLVR2Config, location.name_or_path, *model_args, **kwargs
        )

    from_pretrained.__doc__ = load_encoder_pretrained.__doc__

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        # A classifier newly initialized on purpose (loading another layout) is logged once by the loader, not
        # listed again in transformers' load report.
        super()._adjust_missing_and_unexpected_keys(loading_info)
        loading_info.missing_keys = drop_new_head_keys(set(loading_info.missing_keys))

    def counted_in_loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Which examples of a batch's `labels` the loss averages over (bool [batch]): those not ignored (-100)."""
        return labels != IGNORE_INDEX

    def _check_regions(self, visual_feats, visual_pos, visual_attention_mask, batch_size: int) -> None:
        config = self.config
        check_pair_visual_inputs(
            visual_feats, visual_pos, visual_attention_mask, batch_size, config.visual_feat_dim,
            config.visual_pos_dim, dtype=self.dtype,
        )  # fmt: skip

    def _check_label_shape(self, labels: torch.Tensor, batch_size: int) -> None:
        check_class_labels(labels, batch_size, NLVR2_LABEL_VALUES)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        visual_feats: torch.Tensor | None = None,
        visual_pos: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        check_finite: bool = True,
        **kwargs,
    ) -> LxmertForNLVR2Output | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, words)`): the sentence of each example, tokenized.
            visual_feats (`torch.Tensor` of shape `(batch, 2, num_boxes, visual_feat_dim)`): the region features of
                each example's two images.
            visual_pos (`torch.Tensor` of shape `(batch, 2, num_boxes, 4)`): their boxes normalized to [0, 1] as
                (x1 / width, y1 / height, x2 / width, y2 / height).
            visual_attention_mask (`torch.Tensor` of shape `(batch, 2, num_boxes)`, *optional*): 1 for real regions,
                0 for padding.
            labels (`torch.LongTensor` of shape `(batch,)`, *optional*): 1 when the sentence is true of the pair,
                0 when false, -100 to leave an example out of the loss.
            num_items_in_batch (`torch.Tensor` or `int`, *optional*): the number of examples the loss counts
                ([`counted_in_loss`]) in the whole global batch, which the `Trainer` of this library passes; the loss
                is then this batch's sum divided by it. Without it, the mean over this batch.
            check_finite (`bool`, *optional*, defaults to `True`): refuse NaN or infinite values in `visual_feats`
                and `visual_pos` with a `ValueError`; `False` lets them through (the logits are then NaN).

        The inputs are checked before anything runs, each error naming the input: two images per example, one batch
        size for text and images, the dtypes and shapes, token ids within the vocabulary, boxes within [0, 1],
        finite region inputs and labels among 0, 1 and -100.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_inputs(
            input_ids, inputs_embeds, attention_mask, token_type_ids, visual_feats, visual_pos,
            visual_attention_mask, labels, check_finite,
        )  # fmt: skip
        # Row 2i holds the sentence of example i with its first image, row 2i + 1 with its second.
        outputs = self.lxmert(
            input_ids=_twice(input_ids),
            visual_feats=visual_feats.flatten(0, 1),
            visual_pos=visual_pos.flatten(0, 1),
            attention_mask=_twice(attention_mask),
            visual_attention_mask=None if visual_attention_mask is None else visual_attention_mask.flatten(0, 1),
            token_type_ids=_twice(token_type_ids),
            inputs_embeds=_twice(inputs_embeds),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        pooled = outputs.pooled_output.reshape(-1, 2 * self.config.hidden_size)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = answer_loss(logits, labels, "softmax", num_items_in_batch=num_items_in_batch)
        result = LxmertForNLVR2Output(
            loss=loss,
            logits=logits,
            language_hidden_states=outputs.language_hidden_states,
            vision_hidden_states=outputs.vision_hidden_states,
            language_attentions=outputs.language_attentions,
            vision_attentions=outputs.vision_attentions,
            cross_encoder_attentions=outputs.cross_encoder_attentions,
        )
        return result if return_dict else result.to_tuple()


def _drop_answer_options(kwargs: dict) -> None:
    """Take the options of [`LxmertForVQA.from_pretrained`] out of `kwargs`: refuse an answer vocabulary (NLVR2's
    two labels are fixed), ignore `head_loss` with a warning (NLVR2 trains with cross-entropy)."""
    for name in ("answers", "pretrain_answers"):
        if kwargs.pop(name, None) is not None:
            raise ValueError(
                f"`{name}` is an option of LxmertForVQA (an answer vocabulary); an NLVR2 model's two labels are "
                "fixed (false, true): leave it out."
            )
    if kwargs.pop("head_loss", None) is not None:
        logger.warning("`head_loss` is ignored: LxmertForNLVR2 trains with cross-entropy over false/true.")


def _twice(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Each row of `tensor` twice in a row (the text of an example, once per image)."""
    return None if tensor is None else tensor.repeat_interleave(2, dim=0)


def register() -> None:
    """Register [`LxmertNLVR2Config`] with `AutoConfig` (model type `lxmert_nlvr2`) and [`LxmertForNLVR2`] with
    `AutoModel` and `AutoModelForSequenceClassification`, the Auto class of a text (with its images) sorted into
    classes (idempotent; done when `lxmert_hf` is imported).

    Example:
        ```python
        >>> from transformers import AutoModelForSequenceClassification
        >>> from lxmert_hf import LxmertForNLVR2, LxmertNLVR2Config
        >>> config = LxmertNLVR2Config(hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1,
        ...     x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=50)
        >>> type(AutoModelForSequenceClassification.from_config(config)).__name__
        'LxmertForNLVR2'
        ```
    """
    AutoConfig.register(NLVR2_MODEL_TYPE, LxmertNLVR2Config, exist_ok=True)
    AutoModel.register(LxmertNLVR2Config, LxmertForNLVR2, exist_ok=True)
    AutoModelForSequenceClassification.register(LxmertNLVR2Config, LxmertForNLVR2, exist_ok=True)


register()
