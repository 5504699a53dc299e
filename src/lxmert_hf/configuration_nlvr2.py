"""Configuration of :class:`~lxmert_hf.LxmertForNLVR2`: an LXMERT encoder and a true/false classifier over image
pairs."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import LxmertConfig

from lxmert_hf.configuration import ATTENTION_BACKENDS, VERSION_KEY

NLVR2_MODEL_TYPE = "lxmert_nlvr2"
# Class 1 is "the sentence is true of the pair", as NLVR2's own labels and the original model's logits.
NLVR2_LABELS = {0: "false", 1: "true"}


@strict
class LxmertNLVR2Config(LxmertConfig):
    r"""
    Configuration of an LXMERT model that tells whether a sentence is true of a pair of images (NLVR2). It extends
    [`transformers.LxmertConfig`] with the options of this library's models; its two labels are fixed:
    `id2label = {0: "false", 1: "true"}`.

    Args:
        attention_backend (`str`, *optional*, defaults to `"sdpa"`):
            `"sdpa"` runs every LXMERT attention layer through
            `torch.nn.functional.scaled_dot_product_attention`; `"eager"` uses transformers' own implementation
            (see [`~lxmert_hf.LxmertVQAConfig`]).
        visual_features (`dict`, *optional*):
            Where the region features the checkpoint was trained on came from (detector, preset, number of boxes).
            Purely descriptive; kept so that a checkpoint says how to feed it.

    Saved, its `model_type` is `"lxmert_nlvr2"`, registered with `AutoConfig` when `lxmert_hf` is imported.

    Example:
        ```python
        >>> from lxmert_hf import LxmertNLVR2Config
        >>> config = LxmertNLVR2Config(hidden_size=64, num_attention_heads=2)
        >>> config.num_labels, config.id2label, config.label2id["true"]
        (2, {0: 'false', 1: 'true'}, 1)
        >>> config.to_dict()["model_type"]
        'lxmert_nlvr2'
        ```
    """

    model_type = NLVR2_MODEL_TYPE

    attention_backend: str = "sdpa"
    visual_features: dict | None = None

    def __post_init__(self, **kwargs):
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"`attention_backend` must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}."
            )
        num_labels = kwargs.get("num_labels")
        if num_labels is not None and num_labels != len(NLVR2_LABELS):
            raise ValueError(f"NLVR2 has two classes (false, true); `num_labels` must be 2, got {num_labels}.")
        given = {int(key): value for key, value in (self.id2label or NLVR2_LABELS).items()}
        if given != NLVR2_LABELS:
            raise ValueError(f"NLVR2's labels are fixed: `id2label` must be {NLVR2_LABELS}, got {self.id2label}.")
        self.id2label = dict(NLVR2_LABELS)
        kwargs.pop("num_labels", None)
        super().__post_init__(**kwargs)
        self.label2id = {label: index for index, label in self.id2label.items()}

    def to_dict(self) -> dict:
        from lxmert_hf import __version__

        output = super().to_dict()
        output[VERSION_KEY] = __version__
        return output
