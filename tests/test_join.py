import datasets
import numpy as np
import pytest
from data_factory import image_record

from lxmert_hf.data import FeatureStoreWriter, attach_features


def write(path, records, **kwargs):
    with FeatureStoreWriter(path, **kwargs) as writer:
        for record in records:
            writer.add(record)


def test_missing_images_are_counted_or_dropped(tmp_path):
    write(tmp_path / "s", [image_record("a"), image_record("b")])
    questions = datasets.Dataset.from_dict({"image_id": ["a", "x", "b", "y", "y"], "question": ["?"] * 5})
    with pytest.raises(ValueError, match=r"3 of 5 questions refer to images .* \['x', 'y', 'y'\]"):
        attach_features(questions, tmp_path / "s")
    kept = attach_features(questions, tmp_path / "s", skip_missing=True)
    assert [example["image_id"] for example in kept] == ["a", "b"]


def test_joined_batches_reach_the_collator_as_one_array(tmp_path):
    """Map-style: a DataLoader batch is one `gather`; its rows go to the collator as one array, in order."""
    import torch
    from transformers import BertTokenizer

    from lxmert_hf.data.collator import VQADataCollator

    records = [image_record(f"img{i}", num_boxes=4, seed=i) for i in range(6)]
    write(tmp_path / "s", records)
    order = [5, 0, 3, 3, 1]
    questions = datasets.Dataset.from_dict(
        {"image_id": [f"img{i}" for i in order], "question": ["what?"] * 5,
         "label_answers": [["yes"]] * 5, "label_scores": [[0.6]] * 5}
    )  # fmt: skip
    joined = attach_features(questions, tmp_path / "s", label2id={"no": 0, "yes": 1})
    tokenizer = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "what": 4, "?": 5})
    batch = next(iter(torch.utils.data.DataLoader(joined, batch_size=5, collate_fn=VQADataCollator(tokenizer))))
    expected = np.stack([records[i]["visual_feats"] for i in order])
    np.testing.assert_array_equal(batch["visual_feats"].numpy(), expected)
    assert batch["labels"].tolist() == [[0.0, pytest.approx(0.6)]] * 5
    streamed = attach_features(questions.to_iterable_dataset(num_shards=2), tmp_path / "s", label2id={"yes": 0})
    np.testing.assert_array_equal(np.stack([e["visual_feats"] for e in streamed]), expected)
