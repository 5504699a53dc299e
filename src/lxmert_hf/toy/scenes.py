"""What the toy worlds share: the world's settings, scenes of simple objects, their region features and boxes,
the feature TSV, and a tokenizer trained on the world's words."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from lxmert_hf.data.tsv import write_tsv
from lxmert_hf.files import atomic_open

SHAPES = ("cube", "sphere", "cylinder", "cone")
COLORS = ("red", "green", "blue", "yellow", "purple", "gray")
SIZES = ("small", "large")
SPLITS = ("train", "validation", "test")
IMAGE_ID_FORMAT = "toy_{subtype}_{image_id:06d}"
# Boxes are written in pixels of a notional image of this size, as a detector would give them.
IMAGE_WIDTH, IMAGE_HEIGHT = 640, 480
# Region features are built in integers, in units of 2**-FEATURE_BITS (the noise scale in units of 2**-NOISE_BITS),
# and converted to float32 once: no float sum whose rounding depends on the CPU or the BLAS blocking, so the same
# config gives the same bits everywhere.
FEATURE_BITS = 10
NOISE_BITS = 8
# The region labels of the feature TSV, as a Visual Genome detector's: index = id, index 0 for a region that shows no
# object (the whole-image region and the other background regions), as in its class lists. An object region is
# labelled with its shape and its color.
OBJECT_LABELS = ("__background__", *SHAPES)
ATTRIBUTE_LABELS = ("__no_attribute__", *COLORS)
# The detector's confidences of those labels: sure of each object (the features tell shape and color exactly), less
# sure of the background, which also keeps the ~30 background regions of a scene from outweighing its ~5 objects
# in the confidence-weighted label losses of pre-training.
OBJECT_SCORE = 1.0
BACKGROUND_SCORE = 0.25


@dataclasses.dataclass(frozen=True)
class ToyWorldConfig:
    """Sizes and noise of a toy world (the VQA, GQA and NLVR2 worlds share it).

    Args:
        seed: one seed for everything; the same config always gives the same world.
        num_images: images per split, as `{"train": ..., "validation": ..., "test": ...}`. The GQA world names
            these splits `train`, `val`, `testdev`, the NLVR2 world `train`, `valid`, `test` (two images a pair).
        questions_per_image: questions asked about each image (duplicates removed); in the NLVR2 world, sentences
            written for each set of image pairs.
        num_regions: regions per image (objects first, then background regions).
        feature_dim: dimension of a region feature.
        min_objects / max_objects: objects per scene.
        feature_noise: standard deviation of the noise added to each region feature (used in steps of 1/256).
        annotator_accuracy: range of the probability that one annotator gives the right answer (VQA world only:
            GQA and NLVR2 have one exact answer).
        mask_background: `True` masks the background regions in `visual_attention_mask` instead of leaving them
            as distractors the model has to learn to ignore.
        visible_background: with `mask_background`, how many background regions stay visible. The first covers
            the whole image, as the whole-scene region of a detector does; attention can rest there when no object
            matches the question.
    """

    seed: int = 0
    num_images: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"train": 2000, "validation": 250, "test": 250}
    )
    questions_per_image: int = 10
    num_regions: int = 36
    feature_dim: int = 2048
    min_objects: int = 3
    max_objects: int = 8
    feature_noise: float = 0.5
    annotator_accuracy: tuple[float, float] = (0.65, 0.95)
    mask_background: bool = False
    visible_background: int = 1

    def __post_init__(self):
        unknown = set(self.num_images) - set(SPLITS)
        if unknown:
            raise ValueError(f"`num_images` has unknown splits {sorted(unknown)}; use {SPLITS}.")
        if not 1 <= self.min_objects <= self.max_objects <= self.num_regions:
            raise ValueError(
                "Need 1 <= `min_objects` <= `max_objects` <= `num_regions`, got "
                f"{self.min_objects}, {self.max_objects}, {self.num_regions}."
            )
        if not self.feature_noise >= 0:
            raise ValueError(f"`feature_noise` must be >= 0, got {self.feature_noise!r}.")
        if not 0 <= self.visible_background <= self.num_regions - self.max_objects:
            raise ValueError(
                f"`visible_background` must be in [0, num_regions - max_objects] = "
                f"[0, {self.num_regions - self.max_objects}], got {self.visible_background}."
            )


@dataclasses.dataclass(frozen=True)
class ToyObject:
    shape: str
    color: str
    size: str
    x: float
    y: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Normalized (x1, y1, x2, y2); large objects have twice the extent of small ones."""
        half = 0.09 if self.size == "large" else 0.045
        return (max(self.x - half, 0.0), max(self.y - half, 0.0), min(self.x + half, 1.0), min(self.y + half, 1.0))

    @property
    def name(self) -> str:
        """How questions name the object: its color and shape."""
        return f"{self.color} {self.shape}"


