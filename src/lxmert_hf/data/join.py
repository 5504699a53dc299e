"""Joining questions to the feature store by image id, at read time, so features are never copied per question.

[`attach_features`] turns a dataset of questions into one whose examples carry `visual_feats`, `visual_pos` and
the dense soft-score `labels` that [`~lxmert_hf.data.collator.VQADataCollator`] consumes; the regions of each batch
come from one [`~lxmert_hf.data.FeatureStore.gather`].
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import datasets
import numpy as np

from lxmert_hf.answers import encode_soft_labels
from lxmert_hf.data.store import FeatureStore


class JoinFeatures:
    """The batched transform that adds features (and `labels`) to a batch of questions."""

    def __init__(self, store: FeatureStore, label2id: Mapping[str, int] | None, image_columns: Sequence[str]):
        self.store = store
        self.label2id = dict(label2id) if label2id is not None else None
        self.image_columns = tuple(image_columns)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        batch = dict(batch)
        if len(self.image_columns) == 1:
            batch.update(self._single(batch[self.image_columns[0]]))
        else:
            batch.update(self._pairs(batch))
        if self.label2id is not None and "label_answers" in batch:
            batch["labels"] = encode_soft_labels(batch["label_answers"], batch["label_scores"], self.label2id)
        elif "label" in batch:  # a class index (NLVR2: does the sentence hold for the pair)
            batch["labels"] = batch["label"]
        return batch

    def _single(self, image_ids: Sequence[str]) -> dict:
        regions = self.store.gather(image_ids)
        if (regions.num_boxes == regions.visual_feats.shape[1]).all():
            # One array for the batch: each example gets a row (a view), and the collator takes the array whole.
            return {"visual_feats": regions.visual_feats, "visual_pos": regions.visual_pos}
        counts = regions.num_boxes.tolist()
        return {
            "visual_feats": [feats[:count] for feats, count in zip(regions.visual_feats, counts, strict=True)],
            "visual_pos": [pos[:count] for pos, count in zip(regions.visual_pos, counts, strict=True)],
        }

    def _pairs(self, batch: dict[str, list]) -> dict[str, list]:
        # Two images per example (NLVR2), read in one gather for the whole batch (example 0's images, then example
        # 1's, ...), zero-padded to the batch's largest box count: each example gets a view [2, num_boxes, dim] of
        # one array, which the collator takes whole.
        pairs = list(zip(*(batch[column] for column in self.image_columns), strict=True))
        image_ids = [image_id for pair in pairs for image_id in pair]
        try:
            regions = self.store.gather(image_ids)
        except KeyError:
            raise ValueError(self._missing_pair_message(batch, pairs)) from None
        shape = (len(pairs), len(self.image_columns))
        feats = regions.visual_feats.reshape(*shape, *regions.visual_feats.shape[1:])
        pos = regions.visual_pos.reshape(*shape, *regions.visual_pos.shape[1:])
        masks = regions.visual_attention_mask.reshape(*shape, -1)
        return {"visual_feats": list(feats), "visual_pos": list(pos), "visual_attention_mask": list(masks)}

    def _missing_pair_message(self, batch: dict[str, list], pairs: list[tuple]) -> str:
        """Name the examples of `batch` that have an image the store lacks, and those images."""
        names = batch.get("identifier") or batch.get("question_id") or [f"#{row}" for row in range(len(pairs))]
        width = len(self.image_columns)
        absent = self.store.missing([image_id for pair in pairs for image_id in pair]).reshape(len(pairs), width)
        missing = [
            f"{name!r} lacks {', '.join(repr(image_id) for image_id, gone in zip(pair, row, strict=True) if gone)}"
            for name, pair, row in zip(names, pairs, absent, strict=True)
            if row.any()
        ]
        return (
            f"{len(missing)} example(s) have an image that is not in the feature store at {self.store.store_dir}: "
            f"{'; '.join(missing[:5])}. Each NLVR2 example needs both of its images: prepare features for them, or "
            "load the split with skip_missing=True (--skip-missing) to drop such examples."
        )


def attach_features(
    questions: datasets.Dataset | datasets.IterableDataset,
    features: str | os.PathLike | FeatureStore,
    label2id: Mapping[str, int] | None = None,
    image_columns: Sequence[str] = ("image_id",),
    skip_missing: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    r"""
    Join a dataset of questions to a feature store by image id, lazily.

    Map-style datasets get a transform (`with_transform`): random access reads only the rows asked for.
    Iterable datasets get a batched `map`. Each example gains `visual_feats` and `visual_pos` (and `labels`, the
    dense soft scores over `label2id`, when given). With several `image_columns` (NLVR2's `img0`, `img1`), the
    features are stacked as `[num_images, num_boxes, dim]` with a `visual_attention_mask`.

    Questions whose image is not in the store raise a `ValueError` (count and examples), or are dropped and
    counted with `skip_missing=True` (map-style datasets only; iterable ones are checked when prepared).

    When training with `transformers.Trainer`, pass `remove_unused_columns=False`: the question columns feed
    the transform.

    Example:
        ```python
        >>> import numpy as np, tempfile, datasets
        >>> from lxmert_hf.data import FeatureStoreWriter, attach_features
        >>> store_dir = tempfile.mkdtemp()
        >>> with FeatureStoreWriter(store_dir, resume=True) as writer:
        ...     writer.add({"image_id": "a", "visual_feats": np.ones((2, 4)), "boxes": [[0, 0, 4, 8]] * 2,
        ...                 "image_width": 8, "image_height": 8})
        >>> questions = datasets.Dataset.from_dict({"image_id": ["a"], "question": ["what?"],
        ...                                         "label_answers": [["yes"]], "label_scores": [[1.0]]})
        >>> example = attach_features(questions, store_dir, label2id={"no": 0, "yes": 1})[0]
        >>> example["visual_feats"].shape, example["labels"].tolist()
        ((2, 4), [0.0, 1.0])
        ```
    """
    store = features if isinstance(features, FeatureStore) else FeatureStore(features)
    join = JoinFeatures(store, label2id, image_columns)
    if isinstance(questions, datasets.IterableDataset):
        return questions.map(join, batched=True)
    questions = drop_or_report_missing(questions, store, image_columns, skip_missing)
    return questions.with_transform(join)


def drop_or_report_missing(
    questions: datasets.Dataset, store: FeatureStore, image_columns: Sequence[str], skip_missing: bool
) -> datasets.Dataset:
    """Raise a `ValueError` counting the questions whose image is not in the store, or drop them."""
    table = questions.with_format("arrow")
    missing = np.zeros(len(questions), dtype=bool)
    for column in image_columns:
        missing |= store.missing(table[column])
    if not missing.any():
        return questions
    column = table[image_columns[0]]
    examples = [column[int(i)].as_py() for i in np.flatnonzero(missing)[:5]]
    if not skip_missing:
        raise ValueError(
            f"{int(missing.sum())} of {len(questions)} questions refer to images that are not in the feature store "
            f"at {store.store_dir} (e.g. {examples}); prepare features for those images, or pass "
            "skip_missing=True (--skip-missing) to drop these questions."
        )
    return questions.select(np.flatnonzero(~missing))
