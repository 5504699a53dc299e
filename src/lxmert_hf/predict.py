"""Predicting a prepared split with a fine-tuned checkpoint and writing the submission file.

[`predict_answers`] runs an [`LxmertForVQA`] over a dataset of examples (as [`~lxmert_hf.data.load_prepared`] gives
them) in batches and returns `{question_id: answer}`, the answers read from the checkpoint's `id2label` (VQA, GQA).
[`predict_nlvr2`] runs an [`LxmertForNLVR2`] over pairs of images and returns `{identifier: bool}`.
[`write_predictions`] writes either in the format an evaluation server accepts, and [`predict_split`] does both for
one split of a prepared directory (it is what `lxmert-hf predict` runs), after [`resolve_task`] has checked that the
checkpoint, the prepared directory and the task asked for agree.

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

from lxmert_hf.configuration_nlvr2 import LxmertNLVR2Config
from lxmert_hf.data.builder import VOCABULARY_NAME, load_answer_vocabulary, load_prepared, read_prepared
from lxmert_hf.data.collator import NLVR2DataCollator, VQADataCollator
from lxmert_hf.detection.extraction import resolve_device
from lxmert_hf.submission import write_gqa_submission, write_nlvr2_submission, write_vqa_submission

__all__ = [
    "SUBMISSION_FORMATS",
    "TASKS",
    "check_answer_vocabulary",
    "check_prepared_split",
    "check_submission_format",
    "predict_answers",
    "predict_nlvr2",
    "predict_split",
    "resolve_task",
    "write_predictions",
]

logger = logging.getLogger(__name__)

TASKS = ("vqa", "gqa", "nlvr2")
# The submission format of each task: the file its evaluation server (or official script) reads.
SUBMISSION_FORMATS = {"vqa": "vqa", "gqa": "gqa", "nlvr2": "nlvr2"}
# Answers to questions about one image can be written in either question-answering format.
_ANSWER_FORMATS = ("gqa", "vqa")
_PLACEHOLDER_LABEL = re.compile(r"LABEL_\d+")
_NLVR2_MODEL_TYPE = LxmertNLVR2Config.model_type
_REFUSED_PAIRS = (
    "`visual_feats` of an example must be [num_boxes, dim]; these examples pair two images each (NLVR2). "
    "LxmertForVQA answers questions about one image and cannot score pairs: predict them with an LxmertForNLVR2 "
    "checkpoint ([`predict_nlvr2`], `lxmert-hf predict --task nlvr2`)."
)
_REFUSED_SINGLES = (
    "`visual_feats` of an example must be [2, num_boxes, dim], the regions of the pair of images its sentence is "
    "about; these examples have one image each (VQA, GQA): answer them with an LxmertForVQA checkpoint."
)


@dataclasses.dataclass
class _PredictionCollator:
    """Batch examples with the task's collator, keeping their ids (`key`) next to the model inputs."""

    collator: VQADataCollator | NLVR2DataCollator
    key: str

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> tuple[list, dict[str, torch.Tensor]]:
        pairs = isinstance(self.collator, NLVR2DataCollator)
        if any(np.ndim(example["visual_feats"]) != (3 if pairs else 2) for example in examples):
            raise ValueError(_REFUSED_SINGLES if pairs else _REFUSED_PAIRS)
        missing = [index for index, example in enumerate(examples) if example.get(self.key) is None]
        if missing:
            raise ValueError(
                f"an example of `dataset` has no `{self.key}` (its keys: {sorted(examples[missing[0]])}); predictions "
                f"are written by `{self.key}`: give each example one, as `load_prepared` does."
            )
        batch = self.collator(examples)
        # Labels over the prepared vocabulary need not line up with the checkpoint's, and no loss is wanted.
        batch.pop("labels", None)
        return [example[self.key] for example in examples], batch


def check_prepared_split(prepared_dir: str | os.PathLike, split: str) -> dict:
    """Return the metadata of `prepared_dir` after checking that it has `split`.

    Raises:
        `FileNotFoundError`: when `prepared_dir` is not a (complete) prepared directory.
        `ValueError`: for an unknown split, or a task this module cannot predict.
    """
    metadata = read_prepared(prepared_dir)
    splits = sorted(metadata.get("splits", {}))
    if split not in splits:
        raise ValueError(f"--split {split!r}: {prepared_dir} has no such split; it has {splits}.")
    if metadata.get("task") not in TASKS:
        raise ValueError(
            f"{prepared_dir} holds examples of task {metadata.get('task')!r}, which `predict` does not know (it "
            f"predicts {list(TASKS)}); prepare the data again with `lxmert-hf prepare`."
        )
    return metadata


