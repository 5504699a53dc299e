"""The toy VQA world: deterministic scenes, region features, questions with annotator answers, a local tokenizer."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lxmert_hf.toy import ATTRIBUTE_CODES, COLORS, SHAPES, ToyVQAWorld, ToyWorldConfig


def small(**overrides) -> ToyWorldConfig:
    options = {"num_images": {"train": 30, "validation": 10}, "feature_dim": 64}
    return ToyWorldConfig(**{**options, **overrides})


def test_same_config_same_world_and_other_seed_other_world():
    first, again = ToyVQAWorld(small()).split("train"), ToyVQAWorld(small()).split("train")
    assert first.questions == again.questions
    np.testing.assert_array_equal(first.features, again.features)
    np.testing.assert_array_equal(first.boxes, again.boxes)
    other = ToyVQAWorld(small(seed=1)).split("train")
    assert other.questions != first.questions


def test_scenes_regions_and_boxes():
    split = ToyVQAWorld(small()).split("train")
    assert split.features.shape == (30, 36, 64) and split.boxes.shape == (30, 36, 4)
    assert all(3 <= len(scene) <= 8 for scene in split.scenes)
    assert (split.features >= 0).all()  # post-ReLU, as a detector's
    assert (split.boxes >= 0).all() and (split.boxes <= 1).all()
    assert (split.boxes[..., 2:] >= split.boxes[..., :2]).all()
    assert (split.masks == 1).all()  # background regions left as distractors by default


@pytest.mark.parametrize("visible", [0, 1, 3])
def test_masked_background_keeps_objects_and_visible_background(visible):
    split = ToyVQAWorld(small(mask_background=True, visible_background=visible)).split("train")
    for scene, mask, boxes in zip(split.scenes, split.masks, split.boxes, strict=True):
        assert mask.sum() == len(scene) + visible
        whole_image = np.all(boxes == (0.0, 0.0, 1.0, 1.0), axis=1)
        # The first background region covers the whole image and is visible whenever any background is.
        assert whole_image.sum() == 1 and bool(mask[whole_image][0]) == (visible > 0)


def test_object_regions_encode_their_attributes():
    """Features are sums of fixed rows, one per attribute code of an object, plus noise: equal objects look alike."""
    world = ToyVQAWorld(small(feature_noise=0.0, mask_background=True, visible_background=0))
    split = world.split("train")
    seen = {}
    for scene, features, mask in zip(split.scenes, split.features, split.masks, strict=True):
        objects = features[mask.astype(bool)]
        assert len(objects) == len(scene)
        for row in objects:
            key = row.tobytes()  # exact: the generation uses no rounding float arithmetic
            seen[key] = seen.get(key, 0) + 1
    # Without noise, the distinct feature vectors are at most the distinct (shape, color, size) triples.
    assert len(seen) <= len(SHAPES) * len(COLORS) * 2


def test_object_features_equal_an_independent_recomputation():
    world = ToyVQAWorld(small(feature_noise=0.0, mask_background=True, visible_background=0))
    split = world.split("train")
    rows = {tuple(code): [int(value) for value in row] for code, row in zip(ATTRIBUTE_CODES, world.codes, strict=True)}
    for scene, features, boxes in zip(split.scenes, split.features, split.boxes, strict=True):
        for obj in scene:
            codes = [(obj.shape,), (obj.color,), (obj.size,), (obj.color, obj.shape), (obj.size, obj.shape),
                     (obj.size, obj.color)]  # fmt: skip
            # Units of 1/1024, summed as Python integers, ReLU'd: the feature row of this object's region.
            expected = [max(sum(rows[code][dim] for code in codes), 0) / 1024 for dim in range(features.shape[1])]
            (where,) = np.flatnonzero(np.all(boxes == np.float32(obj.box), axis=1))
            np.testing.assert_array_equal(features[where], np.array(expected, dtype=np.float32))


def test_generation_is_exact_and_gives_the_same_bits_on_any_machine():
    split = ToyVQAWorld(small(num_images={"validation": 4})).split("validation")
    units = split.features.astype(np.float64) * 2**18  # the features are integers in units of 2**-18
    np.testing.assert_array_equal(units, np.round(units))
    # A digest of this world's features, the same on every CPU. It changes only when the toy world's generation
    # changes (then `lxmert_hf.toy.GENERATION` must change too, so that no cache serves the old world) or when NumPy
    # changes the integer streams of `np.random.Generator` (then bump GENERATION and update the digest).
    assert hashlib.sha256(split.features.astype("<f4").tobytes()).hexdigest()[:16] == "43767cf4a7d89ea0"


def test_questions_cover_answer_types_with_ten_disagreeing_answers():
    split = ToyVQAWorld(small(num_images={"train": 200})).split("train")
    questions = split.questions
    assert {q["answer_type"] for q in questions} == {"yes/no", "number", "other"}
    assert all(len(q["answers"]) == 10 for q in questions)
    assert any(len(set(q["answers"])) > 1 for q in questions)  # annotators disagree, so soft scores matter
    # The majority answer is the true one: annotators are right more often than not.
    majority_right = sum(Counter(q["answers"]).most_common(1)[0][0] == q["multiple_choice_answer"] for q in questions)
    assert majority_right / len(questions) > 0.95
    texts = [q["question"] for q in questions]
    for opening in ("what color is the", "how many", "is there a", "what shape is left of", "what shape is right of"):
        assert any(text.startswith(opening) for text in texts), opening


def test_answers_agree_with_the_scene():
    split = ToyVQAWorld(small(num_images={"train": 100})).split("train")
    scenes = dict(zip(range(len(split.scenes)), split.scenes, strict=True))
    checked = 0
    for question in split.questions:
        scene, text, answer = scenes[question["image_id"]], question["question"], question["multiple_choice_answer"]
        words = text.rstrip("?").split()
        if text.startswith("how many") and words[2] in COLORS:
            assert int(answer) == sum(obj.color == words[2] for obj in scene)
        elif text.startswith("is there a"):
            present = any(obj.color == words[3] and obj.shape == words[4] for obj in scene)
            assert answer == ("yes" if present else "no")
        elif text.startswith("what color is the"):
            assert [obj.color for obj in scene if obj.shape == words[4]] == [answer]
        else:
            continue
        checked += 1
    assert checked > 100


def test_tokenizer_keeps_the_worlds_words_whole():
    world = ToyVQAWorld(small())
    tokenizer = world.tokenizer([world.split("train")])
    assert tokenizer.tokenize("how many cylinders are there?") == ["how", "many", "cylinders", "are", "there", "?"]
    assert tokenizer.convert_tokens_to_ids("[CLS]") != tokenizer.unk_token_id


def test_written_files_use_the_official_vqa_layout(tmp_path):
    world = ToyVQAWorld(small(mask_background=True))
    split = world.split("validation")
    paths = world.write_vqa_files(tmp_path, [split])
    questions = json.loads(Path(paths["validation_questions"]).read_text())["questions"]
    annotations = json.loads(Path(paths["validation_annotations"]).read_text())["annotations"]
    assert len(questions) == len(annotations) == len(split.questions)
    assert {"question_id", "image_id", "question"} == set(questions[0])
    assert len(annotations[0]["answers"]) == 10 and "answer_type" in annotations[0]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_images": {"dev": 3}}, "unknown splits"),
        ({"min_objects": 0}, "min_objects"),
        ({"max_objects": 40}, "max_objects"),
        ({"visible_background": 29}, "visible_background"),
        ({"visible_background": -1}, "visible_background"),
        ({"feature_noise": -0.1}, "feature_noise"),
    ],
)
def test_bad_configs(options, match):
    with pytest.raises(ValueError, match=match):
        ToyWorldConfig(**options)


def test_unknown_split():
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        ToyVQAWorld(small()).split("test")
