import dataclasses
import json
import random
from pathlib import Path

import huggingface_hub
import numpy as np
import original_vqa
import pytest
import vqa_helpers as vh
from huggingface_hub import constants

from lxmert_hf.answers import (
    ANSWER_NORMALIZATIONS,
    GQA_VOCABULARY,
    NUMBER_WORDS,
    VQA_TRAIN_SPLIT_VOCABULARY,
    VQA_VOCABULARY,
    AnswerVocabulary,
    VocabularyChoice,
    answers_cache_dir,
    bottom_up_vqa_normalize,
    clean_whitespace,
    encode_soft_labels,
    exact_answer,
    get_normalization,
    lxmert_qa_normalize,
    normalize_answer,
    soft_scores,
    vqa_soft_score,
)

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


def test_soft_scores_count_after_normalization_on_request():
    assert soft_scores(["yes"] * 8 + ["no", "Yes."], normalize=True) == {"yes": 1.0, "no": 0.3}
    assert soft_scores(["2", "two", "Two.", "3"], normalize=True) == {"2": 0.9, "3": 0.3}


# Annotator answers that the official normalization would merge: number words, articles, case, punctuation.
VARIANTS = ["2", "two", "Two", "left", "the left", "Left", "left.", "yes", "Yes", "yes!", "t-shirt", "T-Shirt",
            "t shirt", "dont", "don't", "none", "0", "a dog", "dog"]  # fmt: skip


def test_soft_scores_count_answers_as_written_by_default_as_the_original():
    assert soft_scores(["yes"] * 8 + ["no", "Yes."]) == {"yes": 1.0, "no": 0.3, "Yes.": 0.3}
    rng = random.Random(0)
    label2id = {answer: label for label, answer in enumerate(["2", "left", "yes", "t shirt", "don't", "0", "dog"])}
    differ = 0
    for _ in range(300):
        annotators = [rng.choice(VARIANTS) for _ in range(10)]
        scores = soft_scores(annotators)
        dense = encode_soft_labels([list(scores)], [list(scores.values())], label2id)[0]
        expected = np.zeros(len(label2id), dtype=np.float32)
        for label, score in original_vqa.targets(annotators, label2id).items():
            expected[label] = score
        np.testing.assert_array_equal(dense, expected)
        differ += soft_scores(annotators, normalize=True) != scores
    assert differ > 250  # the synthetic answers do exercise the difference


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


def test_python2_dict_order_matches_an_independent_python2_dict():
    # 105,000 distinct answers: the table grows by 4 up to 131,072 slots, then by 2 (past 50,000 keys).
    rng = random.Random(0)
    answers = [f"a{rng.randrange(200_000)}" for _ in range(150_000)] + ["", "caf\u00e9", "\U0001f600"] * 3
    for min_count in (1, 3):
        built = AnswerVocabulary.build(answers, min_count=min_count, normalize=False, order="python2-dict")
        assert built.answers == original_vqa.vocabulary_order(answers, min_count)


def test_bottom_up_vqa_normalize_is_the_official_one_without_its_whitespace_step():
    for text, expected in NORMALIZATION_CASES:
        if text == clean_whitespace(text):
            assert bottom_up_vqa_normalize(text) == expected
    # Whitespace next to a mark is kept, so the mark touches a space and is removed.
    for text in ["t-shirt- ", " -5", "x -y", "yes-\n", "a-b\t-c", "\tnone\n", "  white   and  red ", "1,000 "]:
        assert bottom_up_vqa_normalize(text) == original_vqa.preprocess(text), text
    assert (bottom_up_vqa_normalize("t-shirt- "), normalize_answer("t-shirt- ")) == ("tshirt", "t shirt")
    with pytest.raises(ValueError, match="`text` must be a string"):
        bottom_up_vqa_normalize(None)


REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def test_lxmert_vqa_answer_list_is_in_python2_dict_order():
    path = REFERENCE_DIR / "vqa_trainval_label2ans.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    answers = json.loads(path.read_text())
    mask = 2**17 - 1  # the original's table held between 16,384 and 32,767 distinct answers at its last growth
    # A dict iterates its slots in order, and a key sits at its first free probe: its home slot, mostly.
    home = [original_vqa.python2_hash(answer) & mask for answer in answers]
    increasing = []
    for slot in home:  # longest increasing subsequence (patience sorting)
        index = np.searchsorted(increasing, slot)
        increasing[index : index + 1] = [slot]
    assert len(answers) == 3129 and len(increasing) > 0.9 * len(answers)  # a shuffled list would give about 112


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
        (["yes", "no", "yes"], "repeats 'yes' at labels 0 and 2"),
        (["yes", None], r"`answers`: entry 1 must be an answer string, got NoneType"),
    ],
)
def test_vocabulary_refusals(answers, match):
    with pytest.raises(ValueError, match=match):
        AnswerVocabulary(answers)


