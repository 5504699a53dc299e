"""The toy worlds as pre-training data: detector-like labels of every region, captions true of the scenes in words
the toy tokenizer knows, and the world itself (features, questions, the tokenizer's texts) left as it was."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from lxmert_hf.data import PretrainingDataCollator, load_answer_vocabulary, load_pretraining
from lxmert_hf.data.store import open_store_dataset
from lxmert_hf.toy import (
    ATTRIBUTE_LABELS,
    BACKGROUND_SCORE,
    CAPTIONS_FILE,
    CAPTIONS_PER_IMAGE,
    COLORS,
    OBJECT_LABELS,
    OBJECT_SCORE,
    SHAPES,
    SPLIT_NAMES,
    WORLDS,
    ToyVQAWorld,
    ToyWorldConfig,
    question_words,
    scene_captions,
    split_captions,
)
from lxmert_hf.training.data import prepare_toy

SPLITS = {"train": 40, "validation": 12, "test": 12}


def small(**overrides) -> ToyWorldConfig:
    options = {"num_images": SPLITS, "feature_dim": 16, "mask_background": True}
    return ToyWorldConfig(**{**options, **overrides})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("toy")
    return {task: prepare_toy(small(), cache_dir=cache, task=task) for task in ("vqa", "gqa")}


def test_label_lists_put_the_non_object_labels_first():
    assert ("__background__", *SHAPES) == OBJECT_LABELS
    assert ("__no_attribute__", *COLORS) == ATTRIBUTE_LABELS
    assert 0 < BACKGROUND_SCORE < OBJECT_SCORE == 1.0


@pytest.mark.parametrize("task", ["vqa", "gqa", "nlvr2"])
@pytest.mark.parametrize("mask_background", [False, True])
def test_each_object_region_shows_its_object_and_the_rest_is_background(task, mask_background):
    split = WORLDS[task](small(mask_background=mask_background)).split("validation")
    for scene, regions, boxes in zip(split.scenes, split.regions, split.boxes, strict=True):
        shown = regions[regions >= 0]
        assert sorted(shown.tolist()) == list(range(len(scene)))  # each object in exactly one region
        for region, index in enumerate(regions):
            if index >= 0:
                np.testing.assert_array_equal(boxes[region], np.float32(scene[index].box))
        whole_image = np.all(boxes == (0.0, 0.0, 1.0, 1.0), axis=1)
        assert (regions[whole_image] == -1).all()


def _expected_labels(scene, regions):
    names = [(scene[i].shape, scene[i].color) if i >= 0 else (OBJECT_LABELS[0], ATTRIBUTE_LABELS[0]) for i in regions]
    scores = [OBJECT_SCORE if i >= 0 else BACKGROUND_SCORE for i in regions]
    return [OBJECT_LABELS.index(s) for s, _ in names], [ATTRIBUTE_LABELS.index(c) for _, c in names], scores


@pytest.mark.parametrize("task", ["vqa", "gqa"])
def test_prepared_store_carries_the_labels_and_the_world_unchanged(task, prepared):
    """Labels per region as the scene gives them; features and boxes exactly the generator's (integers underneath)."""
    world = WORLDS[task](small())
    store = open_store_dataset(prepared[task] / "prepared" / "features").with_format("numpy")
    rows = {image_id: row for row, image_id in enumerate(store["image_id"])}
    for name in SPLITS:
        split = world.split(name)
        for index, image_id in enumerate(split.image_ids):
            example = store[rows[image_id]]
            keep = split.masks[index].astype(bool)
            object_ids, attribute_ids, scores = _expected_labels(split.scenes[index], split.regions[index][keep])
            assert example["object_ids"].tolist() == object_ids
            assert example["attribute_ids"].tolist() == attribute_ids
            np.testing.assert_array_equal(example["object_scores"], np.float32(scores))
            np.testing.assert_array_equal(example["attribute_scores"], np.float32(scores))
            assert 0 in object_ids and set(object_ids) <= set(range(len(OBJECT_LABELS)))
            np.testing.assert_array_equal(example["visual_feats"], split.features[index][keep])
            np.testing.assert_allclose(example["visual_pos"], split.boxes[index][keep], atol=1e-6)
    questions = datasets.load_from_disk(str(prepared[task] / "prepared" / "questions"))
    for name in SPLITS:
        texts = [q["question"] for q in world.split(name).questions]
        assert questions[SPLIT_NAMES[task][name]]["question"] == texts


