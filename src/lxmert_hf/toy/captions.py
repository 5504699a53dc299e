"""Captions of the toy scenes, for pre-training: short sentences true of a scene, as COCO captions are of a photo.

Each names what the scene shows — its objects by color and shape, the large ones as large, one object left or right
of another, two or more objects of a color or a shape ("there are red objects"), the only object of a shape or a
color ("the cube is red") — in the words of the world's own questions only, so that the toy tokenizer, which is
trained on those questions, knows every caption word and the world stays what it is. Which captions an image gets
is drawn from a generator of their own, never from the world's.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

from lxmert_hf.toy.scenes import COLORS, SHAPES, ToyObject, ToySplit, unique, write_json_lines

CAPTIONS_FILE = "{split}_captions.jsonl"
CAPTIONS_PER_IMAGE = 5

Scene = Sequence[ToyObject]


def _objects(scene: Scene) -> Iterator[str]:
    for obj in scene:
        yield f"there is a {obj.name}"
        yield f"a {obj.size} {obj.name}"
        yield f"there is a {obj.size} {obj.name}"


def _sizes(scene: Scene) -> Iterator[str]:
    for obj in unique(scene, lambda o: o.name):
        yield f"the {obj.name} is {obj.size}"


def _only_ones(scene: Scene) -> Iterator[str]:
    for obj in unique(scene, lambda o: o.shape):
        yield f"the {obj.shape} is {obj.color}"
    for obj in unique(scene, lambda o: o.color):
        yield f"the {obj.color} object is a {obj.shape}"


def _counts(scene: Scene) -> Iterator[str]:
    colors, shapes = Counter(o.color for o in scene), Counter(o.shape for o in scene)
    names = Counter(o.name for o in scene)
    yield from (f"there are {color} objects" for color in COLORS if colors[color] > 1)
    yield from (f"there are {shape}s" for shape in SHAPES if shapes[shape] > 1)
    yield from (f"there are {color} {shape}s" for color in COLORS for shape in SHAPES if names[f"{color} {shape}"] > 1)


def _relations(scene: Scene) -> Iterator[str]:
    named = unique(scene, lambda o: o.name)
    for first in named:
        for second in named:
            if first.x < second.x:
                yield f"the {first.name} is left of the {second.name}"
                yield f"the {second.name} is right of the {first.name}"
                yield f"the {first.name} is to the left of the {second.name}"


def _pairs(scene: Scene) -> Iterator[str]:
    # Named from left to right, as one would describe the scene.
    ordered = sorted(scene, key=lambda o: o.x)
    for index, first in enumerate(ordered):
        for second in ordered[index + 1 :]:
            if first.name != second.name:
                yield f"a {first.name} and a {second.name}"


# Caption kinds, each giving every caption of its kind that is true of a scene.
KINDS: dict[str, Callable[[Scene], Iterator[str]]] = {
    "objects": _objects,
    "sizes": _sizes,
    "only ones": _only_ones,
    "counts": _counts,
    "relations": _relations,
    "pairs": _pairs,
}


def question_words(texts: Iterable[str]) -> set[str]:
    """The lower-cased words of `texts` (questions, or NLVR2 sentences), punctuation left out.

    Example:
        ```python
        >>> from lxmert_hf.toy.captions import question_words
        >>> sorted(question_words(["What color is the cube?", "is the cube red?"]))
        ['color', 'cube', 'is', 'red', 'the', 'what']
        ```
    """
    return {word for text in texts for word in re.findall(r"[a-z]+", text.lower())}


def scene_captions(scene: Scene, words: set[str] | None = None) -> dict[str, list[str]]:
    """Every caption true of `scene` whose words are all in `words` (all captions when `None`), by kind.

    Example:
        ```python
        >>> from lxmert_hf.toy import ToyObject
        >>> from lxmert_hf.toy.captions import scene_captions
        >>> scene = [ToyObject("cube", "red", "large", 0.2, 0.5), ToyObject("cone", "blue", "small", 0.7, 0.4)]
        >>> scene_captions(scene, {"the", "is", "left", "of", "red", "blue", "cube", "cone"})["relations"]
        ['the red cube is left of the blue cone']
        ```
    """
    known = (lambda caption: set(caption.split()) <= words) if words is not None else (lambda caption: True)
    return {kind: [c for c in dict.fromkeys(make(scene)) if known(c)] for kind, make in KINDS.items()}


def image_captions(scene: Scene, words: set[str] | None, rng: random.Random, count: int) -> list[str]:
    """Up to `count` distinct captions of `scene`, as varied as it allows: kinds taken in turn, in a drawn order,
    a drawn caption of each.

    Example:
        ```python
        >>> import random
        >>> from lxmert_hf.toy import ToyObject
        >>> from lxmert_hf.toy.captions import image_captions
        >>> scene = [ToyObject("cube", "red", "large", 0.2, 0.5), ToyObject("cone", "red", "small", 0.7, 0.4)]
        >>> len(image_captions(scene, None, random.Random(0), count=3))
        3
        ```
    """
    pools = {kind: list(captions) for kind, captions in scene_captions(scene, words).items() if captions}
    kinds = sorted(pools)
    rng.shuffle(kinds)
    chosen: list[str] = []
    while len(chosen) < count and kinds:
        for kind in list(kinds):
            if len(chosen) == count:
                break
            chosen.append(pools[kind].pop(rng.randrange(len(pools[kind]))))
            if not pools[kind]:
                kinds.remove(kind)
    return chosen


def split_captions(
    split: ToySplit, words: set[str] | None, seed: int = 0, per_image: int = CAPTIONS_PER_IMAGE
) -> list[dict]:
    """`{"image_id", "caption"}` records: up to `per_image` captions of each image of `split`, in image order.

    The captions are drawn from a generator seeded by `seed` and the split's name alone: the world's own generators
    are not touched, and the same split always gets the same captions.

    Example:
        ```python
        >>> from lxmert_hf.toy import ToyVQAWorld, ToyWorldConfig
        >>> from lxmert_hf.toy.captions import question_words, split_captions
        >>> split = ToyVQAWorld(ToyWorldConfig(num_images={"train": 20}, feature_dim=8)).split("train")
        >>> records = split_captions(split, question_words(q["question"] for q in split.questions))
        >>> sorted(records[0]), records[0]["image_id"]
        (['caption', 'image_id'], 'toy_train_000000')
        ```
    """
    if per_image < 1:
        raise ValueError(f"`per_image` must be >= 1, got {per_image}.")
    rng = random.Random(f"{seed}-captions-{split.name}")
    return [
        {"image_id": image_id, "caption": caption}
        for image_id, scene in zip(split.image_ids, split.scenes, strict=True)
        for caption in image_captions(scene, words, rng, per_image)
    ]


def write_captions(
    path: str | os.PathLike,
    split: ToySplit,
    words: set[str] | None,
    seed: int = 0,
    per_image: int = CAPTIONS_PER_IMAGE,
) -> str:
    """Write [`split_captions`] as JSON lines (the caption files pre-training reads); returns the path.

    Example:
        ```python
        >>> import json, os, tempfile
        >>> from lxmert_hf.toy import ToyVQAWorld, ToyWorldConfig
        >>> from lxmert_hf.toy.captions import write_captions
        >>> split = ToyVQAWorld(ToyWorldConfig(num_images={"train": 2}, feature_dim=8)).split("train")
        >>> path = write_captions(os.path.join(tempfile.mkdtemp(), "train_captions.jsonl"), split, None)
        >>> [json.loads(line)["image_id"] for line in open(path)][:2]
        ['toy_train_000000', 'toy_train_000000']
        ```
    """
    write_json_lines(path, split_captions(split, words, seed, per_image))
    return str(path)
