"""Pre-training data: the three sources, their QA labels by the original rule, the join to the feature store, and
the refusals of bad input."""

from __future__ import annotations

import json
import logging
import pickle

import datasets
import numpy as np
import pytest

from lxmert_hf.data import FeatureStore, FeatureStoreWriter, PretrainingSource, load_pretraining
from lxmert_hf.data.builder import write_prepared
from lxmert_hf.data.pretraining import load_qa_answers, map_qa_label, pretraining_sentences

QA_ANSWERS = [
    {"ans": "yes", "dsets": ["vqa", "gqa"]},
    {"ans": "no", "dsets": ["vqa", "gqa"]},
    {"ans": "2", "dsets": ["vqa"]},
    {"ans": "man", "dsets": ["gqa"]},
    {"ans": "gray", "dsets": ["visual7w"]},
]
DIM = 6


def region_record(image_id: str, num_boxes: int, seed: int, labels: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    record = {
        "image_id": image_id,
        "visual_feats": rng.standard_normal((num_boxes, DIM)).astype(np.float32),
        "boxes": np.tile([1.0, 2.0, 20.0, 30.0], (num_boxes, 1)),
        "image_width": 40,
        "image_height": 40,
    }
    if labels:
        record["object_ids"] = rng.integers(0, 20, num_boxes)
        record["object_scores"] = rng.uniform(0.1, 1.0, num_boxes).astype(np.float32)
        record["attribute_ids"] = rng.integers(0, 10, num_boxes)
        record["attribute_scores"] = rng.uniform(0.1, 1.0, num_boxes).astype(np.float32)
    return record


def write_store(path, boxes: dict[str, int], labels: bool = True) -> dict[str, dict]:
    records = {
        image_id: region_record(image_id, count, seed, labels) for seed, (image_id, count) in enumerate(boxes.items())
    }
    with FeatureStoreWriter(path, resume=True) as writer:
        for record in records.values():
            writer.add(record)
    return records


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    return path, write_store(path, {"img1": 3, "img2": 4, "img3": 3})


def write_lxmert_json(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


LXMERT_RECORDS = [
    {
        "img_id": "img1",
        "sentf": {"mscoco": ["A man on a horse.", "A horse."], "vqa": ["How many legs?", "Is it a man?"]},
        "labelf": {"vqa": [{"Two": 0.3, "2": 1.0, "4": 0.6}, {"zebra": 1.0}]},
    },
    {"img_id": "img2", "sentf": {"gqa": ["Who rides?"]}, "labelf": {"gqa": [{"the man": 1.0}]}},
]


def test_lxmert_records_give_one_example_per_sentence_with_the_original_labels(tmp_path, store):
    store_dir, records = store
    path = write_lxmert_json(tmp_path / "mscoco_train.json", LXMERT_RECORDS)
    dataset = load_pretraining([f"lxmert:{path}"], store_dir, qa_answers=QA_ANSWERS, cache_dir=tmp_path / "cache")
    rows = dataset.with_format(None)[:]
    assert rows["sentence_id"] == [
        "img1_mscoco_000",
        "img1_mscoco_001",
        "img1_vqa_000",
        "img1_vqa_001",
        "img2_gqa_000",
    ]
    assert rows["is_question"] == [False, False, True, True, True]
    # "Two" becomes "2" and, renamed after it, takes the place of "2"'s score; "4" and "zebra" are not QA answers.
    assert rows["qa_answers"] == [[], [], ["2"], [], ["man"]]
    assert rows["qa_label_ids"] == [[], [], [2], [], [3]]
    np.testing.assert_allclose(rows["qa_scores"][2], [0.3])
    example = dataset[4]
    np.testing.assert_array_equal(example["visual_feats"], records["img2"]["visual_feats"])
    np.testing.assert_array_equal(example["object_ids"], records["img2"]["object_ids"])
    np.testing.assert_allclose(example["attribute_scores"], records["img2"]["attribute_scores"])


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ({"Two": 0.3, "2": 1.0}, {"2": 0.3}),  # renamed in place: the later answer's score wins
        ({"2": 1.0, "Two.": 0.3}, {"2": 0.3}),
        ({"The Man": 0.9, "grey": 0.3}, {"man": 0.9, "gray": 0.3}),
        ({"zebra": 1.0}, {}),
        ({"an yes": 0.6}, {"yes": 0.6}),
    ],
)
def test_answers_map_onto_the_qa_head_by_the_original_rule(label, expected):
    label2id = {answer["ans"]: index for index, answer in enumerate(QA_ANSWERS)}
    assert map_qa_label(label, label2id) == expected