def test_worlds_are_the_ones_measured():
    """Digests of the worlds' questions, features, boxes and masks, as generated before the regions had labels: the
    labels and captions draw nothing from the worlds' generators. The same on every CPU (integer features)."""
    expected = {"vqa": "e5934199a4274209", "gqa": "fcb1959b258e341c", "nlvr2": "df46517d1c3f7fb9"}
    config = ToyWorldConfig(num_images={"train": 12, "validation": 4, "test": 4}, feature_dim=16, mask_background=True)
    for task, digest in expected.items():
        world, hasher = WORLDS[task](config), hashlib.sha256()
        for name in ("train", "validation", "test"):
            split = world.split(name)
            hasher.update(json.dumps([split.image_ids, split.questions], sort_keys=True).encode())
            for array, dtype in ((split.features, "<f4"), (split.boxes, "<f4"), (split.masks, "<i8")):
                hasher.update(array.astype(dtype).tobytes())
        assert hasher.hexdigest()[:16] == digest, task


def test_tokenizer_is_trained_on_the_train_questions_only(tmp_path, monkeypatch):
    import lxmert_hf.toy.vqa as vqa

    seen = []
    train_tokenizer = vqa.train_tokenizer
    monkeypatch.setattr(vqa, "train_tokenizer", lambda texts: train_tokenizer(seen.extend(texts) or seen))
    prepare_toy(small(), cache_dir=tmp_path)
    assert seen == [q["question"] for q in ToyVQAWorld(small()).split("train").questions]


# What each caption says, and when that is true of a scene: a reading of the captions independent of how they are
# made, so that a caption that is not true of its scene, or not understood, fails.
_NAME = rf"({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"


def _only(scene, **attributes):
    found = [o for o in scene if all(getattr(o, key) == value for key, value in attributes.items())]
    return found[0] if len(found) == 1 else None


def _left(scene, first, second):
    a, b = _only(scene, color=first[0], shape=first[1]), _only(scene, color=second[0], shape=second[1])
    return a is not None and b is not None and a.x < b.x


def _count(scene, **attributes) -> int:
    return sum(all(getattr(o, key) == value for key, value in attributes.items()) for o in scene)


READINGS = [
    (rf"(?:there is )?a (large|small) {_NAME}", lambda s, m: _count(s, size=m[1], color=m[2], shape=m[3]) > 0),
    (rf"there is a {_NAME}", lambda s, m: _count(s, color=m[1], shape=m[2]) > 0),
    (rf"a {_NAME} and a {_NAME}", lambda s, m: _count(s, color=m[1], shape=m[2]) * _count(s, color=m[3], shape=m[4])),
    (rf"the {_NAME} is (large|small)", lambda s, m: getattr(_only(s, color=m[1], shape=m[2]), "size", 0) == m[3]),
    (rf"the ({'|'.join(SHAPES)}) is (\w+)", lambda s, m: getattr(_only(s, shape=m[1]), "color", 0) == m[2]),
    (r"the (\w+) object is a (\w+)", lambda s, m: getattr(_only(s, color=m[1]), "shape", 0) == m[2]),
    (r"there are (\w+) objects", lambda s, m: _count(s, color=m[1]) > 1),
    (rf"there are ({'|'.join(SHAPES)})s", lambda s, m: _count(s, shape=m[1]) > 1),
    (rf"there are {_NAME}s", lambda s, m: _count(s, color=m[1], shape=m[2]) > 1),
    (rf"the {_NAME} is (?:to the )?left of the {_NAME}", lambda s, m: _left(s, m.group(1, 2), m.group(3, 4))),
    (rf"the {_NAME} is right of the {_NAME}", lambda s, m: _left(s, m.group(3, 4), m.group(1, 2))),
]


def _true_of(caption, scene) -> bool:
    for pattern, holds in READINGS:
        match = re.fullmatch(pattern, caption)
        if match:
            return bool(holds(scene, match))
    raise AssertionError(f"caption {caption!r} matches no reading")


