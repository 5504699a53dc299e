"""Answering a prepared split with a fine-tuned [`LxmertForVQA`] and writing the submission file.

[`predict_answers`] runs the model over a dataset of examples (as [`~lxmert_hf.data.load_prepared`] gives them)
in batches and returns `{question_id: answer}`, the answers read from the checkpoint's `id2label`.
[`write_predictions`] writes them in the format an evaluation server accepts, and [`predict_split`] does both for
one split of a prepared directory (it is what `lxmert-hf predict` runs).

Example:
    ```python
    >>> import tempfile
    >>> from lxmert_hf import LxmertForVQA, LxmertVQAConfig
    >>> from lxmert_hf.data import load_answer_vocabulary
    >>> from lxmert_hf.predict import predict_split
    >>> from lxmert_hf.toy import ToyWorldConfig
    >>> from lxmert_hf.training.data import prepare_toy
    >>> from transformers import AutoTokenizer
    >>> root = prepare_toy(ToyWorldConfig(num_images={"train": 24, "validation": 2}, questions_per_image=5,
    ...                                   num_regions=8, max_objects=6, feature_dim=16), cache_dir=tempfile.mkdtemp())
    >>> tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    >>> answers = load_answer_vocabulary(root / "prepared").answers
    >>> config = LxmertVQAConfig.from_answers(answers, hidden_size=32, num_attention_heads=2, intermediate_size=64,
    ...     l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=len(tokenizer))
    >>> path = predict_split(LxmertForVQA(config), tokenizer, root / "prepared", "val",
    ...                      f"{tempfile.mkdtemp()}/val_predict.json", progress=False)
    >>> path.name
    'val_predict.json'
    ```
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lxmert_hf.data.builder import VOCABULARY_NAME, load_answer_vocabulary, load_prepared, read_prepared
from lxmert_hf.data.collator import VQADataCollator
from lxmert_hf.detection.extraction import resolve_device
from lxmert_hf.submission import write_gqa_submission, write_vqa_submission

__all__ = [
    "SUBMISSION_FORMATS",
    "check_answer_vocabulary",
    "check_prepared_split",
    "predict_answers",
    "predict_split",
    "write_predictions",
]

logger = logging.getLogger(__name__)

# The submission format of each task whose examples `LxmertForVQA` can answer (one image per question).
SUBMISSION_FORMATS = {"vqa": "vqa", "gqa": "gqa"}
_PLACEHOLDER_LABEL = re.compile(r"LABEL_\d+")


@dataclasses.dataclass
class _PredictionCollator:
    """Batch examples with [`VQADataCollator`], keeping their question ids next to the model inputs."""

    collator: VQADataCollator

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> tuple[list, dict[str, torch.Tensor]]:
        if any(np.ndim(example["visual_feats"]) != 2 for example in examples):
            raise ValueError(
                "`visual_feats` of an example must be [num_boxes, dim]; these examples pair two images each "
                "(NLVR2). LxmertForVQA answers questions about one image and cannot score pairs, and lxmert_hf has "
                "no NLVR2 pair model yet."
            )
        batch = self.collator(examples)
        # Labels over the prepared vocabulary need not line up with the checkpoint's, and no loss is wanted.
        batch.pop("labels", None)
        return [example["question_id"] for example in examples], batch


def check_prepared_split(prepared_dir: str | os.PathLike, split: str) -> dict:
    """Return the metadata of `prepared_dir` after checking that it has `split` and that its task is answerable.

    Raises:
        `FileNotFoundError`: when `prepared_dir` is not a (complete) prepared directory.
        `ValueError`: for an unknown split, or an NLVR2 directory: its examples pair two images, which
            [`LxmertForVQA`] cannot score, and there is no NLVR2 pair model yet.
    """
    metadata = read_prepared(prepared_dir)
    splits = sorted(metadata.get("splits", {}))
    if split not in splits:
        raise ValueError(f"--split {split!r}: {prepared_dir} has no such split; it has {splits}.")
    if metadata["task"] not in SUBMISSION_FORMATS:
        raise ValueError(
            f"{prepared_dir} holds {metadata['task'].upper()} examples, each a sentence about a pair of images. "
            "An LxmertForVQA checkpoint answers questions about one image and cannot score pairs, and lxmert_hf "
            "has no NLVR2 pair model yet, so there is no checkpoint to predict this split with. Predict a VQA or "
            "GQA split instead."
        )
    return metadata


def check_answer_vocabulary(model_answers: Sequence[str], prepared_answers: Sequence[str] | None) -> str | None:
    """Compare a checkpoint's answers with a prepared directory's vocabulary; return a warning, or `None`.

    Predictions are read from the checkpoint's answers, so only the prepared answers it lacks matter (it can never
    predict them); a different order does not.

    Raises:
        `ValueError`: when the checkpoint's answers are transformers' placeholders (`LABEL_0`, `LABEL_1`, ...):
            its predictions would be placeholder names, not answers.

    Example:
        ```python
        >>> from lxmert_hf.predict import check_answer_vocabulary
        >>> check_answer_vocabulary(["no", "yes"], ["yes", "no"]) is None
        True
        >>> check_answer_vocabulary(["yes", "no"], ["yes", "no", "2"]).split(" and ")[0]
        "1 of the prepared split's 3 answers are not among the checkpoint's 2 answers"
        ```
    """
    if all(_PLACEHOLDER_LABEL.fullmatch(answer) for answer in model_answers):
        raise ValueError(
            "the checkpoint's answers are placeholders (LABEL_0, LABEL_1, ...), so its predictions would not be "
            "answers. Load it with `LxmertForVQA.from_pretrained(..., answers=ANSWER_LIST)`, save it, and predict "
            "with the saved folder."
        )
    if prepared_answers is None:
        return None
    known = set(model_answers)
    lacking = [answer for answer in prepared_answers if answer not in known]
    if not lacking:
        return None
    return (
        f"{len(lacking)} of the prepared split's {len(prepared_answers)} answers are not among the checkpoint's "
        f"{len(model_answers)} answers and can never be predicted (e.g. {lacking[:5]}); check that the checkpoint "
        "was fine-tuned on this data."
    )


def predict_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: Iterable[Mapping[str, Any]],
    batch_size: int = 32,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    max_question_length: int = 20,
    progress: bool = True,
) -> dict[int | str, str]:
    r"""
    Answer every example of `dataset` with `model`, in batches; return `{question_id: answer}` in dataset order.

    The answer of an example is the checkpoint's `config.id2label` entry of the highest logit. The model is moved
    to `device` and run under `torch.inference_mode()`; its train/eval mode is restored afterwards.

    Args:
        model ([`LxmertForVQA`]): a fine-tuned answer classifier.
        tokenizer: the checkpoint's tokenizer (questions are tokenized as in training).
        dataset (`datasets.Dataset`, `datasets.IterableDataset` or a sequence of dicts): examples with
            `question_id`, `question`, `visual_feats` and `visual_pos`, as [`load_prepared`] gives them.
        batch_size (`int`, *optional*, defaults to 32): questions per forward pass.
        device (`str` or `torch.device`, *optional*): `"auto"` (CUDA when available), `"cpu"`, `"cuda"`,
            `"cuda:N"`; defaults to the device the model is on.
        num_workers (`int`, *optional*, defaults to 0): `DataLoader` processes reading features and tokenizing.
        max_question_length (`int`, *optional*, defaults to 20): question tokens kept, as in training.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar (on stderr).

    Raises:
        `ValueError`: for a non-positive `batch_size`, a negative `num_workers`, an empty dataset, pair examples
            (NLVR2), region features of another dimension than the model's, or a repeated question id.

    Example:
        ```python
        >>> import numpy as np
        >>> from transformers import BertTokenizer
        >>> from lxmert_hf import LxmertForVQA, LxmertVQAConfig
        >>> from lxmert_hf.predict import predict_answers
        >>> tokenizer = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "what": 4, "?": 5})
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"], hidden_size=32, num_attention_heads=2,
        ...     intermediate_size=64, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=8, vocab_size=6)
        >>> examples = [{"question_id": i, "question": "what?", "visual_feats": np.ones((3, 8)),
        ...              "visual_pos": np.full((3, 4), 0.5)} for i in (7, 8)]
        >>> answers = predict_answers(LxmertForVQA(config), tokenizer, examples, batch_size=2, progress=False)
        >>> sorted(answers), set(answers.values()) <= {"yes", "no"}
        ([7, 8], True)
        ```
    """
    _check_loader_arguments(batch_size, num_workers)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    if total == 0:
        raise ValueError("`dataset` is empty: there are no questions to answer.")
    device = next(model.parameters()).device if device is None else resolve_device(str(device))
    collate = _PredictionCollator(VQADataCollator(tokenizer, max_question_length=max_question_length))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    bar = tqdm(total=total, unit="question", desc="predict", disable=not progress, file=sys.stderr)
    answers: dict[int | str, str] = {}
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode():
            for question_ids, batch in loader:
                _check_batch(batch, model.config.visual_feat_dim)
                batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
                labels = model(**batch).logits.argmax(dim=-1).tolist()
                _add_answers(answers, question_ids, [model.config.id2label[label] for label in labels])
                bar.update(len(question_ids))
    finally:
        bar.close()
        model.train(was_training)
    if not answers:
        raise ValueError("`dataset` is empty: there are no questions to answer.")
    return answers


def _check_loader_arguments(batch_size: int, num_workers: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` (--batch-size) must be a positive integer, got {batch_size!r}.")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"`num_workers` (--num-workers) must be 0 or more, got {num_workers!r}.")


def _check_batch(batch: Mapping[str, torch.Tensor], visual_feat_dim: int) -> None:
    feats = batch["visual_feats"]
    if feats.shape[-1] != visual_feat_dim:
        raise ValueError(
            f"the region features have {feats.shape[-1]} dimensions but the checkpoint expects {visual_feat_dim} "
            "(`config.visual_feat_dim`); predict with features from the detector the checkpoint was trained on."
        )


def _add_answers(answers: dict, question_ids: Sequence, predicted: Sequence[str]) -> None:
    for question_id, answer in zip(question_ids, predicted, strict=True):
        if question_id in answers:
            raise ValueError(f"question id {question_id!r} occurs twice in `dataset`; give each question once.")
        answers[question_id] = answer


def write_predictions(
    path: str | os.PathLike, predictions: Mapping[int | str, str], submission_format: str = "vqa"
) -> Path:
    """Write `{question_id: answer}` atomically as a VQA (`question_id` integers) or GQA (`questionId` strings)
    submission file, converting the question ids to the format's type.

    Raises:
        `ValueError`: for an unknown `submission_format`, or question ids that are not integers (or strings of
            digits) when writing the VQA format.

    Example:
        ```python
        >>> import os, tempfile
        >>> from lxmert_hf.predict import write_predictions
        >>> write_predictions(os.path.join(tempfile.mkdtemp(), "testdev.json"), {"201307251": "yes"}, "gqa").name
        'testdev.json'
        ```
    """
    if submission_format == "vqa":
        return write_vqa_submission(path, {_vqa_question_id(qid): answer for qid, answer in predictions.items()})
    if submission_format == "gqa":
        return write_gqa_submission(path, {str(qid): answer for qid, answer in predictions.items()})
    formats = sorted(set(SUBMISSION_FORMATS.values()))
    raise ValueError(f"`submission_format` (--format) must be one of {formats}, got {submission_format!r}.")


def _vqa_question_id(question_id: int | str) -> int:
    if isinstance(question_id, str) and question_id.isdigit():
        return int(question_id)
    if isinstance(question_id, int) and not isinstance(question_id, bool):
        return question_id
    raise ValueError(f"the VQA format needs integer question ids, got {question_id!r}; use --format gqa.")


def predict_split(
    model: torch.nn.Module,
    tokenizer: Any,
    prepared_dir: str | os.PathLike,
    split: str,
    output: str | os.PathLike,
    submission_format: str | None = None,
    **predict_kwargs: Any,
) -> Path:
    r"""
    Answer one split of a prepared directory and write its submission file atomically; return the file's path.

    Args:
        model ([`LxmertForVQA`]): a fine-tuned answer classifier; answers come from its `id2label`.
        tokenizer: the checkpoint's tokenizer.
        prepared_dir (`str`): a directory written by `lxmert-hf prepare vqa|gqa`.
        split (`str`): the split to answer (`"minival"`, `"test"`, `"testdev"`, ...).
        output (`str`): the submission file; its folder must exist.
        submission_format (`str`, *optional*): `"vqa"` or `"gqa"`; defaults to the prepared directory's task.
        predict_kwargs: `batch_size`, `device`, `num_workers`, `max_question_length`, `progress`, passed to
            [`predict_answers`].

    A warning is logged when the prepared vocabulary has answers the checkpoint lacks (see
    [`check_answer_vocabulary`]).
    """
    metadata = check_prepared_split(prepared_dir, split)
    task_format = SUBMISSION_FORMATS[metadata["task"]]
    submission_format = submission_format or task_format
    if submission_format not in SUBMISSION_FORMATS.values():
        formats = sorted(set(SUBMISSION_FORMATS.values()))
        raise ValueError(f"`submission_format` (--format) must be one of {formats}, got {submission_format!r}.")
    if submission_format != task_format:
        logger.warning(
            f"writing {submission_format.upper()}-format predictions for a {metadata['task'].upper()} split, as "
            "asked; evaluation servers expect the format of the task."
        )
    prepared_answers = None
    if (Path(prepared_dir) / VOCABULARY_NAME).is_file():
        prepared_answers = load_answer_vocabulary(prepared_dir).answers
    warning = check_answer_vocabulary(model.config.answers, prepared_answers)
    if warning:
        logger.warning(warning)
    if not Path(output).parent.is_dir():
        raise ValueError(f"--output {output}: the folder {Path(output).parent} does not exist; create it first.")
    dataset = load_prepared(prepared_dir, split)
    predictions = predict_answers(model, tokenizer, dataset, **predict_kwargs)
    return write_predictions(output, predictions, submission_format)