# Each attribute and each pair of attributes has its own code: a detector's features describe an object as a whole
# ("a red cube" looks unlike "a red sphere" or "a blue cube"), not as a sum of independent parts.
ATTRIBUTE_CODES = (
    [(s,) for s in SHAPES] + [(c,) for c in COLORS] + [(z,) for z in SIZES]
    + [(c, s) for c in COLORS for s in SHAPES] + [(z, s) for z in SIZES for s in SHAPES]
    + [(z, c) for z in SIZES for c in COLORS]
)  # fmt: skip
_CODE_INDEX = {code: index for index, code in enumerate(ATTRIBUTE_CODES)}


def attribute_codes(obj: ToyObject) -> list[int]:
    """The indices in `ATTRIBUTE_CODES` of an object's codes: its shape, color and size, and each pair of them."""
    keys = ((obj.shape,), (obj.color,), (obj.size,), (obj.color, obj.shape), (obj.size, obj.shape),
            (obj.size, obj.color))  # fmt: skip
    return [_CODE_INDEX[key] for key in keys]


def normal_table(rng: np.random.Generator, size: int = 1 << 16) -> np.ndarray:
    """`size` integers distributed about as N(0, 1) in units of 2**-FEATURE_BITS, from integer arithmetic only.

    Each is the sum of 12 uniform integers in [-511, 511] (variance 12 * (1023**2 - 1) / 12, about 1023**2), whose
    bits do not depend on the CPU, unlike a normal sampler's logarithms.
    """
    half = 1 << (FEATURE_BITS - 1)
    return rng.integers(1 - half, half, size=(12, size)).sum(axis=0)


@dataclasses.dataclass
class ToySplit:
    """One generated split. `features[i]`, `boxes[i]`, `masks[i]` and `regions[i]` belong to `image_ids[i]`;
    `regions[i, r]` is the index in `scenes[i]` of the object region `r` shows, -1 for a background region;
    `questions` holds the world's records (VQA questions with their answers, GQA questions, NLVR2 examples)."""

    name: str
    image_ids: list[str]
    scenes: list[list[ToyObject]]
    features: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    questions: list[dict]
    regions: np.ndarray


class ToyScenes:
    """Scenes and their region features, the part every toy world shares. Subclasses write the questions."""

    def __init__(self, config: ToyWorldConfig | None = None):
        self.config = config or ToyWorldConfig()
        rng = np.random.default_rng(self.config.seed)
        self.normal_table = normal_table(rng)
        # A fixed random row per attribute code plays the part of the detector's embedding: an object's feature is
        # the sum of its codes' rows (integers, in units of 2**-FEATURE_BITS), the background's a row of its own.
        self.codes = self._normal(rng, (len(ATTRIBUTE_CODES), self.config.feature_dim))
        self.background = self._normal(rng, self.config.feature_dim) - (1 << (FEATURE_BITS - 1))

    def _check_split(self, name: str) -> None:
        if name not in self.config.num_images:
            raise ValueError(f"Unknown split {name!r}; this world has {sorted(self.config.num_images)}.")

    def _scene(self, rng: random.Random) -> list[ToyObject]:
        objects: list[ToyObject] = []
        target = rng.randint(self.config.min_objects, self.config.max_objects)
        while len(objects) < target:
            x, y = rng.uniform(0.06, 0.94), rng.uniform(0.06, 0.94)
            # Distinct x positions keep "left of" unambiguous.
            if all(abs(x - other.x) > 0.04 for other in objects):
                objects.append(ToyObject(rng.choice(SHAPES), rng.choice(COLORS), rng.choice(SIZES), x, y))
        return objects

    def _ask(self, scene: list[ToyObject], rng: random.Random, templates: Sequence, weights: Sequence[float]) -> list:
        """Up to `config.questions_per_image` distinct questions about `scene` (by text), each from a template drawn
        by `weights`; a template returns `None` when the scene has nothing to ask it about. Three tries a question."""
        wanted = self.config.questions_per_image
        asked: dict[str, Any] = {}
        for _ in range(wanted * 3):
            if len(asked) == wanted:
                break
            question = rng.choices(templates, weights=weights)[0](scene, rng)
            if question is not None:
                asked.setdefault(question.text, question)
        return list(asked.values())

    def _normal(self, rng: np.random.Generator, shape) -> np.ndarray:
        """Integers about N(0, 1) in units of 2**-FEATURE_BITS, drawn from the normal table."""
        return self.normal_table[rng.integers(0, len(self.normal_table), size=shape)]

    def _regions(self, scenes, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Features, boxes, masks and, without drawing anything more, the scene object of each region."""
        cfg = self.config
        features = np.empty((len(scenes), cfg.num_regions, cfg.feature_dim), dtype=np.float32)
        boxes = np.empty((len(scenes), cfg.num_regions, 4), dtype=np.float32)
        masks = np.ones((len(scenes), cfg.num_regions), dtype=np.int64)
        regions = np.empty((len(scenes), cfg.num_regions), dtype=np.int64)
        noise_scale = round(cfg.feature_noise * (1 << NOISE_BITS))
        # Integer sums, then one conversion and a power-of-two scale: exact (below 2**24) and the same on any CPU.
        unit = np.float32(2.0 ** -(FEATURE_BITS + NOISE_BITS))
        for index, scene in enumerate(scenes):
            objects = self.codes[[attribute_codes(obj) for obj in scene]].sum(axis=1)
            background = np.broadcast_to(self.background, (cfg.num_regions - len(scene), cfg.feature_dim))
            clean = np.concatenate([objects, background]) << NOISE_BITS
            noisy = clean + noise_scale * self._normal(rng, clean.shape)
            order = rng.permutation(cfg.num_regions)
            # Region features of a real detector are post-ReLU, hence non-negative.
            features[index] = np.maximum(noisy, 0)[order].astype(np.float32) * unit
            scenery = _background_boxes(rng, len(background))
            scenery[:1] = (0.0, 0.0, 1.0, 1.0)
            boxes[index] = np.concatenate([np.array([o.box for o in scene]), scenery])[order]
            if cfg.mask_background:
                masks[index] = (order < len(scene) + cfg.visible_background).astype(np.int64)
            regions[index] = np.where(order < len(scene), order, -1)
        return features, boxes, masks, regions


def train_tokenizer(texts: Iterable[str], vocab_size: int = 256):
    """Train a lower-cased WordPiece tokenizer on `texts` and wrap it as a transformers `BertTokenizer`."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    trainer = BertWordPieceTokenizer(lowercase=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer.train_from_iterator(
        list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=special, show_progress=False
    )
    return BertTokenizer(vocab=trainer.get_vocab(), do_lower_case=True, model_max_length=512)


