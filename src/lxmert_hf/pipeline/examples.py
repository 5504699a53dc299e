"""How the pipeline's inputs become examples: a picture, a dict of regions or one question's row, a list of them,
or a dataset or generator streamed one example at a time, each with its question attached."""

from __future__ import annotations

import collections.abc
import types
from collections.abc import Mapping
from typing import Any

import torch

from lxmert_hf.pipeline.inputs import Regions, is_features

__all__ = ["is_example", "is_picture", "is_stream", "stream_examples", "with_question"]


def is_picture(value: Any) -> bool:
    """A picture for the detector (a path, URL, PIL image or array), not precomputed regions."""
    return value is not None and not is_features(value) and not isinstance(value, Regions | Mapping)


def is_example(value: Any) -> bool:
    """A dict describing one question (as opposed to a dict of precomputed features only): a dataset row may hold
    the question and the features side by side."""
    return isinstance(value, Mapping) and ("question" in value or not is_features(value))


def with_question(example: Mapping[str, Any], question) -> Mapping[str, Any]:
    """`example` with `question` attached (unchanged when `question` is `None`); a question given twice is an
    error."""
    if question is None:
        return example
    if "question" in example:
        raise ValueError("an input dict already holds a `question`; do not also pass `question=`.")
    if not isinstance(question, str):
        raise ValueError("with dict inputs, `question=` must be one string asked of every input.")
    return {**example, "question": question}


def _as_example(item: Any, question) -> Mapping[str, Any]:
    if is_example(item):
        return with_question(item, question)
    return {"image": item, "question": question}


def is_stream(value: Any) -> bool:
    """A dataset or generator of inputs, answered one example at a time."""
    if isinstance(value, torch.utils.data.Dataset | types.GeneratorType | collections.abc.Iterator):
        return True
    # A `datasets.Dataset` / `IterableDataset`, recognized without importing `datasets`.
    return type(value).__module__.startswith("datasets.")


class _Examples(torch.utils.data.Dataset):
    """An indexable dataset seen as examples: each item with `question` attached when one is given."""

    def __init__(self, dataset, question):
        self.dataset, self.question = dataset, question

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return _as_example(self.dataset[index], self.question)


def stream_examples(stream, question):
    """The items of a dataset or generator as examples, each asked `question` when one is given: indexable
    datasets stay indexable (their length known), anything else becomes a generator."""
    if question is not None and not isinstance(question, str):
        raise ValueError("with a dataset or generator, `question=` must be one string asked of every item.")
    # `KeyDataset`, map-style torch datasets and `datasets.Dataset` are indexable: keep them so (lengths known).
    if hasattr(stream, "__getitem__") and hasattr(stream, "__len__"):
        return _Examples(stream, question)
    return (_as_example(item, question) for item in stream)
