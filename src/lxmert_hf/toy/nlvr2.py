"""The toy NLVR2 world: statements about a pair of scenes ("both images contain a sphere", "the left image has
more red objects than the right image"), true or false, written as NLVR2's official JSON-lines files.

Like NLVR2, examples come in sets: each set holds `PAIRS_PER_SET` image pairs, and each sentence written for a set is
paired with every pair of it (identifier `split-set-pair-sentence`). A sentence is kept only when it is true of
exactly half of its set's pairs, so every sentence, and so every template, is as often true as false: the words
alone tell nothing, and consistency (all pairs of a sentence right) is meaningful.
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
    word_tokenizer,
    write_features_tsv,
    write_json_lines,
)

# The NLVR2 names of the shared config's splits (the file names LXMERT uses), and the identifiers' split field.
NLVR2_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
IDENTIFIER_SPLITS = {"train": "train", "validation": "dev", "test": "test1"}
PAIRS_PER_SET = 4

Scene = list[ToyObject]


@dataclasses.dataclass(frozen=True)
class Thing:
    """What a statement counts: objects of a color and shape, of a shape, or of a color."""

    singular: str
    plural: str
    color: str | None = None
    shape: str | None = None

    def count(self, scene: Scene) -> int:
        return sum((self.color in (None, o.color)) and (self.shape in (None, o.shape)) for o in scene)


# Things named by one attribute (a shape, or a color): few things to look for, so that a small LXMERT trained from
# scratch on true/false labels alone learns them in minutes.
THINGS = [Thing(s, f"{s}s", shape=s) for s in SHAPES] + [Thing(f"{c} object", f"{c} objects", color=c) for c in COLORS]


@dataclasses.dataclass(frozen=True)
class Statement:
    template: str
    sentence: str
    holds: Callable[[Scene, Scene], bool]


def _both(thing: Thing) -> Statement:
    return Statement("both", f"both images contain a {thing.singular}.",
                     lambda left, right: thing.count(left) > 0 and thing.count(right) > 0)  # fmt: skip


def _exactly_one(thing: Thing) -> Statement:
    return Statement("exactly one", f"exactly one image contains a {thing.singular}.",
                     lambda left, right: (thing.count(left) > 0) != (thing.count(right) > 0))  # fmt: skip


def _neither(thing: Thing) -> Statement:
    return Statement("neither", f"neither image contains a {thing.singular}.",
                     lambda left, right: thing.count(left) == 0 and thing.count(right) == 0)  # fmt: skip


def _one_side(thing: Thing, side: str) -> Statement:
    index = 0 if side == "left" else 1
    return Statement("one side", f"the {side} image contains a {thing.singular}.",
                     lambda *pair: thing.count(pair[index]) > 0)  # fmt: skip


def _more(thing: Thing, side: str) -> Statement:
    sign = 1 if side == "left" else -1
    other = "right" if side == "left" else "left"
    return Statement("more", f"the {side} image has more {thing.plural} than the {other} image.",
                     lambda left, right: sign * (thing.count(left) - thing.count(right)) > 0)  # fmt: skip


def _same_number(thing: Thing) -> Statement:
    return Statement("same number", f"the two images contain the same number of {thing.plural}.",
                     lambda left, right: thing.count(left) == thing.count(right))  # fmt: skip


# Every statement of each template, by template; a set's sentences are drawn template first, then statement.
STATEMENTS: dict[str, list[Statement]] = {
    "both": [_both(t) for t in THINGS],
    "exactly one": [_exactly_one(t) for t in THINGS],
    "neither": [_neither(t) for t in THINGS],
    "one side": [_one_side(t, side) for t in THINGS for side in ("left", "right")],
    "more": [_more(t, side) for t in THINGS for side in ("left", "right")],
    "same number": [_same_number(t) for t in THINGS],
}
TEMPLATE_NAMES = tuple(STATEMENTS)


class ToyNLVR2World(ToyScenes):
    """Deterministic generator of the toy NLVR2 world. A split of `num_images` images holds
    `num_images // (2 * PAIRS_PER_SET)` sets (at least one) of `PAIRS_PER_SET` pairs, and up to
    `questions_per_image` sentences per set.

    Example:
        ```python
        >>> from lxmert_hf.toy import ToyNLVR2World, ToyWorldConfig
        >>> world = ToyNLVR2World(ToyWorldConfig(num_images={"train": 16}, feature_dim=32, questions_per_image=2))
        >>> split = world.split("train")
        >>> split.image_ids[:2], split.features.shape
        (['train-0-0-img0', 'train-0-0-img1'], (16, 36, 32))
        >>> sorted(split.questions[0]), sorted({q["label"] for q in split.questions})
        (['identifier', 'label', 'left_url', 'right_url', 'sentence'], ['False', 'True'])
        ```
    """

    def split(self, name: str) -> ToySplit:
        """Generate split `name` (`train`, `validation` or `test` of the config; named `train`, `valid`, `test`)."""
        self._check_split(name)
        offset = SPLITS.index(name)
        rng = random.Random(f"{self.config.seed}-nlvr2-{name}")
        feature_rng = np.random.default_rng([self.config.seed, offset, 2])
        prefix = IDENTIFIER_SPLITS[name]
        image_ids, scenes, examples = [], [], []
        for set_index in range(max(1, self.config.num_images[name] // (2 * PAIRS_PER_SET))):
            pairs = [(self._scene(rng), self._scene(rng)) for _ in range(PAIRS_PER_SET)]
            for pair_index, pair in enumerate(pairs):
                image_ids += [f"{prefix}-{set_index}-{pair_index}-img{side}" for side in (0, 1)]
                scenes += pair
            for number, statement in enumerate(self._statements(pairs, rng)):
                for pair_index, pair in enumerate(pairs):
                    examples.append(_example(f"{prefix}-{set_index}-{pair_index}-{number}", statement, *pair))
        features, boxes, masks, regions = self._regions(scenes, feature_rng)
        return ToySplit(NLVR2_SPLITS[name], image_ids, scenes, features, boxes, masks, examples, regions)

    def _statements(self, pairs: list[tuple[Scene, Scene]], rng: random.Random) -> list[Statement]:
        """Up to `questions_per_image` distinct statements, each true of exactly half of `pairs`."""
        chosen: dict[str, Statement] = {}
        for _ in range(self.config.questions_per_image * 3):
            if len(chosen) == self.config.questions_per_image:
                break
            balanced = [
                s for s in STATEMENTS[rng.choice(TEMPLATE_NAMES)]
                if sum(s.holds(*pair) for pair in pairs) * 2 == len(pairs) and s.sentence not in chosen
            ]  # fmt: skip
            if balanced:
                statement = rng.choice(balanced)
                chosen[statement.sentence] = statement
        return list(chosen.values())

    def tokenizer(self, splits: list[ToySplit] | None = None):
        """A transformers tokenizer that keeps every word of the world's sentences whole."""
        splits = splits or [self.split("train")]
        return word_tokenizer(q["sentence"] for split in splits for q in split.questions)

    def write_nlvr2_files(self, output_dir: str | os.PathLike, splits: list[ToySplit]) -> dict[str, str]:
        """Write `splits` as NLVR2's files: a feature TSV in the original LXMERT layout (images `<identifier
        without its sentence field>-img0` / `-img1`) and, per split, an official JSON-lines file `<split>.json`.
        Returns the written paths by name (`features`, then the split names)."""
        os.makedirs(output_dir, exist_ok=True)
        paths = {"features": write_features_tsv(os.path.join(output_dir, "features.tsv"), splits)}
        for split in splits:
            paths[split.name] = os.path.join(output_dir, f"{split.name}.json")
            write_json_lines(paths[split.name], split.questions)
        return paths


def _example(identifier: str, statement: Statement, left: Scene, right: Scene) -> dict:
    stem = identifier.rsplit("-", 1)[0]
    return {
        "identifier": identifier,
        "sentence": statement.sentence,
        "label": str(statement.holds(left, right)),
        "left_url": f"toy://{stem}-img0.png",
        "right_url": f"toy://{stem}-img1.png",
    }


def template_of(sentence: str) -> str:
    """The template a toy NLVR2 sentence was written from (for accuracy per template)."""
    for name, statements in STATEMENTS.items():
        if any(s.sentence == sentence for s in statements):
            return name
    raise ValueError(f"{sentence!r} is not a sentence of the toy NLVR2 world.")
