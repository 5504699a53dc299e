"""Importing published LXMERT checkpoints as lxmert_hf checkpoints, checked against the source model.

Sources:

- transformers' `LxmertForQuestionAnswering` checkpoints (`unc-nlp/lxmert-vqa-uncased`,
  `unc-nlp/lxmert-gqa-uncased`), which carry no answer list: it is given as a file or URL in the original
  `trainval_label2ans.json` layout. Written as an [`LxmertForVQA`] checkpoint, which is transformers'
  `LxmertForQuestionAnswering` layout with the answers in `id2label` (loadable with transformers alone).
- the original code's fine-tuned `BEST.pth` (`lxrt_encoder.model.bert.*`, `logit_fc.*`; with `--multiGPU`, whose
  `DataParallel` wraps only the encoder's `model`, `lxrt_encoder.model.module.bert.*`), likewise with its answer
  list. Written as an [`LxmertForVQA`] checkpoint.
- the original code's pre-trained `model_LXRT.pth` (`bert.*`, `cls.*`, `obj_predict_head.*`,
  `answer_head.logit_fc.*`). Written in transformers' `LxmertForPreTraining` layout, the one fine-tuning starts
  from; its QA-head answer list (`all_ans.json`), when given, is saved beside it as `pretrain_answers.json`.

The VQA/GQA checkpoints get `head_loss="bce"`: the original code trained both heads with a sigmoid binary
cross-entropy (`BCEWithLogitsLoss`), so the pipeline's scores are the answers' sigmoids, the probabilities the
model was trained to give (`from_pretrained(folder, head_loss="softmax")` overrides it).

The original modules carry the same names as transformers' LXMERT below the top level (`bert.` is transformers'
`lxmert.`), so the mapping renames prefixes only; every source tensor must land on exactly one parameter of the
same shape. `.pth` files are read with `torch.load(weights_only=True)`. The output folder is assembled beside its
final place and moved there only after the converted model, read back from disk, gave the source model's logits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer, LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering

from lxmert_hf.answers import AnswerVocabulary
from lxmert_hf.checkpoints import HUB_KWARGS, checkpoint_keys, detect_layout, resolve_weights
from lxmert_hf.configuration import LxmertVQAConfig
from lxmert_hf.files import atomic_directory, check_overwrite, write_text_atomic
from lxmert_hf.hub import LXMERT_DETECTOR, describe_visual_features, save_checkpoint
from lxmert_hf.locations import locate
from lxmert_hf.model_card import model_card
from lxmert_hf.modeling import LxmertForVQA
from lxmert_hf.torch_files import load_torch_file

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER = "unc-nlp/lxmert-base-uncased"
QA_HEAD = "answer_head.logit_fc."
# Original prefix -> transformers prefix, per source format.
ORIGINAL_PREFIXES = {
    "lxrt-finetuned": {
        "lxrt_encoder.model.bert.": "lxmert.",
        "lxrt_encoder.model.module.bert.": "lxmert.",
        "logit_fc.": QA_HEAD,
    },
    "lxrt-pretrained": {
        "bert.": "lxmert.",
        "cls.": "cls.",
        "obj_predict_head.": "obj_predict_head.",
        QA_HEAD: QA_HEAD,
    },
}
# The original encoder's weights, as saved without and with `--multiGPU` (`DataParallel` around the encoder only).
FINETUNED_ENCODERS = ("lxrt_encoder.model.bert.", "lxrt_encoder.model.module.bert.")
# What the original code trained its VQA and GQA heads with (`nn.BCEWithLogitsLoss` in src/tasks/vqa.py, gqa.py).
ORIGINAL_HEAD_LOSS = "bce"
CONFIG_DROP = ("model_type", "architectures", "label2id", "id2label", "transformers_version", "num_hidden_layers")


@dataclasses.dataclass
class ConversionReport:
    """What [`convert_checkpoint`] did: the source format, where it wrote, the answers, and the largest absolute
    difference between the source's logits and the converted checkpoint's (read back from disk)."""

    source_format: str
    output_dir: Path
    layout: str
    num_answers: int
    max_abs_diff: float


# -- the original code's .pth files -------------------------------------------------------------------------------
def load_original_state(path: str | os.PathLike) -> tuple[str, dict[str, torch.Tensor]]:
    """Read an original `.pth` state dict (`weights_only=True`) and return its format and its tensors renamed to
    transformers' LXMERT names (a leading `module.` from `DataParallel`, as in a multi-GPU `model_LXRT.pth`, is
    dropped)."""
    state = load_torch_file(path, "the original .pth file")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    state = {name.removeprefix("module."): tensor for name, tensor in state.items()}
    source_format = original_format(list(state), str(path))
    renamed = rename_original(state, source_format)
    _check_not_pair_head(renamed, str(path))
    return source_format, renamed


def _check_not_pair_head(state: Mapping[str, torch.Tensor], name: str) -> None:
    # The original NLVR2 head reads the pooled outputs of both images concatenated: twice the hidden size.
    head, words = state.get(f"{QA_HEAD}0.weight"), state.get("lxmert.embeddings.word_embeddings.weight")
    if head is not None and words is not None and head.shape[1] == 2 * words.shape[1]:
        raise ValueError(
            f"{name}: its head reads two images (an NLVR2 model); `convert` imports VQA/GQA checkpoints only."
        )


def original_format(keys: Sequence[str], name: str = "checkpoint") -> str:
    """`"lxrt-finetuned"` (`BEST.pth` of VQA / GQA) or `"lxrt-pretrained"` (`model_LXRT.pth`)."""
    encoders = {prefix for prefix in FINETUNED_ENCODERS for key in keys if key.startswith(prefix)}
    if len(encoders) > 1:
        raise ValueError(
            f"{name}: holds the encoder twice, under both {' and '.join(sorted(encoders))}; pass a checkpoint "
            "saved by one run."
        )
    if encoders:
        head = [key for key in keys if key.startswith("logit_fc.")]
        if not head:
            raise ValueError(f"{name}: a fine-tuned LXMERT without `logit_fc` answer head is not a VQA/GQA model.")
        return "lxrt-finetuned"
    if any(key.startswith("bert.encoder.x_layers.") for key in keys):
        return "lxrt-pretrained"
    raise ValueError(
        f"{name}: keys such as {list(keys)[:3]} are neither the original pre-trained LXMERT (`bert.*`) nor a "
        "fine-tuned one (`lxrt_encoder.model.bert.*` or, saved with --multiGPU, `lxrt_encoder.model.module.bert.*`; "
        "`logit_fc.*`)."
    )


def rename_original(state: Mapping[str, torch.Tensor], source_format: str) -> dict[str, torch.Tensor]:
    """Rename an original state dict's keys to transformers' LXMERT names; unknown keys are an error."""
    prefixes = sorted(ORIGINAL_PREFIXES[source_format].items(), key=lambda item: -len(item[0]))
    renamed, unknown = {}, []
    for name, tensor in state.items():
        match = next((p for p in prefixes if name.startswith(p[0])), None)
        if match is None:
            unknown.append(name)
            continue
        renamed[match[1] + name[len(match[0]) :]] = tensor
    if unknown:
        raise ValueError(f"{len(unknown)} tensors of unknown role in a {source_format} checkpoint: {unknown[:5]}.")
    return renamed


def infer_lxmert_config(state: Mapping[str, torch.Tensor], num_attention_heads: int | None = None) -> LxmertConfig:
    """The `LxmertConfig` of a state dict in transformers' names: sizes read from the tensor shapes.

    The number of attention heads cannot be read from shapes; it defaults to `hidden_size // 64` (12 for LXMERT).
    """
    vocab_size, hidden_size = state["lxmert.embeddings.word_embeddings.weight"].shape
    heads = num_attention_heads or max(hidden_size // 64, 1)
    if hidden_size % heads:
        raise ValueError(f"`num_attention_heads` ({heads}) must divide the hidden size {hidden_size}.")
    layers = {kind: _count(state, f"lxmert.encoder.{kind}.") for kind in ("layer", "x_layers", "r_layers")}
    values = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, num_attention_heads=heads,
        max_position_embeddings=state["lxmert.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["lxmert.embeddings.token_type_embeddings.weight"].shape[0],
        intermediate_size=state["lxmert.encoder.x_layers.0.lang_inter.dense.weight"].shape[0],
        l_layers=layers["layer"], x_layers=layers["x_layers"], r_layers=layers["r_layers"],
        visual_feat_dim=state["lxmert.encoder.visn_fc.visn_fc.weight"].shape[1],
        visual_pos_dim=state["lxmert.encoder.visn_fc.box_fc.weight"].shape[1],
        task_qa=f"{QA_HEAD}3.weight" in state, task_mask_lm="cls.predictions.bias" in state,
        task_matched="cls.seq_relationship.weight" in state,
        task_obj_predict=any(k.startswith("obj_predict_head.") for k in state),
    )  # fmt: skip
    if values["task_qa"]:
        values["num_qa_labels"] = state[f"{QA_HEAD}3.weight"].shape[0]
    for loss, key in (("visual_obj_loss", "obj"), ("visual_attr_loss", "attr"), ("visual_feat_loss", "feat")):
        values[loss] = f"obj_predict_head.decoder_dict.{key}.weight" in state
    if values["visual_obj_loss"]:
        values["num_object_labels"] = state["obj_predict_head.decoder_dict.obj.weight"].shape[0]
    if values["visual_attr_loss"]:
        values["num_attr_labels"] = state["obj_predict_head.decoder_dict.attr.weight"].shape[0]
    return LxmertConfig(**values)


def _count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _reference(model_class, config: LxmertConfig, state: Mapping[str, torch.Tensor]):
    """The source model in transformers' classes, holding exactly the source tensors."""
    model = model_class(config).eval()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    # The MLM decoder is tied to the word embeddings; old checkpoints may store it or not.
    missing = [key for key in missing if key != "cls.predictions.decoder.weight"]
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"the checkpoint does not fit {model_class.__name__}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {wrong[:5]}."
        )
    model.load_state_dict(dict(state), strict=False)
    return model


