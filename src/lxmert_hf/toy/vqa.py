"""The toy VQA world: questions with 10 annotator answers that disagree the way annotators do, so soft scores
matter, written as VQA v2's official question and annotation files."""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np

from lxmert_hf.toy.scenes import (
    COLORS,
    IMAGE_ID_FORMAT,
    SHAPES,
    SPLITS,
    ToyObject,
    ToyScenes,
    ToySplit,
    train_tokenizer,
    unique,
    write_features_tsv,
    write_json,
)

ANSWER_TYPES = ("yes/no", "number", "other")


@dataclasses.dataclass(frozen=True)
class Question:
    text: str
    answer: str
    answer_type: str
    question_type: str
    domain: tuple[str, ...]


class ToyVQAWorld(ToyScenes):
    """Deterministic generator of the toy VQA world.

    Example:
        ```python
        >>> from lxmert_hf.toy import ToyVQAWorld, ToyWorldConfig
        >>> world = ToyVQAWorld(ToyWorldConfig(num_images={"train": 4, "validation": 2}, feature_dim=32))
        >>> split = world.split("train")
        >>> sorted(split.questions[0])[:4], split.features.shape
        (['answer_type', 'answers', 'image_id', 'multiple_choice_answer'], (4, 36, 32))
        ```
    """

    def split(self, name: str) -> ToySplit:
        """Generate split `name`: its scenes, region features, boxes and questions."""
        self._check_split(name)
        offset = SPLITS.index(name)
        rng = random.Random(f"{self.config.seed}-{name}")
        feature_rng = np.random.default_rng([self.config.seed, offset])
        count = self.config.num_images[name]
        scenes = [self._scene(rng) for _ in range(count)]
        image_ids = [IMAGE_ID_FORMAT.format(subtype=name, image_id=index) for index in range(count)]
        features, boxes, masks, regions = self._regions(scenes, feature_rng)
        questions = [
            self._record(image_id, question, rng, serial=offset * 10**8 + index * 100 + number)
            for index, (image_id, scene) in enumerate(zip(image_ids, scenes, strict=True))
            for number, question in enumerate(self._questions(scene, rng))
        ]
        return ToySplit(name, image_ids, scenes, features, boxes, masks, questions, regions)

    def _questions(self, scene: list[ToyObject], rng: random.Random) -> list[Question]:
        return self._ask(scene, rng, TEMPLATES, TEMPLATE_WEIGHTS)

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
        splits = splits or [self.split("train")]
        return train_tokenizer(q["question"] for split in splits for q in split.questions)

    def write_vqa_files(self, output_dir: str | os.PathLike, splits: list[ToySplit]) -> dict[str, str]:
        """Write `splits` in the formats of the real data: a feature TSV in the original LXMERT layout and, per split,
        VQA v2 official question and annotation JSON files. Returns the written paths by name."""
        os.makedirs(output_dir, exist_ok=True)
        paths = {"features": write_features_tsv(os.path.join(output_dir, "features.tsv"), splits)}
        for split in splits:
            for kind, payload in _official_files(split).items():
                path = os.path.join(output_dir, f"{split.name}_{kind}.json")
                write_json(path, payload)
                paths[f"{split.name}_{kind}"] = path
        return paths


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


def _annotate(question: Question, rng: random.Random, accuracy: tuple[float, float]) -> list[str]:
    """Ten annotator answers: each right with a per-question probability, otherwise a plausible mistake."""
    right = rng.uniform(*accuracy)
    wrong = [a for a in question.domain if a != question.answer]
    if question.answer_type == "number":
        value = int(question.answer)
        wrong = [str(v) for v in (value - 1, value + 1) if v >= 0]
    return [question.answer if rng.random() < right else rng.choice(wrong) for _ in range(10)]


def _color_of_shape(scene, rng):
    candidates = unique(scene, lambda o: o.shape)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    return Question(f"what color is the {obj.shape}?", obj.color, "other", "what color is the", COLORS)


def _shape_of_color(scene, rng):
    candidates = unique(scene, lambda o: o.color)
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
    candidates = unique(scene, lambda o: o.shape)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    color = obj.color if rng.random() < 0.5 else rng.choice([c for c in COLORS if c != obj.color])
    answer = "yes" if color == obj.color else "no"
    return Question(f"is the {obj.shape} {color}?", answer, "yes/no", "is the", ("yes", "no"))


def _size_of(scene, rng):
    candidates = unique(scene, lambda o: f"{o.color} {o.shape}")
    if not candidates:
        return None
    obj = rng.choice(candidates)
    return Question(f"is the {obj.color} {obj.shape} large?", "yes" if obj.size == "large" else "no", "yes/no",
                    "is the", ("yes", "no"))  # fmt: skip


def _relation(scene, rng):
    candidates = unique(scene, lambda o: f"{o.color} {o.shape}")
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
