"""The arguments of `recipes/pretrain.py`: which model, which sentences and features, which objectives, and the
paper's pre-training settings as defaults."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from lxmert_hf.data.pretraining.dataset import VISUAL_LOSSES
from lxmert_hf.training.arguments import (
    ModelSizeArguments,
    ModelSourceArguments,
    RecipeTrainingArguments,
    parse_args,
)

__all__ = [
    "ObjectiveArguments",
    "PretrainingDataArguments",
    "PretrainingModelArguments",
    "PretrainingTrainingArguments",
    "parse_pretraining_args",
]


@dataclasses.dataclass
class PretrainingModelArguments(ModelSizeArguments, ModelSourceArguments):
    """The model whose pre-training continues, or the size of a new one."""

    model_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Folder or Hub id of an LXMERT checkpoint whose pre-training continues (e.g. "
                  "unc-nlp/lxmert-base-uncased, or an earlier run's output); empty: a new model of the size below."},
    )  # fmt: skip
    num_object_labels: int = dataclasses.field(
        default=1600, metadata={"help": "Detector object classes (Visual Genome: 1600), from scratch only."}
    )
    num_attr_labels: int = dataclasses.field(
        default=400, metadata={"help": "Detector attribute classes (Visual Genome: 400), from scratch only."}
    )


@dataclasses.dataclass
class PretrainingDataArguments:
    """The sentences (captions, questions) and region features pre-trained on."""

    sources: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "Sentence sources, combined: lxmert:FILE (the original data/lxmert/*.json), "
                  "prepared:DIR@SPLIT (a prepared VQA or GQA directory: its questions, answered by its labels), "
                  "captions:FILE (JSON or JSON lines of {image_id, caption}). Empty: the built-in toy world."},
    )  # fmt: skip
    eval_sources: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "Held-out sources (the original: lxmert:data/lxmert/mscoco_minival.json), evaluated "
                  "each epoch: masked-LM, object-label, attribute, matching and QA accuracies. Empty: no evaluation."},
    )  # fmt: skip
    features: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Feature store of every source's images (`lxmert-hf extract` or `lxmert-hf prepare "
                  "features`); the object and attribute objectives need its detector labels."},
    )  # fmt: skip
    qa_answers: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Answers of the QA head, one row each (all_ans.json, label2ans.json, or any list "
                  "AnswerVocabulary.load reads). Default: the checkpoint's pretrain_answers.json, else the "
                  "answer vocabulary of the first prepared source."},
    )  # fmt: skip
    qa_sets: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "Keep only the answers of these sets of all_ans.json (the original --qaSets)."}
    )
    skip_missing_images: bool = dataclasses.field(
        default=False,
        metadata={"help": "Drop (and count) the sentences whose image is not in the feature store, instead of "
                  "stopping with an error that names them."},
    )  # fmt: skip
    max_seq_length: int = dataclasses.field(
        default=20, metadata={"help": "Sentences are truncated to this many tokens (20 in the original)."}
    )
    toy_seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the toy world's content."})
    toy_train_images: int = dataclasses.field(default=2000, metadata={"help": "Toy training images."})
    toy_eval_images: int = dataclasses.field(default=250, metadata={"help": "Toy held-out images."})
    toy_questions_per_image: int = dataclasses.field(default=10, metadata={"help": "Toy questions per image."})
    toy_mask_background: bool = dataclasses.field(
        default=False, metadata={"help": "Toy images keep only their objects and one whole-image region."}
    )
    finetune_epochs: float = dataclasses.field(
        default=0.0,
        metadata={"help": "After pre-training (one process only), fine-tune the toy VQA task for this many epochs "
                  "from the pre-trained model and from scratch, and report both (0: skip)."},
    )  # fmt: skip
    cache_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Where generated data is cached (default: the datasets cache)."}
    )

    def __post_init__(self):
        if self.sources and not self.features:
            raise ValueError("`--sources` needs `--features`, the feature store of their images.")
        if not self.sources and (self.eval_sources or self.features):
            raise ValueError(
                "`--eval_sources` and `--features` go with `--sources`; without `--sources` the run pre-trains on "
                "the toy world, which has its own. Give `--sources` too."
            )
        if self.finetune_epochs < 0:
            raise ValueError(f"`--finetune_epochs` must be 0 or more, got {self.finetune_epochs}.")

    @property
    def toy(self) -> bool:
        return not self.sources


@dataclasses.dataclass
class ObjectiveArguments:
    """LXMERT's pre-training objectives and how their examples are drawn (defaults: the original code's)."""

    task_mask_lm: bool = dataclasses.field(default=True, metadata={"help": "Masked cross-modality LM."})
    task_matched: bool = dataclasses.field(default=True, metadata={"help": "Cross-modality matching."})
    task_obj_predict: bool = dataclasses.field(
        default=True, metadata={"help": "Masked object prediction (the losses of --visual_losses)."}
    )
    task_qa: bool = dataclasses.field(default=True, metadata={"help": "Image question answering."})
    visual_losses: list[str] = dataclasses.field(
        default_factory=lambda: list(VISUAL_LOSSES),
        metadata={"help": "Masked object prediction losses: obj (detected object label), attr (detected "
                  "attribute), feat (RoI-feature regression)."},
    )  # fmt: skip
    visual_loss_normalizer: float = dataclasses.field(
        default=6.67, metadata={"help": "Weight of each visual loss (the original: 1 / 0.15)."}
    )
    qa_from_epoch: float = dataclasses.field(
        default=10.0,
        metadata={"help": "Epoch from which the QA loss is added (the paper: the last 10 of 20 epochs; 0: from "
                  "the start, as the released code). Held-out QA accuracy is reported throughout."},
    )  # fmt: skip
    word_mask_probability: float = dataclasses.field(default=0.15, metadata={"help": "Share of word pieces masked."})
    object_mask_probability: float = dataclasses.field(default=0.15, metadata={"help": "Share of regions masked."})
    swap_probability: float = dataclasses.field(
        default=0.5, metadata={"help": "Share of sentences swapped for another image's (matching label 0)."}
    )
    lm_on_mismatched: bool = dataclasses.field(
        default=True,
        metadata={"help": "Keep the masked-LM loss on swapped sentences, as the original code does (false: "
                  "matched pairs only)."},
    )  # fmt: skip
    object_labels_on_masked_only: bool = dataclasses.field(
        default=False,
        metadata={"help": "Object and attribute losses on masked regions only (the paper's text); the original "
                  "code counts every region, weighted by the detector's confidence."},
    )  # fmt: skip

    def __post_init__(self):
        unknown = sorted(set(self.visual_losses) - set(VISUAL_LOSSES))
        if unknown:
            raise ValueError(f"`--visual_losses`: unknown {unknown}; choose among {' '.join(VISUAL_LOSSES)}.")
        if self.qa_from_epoch < 0:
            raise ValueError(f"`--qa_from_epoch` must be 0 or more, got {self.qa_from_epoch}.")
        if not any((self.task_mask_lm, self.task_matched, self.task_obj_predict, self.task_qa)):
            raise ValueError("Every objective is off: turn on at least one `--task_*`.")

    @property
    def active_visual_losses(self) -> tuple[str, ...]:
        """The visual losses trained: none when masked object prediction is off."""
        return tuple(self.visual_losses) if self.task_obj_predict else ()


@dataclasses.dataclass
class PretrainingTrainingArguments(RecipeTrainingArguments):
    """`TrainingArguments` with the paper's pre-training settings: batch 256, lr 1e-4 with 5% linear warm-up then
    linear decay, 20 epochs, gradient clipping 1.0, weight decay 0.01 (the original BertAdam); evaluated and saved
    every epoch, keeping the last checkpoint (no best-model selection)."""

    output_dir: str | None = dataclasses.field(default="outputs/pretrain", metadata={"help": "Where to save."})
    learning_rate: float = 1e-4
    per_device_train_batch_size: int = 256
    per_device_eval_batch_size: int = 256
    num_train_epochs: float = 20.0
    warmup_steps: float = 0.05
    max_grad_norm: float = 1.0
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = dataclasses.field(
        default=None, metadata={"help": "Unused by pre-training (it keeps the last checkpoint)."}
    )
    greater_is_better: bool | None = None


PRETRAINING_CLASSES = (
    PretrainingModelArguments, PretrainingDataArguments, ObjectiveArguments, PretrainingTrainingArguments,
)  # fmt: skip


def _on_toy_world(namespace: argparse.Namespace) -> bool:
    return not namespace.sources


def parse_pretraining_args(argv: list[str] | None = None, toy_config: str | Path | None = None) -> tuple:
    """Parse `argv` into `(PretrainingModelArguments, PretrainingDataArguments, ObjectiveArguments,
    PretrainingTrainingArguments)`: defaults, then `toy_config` (when no `--sources` is given), then `--config`
    files, then flags, as [`~lxmert_hf.training.parse_args`].

    Example:
        ```python
        >>> from lxmert_hf.training.pretraining import parse_pretraining_args
        >>> model_args, data_args, objectives, training_args = parse_pretraining_args(["--output_dir", "out"])
        >>> training_args.learning_rate, training_args.per_device_train_batch_size, objectives.qa_from_epoch
        (0.0001, 256, 10.0)
        ```
    """
    return parse_args(argv, toy_config, classes=PRETRAINING_CLASSES, is_toy=_on_toy_world)