# -- conversion ---------------------------------------------------------------------------------------------------
def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    answers: str | os.PathLike | Sequence[str] | None = None,
    tokenizer: str | os.PathLike | None = None,
    num_attention_heads: int | None = None,
    detector: str | None = LXMERT_DETECTOR,
    overwrite: bool = False,
    atol: float = 1e-4,
    **hub_kwargs,
) -> ConversionReport:
    r"""
    Convert a published LXMERT checkpoint (see the module docstring) into `output_dir`, and check that the written
    checkpoint, read back, gives the source model's logits on random inputs (largest difference at most `atol`).

    Args:
        source (`str` or `os.PathLike`): a `.pth` file of the original code, or a folder / Hub id of a
            transformers `LxmertForQuestionAnswering` checkpoint.
        output_dir (`str` or `os.PathLike`): where to write; must not exist unless `overwrite=True`.
        answers (path, URL or list, *optional*): the answer list (index = label id), in any form
            [`AnswerVocabulary.load`] reads (`trainval_label2ans.json`, `trainval_ans2label.json`, `all_ans.json`,
            a URL of one of them); required for question answering sources, which carry none.
        tokenizer (`str`, *optional*): saved with the checkpoint; defaults to the source's (transformers) or
            `unc-nlp/lxmert-base-uncased` (`.pth`).
        num_attention_heads (`int`, *optional*): for `.pth` files, whose shapes do not tell it; defaults to
            `hidden_size // 64` (12 for LXMERT).
        detector (`str`, *optional*): the region detector recorded in `config.visual_features` (LXMERT's
            features came from `unc-nlp/frcnn-vg-finetuned`); `None` records none.
        hub_kwargs: `revision`, `token`, `cache_dir`, ... for Hub sources.

    Example:
        ```python
        >>> from lxmert_hf.convert import convert_checkpoint
        >>> report = convert_checkpoint(  # doctest: +SKIP
        ...     "unc-nlp/lxmert-vqa-uncased", "lxmert-vqa",
        ...     answers="https://raw.githubusercontent.com/airsplay/lxmert/master/data/vqa/trainval_label2ans.json",
        ... )
        ```
    """
    target = Path(output_dir)
    check_overwrite(target, overwrite, option="overwrite=True (--overwrite)")
    hub_kwargs = {key: value for key, value in hub_kwargs.items() if key in HUB_KWARGS and value is not None}
    source_format, reference = load_source(source, num_attention_heads, hub_kwargs)
    answer_list = AnswerVocabulary.load(answers).answers if answers is not None else None
    _check_answers(answer_list, reference.config, source_format)
    default_tokenizer = str(source) if source_format == "transformers" else DEFAULT_TOKENIZER
    processing = _load_tokenizer(tokenizer or default_tokenizer, hub_kwargs if tokenizer is None else {})
    with atomic_directory(target, overwrite=overwrite) as written:
        description = f"Converted from `{source}` ({source_format})."
        if source_format == "lxrt-pretrained":
            _write_pretraining(reference, processing, answer_list, written, description)
            diff = _max_diff(reference, LxmertForPreTraining.from_pretrained(written).eval())
        else:
            _write_vqa(reference, processing, answer_list, written, description, detector, source)
            diff = _max_diff(reference, LxmertForVQA.from_pretrained(written).eval())
        if not diff <= atol:
            raise ValueError(
                f"the converted checkpoint's logits differ from the source's by up to {diff:.3g} (> atol={atol}); "
                "nothing was written."
            )
    layout = "pretraining" if source_format == "lxrt-pretrained" else "vqa"
    num_answers = int(getattr(reference.config, "num_qa_labels", 0) if reference.config.task_qa else 0)
    return ConversionReport(source_format, target, layout, num_answers, diff)


