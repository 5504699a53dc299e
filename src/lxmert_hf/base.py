"""`LxmertTaskModel`: the base of this library's LXMERT models, with what training them needs (a loss the `Trainer`
scales right across processes and accumulation steps)."""

from __future__ import annotations

from transformers import LxmertPreTrainedModel


class LxmertTaskModel(LxmertPreTrainedModel):
    r"""
    The base of this library's LXMERT models (VQA/GQA, and the models of other tasks to come).

    `accepts_loss_kwargs = False`: the models average their loss over their own batch and take no
    `num_items_in_batch`. Without it, the `Trainer` reads the `**kwargs` of `forward` as a promise to normalize by
    the global item count, so it multiplies the loss by the number of processes and stops dividing it by the
    gradient-accumulation steps. Every model of the library subclasses this class, so the rule holds for all.

    Example:
        ```python
        >>> from transformers import Trainer, TrainingArguments
        >>> from lxmert_hf import LxmertForVQA, LxmertVQAConfig
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"], hidden_size=32, num_attention_heads=2,
        ...     intermediate_size=64, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=50)
        >>> trainer = Trainer(LxmertForVQA(config), TrainingArguments("out", use_cpu=True, report_to="none"))
        >>> trainer.model_accepts_loss_kwargs
        False
        ```
    """

    accepts_loss_kwargs = False
