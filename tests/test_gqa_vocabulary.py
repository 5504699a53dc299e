"""GQA answers are exact strings: the vocabulary keeps them as written and labels match them as written."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_factory import gqa_official, make_store

from lxmert_hf.answers import GQA_VOCABULARY, AnswerVocabulary, normalize_answer
from lxmert_hf.cli import main
from lxmert_hf.data import load_answer_vocabulary, load_prepared, prepare_gqa
from lxmert_hf.losses import answer_loss, counted_questions
from lxmert_hf.metrics import gqa_accuracy

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
# The answers of LXMERT's GQA list (`gqa_trainval_label2ans.json`) that VQA's normalization rewrites.
REWRITTEN_BY_VQA = [
    "t-shirt",
    "at the camera",
    "taking a photo",
    "dry-erase board",
    "in the mirror",
    "taking a picture",
    "making a face",
    "taking a photograph",
]
TRAIN_ANSWERS = [*REWRITTEN_BY_VQA, "yes", "no", "t-shirt", "yes", "Two", "2"]
TESTDEV_ANSWERS = ["t-shirt", "taking a photo", "dry-erase board", "Two", "yes"]


def _questions(path, answers, prefix):
    triples = [(f"{prefix}{index}", f"img{index % 3}", answer) for index, answer in enumerate(answers)]
    return gqa_official(path, triples)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gqa")
    make_store(folder / "store", ["img0", "img1", "img2"])
    train = _questions(folder / "train_balanced_questions.json", TRAIN_ANSWERS, "t")
    testdev = _questions(folder / "testdev_balanced_questions.json", TESTDEV_ANSWERS, "d")
    return folder, {"train": [train], "testdev": [testdev]}


def _prepare(folder, splits, name, **kwargs):
    output = folder / name
    prepare_gqa(output, splits, features_dir=folder / "store", cache_dir=folder / "cache", progress=False, **kwargs)
    return output


def _check_exact_labels(prepared, split, answers):
    """Each question's label is one 1.0, at the id of its answer as written; a model that learned the labels
    perfectly scores 100 on the official exact-match accuracy."""
    vocabulary = load_answer_vocabulary(prepared)
    examples = list(load_prepared(prepared, split))
    labels = np.stack([example["labels"] for example in examples])
    assert (labels != 0).sum(axis=1).tolist() == [1] * len(answers)  # none all-zero: every question is learnable
    assert labels.max(axis=1).tolist() == [1.0] * len(answers)
    assert labels.argmax(axis=1).tolist() == [vocabulary.label(answer) for answer in answers]
    predictions = [vocabulary.answer(int(label)) for label in labels.argmax(axis=1)]
    assert gqa_accuracy(predictions, [example["answer"] for example in examples])["accuracy"] == 100.0


def test_built_vocabulary_keeps_answers_as_written(sources):
    folder, splits = sources
    prepared = _prepare(folder, splits, "built")
    vocabulary = load_answer_vocabulary(prepared)
    assert set(vocabulary) == set(TRAIN_ANSWERS)  # "Two" and "2" are two answers, "t-shirt" is not "t shirt"
    assert vocabulary.answers[:2] == ["t-shirt", "yes"]  # counted as written: 2 each, ties alphabetically
    _check_exact_labels(prepared, "train", TRAIN_ANSWERS)
    _check_exact_labels(prepared, "testdev", TESTDEV_ANSWERS)


@pytest.mark.parametrize("head_loss", ["softmax", "bce"])
def test_every_train_question_is_learned_with_the_answer_loss(sources, head_loss):
    # One free logit row per question, fitted with the model's loss: each ends on its exact answer. The softmax
    # loss leaves rows without a target out, so a question without a label would never move.
    folder, splits = sources
    prepared = _prepare(folder, splits, f"learned-{head_loss}")
    vocabulary = load_answer_vocabulary(prepared)
    labels = torch.from_numpy(np.stack([example["labels"] for example in load_prepared(prepared, "train")]))
    assert counted_questions(labels, head_loss).all()
    logits = torch.zeros_like(labels, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=5.0)
    for _ in range(20):
        optimizer.zero_grad()
        answer_loss(logits, labels, head_loss).backward()
        optimizer.step()
    predictions = [vocabulary.answer(int(label)) for label in logits.argmax(-1)]
    assert gqa_accuracy(predictions, TRAIN_ANSWERS)["accuracy"] == 100.0


def test_vqa_normalization_would_leave_those_questions_without_a_label():
    # What the GQA default did before: each of these answers is rewritten, so no vocabulary entry matches it.
    vqa_counted = AnswerVocabulary.build(TRAIN_ANSWERS, min_count=1, normalize=True)
    assert not set(REWRITTEN_BY_VQA) & set(vqa_counted)
    assert [normalize_answer(answer) == answer for answer in REWRITTEN_BY_VQA] == [False] * 8
    assert set(GQA_VOCABULARY.choose({"train": TRAIN_ANSWERS})) >= set(REWRITTEN_BY_VQA)


def test_given_answer_list_matches_exactly_through_the_cli(sources, tmp_path, capsys):
    folder, splits = sources
    # A list in another order, with the VQA-normalized spellings as entries of their own: they must not match.
    answers = ["no", "t shirt", *reversed(REWRITTEN_BY_VQA), "Two", "2", "taking photo", "yes"]
    (tmp_path / "label2ans.json").write_text(json.dumps(answers))
    argv = ["prepare", "gqa", "--features", str(folder / "store"), "--output", str(tmp_path / "given")]
    argv += ["--split", f"train={splits['train'][0]}", "--split", f"testdev={splits['testdev'][0]}"]
    argv += ["--answers", str(tmp_path / "label2ans.json"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert load_answer_vocabulary(tmp_path / "given").answers == answers
    _check_exact_labels(tmp_path / "given", "testdev", TESTDEV_ANSWERS)
    labels = np.stack([example["labels"] for example in load_prepared(tmp_path / "given", "testdev")])
    assert labels[:, [answers.index("t shirt"), answers.index("taking photo")]].sum() == 0


def test_min_answer_count_counts_exact_strings(sources):
    folder, splits = sources
    prepared = _prepare(folder, splits, "min2", min_answer_count=2)
    # "t-shirt" twice and "yes" twice: kept; "Two" and "2" once each: not merged into a "2" of count 2.
    assert load_answer_vocabulary(prepared).answers == ["t-shirt", "yes"]


def test_lxmert_gqa_list_is_kept_whole():
    path = REFERENCE_DIR / "gqa_trainval_label2ans.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    answers = json.loads(path.read_text())
    assert sorted(answer for answer in answers if normalize_answer(answer) != answer) == sorted(REWRITTEN_BY_VQA)
    assert set(GQA_VOCABULARY.choose({"train": answers})) == set(answers)