def test_save_and_load_round_trip_in_the_label2ans_layout(tmp_path):
    path = tmp_path / "trainval_label2ans.json"
    vocabulary = AnswerVocabulary(["yes", "no", "2", "café"])
    vocabulary.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == ["yes", "no", "2", "café"]
    assert AnswerVocabulary.load(path) == vocabulary
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------------------------
# AnswerVocabulary.load: every source kind, laid out as the real files are

LOAD_ANSWERS = ["yes", "no", "2", "t-shirt", "café"]


def _json(path, payload, indent=None):
    path.write_text(json.dumps(payload, indent=indent, ensure_ascii=False), encoding="utf-8")
    return path


def label2ans_file(tmp_path):  # vqa_trainval_label2ans.json: a JSON list, index = label
    return _json(tmp_path / "vqa_trainval_label2ans.json", LOAD_ANSWERS)


def all_ans_file(tmp_path):  # all_ans.json: records {"ans": ..., "dsets": [...]}, indented as released
    records = [{"ans": answer, "dsets": ["vqa", "gqa"][: 1 + index % 2]} for index, answer in enumerate(LOAD_ANSWERS)]
    return _json(tmp_path / "all_ans.json", records, indent=4)


def ans2label_file(tmp_path):  # trainval_ans2label.json: {answer: label}, keys sorted as released
    return _json(tmp_path / "trainval_ans2label.json", dict(sorted(_label2id().items())), indent=4)


def id2label_file(tmp_path):  # a config's id2label: string keys
    return _json(tmp_path / "config_id2label.json", {str(i): a for i, a in enumerate(LOAD_ANSWERS)})


def text_file(tmp_path):  # one answer per line, CRLF and a trailing blank line tolerated
    path = tmp_path / "answers.txt"
    path.write_bytes(("\r\n".join(LOAD_ANSWERS) + "\r\n\r\n").encode())
    return path


def json_without_suffix(tmp_path):
    return _json(tmp_path / "answers", LOAD_ANSWERS)


def _label2id():
    return {answer: label for label, answer in enumerate(LOAD_ANSWERS)}


LOAD_SOURCES = {
    "list": lambda tmp_path: list(LOAD_ANSWERS),
    "tuple": lambda tmp_path: tuple(LOAD_ANSWERS),
    "records": lambda tmp_path: [{"ans": answer, "dsets": ["vqa"]} for answer in LOAD_ANSWERS],
    "label2id": lambda tmp_path: dict(reversed(_label2id().items())),
    "id2label": lambda tmp_path: {label: answer for answer, label in _label2id().items()},
    "id2label with string keys": lambda tmp_path: {str(label): answer for answer, label in _label2id().items()},
    "label2id with numpy ids": lambda tmp_path: {answer: np.int64(label) for answer, label in _label2id().items()},
    "vocabulary": lambda tmp_path: AnswerVocabulary(LOAD_ANSWERS),
    "label2ans.json path": lambda tmp_path: label2ans_file(tmp_path),
    "label2ans.json str": lambda tmp_path: str(label2ans_file(tmp_path)),
    "all_ans.json": all_ans_file,
    "ans2label.json": ans2label_file,
    "id2label.json": id2label_file,
    "text file": text_file,
    "JSON file without suffix": json_without_suffix,
}


@pytest.mark.parametrize("kind", list(LOAD_SOURCES))
def test_load_reads_every_source_kind_to_the_same_vocabulary(tmp_path, kind):
    vocabulary = AnswerVocabulary.load(LOAD_SOURCES[kind](tmp_path))
    assert vocabulary.answers == LOAD_ANSWERS


def test_load_keeps_the_empty_answer_of_the_original_vqa_list(tmp_path):
    # The released trainval_label2ans.json starts with "" (label 0).
    answers = ["", "woods", "trash can"]
    assert AnswerVocabulary.load(_json(tmp_path / "label2ans.json", answers)).answers == answers
    ans2label = _json(tmp_path / "ans2label.json", {"": 0, "trash can": 2, "woods": 1})
    assert AnswerVocabulary.load(ans2label).answers == answers