def load_source(source, num_attention_heads: int | None, hub_kwargs: dict) -> tuple[str, torch.nn.Module]:
    """Return the source format and the source model in transformers' classes (eval mode)."""
    location = locate(source, what="source")
    if location.is_local and location.path.is_file():
        source_format, state = load_original_state(location.path)
        config = infer_lxmert_config(state, num_attention_heads)
        pretrained = source_format == "lxrt-pretrained"
        return source_format, _reference(
            LxmertForPreTraining if pretrained else LxmertForQuestionAnswering, config, state
        )
    if num_attention_heads is not None:
        logger.warning("`num_attention_heads` is ignored: %s has a config.", source)
    layout = detect_layout(checkpoint_keys(resolve_weights(location.name_or_path, **hub_kwargs)))
    if layout != "question_answering":
        raise ValueError(
            f"{source} is a {layout!r} checkpoint; `convert` imports question-answering checkpoints "
            "(unc-nlp/lxmert-vqa-uncased, unc-nlp/lxmert-gqa-uncased). Pre-trained ones load directly with "
            "`LxmertForVQA.from_pretrained(..., answers=...)`."
        )
    model = LxmertForQuestionAnswering.from_pretrained(location.name_or_path, **hub_kwargs)
    return "transformers", model.eval()


def _check_answers(answers: list[str] | None, config: LxmertConfig, source_format: str) -> None:
    rows = config.num_qa_labels if config.task_qa else None
    if answers is None:
        if source_format != "lxrt-pretrained":
            raise ValueError(
                f"this checkpoint answers with {rows} unnamed labels: pass its answer list with `answers` "
                "(--answers), e.g. trainval_label2ans.json of the original code (file or URL)."
            )
        return
    if rows is None:
        raise ValueError("this checkpoint has no QA head, so `answers` has nothing to name; leave it out.")
    if len(answers) != rows:
        raise ValueError(
            f"the answer list holds {len(answers)} answers but the checkpoint's answer head has {rows}; pass the "
            "list this checkpoint was trained with."
        )


