import json

import numpy as np
import pytest

from lxmert_hf.answers import AnswerVocabulary, clean_whitespace, normalize_answer, soft_scores, vqa_soft_score

# Each case follows from one rule of the official evaluation's answer processing.
NORMALIZATION_CASES = [
    # punctuation: a mark not touching a space separates words
    ("t-shirt", "t shirt"),
    ("red,white", "red white"),
    ("(yes)", "yes"),
    ("yes!", "yes"),
    # punctuation: a mark touching a space is removed
    ("red, white", "red white"),
    ("hello - world", "hello world"),
    # punctuation: a digit-comma-digit group anywhere removes every mark
    ("1,000", "1000"),
    ("1,000-2,000", "10002000"),
    # characters outside the punctuation list are kept
    ("12:30", "12:30"),
    ("$5", "$5"),
    ("#1", "#1"),
    ("it's", "it's"),
    # periods: removed unless a digit follows
    ("Two dogs.", "2 dogs"),
    ("3.5", "3.5"),
    ("3.", "3"),
    ("t.v.", "tv"),
    ("mr. smith", "mr smith"),
    ("...", ""),
    # number words become digits, "none" included; other number words stay
    ("none", "0"),
    ("zero", "0"),
    ("ten", "10"),
    ("Eleven", "eleven"),
    ("one hundred", "1 hundred"),
    # articles are dropped, case-insensitively
    ("The Eiffel Tower", "eiffel tower"),
    ("a dog", "dog"),
    ("An apple", "apple"),
    ("a", ""),
    # contractions
    ("dont", "don't"),
    ("don't", "don't"),
    ("cant", "can't"),
    ("whats", "what's"),
    ("Youre", "you're"),
    ("Y'all'dve", "y'all'd've"),
    ("twas", "'twas"),
    ("wouldnt've", "wouldn't've"),
    # the official table's capitalized keys never apply (words are lower-cased first) ...
    ("Im", "im"),
    ("Ive", "ive"),
    # ... and its reversed entry does
    ("somebody'd", "somebodyd"),
    # whitespace: newlines and tabs become spaces, runs of spaces collapse
    ("\tnone\n", "0"),
    ("  white   and  red ", "white and red"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), NORMALIZATION_CASES)
def test_normalize_answer_follows_the_official_rules(text, expected):
    assert normalize_answer(text) == expected


def test_only_the_first_32_periods_are_removed_like_the_official_tool():
    # The official tool passes re.UNICODE (32) as the count of its period substitution.
    assert normalize_answer("x." * 33) == "x" * 33 + "."
    assert normalize_answer("x." * 32) == "x" * 32


def test_normalize_answer_is_idempotent_on_normalized_answers():
    for _, expected in NORMALIZATION_CASES:
        assert normalize_answer(expected) == expected


@pytest.mark.parametrize("value", [None, 3, ["yes"], b"yes"])
def test_normalize_answer_refuses_non_strings(value):
    with pytest.raises(ValueError, match="`text` must be a string"):
        normalize_answer(value)


def test_clean_whitespace():
    assert clean_whitespace(" a\tb\nc ") == "a b c"


@pytest.mark.parametrize(
    ("matches", "score"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (5, 1.0), (9, 1.0), (10, 1.0)]
)
def test_vqa_soft_score(matches, score):
    assert vqa_soft_score(matches) == score
    assert vqa_soft_score(np.int64(matches)) == score


@pytest.mark.parametrize("matches", [-1, 1.0, True, "2", None])
def test_vqa_soft_score_refuses_bad_counts(matches):
    with pytest.raises(ValueError, match="`num_matches`"):
        vqa_soft_score(matches)


def test_soft_scores_count_after_normalization():
    assert soft_scores(["yes"] * 8 + ["no", "Yes."]) == {"yes": 1.0, "no": 0.3}
    assert soft_scores(["2", "two", "Two.", "3"]) == {"2": 0.9, "3": 0.3}


def test_soft_scores_without_normalization():
    assert soft_scores(["yes"] * 8 + ["no", "Yes."], normalize=False) == {"yes": 1.0, "no": 0.3, "Yes.": 0.3}


@pytest.mark.parametrize("answers", ["yes", None, 3])
def test_soft_scores_refuses_non_lists(answers):
    with pytest.raises(ValueError, match="`answers` must be a list"):
        soft_scores(answers)