def test_load_from_a_url_is_cached_after_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    routes = {
        "/ans2label.json": (200, json.dumps(_label2id()).encode()),
        "/all_ans.json": (200, b"[]"),
        "/label2ans.txt": (200, "\n".join(LOAD_ANSWERS).encode()),
    }
    with vh.serve(routes) as base:
        assert AnswerVocabulary.load(f"{base}/ans2label.json").answers == LOAD_ANSWERS
        assert AnswerVocabulary.load(f"{base}/label2ans.txt").answers == LOAD_ANSWERS
        with pytest.raises(ValueError, match="all_ans.json is empty"):
            AnswerVocabulary.load(f"{base}/all_ans.json")
        with pytest.raises(ValueError, match="cannot download the answer list .*missing.json"):
            AnswerVocabulary.load(f"{base}/missing.json")
    # Served from the cache once the server is gone; the bad download was not kept.
    assert AnswerVocabulary.load(f"{base}/ans2label.json").answers == LOAD_ANSWERS
    assert len(list(answers_cache_dir().iterdir())) == 2


def test_load_from_a_hub_file_goes_through_hf_hub_download(tmp_path, monkeypatch):
    calls = []

    def fake_download(repo_id, filename, repo_type=None, revision=None):
        calls.append((repo_id, filename, repo_type, revision))
        return str(ans2label_file(tmp_path))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert AnswerVocabulary.load("hf://datasets/me/vqa@v1/data/ans2label.json").answers == LOAD_ANSWERS
    assert AnswerVocabulary.load("hf://me/lxmert-vqa/label2ans.json").answers == LOAD_ANSWERS
    assert calls == [
        ("me/vqa", "data/ans2label.json", "dataset", "v1"),
        ("me/lxmert-vqa", "label2ans.json", "model", None),
    ]


# Bad sources: the content (written to a file when it is a string) and what the error must say.
BAD_SOURCES = [
    (["yes", "no", "yes"], "repeats 'yes' at labels 0 and 2"),
    ('["yes", "no", "yes"]', "repeats 'yes' at labels 0 and 2"),
    ('[{"ans": "yes"}, {"ans": "yes"}]', "repeats 'yes' at labels 0 and 1"),
    ({"yes": 0, "no": 2}, r"label ids must be exactly 0..1 .*missing \[1\], out of range \[2\]"),
    ('{"yes": 1, "no": 2}', r"label ids must be exactly 0..1 .*missing \[0\], out of range \[2\]"),
    ({"yes": 0, "no": 0}, "label id 0 is given to both 'yes' and 'no'"),
    ({"0": "yes", "x": "no"}, "key 'x' is not a label id"),
    ({"yes": 0, "no": "1"}, "not mix them"),
    ({"yes": True}, "not mix them"),
    (
        '[{"answer": "yes"}]',
        r"record 0 has no 'ans' key \(keys \['answer'\]\); expected \{'ans': answer, \.\.\.\} records",
    ),
    ([{"ans": "yes"}, "no"], "entry 1 is a str but entry 0 is a record"),
    (["yes", {"ans": "no"}], "entry 1 must be an answer string, got dict .mix of records and strings"),
    ('["yes", 1]', "entry 1 must be an answer string, got int"),
    ('[{"ans": 3}]', "entry 0 must be an answer string, got int"),
    ([], "is empty"),
    ("[]", "is empty"),
    ({}, "is an empty dict"),
    ("{}", "is an empty dict"),
    ("", "is empty"),
    ("  \n", "is empty"),
    ("3", "expected a list of answers .* got int"),
    ('"yes"', "expected a list of answers .* got str"),
    ("[", "not valid JSON"),
    ("yes\n\nno\n", "line 2 is blank"),
    (3, "expected a list of answers .* got int"),
    (None, "the answer list is None"),
]


@pytest.mark.parametrize(("content", "match"), BAD_SOURCES)
def test_load_refusals_name_the_source_and_the_fix(tmp_path, content, match):
    source = content
    if isinstance(content, str):
        source = tmp_path / ("answers.txt" if "\n" in content.strip() else "answers.json")
        source.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as error:
        AnswerVocabulary.load(source)
    if isinstance(content, str):
        assert str(source) in str(error.value)
    elif content is not None:
        assert "`answers`" in str(error.value)


def test_load_refusals_for_paths_and_references(tmp_path):
    with pytest.raises(FileNotFoundError, match="answer list .*nothing.json does not exist; pass a file"):
        AnswerVocabulary.load(tmp_path / "nothing.json")
    with pytest.raises(ValueError, match="is a folder"):
        AnswerVocabulary.load(tmp_path)
    with pytest.raises(ValueError, match="empty string"):
        AnswerVocabulary.load("")
    with pytest.raises(ValueError, match="hf://onlyname/file.json is not a Hub file; write hf://owner/name/"):
        AnswerVocabulary.load("hf://onlyname/file.json")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8 text"):
        AnswerVocabulary.load(tmp_path / "latin1.txt")


