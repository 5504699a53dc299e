"""The toy GQA world: compositional questions (attributes, relations, logic, comparisons) with one exact answer
each, typed like GQA's (`verify`, `query`, `choose`, `logical`, `compare`), written as GQA's balanced questions JSON.

Yes/no questions are asked as often true as false, and every "choose" question offers the right answer and a wrong
one in random order, so that the words alone do not tell the answer.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable

import numpy as np

from lxmert_hf.toy.scenes import (
    COLORS,
    SHAPES,
    SPLITS,
    ToyObject,
    ToyScenes,
    ToySplit,
    unique,
    word_tokenizer,
    write_features_tsv,
    write_json,
)

# The GQA names of the shared config's splits: the paper reports `testdev`.
GQA_SPLITS = {"train": "train", "validation": "val", "test": "testdev"}
STRUCTURAL_TYPES = ("verify", "query", "choose", "logical", "compare")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclasses.dataclass(frozen=True)
class GQAQuestion:
    text: str
    answer: str
    full_answer: str
    structural: str
    semantic: str
    detailed: str


class ToyGQAWorld(ToyScenes):
    """Deterministic generator of the toy GQA world.

    Example:
        ```python
        >>> from lxmert_hf.toy import ToyGQAWorld, ToyWorldConfig
        >>> world = ToyGQAWorld(ToyWorldConfig(num_images={"train": 4, "test": 2}, feature_dim=32))
        >>> split = world.split("test")
        >>> split.name, sorted(split.questions[0]), split.features.shape
        ('testdev', ['answer', 'fullAnswer', 'imageId', 'isBalanced', 'question', 'question_id', 'types'], (2, 36, 32))
        ```
    """

    def split(self, name: str) -> ToySplit:
        """Generate split `name` (`train`, `validation` or `test` of the config; named `train`, `val`, `testdev`)."""
        self._check_split(name)
        offset = SPLITS.index(name)
        rng = random.Random(f"{self.config.seed}-gqa-{name}")
        feature_rng = np.random.default_rng([self.config.seed, offset, 1])
        count = self.config.num_images[name]
        scenes = [self._scene(rng) for _ in range(count)]
        image_ids = [f"toy{GQA_SPLITS[name]}{index:06d}" for index in range(count)]
        features, boxes, masks, regions = self._regions(scenes, feature_rng)
        questions = [
            _record(str((offset + 1) * 10**8 + index * 100 + number), image_id, question)
            for index, (image_id, scene) in enumerate(zip(image_ids, scenes, strict=True))
            for number, question in enumerate(self._questions(scene, rng))
        ]
        return ToySplit(GQA_SPLITS[name], image_ids, scenes, features, boxes, masks, questions, regions)

    def _questions(self, scene: list[ToyObject], rng: random.Random) -> list[GQAQuestion]:
        return self._ask(scene, rng, TEMPLATES, TEMPLATE_WEIGHTS)

    def tokenizer(self, splits: list[ToySplit] | None = None):
        """A transformers tokenizer that keeps every word of the world's questions whole."""
        splits = splits or [self.split("train")]
        return word_tokenizer(q["question"] for split in splits for q in split.questions)

    def write_gqa_files(self, output_dir: str | os.PathLike, splits: list[ToySplit]) -> dict[str, str]:
        """Write `splits` as GQA's files: a feature TSV in the original LXMERT layout and, per split, a balanced
        questions JSON `{question_id: {imageId, question, answer, fullAnswer, types}}`
        (`<split>_balanced_questions.json`). Returns the written paths by name (`features`, then the split names)."""
        os.makedirs(output_dir, exist_ok=True)
        paths = {"features": write_features_tsv(os.path.join(output_dir, "features.tsv"), splits)}
        for split in splits:
            path = os.path.join(output_dir, f"{split.name}_balanced_questions.json")
            write_json(path, {q["question_id"]: {k: v for k, v in q.items() if k != "question_id"}
                              for q in split.questions})  # fmt: skip
            paths[split.name] = path
        return paths


def _record(question_id: str, image_id: str, question: GQAQuestion) -> dict:
    return {
        "question_id": question_id,
        "imageId": image_id,
        "question": question.text,
        "answer": question.answer,
        "fullAnswer": question.full_answer,
        "isBalanced": True,
        "types": {"structural": question.structural, "semantic": question.semantic, "detailed": question.detailed},
    }