def test_qa_sets_keep_the_answers_of_those_sets(tmp_path):
    path = tmp_path / "all_ans.json"
    path.write_text(json.dumps(QA_ANSWERS), encoding="utf-8")
    assert load_qa_answers(path, qa_sets=["gqa"]).answers == ["yes", "no", "man"]
    assert load_qa_answers(path).answers == ["yes", "no", "2", "man", "gray"]
    with pytest.raises(ValueError, match="not such a list"):
        load_qa_answers(["yes", "no"], qa_sets=["vqa"])
    with pytest.raises(ValueError, match="no answer .* belongs to the QA sets"):
        load_qa_answers(path, qa_sets=["nlvr2"])


def write_vqa_prepared(path, store_dir, task="vqa"):
    questions = datasets.Dataset.from_dict(
        {
            "question_id": [11, 12],
            "image_id": ["img3", "img1"],
            "question": ["Is it gray?", "What is it?"],
            "label_answers": [["grey", "no"], []],
            "label_scores": [[0.9, 0.3], []],
        }
    )
    write_prepared(path, task, datasets.DatasetDict({"train": questions}), store_dir, vocabulary=None)
    return path


def test_sources_combine_in_order(tmp_path, store):
    store_dir, _ = store
    lxmert = write_lxmert_json(tmp_path / "vg.json", LXMERT_RECORDS[1:])
    prepared = write_vqa_prepared(tmp_path / "vqa", store_dir)
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text('{"image_id": "img2", "caption": "Two cubes."}\n\n{"image_id": "img3", "caption": "A ball."}\n')
    listed = tmp_path / "caps.json"
    listed.write_text(json.dumps([{"image_id": "img1", "caption": "A horse."}]))
    sources = [
        f"lxmert:{lxmert}",
        PretrainingSource("prepared", str(prepared), split="train"),
        f"captions:{jsonl}",
        PretrainingSource("captions", str(listed), name="coco"),
    ]
    answers = load_qa_answers(QA_ANSWERS, qa_sets=["vqa", "visual7w"])
    rows = load_pretraining(sources, store_dir, qa_answers=answers, cache_dir=tmp_path / "cache").with_format(None)[:]
    assert rows["source"] == ["gqa", "vqa", "vqa", "captions", "captions", "coco"]
    assert rows["sentence_id"] == ["img2_gqa_000", "vqa_11", "vqa_12", "captions_0", "captions_1", "coco_0"]
    assert rows["image_id"] == ["img2", "img3", "img1", "img2", "img3", "img1"]
    assert rows["is_question"] == [True, True, True, False, False, False]
    # "man" is a GQA answer, left out by qa_sets; "grey" is VQA's and becomes the head's "gray" (renamed, it
    # comes last, as in the original's dict).
    assert rows["qa_answers"] == [[], ["no", "gray"], [], [], [], []]
    assert rows["qa_label_ids"] == [[], [1, 3], [], [], [], []]  # yes, no, 2, gray


def test_sentences_live_on_disk_and_regions_are_read_per_batch(tmp_path, store, monkeypatch):
    store_dir, _ = store
    captions = tmp_path / "caps.jsonl"
    captions.write_text("".join(f'{{"image_id": "img{1 + i % 3}", "caption": "c {i}"}}\n' for i in range(30)))
    dataset = load_pretraining([f"captions:{captions}"], store_dir, cache_dir=tmp_path / "cache")
    assert dataset.cache_files and all(str(tmp_path / "cache") in f["filename"] for f in dataset.cache_files)
    gathered = []
    real_gather = FeatureStore.gather
    monkeypatch.setattr(FeatureStore, "gather", lambda self, ids: gathered.append(list(ids)) or real_gather(self, ids))
    batch = dataset[5:9]
    assert gathered == [["img3", "img1", "img2", "img3"]]
    assert [len(feats) for feats in batch["visual_feats"]] == [3, 3, 4, 3]
    restored = pickle.loads(pickle.dumps(dataset))  # as DataLoader workers receive it
    np.testing.assert_array_equal(restored[7]["object_ids"], dataset[7]["object_ids"])


def test_the_sentence_cache_follows_the_source_file(tmp_path, store):
    store_dir, _ = store
    captions = tmp_path / "caps.jsonl"
    captions.write_text('{"image_id": "img1", "caption": "first"}\n')
    first = pretraining_sentences([f"captions:{captions}"], cache_dir=tmp_path / "cache")
    captions.write_text('{"image_id": "img1", "caption": "second one"}\n')
    second = pretraining_sentences([f"captions:{captions}"], cache_dir=tmp_path / "cache")
    assert (first[0]["sentence"], second[0]["sentence"]) == ("first", "second one")


