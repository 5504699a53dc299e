"""`LxmertForPreTrainingWithLosses`: transformers' `LxmertForPreTraining`, whose heads are the paper's, returning
each objective's loss on its own.

transformers computes the same heads and the same losses but returns only their sum, and a batch in which an
objective has nothing to predict (no masked word piece; no matched question, as while image question answering is
off) makes that sum `nan`. Here every objective's loss is kept apart (so that a run can show which objective
learns), along with what each example adds to it (so that an evaluation can average over a whole split), and an
objective with nothing to predict adds zero while its head stays in the graph (as distributed training needs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from transformers import CONFIG_NAME, LxmertForPreTraining
from transformers.models.lxmert.modeling_lxmert import LxmertForPreTrainingOutput

from lxmert_hf.base import LxmertTaskModel
from lxmert_hf.files import write_json_atomic
from lxmert_hf.losses import IGNORE_INDEX

__all__ = ["OBJECTIVES", "LxmertForPreTrainingOutputWithLosses", "LxmertForPreTrainingWithLosses"]

# The objectives' names, as losses and metrics call them: masked LM, cross-modality matching, masked object
# prediction (detected object label, detected attribute label, feature regression), image question answering.
OBJECTIVES = ("lm", "matched", "obj", "attr", "feat", "qa")


@dataclasses.dataclass
class LxmertForPreTrainingOutputWithLosses(LxmertForPreTrainingOutput):
    r"""
    [`~transformers.models.lxmert.modeling_lxmert.LxmertForPreTrainingOutput`] and:

    losses (`dict[str, torch.Tensor]`): each objective's loss (a scalar) for the objectives the batch has targets
        for, by name (`lm`, `matched`, `obj`, `attr`, `feat`, `qa`); `loss` is their sum.
    example_losses (`dict[str, tuple[torch.Tensor, torch.Tensor]]`): for each objective, what each example adds to
        its loss, `(sum [B], count [B])`: over a batch (or a whole split), the loss is `sum.sum() / count.sum()`.
    visual_prediction_scores (`dict[str, torch.Tensor]`): the masked-object heads' outputs, by visual loss: object
        and attribute logits [B, R, labels], features [B, R, dim].
    """

    losses: dict[str, torch.Tensor] | None = None
    example_losses: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    visual_prediction_scores: dict[str, torch.Tensor] | None = None


class LxmertForPreTrainingWithLosses(LxmertTaskModel, LxmertForPreTraining):
    r"""
    transformers' `LxmertForPreTraining` (same configuration, weights and heads; its checkpoints load either way)
    whose output also holds each objective's loss.

    The losses are transformers' (and the original code's): cross-entropy over the masked word pieces (`labels`
    other than -100), over the matching label and over the questions' answers (`ans` other than -100); for the
    visual losses, each region's cross-entropy (object and attribute labels) or smooth-L1 distance averaged over the
    feature dimensions (feature regression), weighted by the region's confidence (`obj_labels[key][1]`), averaged
    over all regions of the batch and multiplied by `config.visual_loss_normalizer`. An objective whose targets are
    all -100 adds zero instead of `nan`. The configuration's `task_*` and `visual_*_loss` switches turn objectives
    off, as in transformers. Saved checkpoints name `LxmertForPreTraining` as their architecture, so that they need
    no more than transformers to load.

    As the library's other models ([`~lxmert_hf.base.LxmertTaskModel`]), it can average each objective over the
    items of the whole global batch rather than its own: given `num_items_in_batch`, one count per objective of
    [`OBJECTIVES`] summed over every micro-batch and process of a step (what [`objective_counts`] gives for each
    batch, which the pre-training `Trainer` sums and gathers), each objective's loss is its sum over this batch
    divided by that count, so that a step's gradient is the global batch's however it is split. It also supports
    activation checkpointing.

    Example:
        ```python
        >>> import torch
        >>> from transformers import LxmertConfig
        >>> from lxmert_hf.modeling_pretraining import LxmertForPreTrainingWithLosses
        >>> config = LxmertConfig(vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32,
        ...                       l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=8, num_qa_labels=5,
        ...                       num_object_labels=7, num_attr_labels=3)
        >>> model = LxmertForPreTrainingWithLosses(config).eval()
        >>> ids, regions = torch.randint(5, 50, (2, 6)), torch.rand(2, 4, 8)
        >>> labels = torch.full((2, 6), -100)
        >>> labels[0, 2] = 9
        >>> out = model(input_ids=ids, visual_feats=regions, visual_pos=torch.rand(2, 4, 4), labels=labels,
        ...             matched_label=torch.tensor([1, 0]), ans=torch.tensor([-100, -100]),
        ...             obj_labels={"obj": (torch.zeros(2, 4).long(), torch.ones(2, 4)),
        ...                         "attr": (torch.zeros(2, 4).long(), torch.ones(2, 4)),
        ...                         "feat": (regions, torch.zeros(2, 4))})
        >>> sorted(out.losses), float(out.losses["qa"]), bool(out.loss.isfinite())
        (['attr', 'feat', 'lm', 'matched', 'obj', 'qa'], 0.0, True)
        ```
    """

    def counted_in_loss(self, labels: torch.Tensor) -> torch.Tensor:
        """The items of masked language modeling's `labels` [B, L] its loss averages over: the masked word pieces
        (the other objectives' items are counted by [`objective_counts`])."""
        return labels != IGNORE_INDEX

    def objective_counts(self, batch: dict) -> torch.Tensor:
        """What each objective of [`OBJECTIVES`] averages over in `batch` (the model's inputs), in that order:
        masked word pieces, sentences, regions (all positions, as transformers' visual losses average) for `obj`,
        `attr` and `feat`, and questions with an answer. Zero for an objective without targets there."""
        device = next(value.device for value in batch.values() if torch.is_tensor(value))
        counts = dict.fromkeys(OBJECTIVES, 0)
        if batch.get("labels") is not None:
            counts["lm"] = self.counted_in_loss(batch["labels"]).sum()
        if batch.get("matched_label") is not None:
            counts["matched"] = batch["matched_label"].numel()
        for key, (target, _) in (batch.get("obj_labels") or {}).items():
            counts[key] = target.shape[0] * target.shape[1]
        if batch.get("ans") is not None:
            counts["qa"] = (batch["ans"] != IGNORE_INDEX).sum()
        return torch.stack([torch.as_tensor(count, dtype=torch.float32, device=device) for count in counts.values()])

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
        obj_labels: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        matched_label: torch.LongTensor | None = None,
        ans: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | None = None,
        **kwargs,
    ) -> LxmertForPreTrainingOutputWithLosses:
        r"""
        The inputs of `LxmertForPreTraining.forward`; `obj_labels` holds the targets of the configuration's visual
        losses (`"obj"`, `"attr"`, `"feat"`: `(ids or features, confidences)`); `num_items_in_batch`, one count per
        objective of the whole global batch, divides each objective's sum instead of this batch's own count. Other
        keyword arguments (such as the collator's `masked_regions`) are ignored. Always returns a
        [`LxmertForPreTrainingOutputWithLosses`].
        """
        # The heads run inside transformers' forward; asking it for the hidden states hands back the last visual
        # one, which the masked-object heads read (transformers does not return their outputs).
        outputs = super().forward(
            input_ids=input_ids, visual_feats=visual_feats, visual_pos=visual_pos, attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=True, return_dict=True,
        )  # fmt: skip
        visual_scores = self.obj_predict_head(outputs.vision_hidden_states[-1]) if self.task_obj_predict else {}
        example_losses = self._example_losses(outputs, visual_scores, labels, obj_labels, matched_label, ans)
        losses = {
            name: sums.sum() / _count(counts, num_items_in_batch, OBJECTIVES.index(name))
            for name, (sums, counts) in example_losses.items()
        }
        keep_hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return LxmertForPreTrainingOutputWithLosses(
            loss=torch.stack(list(losses.values())).sum() if losses else None,
            prediction_logits=outputs.prediction_logits,
            cross_relationship_score=outputs.cross_relationship_score,
            question_answering_score=outputs.question_answering_score if self.task_qa else None,
            language_hidden_states=outputs.language_hidden_states if keep_hidden else None,
            vision_hidden_states=outputs.vision_hidden_states if keep_hidden else None,
            language_attentions=outputs.language_attentions,
            vision_attentions=outputs.vision_attentions,
            cross_encoder_attentions=outputs.cross_encoder_attentions,
            losses=losses,
            example_losses=example_losses,
            visual_prediction_scores=visual_scores or None,
        )

    def _example_losses(self, outputs, visual_scores, labels, obj_labels, matched_label, ans) -> dict:
        """`{objective: (sum [B], count [B])}` for the objectives that are on and have targets in the batch."""
        example_losses = {}
        if labels is not None and self.task_mask_lm:
            example_losses["lm"] = _cross_entropy_per_example(outputs.prediction_logits, labels)
        if matched_label is not None and self.task_matched:
            example_losses["matched"] = _cross_entropy_per_example(
                outputs.cross_relationship_score.unsqueeze(1), matched_label.unsqueeze(1)
            )
        if obj_labels is not None and self.task_obj_predict:
            for key in self.visual_losses:
                example_losses[key] = self._visual_loss_per_example(key, visual_scores[key], obj_labels)
        if ans is not None and self.task_qa:
            example_losses["qa"] = _cross_entropy_per_example(
                outputs.question_answering_score.unsqueeze(1), ans.unsqueeze(1)
            )
        return example_losses

    def _visual_loss_per_example(self, key: str, scores: torch.Tensor, obj_labels: dict) -> tuple:
        if key not in obj_labels:
            raise ValueError(
                f"`obj_labels` has no {key!r} targets, which the configuration's `visual_{key}_loss` asks for: give "
                f"them (`PretrainingDataCollator(visual_losses=...)` with {key!r}), or set `visual_{key}_loss=False`."
            )
        target, confidence = obj_labels[key]
        if key == "feat":
            per_region = nn.functional.smooth_l1_loss(scores, target.to(scores.dtype), reduction="none").mean(-1)
        else:
            per_region = nn.functional.cross_entropy(scores.transpose(1, 2), target.long(), reduction="none")
        # Averaged over every region of the batch (padding included) and scaled, as transformers and the original.
        sums = (per_region * confidence.to(per_region.dtype)).sum(1) * self.visual_loss_normalizer
        return sums, torch.full_like(sums, per_region.shape[1])

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        # The weights are `LxmertForPreTraining`'s: a checkpoint says so, and loads without this library.
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            config = self.config.to_dict()
            config["architectures"] = ["LxmertForPreTraining"]
            write_json_atomic(Path(save_directory) / CONFIG_NAME, config, indent=2)


def _count(counts: torch.Tensor, num_items_in_batch: torch.Tensor | None, index: int) -> torch.Tensor:
    """What an objective's sum is divided by: its count in the global batch when given, else in this batch (at
    least 1: an objective without targets adds zero)."""
    if num_items_in_batch is not None:
        return num_items_in_batch[index].to(counts.device, counts.dtype).clamp(min=1)
    return counts.sum().clamp(min=1)


def _cross_entropy_per_example(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sum [B], count [B])` of the cross-entropy over each row's targets other than -100 (`logits` [B, L, C])."""
    per_position = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(targets.shape)
    return per_position.sum(1), (targets != IGNORE_INDEX).sum(1).to(per_position.dtype)
