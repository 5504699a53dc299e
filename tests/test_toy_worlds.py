"""The toy GQA and NLVR2 worlds: deterministic, in the official formats, prepared through the real path, and fair
(the words alone do not tell the answer)."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from lxmert_hf.data import load_answer_vocabulary, load_prepared
from lxmert_hf.metrics.official import read_gqa_questions, read_nlvr2_annotations
from lxmert_hf.toy import STRUCTURAL_TYPES, ToyGQAWorld, ToyNLVR2World, ToyWorldConfig
from lxmert_hf.toy.nlvr2 import template_of
from lxmert_hf.training.data import _fingerprint, prepare_toy, toy_splits
from lxmert_hf_cli import main as cli

ALL_SPLITS = {"train": 40, "validation": 16, "test": 16}


def small(**overrides) -> ToyWorldConfig:
    options = {"num_images": ALL_SPLITS, "feature_dim": 32, "mask_background": True}
    return ToyWorldConfig(**{**options, **overrides})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("toy")
    return {task: prepare_toy(small(), cache_dir=cache, task=task) for task in ("gqa", "nlvr2")}


@pytest.mark.parametrize("world_class", [ToyGQAWorld, ToyNLVR2World])
def test_same_config_same_world_and_other_seed_other_world(world_class):
    first, again = world_class(small()).split("train"), world_class(small()).split("train")
    assert first.questions == again.questions and first.image_ids == again.image_ids
    np.testing.assert_array_equal(first.features, again.features)
    np.testing.assert_array_equal(first.boxes, again.boxes)
    assert world_class(small(seed=1)).split("train").questions != first.questions


@pytest.mark.parametrize("task", ["gqa", "nlvr2"])
def test_same_config_same_files(task, tmp_path):
    roots = [prepare_toy(small(), cache_dir=tmp_path / name, task=task) for name in ("a", "b")]
    files = [sorted(p.relative_to(root) for p in (root / "raw").iterdir()) for root in roots]
    assert files[0] == files[1] and files[0]
    for name in files[0]:
        assert (roots[0] / name).read_bytes() == (roots[1] / name).read_bytes(), name


def test_each_task_has_its_own_cache_and_the_vqa_cache_is_unchanged():
    config = small()
    assert _fingerprint(config) == _fingerprint(config, "vqa")
    assert len({_fingerprint(config, task) for task in ("vqa", "gqa", "nlvr2")}) == 3
    # The VQA world's key of the Quickstart's settings: adding the GQA and NLVR2 worlds left it alone. It changes
    # only with the VQA world (then `GENERATION` changes) or with what a prepared world holds (then the `format` of
    # `_fingerprint` changes; format 4 added the regions' labels and the captions).
    quickstart = ToyWorldConfig(num_images={"train": 2000, "validation": 250, "test": 250}, mask_background=True)
    assert _fingerprint(quickstart) == "8691baa51aa197c9"


@pytest.mark.parametrize(
    ("task", "splits"),
    [("vqa", ["train", "val", "test"]), ("gqa", ["train", "val", "testdev"]), ("nlvr2", ["train", "valid", "test"])],
)
def test_toy_splits_name_the_prepared_splits(task, splits, prepared):
    assert toy_splits(task, small()) == splits
    assert toy_splits(task, small(num_images={"train": 8, "test": 8})) == [splits[0], splits[2]]
    if task in prepared:
        import datasets

        assert sorted(datasets.load_from_disk(str(prepared[task] / "prepared" / "questions"))) == sorted(splits)


def test_unknown_task():
    with pytest.raises(ValueError, match="`task` 'vqa2' has no toy world"):
        toy_splits("vqa2", small())
    with pytest.raises(ValueError, match="`task` 'vqa2' has no toy world"):
        prepare_toy(small(), task="vqa2")


def test_gqa_files_are_official_and_evaluate_to_100_percent(prepared, tmp_path, capsys):
    root = prepared["gqa"]
    path = root / "raw" / "testdev_balanced_questions.json"
    questions = read_gqa_questions(path)
    record = next(iter(questions.values()))
    assert {"imageId", "question", "answer", "fullAnswer", "types"} <= set(record)
    assert record["types"]["structural"] in STRUCTURAL_TYPES
    predictions = [{"questionId": qid, "prediction": q["answer"]} for qid, q in questions.items()]
    (tmp_path / "predictions.json").write_text(json.dumps(predictions))
    assert cli(["evaluate", "gqa", "--questions", str(path), "--predictions", str(tmp_path / "predictions.json"),
                "--output", str(tmp_path / "metrics.json")]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] == 100.0
    # The prepared questions are the file's, with their one exact answer each.
    testdev = load_prepared(root / "prepared", "testdev")
    assert sorted(testdev["question_id"]) == sorted(questions)
    assert all(example["answers"] == [questions[example["question_id"]]["answer"]] for example in testdev)


def test_gqa_questions_are_compositional_typed_and_fair():
    questions = ToyGQAWorld(small(num_images={"train": 300})).split("train").questions
    assert {q["types"]["structural"] for q in questions} == set(STRUCTURAL_TYPES)
    answers = Counter(q["answer"] for q in questions)
    assert {"yes", "no", "left", "right", "top-left"} <= set(answers)
    assert any(" " in answer for answer in answers)  # object names: "red cube"
    assert abs(answers["yes"] - answers["no"]) < 0.1 * (answers["yes"] + answers["no"])
    texts = [q["question"] for q in questions]
    for opening in ("is the", "what color is the object just", "is there a", "are there both", "in which corner"):
        assert any(text.startswith(opening) for text in texts), opening


def test_gqa_answers_agree_with_the_scene():
    split = ToyGQAWorld(small(num_images={"train": 100})).split("train")
    scenes = dict(zip(split.image_ids, split.scenes, strict=True))
    checked = 0
    for question in split.questions:
        scene, text, answer = scenes[question["imageId"]], question["question"], question["answer"]
        words = text.rstrip("?").split()
        if text.startswith("is there a") and " or " in text:
            names = [" ".join(words[3:5]), " ".join(words[7:9])]
            assert answer == ("yes" if any(o.name in names for o in scene) else "no")
        elif text.startswith("is the") and " to the left or to the right of the " in text:
            (first,) = [o for o in scene if o.name == " ".join(words[2:4])]
            (second,) = [o for o in scene if o.name == " ".join(words[-2:])]
            assert answer == ("left" if first.x < second.x else "right")
        elif text.startswith("in which corner is the"):
            (obj,) = [o for o in scene if o.name == " ".join(words[-2:])]
            assert answer == f"{'top' if obj.y < 0.5 else 'bottom'}-{'left' if obj.x < 0.5 else 'right'}"
        else:
            continue
        checked += 1
    assert checked > 100


def test_gqa_vocabulary_holds_the_answers(prepared):
    vocabulary = load_answer_vocabulary(prepared["gqa"] / "prepared").answers
    train = load_prepared(prepared["gqa"] / "prepared", "train")
    assert len(vocabulary) == len(set(train["answer"]))
    # Each question's label is its one answer as written ("top-left" too), scored 1.
    for example in train:
        expected = np.zeros(len(vocabulary), dtype=np.float32)
        expected[vocabulary.index(example["answer"])] = 1.0
        np.testing.assert_array_equal(np.asarray(example["labels"]), expected)


def test_nlvr2_files_are_official_and_evaluate_to_100_percent(prepared, tmp_path):
    root = prepared["nlvr2"]
    path = root / "raw" / "test.json"
    labels = read_nlvr2_annotations(path)
    record = json.loads(path.read_text().splitlines()[0])
    assert {"identifier", "sentence", "label", "left_url", "right_url"} <= set(record)
    with open(tmp_path / "predictions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows((identifier, str(label)) for identifier, label in labels.items())
    assert cli(["evaluate", "nlvr2", "--annotations", str(path), "--predictions", str(tmp_path / "predictions.csv"),
                "--output", str(tmp_path / "metrics.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"accuracy": 100.0, "consistency": 100.0}
    # Both images of every pair are in the store, under the ids the reader derives from the identifier.
    test = load_prepared(root / "prepared", "test")
    assert len(test) == len(labels)
    example = test[0]
    assert example["img0"] == example["identifier"].rsplit("-", 1)[0] + "-img0"
    assert np.asarray(example["visual_feats"]).shape[0] == 2
    assert [bool(e["labels"]) for e in test] == [labels[e["identifier"]] for e in test]


def test_nlvr2_labels_balanced_per_template_and_sentences_repeated():
    examples = ToyNLVR2World(small(num_images={"train": 400})).split("train").questions
    per_template = Counter((template_of(e["sentence"]), e["label"]) for e in examples)
    templates = {template for template, _ in per_template}
    assert len(templates) == 6
    for template in templates:
        assert per_template[template, "True"] == per_template[template, "False"], template
    by_sentence = defaultdict(list)
    for example in examples:
        split, set_index, _, sentence = example["identifier"].split("-")
        by_sentence[split, set_index, sentence].append(example)
    for group in by_sentence.values():
        assert len(group) == 4 and len({e["sentence"] for e in group}) == 1
        assert Counter(e["label"] for e in group) == {"True": 2, "False": 2}


def _count(scene, words: list[str]) -> int:
    """Objects of `scene` that words like ["red", "cube"], ["cubes"] or ["red", "objects"] describe."""
    color = words[0] if len(words) == 2 else None
    shape = words[-1].removesuffix("s")
    return sum(color in (None, o.color) and shape in ("object", o.shape) for o in scene)


def test_nlvr2_labels_agree_with_the_scenes():
    split = ToyNLVR2World(small(num_images={"train": 80})).split("train")
    scenes = dict(zip(split.image_ids, split.scenes, strict=True))
    checked = 0
    for example in split.questions:
        stem = example["identifier"].rsplit("-", 1)[0]
        left, right = scenes[f"{stem}-img0"], scenes[f"{stem}-img1"]
        sentence = example["sentence"].rstrip(".")
        if sentence.startswith("both images contain a "):
            thing = sentence.removeprefix("both images contain a ").split()
            truth = _count(left, thing) > 0 and _count(right, thing) > 0
        elif sentence.startswith("exactly one image contains a "):
            thing = sentence.removeprefix("exactly one image contains a ").split()
            truth = (_count(left, thing) > 0) != (_count(right, thing) > 0)
        elif sentence.startswith("the left image has more "):
            thing = sentence.removeprefix("the left image has more ").removesuffix(" than the right image").split()
            truth = _count(left, thing) > _count(right, thing)
        else:
            continue
        assert example["label"] == str(truth), example
        checked += 1
    assert checked > 20


@pytest.mark.parametrize(("world_class", "text"), [
    (ToyGQAWorld, "is the red cube to the left or to the right of the gray cone?"),
    (ToyNLVR2World, "the left image has more red objects than the right image."),
])  # fmt: skip
def test_tokenizer_keeps_the_worlds_words_whole_and_is_the_same_each_time(world_class, text):
    first, again = world_class(small()).tokenizer(), world_class(small()).tokenizer()
    assert first.get_vocab() == again.get_vocab()
    tokens = first.tokenize(text)
    assert tokens == text.replace("?", " ?").replace(".", " .").split() and first.unk_token not in tokens