@pytest.mark.parametrize("task", ["vqa", "gqa"])
def test_captions_are_true_of_their_scenes_varied_and_in_known_words(task, prepared):
    root, world = prepared[task], WORLDS[task](small())
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    questions = datasets.load_from_disk(str(root / "prepared" / "questions"))
    words = question_words(q["question"] for q in world.split("train").questions)
    for name in SPLITS:
        split = world.split(name)
        prepared_name = SPLIT_NAMES[task][name]
        path = root / "raw" / CAPTIONS_FILE.format(split=prepared_name)
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert {r["image_id"] for r in records} == set(split.image_ids) == set(questions[prepared_name]["image_id"])
        scenes = dict(zip(split.image_ids, split.scenes, strict=True))
        per_image = Counter(r["image_id"] for r in records)
        assert min(per_image.values()) >= 2 and max(per_image.values()) <= CAPTIONS_PER_IMAGE
        assert sum(per_image.values()) / len(per_image) > CAPTIONS_PER_IMAGE - 1
        for record in records:
            caption, scene = record["caption"], scenes[record["image_id"]]
            assert _true_of(caption, scene), (caption, scene)
            assert set(caption.split()) <= words, caption
            assert tokenizer.unk_token_id not in tokenizer(caption)["input_ids"], caption
        by_image = {image_id: [r["caption"] for r in records if r["image_id"] == image_id] for image_id in per_image}
        assert all(len(set(captions)) == len(captions) for captions in by_image.values())
        assert len({r["caption"] for r in records}) > len(records) // 2


def test_every_true_caption_reads_true_and_unknown_words_are_left_out():
    split = ToyVQAWorld(small(num_images={"train": 30})).split("train")
    for scene in split.scenes:
        for captions in scene_captions(scene).values():
            assert all(_true_of(caption, scene) for caption in captions)
    few = {"there", "is", "a", "the", "red", "blue", "cube", "sphere", "object"}
    records = split_captions(split, few)
    assert records and all(set(r["caption"].split()) <= few for r in records)
    assert split_captions(split, few) == records  # the same split always gets the same captions
    with pytest.raises(ValueError, match="per_image"):
        split_captions(split, few, per_image=0)


def test_load_pretraining_reads_the_toy_world_with_region_labels(prepared, tmp_path):
    root = prepared["vqa"]
    answers = load_answer_vocabulary(root / "prepared")
    dataset = load_pretraining(
        [f"captions:{root / 'raw' / 'train_captions.jsonl'}", f"prepared:{root / 'prepared'}@train"],
        features=root / "prepared" / "features",
        qa_answers=answers,
        visual_losses=("obj", "attr", "feat"),
        cache_dir=tmp_path,
    )
    captions = len((root / "raw" / "train_captions.jsonl").read_text().splitlines())
    questions = datasets.load_from_disk(str(root / "prepared" / "questions"))["train"]
    assert len(dataset) == captions + len(questions)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    rows = [0, 1, 2, captions, captions + 1, captions + 2]
    examples = [dataset[row] for row in rows]
    assert [e["is_question"] for e in examples] == [False] * 3 + [True] * 3
    collate = PretrainingDataCollator(tokenizer, swap_probability=0.0, seed=0)
    batch = collate(examples)
    object_ids, object_scores = batch["obj_labels"]["obj"]
    attribute_ids, _ = batch["obj_labels"]["attr"]
    regions = batch["visual_feats"].shape[1]
    assert object_ids.shape == attribute_ids.shape == object_scores.shape == (len(rows), regions)
    for position, example in enumerate(examples):
        count = len(example["object_ids"])
        assert object_ids[position, :count].tolist() == example["object_ids"].tolist()
        assert attribute_ids[position, :count].tolist() == example["attribute_ids"].tolist()
        assert set(example["object_ids"].tolist()) > {0}  # objects and the background
    answered = [bool(e["qa_label_ids"]) for e in examples]
    assert answered[3:] == [True] * 3
    assert (batch["ans"][3:] >= 0).all() and (batch["ans"][:3] == -100).all()