def _named(scene: list[ToyObject]) -> list[ToyObject]:
    """Objects a question can name by color and shape: no other object of the scene has both."""
    return unique(scene, lambda o: o.name)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _not(value: bool) -> str:
    return "" if value else "not "


def _either(rng: random.Random, right: str, wrong: str) -> tuple[str, str]:
    return (right, wrong) if rng.random() < 0.5 else (wrong, right)


def _corner(obj: ToyObject) -> str:
    return f"{'top' if obj.y < 0.5 else 'bottom'}-{'left' if obj.x < 0.5 else 'right'}"


def _absent_name(scene, rng) -> str:
    present = {o.name for o in scene}
    return rng.choice([f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in present])


def _exists(scene, rng):
    name = rng.choice(sorted({o.name for o in scene})) if rng.random() < 0.5 else _absent_name(scene, rng)
    found = any(o.name == name for o in scene)
    full = f"{'Yes' if found else 'No'}, there is {'a' if found else 'no'} {name}."
    return GQAQuestion(f"is there a {name}?", _yes_no(found), full, "verify", "obj", "existAttr")


def _verify_color(scene, rng):
    candidates = unique(scene, lambda o: o.shape)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    color = obj.color if rng.random() < 0.5 else rng.choice([c for c in COLORS if c != obj.color])
    full = f"{'Yes' if color == obj.color else 'No'}, the {obj.shape} is {obj.color}."
    return GQAQuestion(f"is the {obj.shape} {color}?", _yes_no(color == obj.color), full, "verify", "attr",
                       "verifyAttr")  # fmt: skip


def _verify_relation(scene, rng):
    named = _named(scene)
    if len(named) < 2:
        return None
    first, second = rng.sample(named, 2)
    side = rng.choice(("left", "right"))
    holds = (first.x < second.x) == (side == "left")
    actual = side if holds else _other(side)
    full = f"{_yes_no(holds).capitalize()}, the {first.name} is to the {actual} of the {second.name}."
    return GQAQuestion(f"is the {first.name} to the {side} of the {second.name}?", _yes_no(holds), full, "verify",
                       "rel", "verifyRel")  # fmt: skip


def _other(side: str) -> str:
    return "right" if side == "left" else "left"


def _query_color(scene, rng):
    candidates = unique(scene, lambda o: o.shape)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    return GQAQuestion(f"what color is the {obj.shape}?", obj.color, f"The {obj.shape} is {obj.color}.", "query",
                       "attr", "queryAttr")  # fmt: skip


def _neighbour(scene, rng) -> tuple[ToyObject, str, ToyObject] | None:
    """A named anchor, a side, and the object nearest to the anchor on that side."""
    side = rng.choice(("left", "right"))
    anchors = [a for a in _named(scene) if any((o.x < a.x) == (side == "left") for o in scene if o is not a)]
    if not anchors:
        return None
    anchor = rng.choice(anchors)
    others = [o for o in scene if o is not anchor and (o.x < anchor.x) == (side == "left")]
    return anchor, side, min(others, key=lambda o: abs(o.x - anchor.x))


def _query_related_color(scene, rng):
    found = _neighbour(scene, rng)
    if found is None:
        return None
    anchor, side, obj = found
    text = f"what color is the object just {side} of the {anchor.name}?"
    return GQAQuestion(text, obj.color, f"The {obj.shape} is {obj.color}.", "query", "rel", "relS")


def _query_related_object(scene, rng):
    found = _neighbour(scene, rng)
    if found is None:
        return None
    anchor, side, obj = found
    text = f"which object is just {side} of the {anchor.name}?"
    return GQAQuestion(text, obj.name, f"The object is a {obj.name}.", "query", "rel", "relO")


def _query_corner(scene, rng):
    named = _named(scene)
    if not named:
        return None
    obj = rng.choice(named)
    corner = _corner(obj)
    return GQAQuestion(f"in which corner is the {obj.name}?", corner, f"The {obj.name} is in the {corner} corner.",
                       "query", "attr", "positionQuery")  # fmt: skip


def _choose_side(scene, rng):
    named = _named(scene)
    if len(named) < 2:
        return None
    first, second = rng.sample(named, 2)
    side = "left" if first.x < second.x else "right"
    text = f"is the {first.name} to the left or to the right of the {second.name}?"
    return GQAQuestion(text, side, f"The {first.name} is to the {side} of the {second.name}.", "choose", "rel",
                       "chooseRel")  # fmt: skip


