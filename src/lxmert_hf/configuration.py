"""Configuration of :class:`~lxmert_hf.LxmertForVQA`, saved as transformers' own LXMERT question-answering config."""

from __future__ import annotations

from collections.abc import Sequence

from huggingface_hub.dataclasses import strict
from transformers import LxmertConfig

from lxmert_hf.answers import AnswerVocabulary

HEAD_LOSSES = ("softmax", "bce")
ATTENTION_BACKENDS = ("eager", "sdpa")
# The layout of the `visual_pos` boxes, as a checkpoint's `visual_features` records it.
BOX_FORMAT = "x1 / width, y1 / height, x2 / width, y2 / height"
# The config key that marks a checkpoint as this library's (its value: the version that wrote it). transformers reads
# the folder as an `LxmertForQuestionAnswering` checkpoint and keeps this and the head options as plain attributes.
VERSION_KEY = "lxmert_hf_version"
# The transformers class a saved config names, whose layout the checkpoint has.
QA_ARCHITECTURE = "LxmertForQuestionAnswering"
# The model type of checkpoints saved by earlier versions (their head saved as `classifier.*`).
LEGACY_MODEL_TYPE = "lxmert_vqa"


@strict
class LxmertVQAConfig(LxmertConfig):
    r"""
    Configuration of an LXMERT answer classifier. It extends [`transformers.LxmertConfig`] with the answer
    vocabulary (stored in `id2label` / `label2id`, index = answer label) and the options of the answer head.

    Args:
        head_loss (`str`, *optional*, defaults to `"softmax"`):
            `"softmax"`: cross-entropy between the softmax over answers and the soft scores normalized into a
            distribution. `"bce"`: the paper's loss, a sigmoid binary cross-entropy on the soft scores, summed over
            answers and averaged over the batch.
        attention_backend (`str`, *optional*, defaults to `"sdpa"`):
            `"sdpa"` runs every LXMERT attention layer (self and cross) through
            `torch.nn.functional.scaled_dot_product_attention`; `"eager"` uses transformers' own implementation.
            Layers fall back to eager whenever attention maps are requested.
        visual_features (`dict`, *optional*):
            Where the region features the checkpoint was trained on came from (detector, preset, number of boxes).
            Purely descriptive; kept so that a checkpoint says how to feed it.

    Saved, it is the config of transformers' `LxmertForQuestionAnswering` (`model_type` `"lxmert"`, `num_qa_labels`
    answers named in `id2label`) with the options above and `lxmert_hf_version` as additional keys, so that
    transformers alone loads the checkpoint.

    Example:
        ```python
        >>> from lxmert_hf import LxmertVQAConfig
        >>> config = LxmertVQAConfig.from_answers(["yes", "no", "2"], hidden_size=64, num_attention_heads=2)
        >>> config.num_labels, config.label2id["no"], config.num_qa_labels
        (3, 1, 3)
        >>> saved = config.to_dict()
        >>> saved["model_type"], saved["architectures"]
        ('lxmert', ['LxmertForQuestionAnswering'])
        ```
    """

    model_type = "lxmert"

    head_loss: str = "softmax"
    attention_backend: str = "sdpa"
    visual_features: dict | None = None

    def __post_init__(self, **kwargs):
        if self.head_loss not in HEAD_LOSSES:
            raise ValueError(f"`head_loss` must be one of {HEAD_LOSSES}, got {self.head_loss!r}.")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"`attention_backend` must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}."
            )
        super().__post_init__(**kwargs)
        self.label2id = {label: int(index) for index, label in self.id2label.items()}
        self.num_qa_labels = self.num_labels

    def to_dict(self) -> dict:
        # What transformers needs to load the folder as its own question-answering model, whatever class saved it.
        from lxmert_hf import __version__

        output = super().to_dict()
        output["architectures"] = [QA_ARCHITECTURE]
        output[VERSION_KEY] = __version__
        return output

    @classmethod
    def from_answers(cls, answers: Sequence[str], **kwargs) -> LxmertVQAConfig:
        """Build a config whose labels are `answers`, in order (index = label id).

        Raises a `ValueError` when an answer is repeated, since two labels could then never be told apart.
        """
        return cls(id2label=answers_to_id2label(answers), **kwargs)

    @property
    def answers(self) -> list[str]:
        """The answer vocabulary as a list, index = label id."""
        return [self.id2label[index] for index in range(self.num_labels)]


def answers_to_id2label(answers: Sequence[str]) -> dict[int, str]:
    """Return `{label id: answer}` for a list of distinct answers (index = label id), checked as
    [`AnswerVocabulary`] checks them."""
    return AnswerVocabulary(answers).id2label


class LegacyLxmertVQAConfig(LxmertVQAConfig):
    """The config class of checkpoints saved by earlier versions (`model_type` `"lxmert_vqa"`), for `AutoConfig`;
    [`LxmertForVQA`] converts it to [`LxmertVQAConfig`], so such a checkpoint is saved again in the current layout."""

    model_type = LEGACY_MODEL_TYPE