def resolve_task(
    prepared_task: str, model_type: str | None, task: str | None = None, where: str = "the prepared directory"
) -> str:
    """The task to predict: `task` when given, else the checkpoint's (an [`LxmertForNLVR2`] predicts NLVR2), else the
    prepared directory's; all three must agree.

    An answer classifier ([`LxmertForVQA`], any other `model_type`) predicts VQA or GQA, whichever the directory
    holds.

    Args:
        prepared_task (`str`): the task of the prepared directory (`read_prepared(dir)["task"]`).
        model_type (`str`): the checkpoint's `config.model_type`.
        task (`str`, *optional*): the task asked for (`--task`): `"vqa"`, `"gqa"` or `"nlvr2"`.
        where (`str`, *optional*): how error messages name the prepared directory.

    Raises:
        `ValueError`: naming both sides, when the task, the prepared directory and the checkpoint disagree.

    Example:
        ```python
        >>> from lxmert_hf.predict import resolve_task
        >>> resolve_task("nlvr2", "lxmert_nlvr2"), resolve_task("gqa", "lxmert")
        ('nlvr2', 'gqa')
        >>> resolve_task("vqa", "lxmert", task="nlvr2")
        Traceback (most recent call last):
        ...
        ValueError: `task` (--task) is 'nlvr2' but the prepared directory holds VQA examples; pass --task vqa, ...
        ```
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"`task` (--task) must be one of {list(TASKS)}, got {task!r}.")
    if task is not None and task != prepared_task:
        raise ValueError(
            f"`task` (--task) is {task!r} but {where} holds {prepared_task.upper()} examples; pass --task "
            f"{prepared_task}, or a directory prepared for {task.upper()}."
        )
    pair_model = model_type == _NLVR2_MODEL_TYPE
    if pair_model and prepared_task != "nlvr2":
        raise ValueError(
            f"the checkpoint is an LxmertForNLVR2 (model_type {model_type!r}): it tells whether a sentence holds for "
            f"a pair of images and cannot answer the {prepared_task.upper()} questions of {where}. Predict an NLVR2 "
            "split with it, or use a VQA/GQA checkpoint."
        )
    if prepared_task == "nlvr2" and not pair_model:
        raise ValueError(
            f"{where} holds NLVR2 examples, each a sentence about a pair of images; the checkpoint (model_type "
            f"{model_type!r}) answers questions about one image and cannot score pairs. Predict them with an "
            "LxmertForNLVR2 checkpoint (what recipes/nlvr2.py fine-tunes)."
        )
    return prepared_task


def check_submission_format(task: str, submission_format: str | None) -> str:
    """The submission format to write `task`'s predictions in: `submission_format`, or the task's own
    ([`SUBMISSION_FORMATS`]). VQA and GQA answers can be written in either format (with a warning); NLVR2
    predictions only in their own.

    Raises:
        `ValueError`: for an unknown format, or one that cannot hold the task's predictions.
    """
    own = SUBMISSION_FORMATS[task]
    if submission_format is None:
        return own
    formats = sorted(set(SUBMISSION_FORMATS.values()))
    if submission_format not in formats:
        raise ValueError(f"`submission_format` (--format) must be one of {formats}, got {submission_format!r}.")
    allowed = _ANSWER_FORMATS if own in _ANSWER_FORMATS else (own,)
    if submission_format not in allowed:
        raise ValueError(
            f"`submission_format` (--format) {submission_format!r} cannot hold {task.upper()} predictions; use "
            f"{' or '.join(allowed)}, or leave it out (default: {own})."
        )
    if submission_format != own:
        logger.warning(
            f"writing {submission_format.upper()}-format predictions for a {task.upper()} split, as asked; "
            "evaluation servers expect the format of the task."
        )
    return submission_format


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
    collator = VQADataCollator(tokenizer, max_question_length=max_question_length)
    classes = _predict_classes(model, _PredictionCollator(collator, "question_id"), dataset, batch_size, device,
                               num_workers, progress, "question")  # fmt: skip
    return {question_id: model.config.id2label[label] for question_id, label in classes.items()}


def predict_nlvr2(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: Iterable[Mapping[str, Any]],
    batch_size: int = 32,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    max_question_length: int = 20,
    progress: bool = True,
) -> dict[str, bool]:
    r"""
    Tell for every example of `dataset` whether its sentence holds for its pair of images, in batches; return
    `{identifier: bool}` in dataset order, what [`~lxmert_hf.submission.write_nlvr2_submission`] writes.

    The prediction is the larger of the model's two logits (index 1 = true). The model is moved to `device` and run
    under `torch.inference_mode()`; its train/eval mode is restored afterwards.

    Args:
        model ([`LxmertForNLVR2`]): a fine-tuned NLVR2 classifier.
        tokenizer: the checkpoint's tokenizer (sentences are tokenized as in training).
        dataset (`datasets.Dataset`, `datasets.IterableDataset` or a sequence of dicts): examples with
            `identifier`, `question` (the sentence), `visual_feats` [2, num_boxes, dim], `visual_pos`
            [2, num_boxes, 4] and optionally `visual_attention_mask` [2, num_boxes], as [`load_prepared`] gives them
            for an NLVR2 directory.
        batch_size (`int`, *optional*, defaults to 32): examples per forward pass (each runs the model on 2 images).
        device (`str` or `torch.device`, *optional*): as for [`predict_answers`].
        num_workers (`int`, *optional*, defaults to 0): `DataLoader` processes reading features and tokenizing.
        max_question_length (`int`, *optional*, defaults to 20): sentence tokens kept, as in training.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar (on stderr).

    Raises:
        `ValueError`: for a non-positive `batch_size`, a negative `num_workers`, an empty dataset, examples of one
            image (VQA, GQA) or without `identifier`, features of another dimension than the model's, or a repeated
            identifier.

    Example:
        ```python
        >>> import numpy as np
        >>> from transformers import BertTokenizer
        >>> from lxmert_hf import LxmertForNLVR2, LxmertNLVR2Config
        >>> from lxmert_hf.predict import predict_nlvr2
        >>> tokenizer = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "two": 4, "dogs": 5})
        >>> config = LxmertNLVR2Config(hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1,
        ...     x_layers=1, r_layers=1, visual_feat_dim=8, vocab_size=6)
        >>> examples = [{"identifier": f"dev-1-0-{i}", "question": "two dogs", "visual_feats": np.ones((2, 3, 8)),
        ...              "visual_pos": np.full((2, 3, 4), 0.5)} for i in (0, 1)]
        >>> predictions = predict_nlvr2(LxmertForNLVR2(config), tokenizer, examples, progress=False)
        >>> sorted(predictions), set(predictions.values()) <= {True, False}
        (['dev-1-0-0', 'dev-1-0-1'], True)
        ```
    """
    collator = NLVR2DataCollator(tokenizer, max_question_length=max_question_length)
    classes = _predict_classes(model, _PredictionCollator(collator, "identifier"), dataset, batch_size, device,
                               num_workers, progress, "example")  # fmt: skip
    return {identifier: label == 1 for identifier, label in classes.items()}


def _predict_classes(
    model: torch.nn.Module,
    collate: _PredictionCollator,
    dataset: Iterable[Mapping[str, Any]],
    batch_size: int,
    device: str | torch.device | None,
    num_workers: int,
    progress: bool,
    unit: str,
) -> dict[int | str, int]:
    """`{id: index of the highest logit}` for every example of `dataset`, in dataset order."""
    _check_loader_arguments(batch_size, num_workers)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    if total == 0:
        raise ValueError(f"`dataset` is empty: there are no {unit}s to predict.")
    device = next(model.parameters()).device if device is None else resolve_device(str(device))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    bar = tqdm(total=total, unit=unit, desc="predict", disable=not progress, file=sys.stderr)
    classes: dict[int | str, int] = {}
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode():
            for ids, batch in loader:
                _check_batch(batch, model.config.visual_feat_dim)
                batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
                _add_predictions(classes, ids, model(**batch).logits.argmax(dim=-1).tolist(), collate.key)
                bar.update(len(ids))
    finally:
        bar.close()
        model.train(was_training)
    if not classes:
        raise ValueError(f"`dataset` is empty: there are no {unit}s to predict.")
    return classes


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


def _add_predictions(predictions: dict, ids: Sequence, predicted: Sequence[int], key: str) -> None:
    for example_id, label in zip(ids, predicted, strict=True):
        if example_id in predictions:
            raise ValueError(f"{key} {example_id!r} occurs twice in `dataset`; give each example once.")
        predictions[example_id] = label


def write_predictions(
    path: str | os.PathLike, predictions: Mapping[int | str, str | bool], submission_format: str = "vqa"
) -> Path:
    """Write predictions atomically as a submission file: `{question_id: answer}` in the VQA (`question_id`
    integers) or GQA (`questionId` strings) format, converting the question ids to the format's type, or
    `{identifier: bool}` in the NLVR2 format (`identifier,True|False` lines).

    Raises:
        `ValueError`: for an unknown `submission_format`, question ids that are not integers (or strings of
            digits) when writing the VQA format, or NLVR2 predictions that are not booleans.

    Example:
        ```python
        >>> import os, tempfile
        >>> from lxmert_hf.predict import write_predictions
        >>> write_predictions(os.path.join(tempfile.mkdtemp(), "testdev.json"), {"201307251": "yes"}, "gqa").name
        'testdev.json'
        >>> write_predictions(os.path.join(tempfile.mkdtemp(), "test1.csv"), {"test1-0-1-0": True}, "nlvr2").name
        'test1.csv'
        ```
    """
    if submission_format == "vqa":
        return write_vqa_submission(path, {_vqa_question_id(qid): answer for qid, answer in predictions.items()})
    if submission_format == "gqa":
        return write_gqa_submission(path, {str(qid): answer for qid, answer in predictions.items()})
    if submission_format == "nlvr2":
        return write_nlvr2_submission(path, predictions)
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
    task: str | None = None,
    **predict_kwargs: Any,
) -> Path:
    r"""
    Predict one split of a prepared directory and write its submission file atomically; return the file's path.

    Args:
        model ([`LxmertForVQA`] or [`LxmertForNLVR2`]): a fine-tuned checkpoint; VQA/GQA answers come from its
            `id2label`.
        tokenizer: the checkpoint's tokenizer.
        prepared_dir (`str`): a directory written by `lxmert-hf prepare vqa|gqa|nlvr2`.
        split (`str`): the split to predict (`"minival"`, `"test"`, `"testdev"`, `"test1"`, ...).
        output (`str`): the submission file; its folder must exist.
        submission_format (`str`, *optional*): `"vqa"`, `"gqa"` or `"nlvr2"`; defaults to the task's own (see
            [`check_submission_format`]).
        task (`str`, *optional*): `"vqa"`, `"gqa"` or `"nlvr2"`; defaults to the model's and the prepared
            directory's, which must agree with it (see [`resolve_task`]).
        predict_kwargs: `batch_size`, `device`, `num_workers`, `max_question_length`, `progress`, passed to
            [`predict_answers`] or [`predict_nlvr2`].

    For VQA and GQA, a warning is logged when the prepared vocabulary has answers the checkpoint lacks (see
    [`check_answer_vocabulary`]).
    """
    metadata = check_prepared_split(prepared_dir, split)
    task = resolve_task(metadata["task"], getattr(model.config, "model_type", None), task, str(prepared_dir))
    submission_format = check_submission_format(task, submission_format)
    if task != "nlvr2":
        prepared_answers = None
        if (Path(prepared_dir) / VOCABULARY_NAME).is_file():
            prepared_answers = load_answer_vocabulary(prepared_dir).answers
        warning = check_answer_vocabulary(model.config.answers, prepared_answers)
        if warning:
            logger.warning(warning)
    if not Path(output).parent.is_dir():
        raise ValueError(f"--output {output}: the folder {Path(output).parent} does not exist; create it first.")
    dataset = load_prepared(prepared_dir, split)
    predict = predict_nlvr2 if task == "nlvr2" else predict_answers
    return write_predictions(output, predict(model, tokenizer, dataset, **predict_kwargs), submission_format)