def word_tokenizer(texts: Iterable[str]):
    """A lower-cased `BertTokenizer` that keeps every word of `texts` whole, with ids fixed by sorting: the same
    texts always give the same vocabulary (training WordPiece merges does not: ties fall either way)."""
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertTokenizer

    split = BertPreTokenizer().pre_tokenize_str
    words = sorted({word for text in texts for word, _ in split(text.lower())})
    characters = sorted({character for word in words for character in word})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokens += [c for c in characters if c not in tokens] + [f"##{c}" for c in characters]
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True,
                         model_max_length=512)  # fmt: skip


def write_features_tsv(path: str | os.PathLike, splits: Iterable[ToySplit]) -> str:
    """Write the visible regions of every image of `splits` as a feature TSV in the original LXMERT layout, with the
    detector-like labels of each region ([`region_labels`])."""
    write_tsv(path, (record for split in splits for record in _tsv_records(split)))
    return str(path)


def region_labels(scene: Sequence[ToyObject], regions: np.ndarray) -> dict[str, np.ndarray]:
    """The labels a detector would give the regions of `scene`: `object_ids` (the shape, in `OBJECT_LABELS`),
    `attribute_ids` (the color, in `ATTRIBUTE_LABELS`) and their confidences `object_scores`, `attribute_scores`.
    `regions` holds the index in `scene` of the object each region shows, -1 for background (id 0 of both lists).

    Example:
        ```python
        >>> import numpy as np
        >>> from lxmert_hf.toy import OBJECT_LABELS, ToyObject, region_labels
        >>> labels = region_labels([ToyObject("cone", "red", "small", 0.2, 0.3)], np.array([-1, 0]))
        >>> [OBJECT_LABELS[i] for i in labels["object_ids"]], labels["object_scores"].tolist()
        (['__background__', 'cone'], [0.25, 1.0])
        ```
    """
    # The last entry answers index -1: the background.
    objects = np.array([OBJECT_LABELS.index(obj.shape) for obj in scene] + [0], dtype=np.int64)
    attributes = np.array([ATTRIBUTE_LABELS.index(obj.color) for obj in scene] + [0], dtype=np.int64)
    scores = np.where(regions >= 0, OBJECT_SCORE, BACKGROUND_SCORE).astype(np.float32)
    return {
        "object_ids": objects[regions],
        "object_scores": scores,
        "attribute_ids": attributes[regions],
        "attribute_scores": scores.copy(),
    }


def _tsv_records(split: ToySplit) -> Iterator[dict]:
    scale = np.array([IMAGE_WIDTH, IMAGE_HEIGHT, IMAGE_WIDTH, IMAGE_HEIGHT], dtype=np.float32)
    for index, image_id in enumerate(split.image_ids):
        keep = split.masks[index].astype(bool)
        yield {
            "image_id": image_id,
            "image_width": IMAGE_WIDTH,
            "image_height": IMAGE_HEIGHT,
            "boxes": split.boxes[index][keep] * scale,
            "visual_feats": split.features[index][keep],
            **region_labels(split.scenes[index], split.regions[index][keep]),
        }


def write_json(path: str | os.PathLike, payload) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(payload, handle)


def write_json_lines(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write `records` one JSON object a line, as NLVR2's official files are."""
    with atomic_open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def _background_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    corners = rng.uniform(0.0, 1.0, (count, 2, 2))
    low, high = corners.min(axis=1), corners.max(axis=1)
    return np.concatenate([low, high], axis=1).astype(np.float32)


def unique(scene: list[ToyObject], key: Callable[[ToyObject], str]) -> list[ToyObject]:
    """The objects of `scene` that no other object shares `key` with: the ones a question can name by it."""
    counts = Counter(key(obj) for obj in scene)
    return [obj for obj in scene if counts[key(obj)] == 1]