# ---------------------------------------------------------------------------------------------------------------
# The other normalizations and the soft-label encoder


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Two.", "2"),
        ("grey", "gray"),
        ("A Man", "man"),
        ("an apple.", "apple"),
        ("ten", "10"),
        ("yes", "yes"),
        # as the original: "a " then "an " then "the ", each once, and no "zero" or "none"
        ("a the dog", "dog"),
        ("the a dog", "a dog"),
        ("the a man", "man"),
        # and no stripping of the ends unless a period or an article is removed
        (" two", " two"),
        ("two ", "two "),
        (" two.", "2"),
        ("zero", "zero"),
        ("none", "none"),
        ("t-shirt", "t-shirt"),
        ("", ""),
    ],
)
def test_lxmert_qa_normalize(raw, expected):
    assert lxmert_qa_normalize(raw) == expected


def test_one_number_word_table_serves_every_normalization():
    for word, digit in NUMBER_WORDS.items():
        assert normalize_answer(word) == digit
        assert lxmert_qa_normalize(word) == (word if word == "zero" else digit)
        assert exact_answer(word) == word


def test_normalizations_by_name():
    assert {"vqa": normalize_answer, "gqa": exact_answer, "transplant": lxmert_qa_normalize} == ANSWER_NORMALIZATIONS
    assert get_normalization(True) is normalize_answer and get_normalization(False) is exact_answer
    assert soft_scores(["Two", "two", "2"], normalize="gqa") == {"Two": 0.3, "two": 0.3, "2": 0.3}
    assert AnswerVocabulary.build(["t-shirt"], min_count=1, normalize="gqa").answers == ["t-shirt"]
    with pytest.raises(ValueError, match="`normalize` must be True, False or one of"):
        get_normalization("vqa2")
    with pytest.raises(ValueError, match="`text` must be a string"):
        exact_answer(None)


def test_encode_soft_labels_matches_the_vocabulary_encoder_row_by_row():
    vocabulary = AnswerVocabulary(["yes", "no", "2"])
    questions = [["2"] * 3 + ["3"] * 7, ["yes"] * 10, ["maybe"]]
    scores = [soft_scores(answers) for answers in questions]
    targets = encode_soft_labels([list(s) for s in scores], [list(s.values()) for s in scores], vocabulary.label2id)
    assert targets.shape == (3, 3) and targets.dtype == np.float32
    for row, question_scores in zip(targets, scores, strict=True):
        np.testing.assert_array_equal(row, vocabulary.encode(question_scores))
    with pytest.raises(ValueError):
        encode_soft_labels([["yes"]], [[1.0], [0.3]], vocabulary.label2id)


# ---------------------------------------------------------------------------------------------------------------
# Each task's vocabulary choice


def test_vocabulary_choices_of_the_tasks():
    original = (9, ("train2014", "val2014"), bottom_up_vqa_normalize, "python2-dict", False)
    assert dataclasses.astuple(VQA_VOCABULARY) == original
    assert dataclasses.astuple(VQA_TRAIN_SPLIT_VOCABULARY) == (9, ("train",), True, "count", True)
    assert (GQA_VOCABULARY.min_count, GQA_VOCABULARY.splits) == (1, ("train",))
    answers = {"train": ["yes"] * 9 + ["no"] * 8 + [""] * 20, "val": ["no"] * 5}
    assert VQA_TRAIN_SPLIT_VOCABULARY.choose(answers).answers == ["yes"]  # empty answers (unannotated) not counted
    both = VocabularyChoice(min_count=9, splits=("train", "val"))
    assert both.choose(answers).answers == ["no", "yes"]
    assert VQA_TRAIN_SPLIT_VOCABULARY.choose(answers, given=["a", "b"]).answers == ["a", "b"]
    with pytest.raises(ValueError, match="no `train` answers to build the answer vocabulary from; pass `vocabulary`"):
        VQA_TRAIN_SPLIT_VOCABULARY.choose({"val": ["yes"]})
    # The original counts annotation files, where an empty answer is an answer; the lists present are counted.
    files = {"train2014": ["a"] * 5 + [""] * 9 + ["Yes"] * 5, "val2014": ["yes"] * 4}
    assert VQA_VOCABULARY.choose(files).answers == ["", "yes"]
    assert VQA_VOCABULARY.choose({"val2014": ["yes"] * 9}).answers == ["yes"]
    with pytest.raises(ValueError, match="no `train2014` or `val2014` answers"):
        VQA_VOCABULARY.choose(answers)
