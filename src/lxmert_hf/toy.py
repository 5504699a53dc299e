"""A small synthetic VQA world: scenes, region features, questions with 10 annotator answers, and a tokenizer.

It exists so that the whole training path runs end to end on a laptop with nothing to download, and so that
learning can be checked: every question needs both the image and the words, and the 10 answers disagree the
way annotators do, so soft scores matter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator

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
ANSWER_TYPES = ("yes/no", "number", "other")
# Bumped whenever the same config would give a different world, so that caches of prepared worlds are not reused.
GENERATION = 2
# Region features are built in integers, in units of 2**-FEATURE_BITS (the noise scale in units of 2**-NOISE_BITS),
# and converted to float32 once: no float sum whose rounding depends on the CPU or the BLAS blocking, so the same
# config gives the same bits everywhere.
FEATURE_BITS = 10
NOISE_BITS = 8


@dataclasses.dataclass(frozen=True)
class ToyWorldConfig:
    """Sizes and noise of the toy world.

    Args:
        seed: one seed for everything; the same config always gives the same world.
        num_images: images per split, as `{"train": ..., "validation": ..., "test": ...}`.
        questions_per_image: questions asked about each image (duplicates removed).
        num_regions: regions per image (objects first, then background regions).
        feature_dim: dimension of a region feature.
        min_objects / max_objects: objects per scene.
        feature_noise: standard deviation of the noise added to each region feature (used in steps of 1/256).
        annotator_accuracy: range of the probability that one annotator gives the right answer.
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


@dataclasses.dataclass(frozen=True)
class Question:
    text: str
    answer: str
    answer_type: str
    question_type: str
    domain: tuple[str, ...]