def test_a_sentence_whose_image_is_missing_is_named_or_skipped_and_counted(tmp_path, store, caplog):
    store_dir, _ = store
    records = [*LXMERT_RECORDS, {"img_id": "gone", "sentf": {"vg": ["A lost cat.", "Another."]}, "labelf": {}}]
    path = write_lxmert_json(tmp_path / "vg.json", records)
    with pytest.raises(
        ValueError, match=r"2 of 7 pre-training sentences .*gone_vg_000 \(image 'gone'\).*skip_missing"
    ):
        load_pretraining([f"lxmert:{path}"], store_dir, cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        dataset = load_pretraining([f"lxmert:{path}"], store_dir, skip_missing=True, cache_dir=tmp_path / "cache")
    assert len(dataset) == 5 and "gone" not in dataset.with_format(None)["image_id"]
    assert "skipped 2 of 7 pre-training sentences" in caplog.text


def test_a_store_without_detector_labels_is_refused_for_the_label_objectives(tmp_path):
    store_dir = tmp_path / "plain"
    write_store(store_dir, {"img1": 3}, labels=False)
    captions = tmp_path / "caps.jsonl"
    captions.write_text('{"image_id": "img1", "caption": "A cube."}\n')
    with pytest.raises(ValueError, match=r"objective 'obj' \(object-label classification\).*Faster R-CNN.*objects_id"):
        load_pretraining([f"captions:{captions}"], store_dir, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"objective 'attr'.*attribute_ids and attribute_scores"):
        load_pretraining([f"captions:{captions}"], store_dir, visual_losses=("attr",), cache_dir=tmp_path / "c")
    example = load_pretraining([f"captions:{captions}"], store_dir, visual_losses=("feat",), cache_dir=tmp_path / "c")[
        0
    ]
    assert example["visual_feats"].shape == (3, DIM) and "object_ids" not in example


@pytest.mark.parametrize(
    ("kind", "content", "message"),
    [
        ("lxmert", "[]", "holds no sentences"),
        ("lxmert", '[{"img_id": "img1", "sentf": {"vqa": []}}]', "holds no sentences"),
        ("lxmert", '{"img_id": "img1"}', "expected a JSON list of records"),
        ("lxmert", '[{"img_id": "img1", "sentf": {"vqa": ["a?"]}, "labelf": {"vqa": []}}]', "one {answer: score}"),
        ("lxmert", '[{"img_id": "img1", "sentf": {"vqa": [""]}}]', "record 0 .*non-empty sentence"),
        ("lxmert", "[{", "not valid JSON"),
        ("captions", "", "holds no sentences"),
        ("captions", "[]", "holds no sentences"),
        ("captions", '{"image_id": "img1"}\n', "line 1 .*`caption` must be a non-empty string"),
        ("captions", '{"image_id": "img1", "caption": "ok"}\n{oops\n', "line 2 is not valid JSON"),
        ("captions", '[{"caption": "no image"}]', "record 0: expected a record"),
    ],
)
def test_bad_sources_are_refused_naming_the_file_and_record(tmp_path, store, kind, content, message):
    path = tmp_path / "source.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        load_pretraining([f"{kind}:{path}"], store[0], cache_dir=tmp_path / "cache")
    assert str(path) in str(error.value)


def test_bad_source_names_are_refused(tmp_path, store):
    with pytest.raises(ValueError, match="kind:path"):
        PretrainingSource.parse("data/lxmert/mscoco_train.json")
    with pytest.raises(ValueError, match="needs a split"):
        PretrainingSource.parse("prepared:data/vqa")
    with pytest.raises(ValueError, match="only prepared directories have splits"):
        PretrainingSource("captions", "caps.jsonl", split="train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretraining([f"captions:{tmp_path / 'none.jsonl'}"], store[0], cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="no pre-training sources"):
        load_pretraining([], store[0], cache_dir=tmp_path / "cache")
    nlvr2 = write_vqa_prepared(tmp_path / "nlvr2", store[0], task="nlvr2")
    with pytest.raises(ValueError, match="holds nlvr2 data"):
        load_pretraining([f"prepared:{nlvr2}@train"], store[0], cache_dir=tmp_path / "cache")
    vqa = write_vqa_prepared(tmp_path / "vqa", store[0])
    with pytest.raises(ValueError, match="has no split 'val'"):
        load_pretraining([f"prepared:{vqa}@val"], store[0], cache_dir=tmp_path / "cache")


def test_memory_does_not_grow_with_the_number_of_sentences(store, tmp_path):
    import pyarrow as pa

    path, _ = store
    captions = tmp_path / "many.jsonl"
    with captions.open("w") as handle:
        for index in range(60_000):
            handle.write(json.dumps({"image_id": f"img{index % 3 + 1}", "caption": f"caption number {index} of many"}))
            handle.write("\n")
    before = pa.total_allocated_bytes()
    dataset = load_pretraining([f"captions:{captions}"], path, cache_dir=tmp_path / "cache")
    rows = dataset[1000:1032]  # a batch, regions joined from the store
    assert len(rows["visual_feats"]) == 32 and len(dataset) == 60_000
    # The sentences stay on disk, memory-mapped (about 4 MB of them here); reading holds only the batch in memory.
    assert isinstance(dataset.data, datasets.table.MemoryMappedTable)
    assert pa.total_allocated_bytes() - before < 1_000_000
