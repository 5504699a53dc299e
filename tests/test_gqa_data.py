import json

import pytest
from data_factory import gqa_official, make_store

from lxmert_hf.data import load_answer_vocabulary, load_prepared, prepare_gqa


@pytest.fixture
def gqa(tmp_path):
    make_store(tmp_path / "store", ["2375429", "2375430", "n161313"])
    train = gqa_official(
        tmp_path / "train_balanced_questions.json", [("07333408", "2375429", "pipe"), ("1", "2375430", "yes")]
    )
    lxmert_valid = [{"img_id": "2375430", "label": {"no": 1.0}, "question_id": "20", "sent": "Is it red?"}]
    (tmp_path / "valid.json").write_text(json.dumps(lxmert_valid))
    testdev = gqa_official(tmp_path / "testdev_balanced_questions.json", [("201", "n161313", "pipe")])
    return tmp_path, {"train": [train, tmp_path / "valid.json"], "testdev": [testdev]}


def prepare(tmp_path, splits, **kwargs):
    kwargs.setdefault("features_dir", tmp_path / "store")
    return prepare_gqa(tmp_path / "prepared", splits, cache_dir=tmp_path / "cache", progress=False, **kwargs)


def test_paper_splits_from_both_layouts(gqa):
    tmp_path, splits = gqa
    prepared = prepare(tmp_path, splits)
    assert prepared["train"]["question_id"] == ["07333408", "1", "20"]  # string ids keep their zeros
    assert load_answer_vocabulary(tmp_path / "prepared").answers == ["no", "pipe", "yes"]
    example = load_prepared(tmp_path / "prepared", "testdev")[0]
    assert example["image_id"] == "n161313" and example["answers"] == ["pipe"]
    assert example["labels"].tolist() == [0.0, 1.0, 0.0]
    assert (example["answer_type"], example["question_type"]) == ("query", "relS")
    assert example["visual_feats"].shape == (4, 8)


def test_missing_images_and_bad_records(gqa):
    tmp_path, splits = gqa
    gqa_official(tmp_path / "extra.json", [("9", "missing-image", "yes")])
    with pytest.raises(ValueError, match=r"train: 1 questions refer to images .* 'missing-image'"):
        prepare(tmp_path, {**splits, "train": [*splits["train"], tmp_path / "extra.json"]})
    prepared = prepare(tmp_path, {**splits, "train": [*splits["train"], tmp_path / "extra.json"]}, skip_missing=True)
    assert len(prepared["train"]) == 3
    (tmp_path / "bad.json").write_text(json.dumps({"5": {"question": "no image?"}}))
    with pytest.raises(ValueError, match=r"bad.json: question '5': a GQA question lacks \['imageId'\]"):
        prepare(tmp_path, {"train": [tmp_path / "bad.json"]})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("{}", "holds no questions"),
        ('{"questions": [{"question_id": 1}]}', "looks like a VQA file"),
        ("[1, 2", "not valid JSON"),
    ],
)
def test_wrong_files(tmp_path, content, message):
    make_store(tmp_path / "store", ["1"])
    (tmp_path / "q.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        prepare(tmp_path, {"train": [tmp_path / "q.json"]})


def test_vocabulary_file_lines_up_labels(gqa):
    tmp_path, splits = gqa
    (tmp_path / "label2ans.json").write_text(json.dumps(["yes", "pipe", "no", "red"]))
    prepare(tmp_path, splits, vocabulary=tmp_path / "label2ans.json")
    assert load_prepared(tmp_path / "prepared", "testdev")[0]["labels"].tolist() == [0.0, 1.0, 0.0, 0.0]
