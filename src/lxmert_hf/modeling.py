"""`LxmertForVQA`: transformers' `LxmertModel` with the paper's answer classifier on the pooled output."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LxmertModel
from transformers.utils import ModelOutput

from lxmert_hf.attention import set_attention_backend
from lxmert_hf.base import LxmertTaskModel
from lxmert_hf.checkpoints import (
    UNUSED_HEADS,
    accept_saved_names,
    as_vqa_config,
    drop_supplied_keys,
    load_pretrained,
)
from lxmert_hf.configuration import LxmertVQAConfig
from lxmert_hf.locations import locate
from lxmert_hf.losses import answer_loss, counted_questions
from lxmert_hf.validation import check_labels, check_visual_inputs


@dataclass
class LxmertForVQAOutput(ModelOutput):
    """Output of [`LxmertForVQA`]: `loss` (when `labels` are given), answer `logits` [batch, num_answers] and, on
    request, the encoder hidden states and attention maps (same names as transformers' LXMERT outputs)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    language_hidden_states: tuple[torch.Tensor, ...] | None = None
    vision_hidden_states: tuple[torch.Tensor, ...] | None = None
    language_attentions: tuple[torch.Tensor, ...] | None = None
    vision_attentions: tuple[torch.Tensor, ...] | None = None
    cross_encoder_attentions: tuple[torch.Tensor, ...] | None = None


def build_classifier(hidden_size: int, num_answers: int) -> nn.Sequential:
    """The paper's answer head: Linear(h, 2h) -> GeLU -> LayerNorm(2h) -> Linear(2h, answers).

    The module indices (0, 2, 3 hold weights) match transformers' `answer_head.logit_fc`, so weights map 1:1.
    """
    return nn.Sequential(
        nn.Linear(hidden_size, hidden_size * 2),
        nn.GELU(),
        nn.LayerNorm(hidden_size * 2, eps=1e-12),
        nn.Linear(hidden_size * 2, num_answers),
    )


class LxmertForVQA(LxmertTaskModel):
    r"""
    LXMERT with an answer classifier (`classifier`) over the pooled cross-modal output.

    `save_pretrained` writes transformers' `LxmertForQuestionAnswering` layout (the classifier is saved as
    `answer_head.logit_fc`, module for module, see [`lxmert_hf.checkpoints`]) with the answers in `id2label`, so
    that transformers alone loads the folder.

    `from_pretrained` loads this model's own checkpoints and transformers' LXMERT layouts
    (`LxmertForPreTraining` as `unc-nlp/lxmert-base-uncased`, `LxmertModel`, and `LxmertForQuestionAnswering` as
    `unc-nlp/lxmert-vqa-uncased`), from a folder or a Hub id as [`lxmert_hf.locations.locate`] tells them apart
    (`hf-hub:owner/name` always means the Hub); see [`lxmert_hf.checkpoints.load_pretrained`] for the options.

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf import LxmertForVQA, LxmertVQAConfig
        >>> config = LxmertVQAConfig.from_answers(["yes", "no", "2"], hidden_size=32, num_attention_heads=2,
        ...     intermediate_size=64, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=50)
        >>> model = LxmertForVQA(config).eval()
        >>> out = model(input_ids=torch.tensor([[1, 5, 7, 2]]), visual_feats=torch.randn(1, 36, 16),
        ...             visual_pos=torch.rand(1, 36, 4), labels=torch.tensor([[0.0, 1.0, 0.3]]))
        >>> out.logits.shape
        torch.Size([1, 3])
        ```
    """

    config_class = LxmertVQAConfig
    # Heads of transformers' pre-training checkpoints that this model does not use.
    _keys_to_ignore_on_load_unexpected = UNUSED_HEADS

    def __init__(self, config: LxmertVQAConfig):
        # Any other LxmertConfig (what `AutoConfig` reads from a checkpoint folder) is converted.
        config = as_vqa_config(config)
        super().__init__(config)
        self.lxmert = LxmertModel(config)
        self.classifier = build_classifier(config.hidden_size, config.num_labels)
        set_attention_backend(self, config.attention_backend)
        # `load_state_dict` (the Trainer's resume and best-model reload) reads the names the folders hold.
        self.register_load_state_dict_pre_hook(accept_saved_names)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        # The library's one rule decides between a folder and a Hub id (and reads `hf-hub:owner/name`), not
        # transformers' own guess.
        location = locate(pretrained_model_name_or_path, what="pretrained_model_name_or_path")
        return load_pretrained(super().from_pretrained, location.name_or_path, *model_args, **kwargs)

    from_pretrained.__doc__ = load_pretrained.__doc__

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        # transformers' load report must not call a classifier that is transplanted right after loading "newly
        # initialized".
        super()._adjust_missing_and_unexpected_keys(loading_info)
        loading_info.missing_keys = drop_supplied_keys(set(loading_info.missing_keys))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
        tokenizer=None,
        card=None,
        **kwargs,
    ):
        r"""
        Upload this model as a self-describing checkpoint: weights, config (answer vocabulary and
        `visual_features`), `tokenizer` and a model card (`card`, or one made from the config).

        The arguments are those of transformers' `push_to_hub`, plus `tokenizer` and `card`; `kwargs` (`dry_run`,
        `local_dir`) are those of [`lxmert_hf.hub.push_to_hub`].

        Example:
            ```python
            >>> model.push_to_hub("me/lxmert-vqa", tokenizer=tokenizer, max_shard_size="2GB")  # doctest: +SKIP
            ```
        """
        from lxmert_hf.hub import push_to_hub

        return push_to_hub(
            self, repo_id, commit_message=commit_message, commit_description=commit_description, private=private,
            token=token, revision=revision, create_pr=create_pr, max_shard_size=max_shard_size, tags=tags,
            tokenizer=tokenizer, card=card, **kwargs,
        )  # fmt: skip

    def counted_in_loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Which questions of a batch's `labels` the loss averages over (bool [batch]); see
        [`~lxmert_hf.losses.counted_questions`]."""
        return counted_questions(labels, self.config.head_loss)

    def _check_regions(self, visual_feats, visual_pos, visual_attention_mask, batch_size: int) -> None:
        config = self.config
        check_visual_inputs(
            visual_feats, visual_pos, visual_attention_mask, batch_size, config.visual_feat_dim,
            config.visual_pos_dim, dtype=self.dtype,
        )  # fmt: skip

    def _check_label_shape(self, labels: torch.Tensor, batch_size: int) -> None:
        check_labels(labels, batch_size, self.config.num_labels)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        visual_feats: torch.Tensor | None = None,
        visual_pos: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        check_finite: bool = True,
        **kwargs,
    ) -> LxmertForVQAOutput | tuple:
        r"""
        Args:
            visual_feats (`torch.Tensor` of shape `(batch, num_boxes, visual_feat_dim)`): region features.
            visual_pos (`torch.Tensor` of shape `(batch, num_boxes, 4)`): boxes normalized to [0, 1] as
                (x1 / width, y1 / height, x2 / width, y2 / height).
            visual_attention_mask (`torch.Tensor` of shape `(batch, num_boxes)`, *optional*): 1 for real regions,
                0 for padding.
            labels (`torch.Tensor`, *optional*): soft scores `(batch, num_answers)` (float) or answer indices
                `(batch,)` (int, -100 ignored).
            num_items_in_batch (`torch.Tensor` or `int`, *optional*): the number of questions the loss counts
                ([`~lxmert_hf.losses.counted_questions`]) in the whole global batch, which the `Trainer` of this
                library passes; the loss is then this batch's sum divided by it. Without it, the mean over this batch.
            check_finite (`bool`, *optional*, defaults to `True`): refuse NaN or infinite values in `visual_feats`
                and `visual_pos` with a `ValueError`; `False` lets them through (the logits are then NaN).

        The inputs are checked before anything runs, each error naming the input: tensors (not NumPy arrays) of
        the right dtypes and shapes, one batch size for text and regions, at least one region, token ids within
        the vocabulary, boxes within [0, 1], finite region inputs and answer indices within the vocabulary. The
        value checks read the device once per call and are skipped under `torch.compile`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_inputs(
            input_ids, inputs_embeds, attention_mask, token_type_ids, visual_feats, visual_pos,
            visual_attention_mask, labels, check_finite,
        )  # fmt: skip
        outputs = self.lxmert(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooled_output)
        loss = None
        if labels is not None:
            loss = answer_loss(logits, labels, self.config.head_loss, num_items_in_batch=num_items_in_batch)
        result = LxmertForVQAOutput(
            loss=loss,
            logits=logits,
            language_hidden_states=outputs.language_hidden_states,
            vision_hidden_states=outputs.vision_hidden_states,
            language_attentions=outputs.language_attentions,
            vision_attentions=outputs.vision_attentions,
            cross_encoder_attentions=outputs.cross_encoder_attentions,
        )
        return result if return_dict else result.to_tuple()