def _load_tokenizer(name: str, hub_kwargs: dict):
    try:
        return AutoTokenizer.from_pretrained(locate(name, what="tokenizer").name_or_path, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot load the tokenizer {name!r} ({error}); pass `tokenizer` (--tokenizer) as a folder or Hub id "
            f"(LXMERT uses {DEFAULT_TOKENIZER})."
        ) from error


def _write_vqa(reference, tokenizer, answers, folder: Path, description, detector, source) -> None:
    fields = {k: v for k, v in reference.config.to_dict().items() if k not in CONFIG_DROP}
    visual_features = describe_visual_features(detector) if detector else None
    config = LxmertVQAConfig.from_answers(
        answers, **{**fields, "visual_features": visual_features, "head_loss": ORIGINAL_HEAD_LOSS}
    )
    model = LxmertForVQA(config)
    # The same module names as transformers' LxmertForQuestionAnswering: the tensors map 1:1.
    model.load_state_dict(reference.state_dict(), strict=True)
    card = model_card(config, base_model=locate(source, what="source").repo_id, description=description)
    save_checkpoint(model.eval(), folder, tokenizer=tokenizer, card=card)


def _write_pretraining(reference, tokenizer, answers, folder: Path, description) -> None:
    reference.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    usage = (
        "A pre-trained LXMERT in transformers' `LxmertForPreTraining` layout. Fine-tune it with "
        "`LxmertForVQA.from_pretrained(folder, answers=...)`"
    )
    if answers is not None:
        write_text_atomic(folder / "pretrain_answers.json", json.dumps(answers))
        usage += ", adding `pretrain_answers=folder/pretrain_answers.json` to start the classifier from its QA head"
    write_text_atomic(folder / "README.md", f"# LXMERT (pre-trained)\n\n{description}\n\n{usage}.\n")


@torch.no_grad()
def _max_diff(reference, converted) -> float:
    inputs = verification_inputs(reference.config)
    expected = reference(**inputs)
    actual = converted(**inputs)
    if isinstance(converted, LxmertForVQA):
        return float((expected.question_answering_score - actual.logits).abs().max())
    names = ("prediction_logits", "cross_relationship_score", "question_answering_score")
    return max(
        float((getattr(expected, n) - getattr(actual, n)).abs().max())
        for n in names
        if getattr(expected, n) is not None
    )


def verification_inputs(config: LxmertConfig, batch: int = 2, words: int = 12, boxes: int = 10, seed: int = 0):
    """Random LXMERT inputs (one padded question, detector-like non-negative features, valid boxes)."""
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, words, dtype=torch.long)
    attention_mask[0, words // 2 :] = 0
    corners = torch.rand(batch, boxes, 2, 2, generator=generator).sort(dim=2).values
    return {
        "input_ids": torch.randint(0, config.vocab_size, (batch, words), generator=generator),
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(batch, words, dtype=torch.long),
        "visual_feats": torch.randn(batch, boxes, config.visual_feat_dim, generator=generator).relu(),
        "visual_pos": corners.reshape(batch, boxes, 4),
    }
