import json

import datasets
import numpy as np
import pytest
from data_factory import image_record, make_store, nlvr2_official

from lxmert_hf.data import FeatureStore, FeatureStoreWriter, attach_features, load_prepared, prepare_nlvr2


@pytest.fixture
def nlvr2(tmp_path):
    images = ["train-1-0-img0", "train-1-0-img1", "dev-5-2-img0", "dev-5-2-img1"]
    records = make_store(tmp_path / "store", images)
    train = nlvr2_official(tmp_path / "train.json", ["train-1-0-0", "train-1-0-1"], ["True", "False"])
    lxmert = [{"identifier": "dev-5-2-0", "img0": "dev-5-2-img0", "img1": "dev-5-2-img1", "label": 1,
               "sent": "two dogs", "uid": "nlvr2_dev_0"}]  # fmt: skip
    (tmp_path / "valid.json").write_text(json.dumps(lxmert))
    return tmp_path, records, {"train": [train], "valid": [tmp_path / "valid.json"]}


def prepare(tmp_path, splits, **kwargs):
    kwargs.setdefault("features_dir", tmp_path / "store")
    return prepare_nlvr2(tmp_path / "prepared", splits, cache_dir=tmp_path / "cache", progress=False, **kwargs)


def test_pairs_of_images_from_both_layouts(nlvr2):
    tmp_path, records, splits = nlvr2
    prepared = prepare(tmp_path, splits)
    assert prepared["train"]["img0"] == ["train-1-0-img0", "train-1-0-img0"]
    assert prepared["train"]["label"] == [1, 0]
    example = load_prepared(tmp_path / "prepared", "valid")[0]
    assert example["question_id"] == "nlvr2_dev_0" and example["labels"] == 1
    assert example["visual_feats"].shape == (2, 4, 8) and example["visual_pos"].shape == (2, 4, 4)
    np.testing.assert_array_equal(example["visual_feats"][1], records["dev-5-2-img1"]["visual_feats"])
    np.testing.assert_array_equal(example["visual_attention_mask"], np.ones((2, 4)))
    lean = load_prepared(tmp_path / "prepared", "valid", columns=["question"])[0]
    assert {"img0", "img1", "question", "label"} <= set(lean) and "question_id" not in lean
    np.testing.assert_array_equal(lean["visual_feats"], example["visual_feats"])


def test_pairs_with_different_box_counts_are_padded_and_masked(tmp_path):
    first, second = image_record("a-1-0-img0", num_boxes=4), image_record("a-1-0-img1", num_boxes=6, seed=1)
    with FeatureStoreWriter(tmp_path / "both") as writer:
        writer.add(first)
        writer.add(second)
    pairs = datasets.Dataset.from_dict({"img0": ["a-1-0-img0"], "img1": ["a-1-0-img1"], "label": [1]})
    example = attach_features(pairs, FeatureStore(tmp_path / "both"), image_columns=("img0", "img1"))[0]
    assert example["visual_feats"].shape == (2, 6, 8)
    assert example["visual_attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    np.testing.assert_array_equal(example["visual_feats"][0, :4], first["visual_feats"])
    assert not example["visual_feats"][0, 4:].any()


def test_missing_second_image_is_reported(nlvr2):
    tmp_path, _, splits = nlvr2
    make_store(tmp_path / "half", ["train-1-0-img0", "dev-5-2-img0", "dev-5-2-img1"])
    with pytest.raises(ValueError, match=r"train: 2 questions refer to images .* 'train-1-0-img1'"):
        prepare(tmp_path, splits, features_dir=tmp_path / "half")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"identifier": "train-1-0", "sentence": "x", "label": "True"}', "is not split-set-pair-sentence"),
        ('{"identifier": "train-1-0-0", "sentence": "x", "label": "maybe"}', "label 'maybe' is not True/False"),
        ('{"identifier": "train-1-0-0"}', r"lacks \['sentence'\]"),
        ("{oops", "not valid JSON"),
    ],
)
def test_bad_lines_are_located(nlvr2, line, message):
    tmp_path, _, _ = nlvr2
    good = '{"identifier": "train-1-0-1", "sentence": "y", "label": "False"}'
    (tmp_path / "bad.json").write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        prepare(tmp_path, {"train": [tmp_path / "bad.json"]})
    assert f"{tmp_path / 'bad.json'}:2" in str(error.value)


def test_empty_file(nlvr2):
    tmp_path, _, _ = nlvr2
    (tmp_path / "empty.json").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        prepare(tmp_path, {"train": [tmp_path / "empty.json"]})
