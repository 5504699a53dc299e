"""`VQADataCollator`: tokenization (fast path equal to the tokenizer's own call), padding of words and regions."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import BertTokenizer, BertTokenizerFast

from lxmert_hf.data.collator import VQADataCollator

WORDS = ["what", "color", "is", "the", "cube", "how", "many", "red", "objects", "are", "there", "?", "cyl", "##inder"]
QUESTIONS = [
    "what color is the cube?",
    "how many red objects are there?",
    "what is the cylinder?",
    " ".join(["what color is the red cube"] * 6) + "?",  # longer than 20 tokens: truncated
    "zebra?",  # unknown word
]


def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return str(path)


def examples(questions, counts=None):
    counts = counts or [3] * len(questions)
    return [
        {"question": q, "visual_feats": np.full((n, 8), i, np.float32), "visual_pos": np.zeros((n, 4), np.float32)}
        for i, (q, n) in enumerate(zip(questions, counts, strict=True))
    ]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [20, 6])
def test_fast_tokenization_equals_the_tokenizers_call(tmp_path, side, max_length):
    tokenizer = BertTokenizerFast(vocab_file=vocab_file(tmp_path), padding_side=side, truncation_side=side)
    batch = VQADataCollator(tokenizer, max_question_length=max_length)(examples(QUESTIONS))
    expected = tokenizer(QUESTIONS, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    assert set(batch) >= set(expected)
    for name, tensor in expected.items():
        assert batch[name].dtype == tensor.dtype and batch[name].tolist() == tensor.tolist(), name
    assert batch["input_ids"].shape[1] == max_length  # the long question fills the batch to the limit


def test_slow_tokenizer_gives_the_same_batch(tmp_path):
    fast = BertTokenizerFast(vocab_file=vocab_file(tmp_path))
    slow = BertTokenizer(vocab_file=vocab_file(tmp_path))
    one, other = VQADataCollator(fast)(examples(QUESTIONS)), VQADataCollator(slow)(examples(QUESTIONS))
    for name in ("input_ids", "token_type_ids", "attention_mask"):
        assert one[name].tolist() == other[name].tolist(), name


def test_regions_are_padded_and_masked(tmp_path):
    tokenizer = BertTokenizerFast(vocab_file=vocab_file(tmp_path))
    batch = VQADataCollator(tokenizer)(examples(QUESTIONS[:3], counts=[2, 4, 1]))
    assert batch["visual_feats"].shape == (3, 4, 8)
    assert batch["visual_attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert float(batch["visual_feats"][0, 2:].abs().sum()) == 0.0


def test_bad_inputs(tmp_path):
    tokenizer = BertTokenizerFast(vocab_file=vocab_file(tmp_path))
    with pytest.raises(ValueError, match="empty list"):
        VQADataCollator(tokenizer)([])
    with pytest.raises(ValueError, match="non-empty `question`"):
        VQADataCollator(tokenizer)(examples(["  "]))
    with pytest.raises(ValueError, match="max_question_length"):
        VQADataCollator(tokenizer, max_question_length=2)


def batch_rows(whole):
    return [
        {"question": "what?", "visual_feats": feats, "visual_pos": pos, "labels": labels}
        for feats, pos, labels in zip(whole["feats"], whole["pos"], whole["labels"], strict=True)
    ]


def batch_arrays(size=4):
    rng = np.random.default_rng(0)
    return {
        "feats": rng.random((size, 3, 8), dtype=np.float32),
        "pos": rng.random((size, 3, 4), dtype=np.float32),
        "labels": rng.random((size, 5), dtype=np.float32),
    }


def test_rows_of_one_batch_array_are_taken_without_a_copy(tmp_path):
    """A dataset that reads a batch at once (the feature store) hands out rows of one array: used as they are."""
    collate = VQADataCollator(BertTokenizerFast(vocab_file=vocab_file(tmp_path)))
    whole = batch_arrays()
    batch = collate(batch_rows(whole))
    for name, key in (("feats", "visual_feats"), ("pos", "visual_pos"), ("labels", "labels")):
        assert batch[key].data_ptr() == whole[name].ctypes.data
        np.testing.assert_array_equal(batch[key].numpy(), whole[name])


@pytest.mark.parametrize("case", ["reordered", "part_of_a_larger_array", "repeated_row", "separate_arrays"])
def test_rows_that_are_not_one_whole_batch_are_copied(tmp_path, case):
    collate = VQADataCollator(BertTokenizerFast(vocab_file=vocab_file(tmp_path)))
    whole = batch_arrays(5 if case == "part_of_a_larger_array" else 4)
    rows = batch_rows(whole)
    rows = {
        "reordered": [rows[1], rows[0], rows[2], rows[3]],
        "part_of_a_larger_array": rows[:4],
        "repeated_row": [rows[0], rows[1], rows[1], rows[3]],
        "separate_arrays": [{**row, "visual_feats": row["visual_feats"].copy()} for row in rows],
    }[case]
    batch = collate(rows)
    assert batch["visual_feats"].data_ptr() != whole["feats"].ctypes.data
    np.testing.assert_array_equal(batch["visual_feats"].numpy(), np.stack([row["visual_feats"] for row in rows]))
    np.testing.assert_array_equal(batch["labels"].numpy(), np.stack([row["labels"] for row in rows]))


def test_zeroed_visual_inputs_leave_the_datasets_arrays_alone(tmp_path):
    collate = VQADataCollator(BertTokenizerFast(vocab_file=vocab_file(tmp_path)), zero_visual_inputs=True)
    whole = batch_arrays()
    kept = whole["feats"].copy()
    batch = collate(batch_rows(whole))
    assert not batch["visual_feats"].any() and not batch["visual_pos"].any()
    np.testing.assert_array_equal(whole["feats"], kept)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [20, 6])
@pytest.mark.parametrize("fast", [True, False])
def test_questions_tokenized_ahead_collate_as_the_text_does(tmp_path, side, max_length, fast):
    import datasets

    from lxmert_hf.data import tokenize_questions

    cls = BertTokenizerFast if fast else BertTokenizer
    tokenizer = cls(vocab_file=vocab_file(tmp_path), padding_side=side, truncation_side="right")
    collate = VQADataCollator(tokenizer, max_question_length=max_length)
    ids = tokenize_questions(datasets.Dataset.from_dict({"question": QUESTIONS}), tokenizer, max_length)["input_ids"]
    from_text = collate(examples(QUESTIONS))
    from_ids = collate([{**example, "input_ids": row} for example, row in zip(examples(QUESTIONS), ids, strict=True)])
    assert set(from_ids) == set(from_text)
    for key in from_text:
        assert from_ids[key].tolist() == from_text[key].tolist(), key


def test_longer_ids_are_cut_keeping_the_last_token(tmp_path):
    tokenizer = BertTokenizerFast(vocab_file=vocab_file(tmp_path))
    collate = VQADataCollator(tokenizer, max_question_length=5)
    batch = collate([{**examples(["x"])[0], "input_ids": [2, 10, 11, 12, 13, 14, 3]}])
    assert batch["input_ids"].tolist() == [[2, 10, 11, 12, 3]]
    with pytest.raises(ValueError, match="at least one token"):
        collate([{**examples(["x"])[0], "input_ids": []}])


def test_tokenized_questions_are_cached_per_tokenizer(tmp_path):
    import datasets

    from lxmert_hf.data import tokenize_questions

    datasets.Dataset.from_dict({"question": QUESTIONS, "other": list(range(5))}).save_to_disk(tmp_path / "q")
    questions = datasets.load_from_disk(str(tmp_path / "q"))
    tokenizer = BertTokenizerFast(vocab_file=vocab_file(tmp_path))
    first = tokenize_questions(questions, tokenizer)
    assert first.column_names == ["question", "other", "input_ids"]
    cached = sorted(p.name for p in (tmp_path / "q").glob("cache-*.arrow"))
    assert len(cached) == 1
    again = tokenize_questions(datasets.load_from_disk(str(tmp_path / "q")), tokenizer)
    assert again["input_ids"] == first["input_ids"]
    assert sorted(p.name for p in (tmp_path / "q").glob("cache-*.arrow")) == cached  # read back, not redone
    shorter = tokenize_questions(questions, tokenizer, max_question_length=6)
    assert max(map(len, shorter["input_ids"])) == 6 and len(list((tmp_path / "q").glob("cache-*.arrow"))) == 2
    retokenized = tokenize_questions(first, tokenizer, max_question_length=6)  # an existing column is replaced
    assert retokenized["input_ids"] == shorter["input_ids"] and retokenized.column_names.count("input_ids") == 1
    with pytest.raises(ValueError, match="no `question` column to tokenize"):
        tokenize_questions(questions.remove_columns("question"), tokenizer)
    with pytest.raises(ValueError, match="room for \\[CLS\\] and \\[SEP\\], got 2"):
        tokenize_questions(questions, tokenizer, max_question_length=2)