# ---------------------------------------------------------------------------------------------------------------
# AnswerVocabulary


def test_build_keeps_answers_occurring_at_least_min_count_times():
    answers = ["yes"] * 9 + ["no"] * 8 + ["2"] * 12
    assert AnswerVocabulary.build(answers).answers == ["2", "yes"]  # default min_count=9
    assert AnswerVocabulary.build(answers, min_count=8).answers == ["2", "yes", "no"]


def test_build_order_is_by_count_then_alphabetical_and_merges_spellings():
    answers = ["Yes", "yes.", "no", "blue", "red", "two", "2", "Two"]
    vocabulary = AnswerVocabulary.build(answers, min_count=1)
    assert vocabulary.answers == ["2", "yes", "blue", "no", "red"]
    assert AnswerVocabulary.build(reversed(answers), min_count=1) == vocabulary


def test_build_without_normalization_keeps_spellings_apart():
    assert AnswerVocabulary.build(["Yes", "yes"], min_count=1, normalize=False).answers == ["Yes", "yes"]


@pytest.mark.parametrize(
    ("answers", "min_count", "match"),
    [
        (["yes"], 0, "`min_count` must be a positive integer"),
        (["yes"], 2.5, "`min_count` must be a positive integer"),
        (["yes"], 2, "No answer occurs at least `min_count=2` times"),
        ("yes", 1, "iterable of answer strings"),
        ({"yes": 3}, 1, "iterable of answer strings"),
        (["yes", 3], 1, r"`answers\[1\]` must be a string"),
    ],
)
def test_build_refusals(answers, min_count, match):
    with pytest.raises(ValueError, match=match):
        AnswerVocabulary.build(answers, min_count=min_count)


def test_lookups_and_config_layout():
    vocabulary = AnswerVocabulary(["yes", "no", "2"])
    assert vocabulary.label("2") == 2
    assert vocabulary.answer(1) == "no"
    assert vocabulary.id2label == {0: "yes", 1: "no", 2: "2"}
    assert vocabulary.label2id == {"yes": 0, "no": 1, "2": 2}
    assert len(vocabulary) == 3 and "no" in vocabulary and "maybe" not in vocabulary
    assert list(vocabulary) == ["yes", "no", "2"]
    with pytest.raises(KeyError, match="'maybe' is not in the answer vocabulary"):
        vocabulary.label("maybe")
    with pytest.raises(IndexError, match="label 3 is out of range"):
        vocabulary.answer(3)


def test_encode_gives_a_dense_vector_and_ignores_unknown_answers():
    vocabulary = AnswerVocabulary(["yes", "no", "2"])
    target = vocabulary.encode(soft_scores(["2"] * 3 + ["3"] * 7))
    assert target.dtype == np.float32 and target.shape == (3,)
    np.testing.assert_allclose(target, [0.0, 0.0, 0.9])
    assert vocabulary.encode({}, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="`scores` must be a mapping"):
        vocabulary.encode([("2", 0.9)])


@pytest.mark.parametrize(
    ("answers", "match"),
    [
        ([], "non-empty list"),
        ("yes", "non-empty list"),
        (["yes", "no", "yes"], "repeats 'yes' at indices 0 and 2"),
        (["yes", None], r"`answers\[1\]` must be a string"),
    ],
)
def test_vocabulary_refusals(answers, match):
    with pytest.raises(ValueError, match=match):
        AnswerVocabulary(answers)


def test_save_and_from_file_round_trip_in_the_label2ans_layout(tmp_path):
    path = tmp_path / "trainval_label2ans.json"
    vocabulary = AnswerVocabulary(["yes", "no", "2", "café"])
    vocabulary.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == ["yes", "no", "2", "café"]
    assert AnswerVocabulary.from_file(path) == vocabulary
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "not valid JSON"),
        ("[", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ('{"yes": 0}', "expected a non-empty JSON list of answers"),
        ('["yes", "yes"]', "repeats 'yes'"),
        ('["yes", 1]', r"`answers\[1\]` must be a string"),
    ],
)
def test_from_file_refusals_name_the_file(tmp_path, content, match):
    path = tmp_path / "label2ans.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as error:
        AnswerVocabulary.from_file(path)
    assert str(path) in str(error.value)