class ToyVQAWorld:
    """Deterministic generator of the toy world.

    Example:
        ```python
        >>> from lxmert_hf.toy import ToyVQAWorld, ToyWorldConfig
        >>> world = ToyVQAWorld(ToyWorldConfig(num_images={"train": 4, "validation": 2}, feature_dim=32))
        >>> split = world.split("train")
        >>> sorted(split.questions[0])[:4], split.features.shape
        (['answer_type', 'answers', 'image_id', 'multiple_choice_answer'], (4, 36, 32))
        ```
    """

    def __init__(self, config: ToyWorldConfig | None = None):
        self.config = config or ToyWorldConfig()
        rng = np.random.default_rng(self.config.seed)
        self.normal_table = normal_table(rng)
        # A fixed random row per attribute code plays the part of the detector's embedding: an object's feature is
        # the sum of its codes' rows (integers, in units of 2**-FEATURE_BITS), the background's a row of its own.
        self.codes = self._normal(rng, (len(ATTRIBUTE_CODES), self.config.feature_dim))
        self.background = self._normal(rng, self.config.feature_dim) - (1 << (FEATURE_BITS - 1))

    def split(self, name: str) -> ToySplit:
        """Generate split `name`: its scenes, region features, boxes and questions."""
        if name not in self.config.num_images:
            raise ValueError(f"Unknown split {name!r}; this world has {sorted(self.config.num_images)}.")
        offset = SPLITS.index(name)
        rng = random.Random(f"{self.config.seed}-{name}")
        feature_rng = np.random.default_rng([self.config.seed, offset])
        count = self.config.num_images[name]
        scenes = [self._scene(rng) for _ in range(count)]
        image_ids = [IMAGE_ID_FORMAT.format(subtype=name, image_id=index) for index in range(count)]
        features, boxes, masks = self._regions(scenes, feature_rng)
        questions = [
            self._record(image_id, question, rng, serial=offset * 10**8 + index * 100 + number)
            for index, (image_id, scene) in enumerate(zip(image_ids, scenes, strict=True))
            for number, question in enumerate(self._questions(scene, rng))
        ]
        return ToySplit(name, image_ids, scenes, features, boxes, masks, questions)

    def _scene(self, rng: random.Random) -> list[ToyObject]:
        objects: list[ToyObject] = []
        target = rng.randint(self.config.min_objects, self.config.max_objects)
        while len(objects) < target:
            x, y = rng.uniform(0.06, 0.94), rng.uniform(0.06, 0.94)
            # Distinct x positions keep "left of" unambiguous.
            if all(abs(x - other.x) > 0.04 for other in objects):
                objects.append(ToyObject(rng.choice(SHAPES), rng.choice(COLORS), rng.choice(SIZES), x, y))
        return objects

    def _normal(self, rng: np.random.Generator, shape) -> np.ndarray:
        """Integers about N(0, 1) in units of 2**-FEATURE_BITS, drawn from the normal table."""
        return self.normal_table[rng.integers(0, len(self.normal_table), size=shape)]

    def _regions(self, scenes, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        features = np.empty((len(scenes), cfg.num_regions, cfg.feature_dim), dtype=np.float32)
        boxes = np.empty((len(scenes), cfg.num_regions, 4), dtype=np.float32)
        masks = np.ones((len(scenes), cfg.num_regions), dtype=np.int64)
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
        return features, boxes, masks

    def _questions(self, scene: list[ToyObject], rng: random.Random) -> list[Question]:
        asked: dict[str, Question] = {}
        for _ in range(self.config.questions_per_image * 3):
            if len(asked) == self.config.questions_per_image:
                break
            question = rng.choices(TEMPLATES, weights=TEMPLATE_WEIGHTS)[0](scene, rng)
            if question is not None:
                asked.setdefault(question.text, question)
        return list(asked.values())

    def _record(self, image_id: str, question: Question, rng: random.Random, serial: int) -> dict:
        answers = _annotate(question, rng, self.config.annotator_accuracy)
        return {
            "question_id": serial,
            "image_id": int(image_id.rsplit("_", 1)[1]),
            "question": question.text,
            "answers": answers,
            "multiple_choice_answer": question.answer,
            "answer_type": question.answer_type,
            "question_type": question.question_type,
        }

    def tokenizer(self, splits: list[ToySplit] | None = None):
        """Train a WordPiece tokenizer on the world's questions and wrap it as a transformers tokenizer."""
        from tokenizers import BertWordPieceTokenizer
        from transformers import BertTokenizer

        splits = splits or [self.split("train")]
        trainer = BertWordPieceTokenizer(lowercase=True)
        texts = [q["question"] for split in splits for q in split.questions]
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        trainer.train_from_iterator(
            texts, vocab_size=256, min_frequency=1, special_tokens=special, show_progress=False
        )
        return BertTokenizer(vocab=trainer.get_vocab(), do_lower_case=True, model_max_length=512)

    def write_vqa_files(self, output_dir: str | os.PathLike, splits: list[ToySplit]) -> dict[str, str]:
        """Write `splits` in the formats of the real data: a feature TSV in the original LXMERT layout and, per split,
        VQA v2 official question and annotation JSON files. Returns the written paths by name."""
        os.makedirs(output_dir, exist_ok=True)
        paths = {"features": os.path.join(output_dir, "features.tsv")}
        write_tsv(paths["features"], (record for split in splits for record in _tsv_records(split)))
        for split in splits:
            for kind, payload in _official_files(split).items():
                path = os.path.join(output_dir, f"{split.name}_{kind}.json")
                _write_json(path, payload)
                paths[f"{split.name}_{kind}"] = path
        return paths


@dataclasses.dataclass
class ToySplit:
    """One generated split. `features[i]`, `boxes[i]` and `masks[i]` belong to `image_ids[i]`."""

    name: str
    image_ids: list[str]
    scenes: list[list[ToyObject]]
    features: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    questions: list[dict]


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
        }


def _official_files(split: ToySplit) -> dict[str, dict]:
    info = {"description": "lxmert_hf toy VQA world", "data_subtype": split.name}
    questions = [{k: q[k] for k in ("question_id", "image_id", "question")} for q in split.questions]
    annotations = [
        {
            "question_id": q["question_id"],
            "image_id": q["image_id"],
            "question_type": q["question_type"],
            "answer_type": q["answer_type"],
            "multiple_choice_answer": q["multiple_choice_answer"],
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(q["answers"])
            ],
        }
        for q in split.questions
    ]
    return {
        "questions": {**info, "task_type": "Open-Ended", "questions": questions},
        "annotations": {**info, "annotations": annotations},
    }