def _choose_color(scene, rng):
    candidates = unique(scene, lambda o: o.shape)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    options = _either(rng, obj.color, rng.choice([c for c in COLORS if c != obj.color]))
    return GQAQuestion(f"is the {obj.shape} {options[0]} or {options[1]}?", obj.color,
                       f"The {obj.shape} is {obj.color}.", "choose", "attr", "chooseAttr")  # fmt: skip


def _choose_size(scene, rng):
    named = _named(scene)
    if not named:
        return None
    obj = rng.choice(named)
    options = _either(rng, "small", "large")
    return GQAQuestion(f"is the {obj.name} {options[0]} or {options[1]}?", obj.size,
                       f"The {obj.name} is {obj.size}.", "choose", "attr", "chooseAttr")  # fmt: skip


def _logic_or(scene, rng):
    present = sorted({o.name for o in scene})
    if rng.random() < 0.5:
        names = _either(rng, rng.choice(present), _absent_name(scene, rng))
    else:
        first = _absent_name(scene, rng)
        names = (first, rng.choice([n for n in _all_names() if n not in present and n != first]))
    found = any(n in present for n in names)
    full = f"{'Yes' if found else 'No'}, there is {'a' if found else 'no'} {names[0]} or {names[1]}."
    return GQAQuestion(f"is there a {names[0]} or a {names[1]}?", _yes_no(found), full, "logical", "obj", "logicOr")


def _logic_and(scene, rng):
    present = sorted({o.name for o in scene})
    if len(present) < 2:
        return None
    names = tuple(rng.sample(present, 2)) if rng.random() < 0.5 else _either(rng, rng.choice(present),
                                                                               _absent_name(scene, rng))  # fmt: skip
    found = all(n in present for n in names)
    full = f"{'Yes' if found else 'No'}, there {'are' if found else 'are not'} both a {names[0]} and a {names[1]}."
    return GQAQuestion(f"are there both a {names[0]} and a {names[1]}?", _yes_no(found), full, "logical", "obj",
                       "logicAnd")  # fmt: skip


def _all_names() -> list[str]:
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def _same(pairs: list[tuple[ToyObject, ToyObject]], attribute: str, rng: random.Random):
    """A pair of objects, as often one that shares `attribute` as one that does not (None unless both exist)."""
    alike = [(a, b) for a, b in pairs if getattr(a, attribute) == getattr(b, attribute)]
    unlike = [(a, b) for a, b in pairs if getattr(a, attribute) != getattr(b, attribute)]
    if not alike or not unlike:
        return None
    want = rng.random() < 0.5
    return want, rng.choice(alike if want else unlike)


def _same_color(scene, rng):
    candidates = unique(scene, lambda o: o.shape)
    chosen = _same([(a, b) for i, a in enumerate(candidates) for b in candidates[i + 1 :]], "color", rng)
    if chosen is None:
        return None
    want, (first, second) = chosen
    full = f"{_yes_no(want).capitalize()}, the {first.shape} and the {second.shape} are {_not(want)}the same color."
    return GQAQuestion(f"are the {first.shape} and the {second.shape} the same color?", _yes_no(want), full,
                       "compare", "attr", "sameColor")  # fmt: skip


def _same_size(scene, rng):
    named = _named(scene)
    chosen = _same([(a, b) for i, a in enumerate(named) for b in named[i + 1 :]], "size", rng)
    if chosen is None:
        return None
    want, (first, second) = chosen
    full = f"{_yes_no(want).capitalize()}, the {first.name} and the {second.name} are {_not(want)}the same size."
    return GQAQuestion(f"are the {first.name} and the {second.name} the same size?", _yes_no(want), full, "compare",
                       "attr", "sameSize")  # fmt: skip


Template = Callable[[list[ToyObject], random.Random], "GQAQuestion | None"]
TEMPLATES: tuple[Template, ...] = (
    _exists, _verify_color, _verify_relation,
    _query_color, _query_related_color, _query_related_object, _query_corner,
    _choose_side, _choose_color, _choose_size,
    _logic_or, _logic_and,
    _same_color, _same_size,
)  # fmt: skip
# A fifth of the questions for each structural type. Within a type, questions about one object outweigh those that
# relate two by position ("just left of", "to the left or to the right of"): a small model trained for minutes
# learns the first and only begins to learn the second, which would otherwise swamp the types' figures.
TEMPLATE_WEIGHTS = (
    0.08, 0.08, 0.04,
    0.07, 0.04, 0.03, 0.06,
    0.05, 0.08, 0.07,
    0.10, 0.10,
    0.06, 0.14,
)  # fmt: skip
