"""Batching examples for the models: tokenization, dynamic padding of words and regions; one image per question
(`LxmertForVQA`) or a pair of images per sentence (`LxmertForNLVR2`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lxmert_hf.data.tokens import backend_encoder, encode_questions
from lxmert_hf.losses import IGNORE_INDEX


@dataclasses.dataclass
class VQADataCollator:
    """Turn a list of examples into model inputs.

    Each example holds `question` (str, tokenized here) or `input_ids`, `visual_feats` [num_boxes, dim],
    `visual_pos` [num_boxes, 4] (normalized boxes), optionally `visual_attention_mask` [num_boxes], and optionally
    `labels`: a dense soft-score vector or an answer index. Questions are truncated to `max_question_length`
    tokens (20 in the paper) and padded to the longest in the batch; examples with fewer regions than the longest
    are zero-padded and masked out through `visual_attention_mask`. Other keys are ignored, except `image_id`,
    `identifier` and `question_id`, which name an example whose features or boxes hold NaN or infinite values in the
    `ValueError` refusing it (`check_finite=False` lets them through). `zero_visual_inputs=True` zeroes features and
    boxes, for question-only baselines.

    With `static_shapes=True` every batch of one size has the same shapes, whatever its examples, so that
    `torch.compile` and CUDA graphs see one shape: questions are padded to `max_question_length` tokens and regions
    to `num_regions` (a feature store's most boxes per image, 36 for LXMERT's features; default: the most in the
    batch), always with a `visual_attention_mask`. Padding is masked out, so the model's outputs do not change.

    Example:
        ```python
        >>> import numpy as np
        >>> from transformers import BertTokenizer
        >>> from lxmert_hf.data.collator import VQADataCollator
        >>> tokenizer = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "what": 4, "?": 5})
        >>> collate = VQADataCollator(tokenizer)
        >>> batch = collate([
        ...     {"question": "what?", "visual_feats": np.ones((2, 8)), "visual_pos": np.zeros((2, 4))},
        ...     {"question": "what what?", "visual_feats": np.ones((3, 8)), "visual_pos": np.zeros((3, 4))},
        ... ])
        >>> batch["input_ids"].tolist(), batch["visual_attention_mask"].tolist()
        ([[2, 4, 5, 3, 0], [2, 4, 4, 5, 3]], [[1, 1, 0], [1, 1, 1]])
        ```
    """

    tokenizer: Any
    max_question_length: int = 20
    zero_visual_inputs: bool = False
    check_finite: bool = True
    static_shapes: bool = False
    num_regions: int | None = None

    def __post_init__(self):
        if self.max_question_length < 3:
            raise ValueError(
                f"`max_question_length` must leave room for [CLS] and [SEP], got {self.max_question_length}."
            )
        if self.num_regions is not None and self.num_regions < 1:
            raise ValueError(f"`num_regions` must be at least 1 (regions per image), got {self.num_regions}.")
        self._backend = backend_encoder(self.tokenizer, self.max_question_length)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("Cannot collate an empty list of examples.")
        batch = self._text(examples)
        if self.static_shapes:
            batch = self._pad_text(batch, self.max_question_length)
        batch.update(self._regions(examples))
        if self.check_finite:
            _check_finite(batch, examples)
        if self.zero_visual_inputs:  # new tensors: the regions may be the dataset's own arrays (see `_stack`)
            batch["visual_feats"] = torch.zeros_like(batch["visual_feats"])
            batch["visual_pos"] = torch.zeros_like(batch["visual_pos"])
        if "labels" in examples[0] and examples[0]["labels"] is not None:
            batch["labels"] = self._labels(examples)
        return batch

    def _labels(self, examples: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        return _labels([example["labels"] for example in examples])

    def _text(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if "input_ids" in examples[0]:
            return self._pad([example["input_ids"] for example in examples])
        questions = [example["question"] for example in examples]
        if not all(isinstance(q, str) and q.strip() for q in questions):
            raise ValueError("Every example needs a non-empty `question` string (or `input_ids`).")
        return encode_questions(self.tokenizer, self._backend, questions, self.max_question_length)

    def _pad(self, sequences: list[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad token ids (as `tokenize_questions` stores them) to the longest, as the tokenizer would."""
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token: set `tokenizer.pad_token` to pad `input_ids`.")
        limit = self.max_question_length
        # Longer ids are cut as the tokenizer truncates: the first tokens, then the last one ([SEP]).
        sequences = [ids if len(ids) <= limit else [*ids[: limit - 1], ids[-1]] for ids in sequences]
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        if not lengths.all():
            raise ValueError("Every example's `input_ids` must hold at least one token.")
        width = int(lengths.max())
        ids = np.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=np.int64)
        left = self.tokenizer.padding_side == "left"
        for row, (sequence, length) in enumerate(zip(sequences, lengths.tolist(), strict=True)):
            if left:
                ids[row, width - length :] = sequence
            else:
                ids[row, :length] = sequence
        positions = np.arange(width)
        mask = positions >= width - lengths[:, None] if left else positions < lengths[:, None]
        fields = {
            "input_ids": ids,
            "attention_mask": mask.astype(np.int64),
            "token_type_ids": np.where(mask, 0, self.tokenizer.pad_token_type_id).astype(np.int64),
        }
        return {name: torch.from_numpy(fields[name]) for name in self.tokenizer.model_input_names if name in fields}

    def _pad_text(self, batch: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
        """Pad the text inputs to `width` tokens, on the tokenizer's padding side, as the tokenizer pads."""
        missing = width - batch["input_ids"].shape[1]
        if missing <= 0:
            return batch
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token: set `tokenizer.pad_token` to pad questions.")
        values = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0,
                  "token_type_ids": self.tokenizer.pad_token_type_id}  # fmt: skip
        sides = (missing, 0) if self.tokenizer.padding_side == "left" else (0, missing)
        return {
            name: torch.nn.functional.pad(tensor, sides, value=values[name]) if name in values else tensor
            for name, tensor in batch.items()
        }

    def _regions(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return batch_regions(
            [example["visual_feats"] for example in examples],
            [example["visual_pos"] for example in examples],
            [example.get("visual_attention_mask") for example in examples],
            **self._region_padding(),
        )

    def _region_padding(self) -> dict[str, Any]:
        return {"pad_to": self.num_regions, "always_mask": True} if self.static_shapes else {}


def batch_regions(
    feats: Sequence[Any],
    boxes: Sequence[Any],
    masks: Sequence[Any] | None = None,
    pad_to: int | None = None,
    always_mask: bool = False,
) -> dict[str, torch.Tensor]:
    """Stack the regions of several images: `visual_feats` [B, n, dim] and `visual_pos` [B, n, 4] (float32), padded
    with zeros to the most regions (to `pad_to` regions, when given) and with a `visual_attention_mask` [B, n] when
    counts differ, a mask is given (`None` for an image = all its regions are real) or `always_mask` says so. Rows
    of one array are taken whole, without a copy.

    Raises:
        `ValueError`: an image has more regions than `pad_to`."""
    feats = [np.asarray(f, dtype=np.float32) for f in feats]
    boxes = [np.asarray(b, dtype=np.float32) for b in boxes]
    masks = [None] * len(feats) if masks is None else list(masks)
    counts = [len(f) for f in feats]
    longest = max(counts)
    if pad_to is not None:
        if longest > pad_to:
            raise ValueError(
                f"An image of the batch has {longest} regions, more than `num_regions` = {pad_to} that static shapes "
                "pad to: pass the feature store's most regions per image."
            )
        longest = pad_to
    if all(c == longest for c in counts):
        batch = {"visual_feats": torch.from_numpy(_stack(feats)), "visual_pos": torch.from_numpy(_stack(boxes))}
        if always_mask or any(m is not None for m in masks):
            ones = np.ones(longest, dtype=np.int64)
            batch["visual_attention_mask"] = torch.from_numpy(
                np.stack([ones if m is None else np.asarray(m, dtype=np.int64) for m in masks])
            )
        return batch
    padded_feats = np.zeros((len(feats), longest, feats[0].shape[-1]), dtype=np.float32)
    padded_boxes = np.zeros((len(feats), longest, 4), dtype=np.float32)
    mask = np.zeros((len(feats), longest), dtype=np.int64)
    for row, (f, b, m) in enumerate(zip(feats, boxes, masks, strict=True)):
        padded_feats[row, : len(f)] = f
        padded_boxes[row, : len(b)] = b
        mask[row, : len(f)] = 1 if m is None else np.asarray(m)
    return {
        "visual_feats": torch.from_numpy(padded_feats),
        "visual_pos": torch.from_numpy(padded_boxes),
        "visual_attention_mask": torch.from_numpy(mask),
    }


# The keys of an example that name it in the collator's errors.
NAMING_KEYS = ("image_id", "identifier", "question_id")


def _check_finite(batch: Mapping[str, torch.Tensor], examples: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a batch whose region inputs hold NaN or infinite values, naming the examples (one sum per row: a NaN
    or an infinity makes it non-finite)."""
    for name in ("visual_feats", "visual_pos"):
        sums = batch[name].flatten(1).sum(1)
        rows = (~torch.isfinite(sums)).nonzero().flatten().tolist()
        if rows:
            named = [
                {key: examples[row][key] for key in NAMING_KEYS if key in examples[row]} or row for row in rows[:5]
            ]
            raise ValueError(
                f"`{name}` holds NaN or infinite values for {len(rows)} example(s) of the batch: {named}. Prepare "
                "the features of those images again, or pass `check_finite=False` to the collator."
            )


def _labels(labels: list[Any]) -> torch.Tensor:
    first = np.asarray(labels[0])
    if first.ndim == 0:
        return torch.tensor([int(label) for label in labels], dtype=torch.long)
    return torch.from_numpy(_stack([np.asarray(label, dtype=np.float32) for label in labels]))


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """`np.stack(arrays)`, without the copy when the arrays are, in order, all the rows of one array (what a
    dataset that reads a whole batch at once hands out, e.g. [`~lxmert_hf.data.FeatureStore.gather`])."""
    whole = arrays[0].base
    if (
        isinstance(whole, np.ndarray)
        and whole.flags.c_contiguous
        and whole.shape == (len(arrays), *arrays[0].shape)
        and whole.dtype == arrays[0].dtype
    ):
        start, step = whole.ctypes.data, whole.strides[0]
        if all(array.base is whole and array.ctypes.data == start + row * step for row, array in enumerate(arrays)):
            return whole
    return np.stack(arrays)


# The label of an NLVR2 example whose truth is not known (the unreleased test split), as `prepare_nlvr2` stores it.
UNKNOWN_LABEL = -1


@dataclasses.dataclass
class NLVR2DataCollator(VQADataCollator):
    """Turn a list of NLVR2 examples (a sentence about a pair of images) into the inputs of
    [`~lxmert_hf.LxmertForNLVR2`].

    Each example holds `question` (the sentence, tokenized here as [`VQADataCollator`] tokenizes questions) or
    `input_ids`, `visual_feats` [2, num_boxes, dim] and `visual_pos` [2, num_boxes, 4] (both images, as
    [`~lxmert_hf.data.load_prepared`] hands them out), optionally `visual_attention_mask` [2, num_boxes], and
    optionally `labels`: 1 (true), 0 (false), -1 (unknown, as prepared test splits hold) or -100, both of the last
    two left out of the loss (-100). The batch holds `visual_feats` [batch, 2, num_boxes, dim], `visual_pos`
    [batch, 2, num_boxes, 4] and, when box counts differ or a mask is given, `visual_attention_mask`
    [batch, 2, num_boxes]. An example without two images, or with another label, is refused with a `ValueError`
    naming it (its `identifier`, else `question_id`, else its place in the batch). `zero_visual_inputs=True` zeroes
    features and boxes, for sentence-only baselines.

    Example:
        ```python
        >>> import numpy as np
        >>> from transformers import BertTokenizer
        >>> from lxmert_hf.data import NLVR2DataCollator
        >>> tokenizer = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "two": 4, "dogs": 5})
        >>> collate = NLVR2DataCollator(tokenizer)
        >>> pair = {"visual_feats": np.ones((2, 3, 8)), "visual_pos": np.zeros((2, 3, 4))}
        >>> batch = collate([{"question": "two dogs", "labels": 1, **pair}, {"question": "dogs", "labels": 0, **pair}])
        >>> batch["input_ids"].tolist(), tuple(batch["visual_feats"].shape), batch["labels"].tolist()
        ([[2, 4, 5, 3], [2, 5, 3, 0]], (2, 2, 3, 8), [1, 0])
        ```
    """

    def _regions(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        for index, example in enumerate(examples):
            _check_pair(example, index)
        # The 2 x batch images in order (example 0's two, then example 1's, ...), batched as single images.
        masks = [example.get("visual_attention_mask") for example in examples]
        regions = batch_regions(
            [image for example in examples for image in example["visual_feats"]],
            [image for example in examples for image in example["visual_pos"]],
            [image for mask in masks for image in ((None, None) if mask is None else mask)],
            **self._region_padding(),
        )
        return {name: tensor.unflatten(0, (len(examples), 2)) for name, tensor in regions.items()}

    def _labels(self, examples: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        return torch.tensor([_class_label(example, index) for index, example in enumerate(examples)], dtype=torch.long)


def _class_label(example: Mapping[str, Any], index: int) -> int:
    """The NLVR2 label of `example` for the loss: 1, 0, or -100 for an unknown one; anything else is refused."""
    label = example["labels"]
    if isinstance(label, np.generic | np.ndarray | torch.Tensor) and label.ndim == 0:
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, int) or label not in (0, 1, UNKNOWN_LABEL, IGNORE_INDEX):
        raise ValueError(
            f"NLVR2 example {_example_name(example, index)} has label {label!r}; expected 1 (true), 0 (false), or "
            f"{UNKNOWN_LABEL} / {IGNORE_INDEX} for an unknown one (left out of the loss). Fix the example's file and "
            "prepare it again."
        )
    return IGNORE_INDEX if label == UNKNOWN_LABEL else label


def _example_name(example: Mapping[str, Any], index: int) -> str:
    """How a message names an example: its `identifier` or `question_id`, else its place in the batch."""
    for key in ("identifier", "question_id"):
        if example.get(key) is not None:
            return f"{example[key]!r}"
    return f"#{index} of the batch"


def _check_pair(example: Mapping[str, Any], index: int) -> None:
    """Refuse an example whose regions are not those of two images, naming it."""
    for name in ("visual_feats", "visual_pos"):
        if example.get(name) is None:
            raise ValueError(f"NLVR2 example {_example_name(example, index)} has no `{name}`.")
        shape = np.shape(example[name])
        if len(shape) != 3 or shape[0] != 2:
            raise ValueError(
                f"NLVR2 needs two images per example: example {_example_name(example, index)} has `{name}` of shape "
                f"{tuple(shape)}, expected [2, regions, {'dim' if name == 'visual_feats' else 4}] (both images' "
                "regions, as `load_prepared` gives them for a prepared NLVR2 directory)."
            )
    mask = example.get("visual_attention_mask")
    if mask is not None and np.shape(mask) != np.shape(example["visual_feats"])[:2]:
        raise ValueError(
            f"NLVR2 example {_example_name(example, index)} has `visual_attention_mask` of shape "
            f"{tuple(np.shape(mask))}, expected {np.shape(example['visual_feats'])[:2]}: one flag per region of each "
            "image."
        )