def _write_json(path: str, payload: dict) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(payload, handle)


def _background_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    corners = rng.uniform(0.0, 1.0, (count, 2, 2))
    low, high = corners.min(axis=1), corners.max(axis=1)
    return np.concatenate([low, high], axis=1).astype(np.float32)


def _annotate(question: Question, rng: random.Random, accuracy: tuple[float, float]) -> list[str]:
    """Ten annotator answers: each right with a per-question probability, otherwise a plausible mistake."""
    right = rng.uniform(*accuracy)
    wrong = [a for a in question.domain if a != question.answer]
    if question.answer_type == "number":
        value = int(question.answer)
        wrong = [str(v) for v in (value - 1, value + 1) if v >= 0]
    return [question.answer if rng.random() < right else rng.choice(wrong) for _ in range(10)]


def _unique(scene, key: Callable[[ToyObject], str]) -> list[ToyObject]:
    counts = Counter(key(obj) for obj in scene)
    return [obj for obj in scene if counts[key(obj)] == 1]


def _color_of_shape(scene, rng):
    candidates = _unique(scene, lambda o: o.shape)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    return Question(f"what color is the {obj.shape}?", obj.color, "other", "what color is the", COLORS)


def _shape_of_color(scene, rng):
    candidates = _unique(scene, lambda o: o.color)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    return Question(f"what shape is the {obj.color} object?", obj.shape, "other", "what shape is the", SHAPES)


def _count_color(scene, rng):
    color = rng.choice(COLORS)
    count = sum(obj.color == color for obj in scene)
    return Question(f"how many {color} objects are there?", str(count), "number", "how many", ())


def _count_shape(scene, rng):
    shape = rng.choice(SHAPES)
    count = sum(obj.shape == shape for obj in scene)
    return Question(f"how many {shape}s are there?", str(count), "number", "how many", ())


def _exists(scene, rng):
    present = {(obj.color, obj.shape) for obj in scene}
    if rng.random() < 0.5:
        color, shape = rng.choice(sorted(present))
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = rng.choice(absent)
    answer = "yes" if (color, shape) in present else "no"
    return Question(f"is there a {color} {shape}?", answer, "yes/no", "is there a", ("yes", "no"))


def _is_color(scene, rng):
    candidates = _unique(scene, lambda o: o.shape)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    color = obj.color if rng.random() < 0.5 else rng.choice([c for c in COLORS if c != obj.color])
    answer = "yes" if color == obj.color else "no"
    return Question(f"is the {obj.shape} {color}?", answer, "yes/no", "is the", ("yes", "no"))


def _size_of(scene, rng):
    candidates = _unique(scene, lambda o: f"{o.color} {o.shape}")
    if not candidates:
        return None
    obj = rng.choice(candidates)
    return Question(f"is the {obj.color} {obj.shape} large?", "yes" if obj.size == "large" else "no", "yes/no",
                    "is the", ("yes", "no"))  # fmt: skip


def _relation(scene, rng):
    candidates = _unique(scene, lambda o: f"{o.color} {o.shape}")
    side = rng.choice(("left", "right"))
    anchors = [a for a in candidates if any((o.x < a.x) == (side == "left") for o in scene if o is not a)]
    if not anchors:
        return None
    anchor = rng.choice(anchors)
    others = [o for o in scene if o is not anchor and (o.x < anchor.x) == (side == "left")]
    nearest = min(others, key=lambda o: abs(o.x - anchor.x))
    text = f"what shape is {side} of the {anchor.color} {anchor.shape}?"
    return Question(text, nearest.shape, "other", "what shape is", SHAPES)


TEMPLATES = (_color_of_shape, _shape_of_color, _relation, _exists, _is_color, _size_of, _count_color, _count_shape)
# About the answer-type mix of VQA v2: half "other", 38% "yes/no", 12% "number".
TEMPLATE_WEIGHTS = (0.17, 0.17, 0.16, 0.13, 0.13, 0.12, 0.06, 0.06)
