import json

import numpy as np
import original_vqa
import pytest
import torch
from data_factory import coco_id, image_record, make_store, vqa_official
from datasets.distributed import split_dataset_by_node
from transformers import BertTokenizer

from lxmert_hf.answers import AnswerVocabulary, soft_scores
from lxmert_hf.data import VQABuilder, load_answer_vocabulary, load_prepared, prepare_vqa, vqa_split_sources, write_tsv
from lxmert_hf.data.collator import VQADataCollator

TRAIN_IDS, VAL_IDS = [1, 2, 3], [10, 11, 12, 13]


@pytest.fixture
def vqa_files(tmp_path):
    images = [coco_id("train2014", i) for i in TRAIN_IDS] + [coco_id("val2014", i) for i in VAL_IDS]
    records = make_store(tmp_path / "store", images)
    train_q, train_a = vqa_official(tmp_path, "train2014", TRAIN_IDS)
    val_q, val_a = vqa_official(tmp_path, "val2014", VAL_IDS, seed=1)
    sources = {"train_questions": train_q, "train_annotations": train_a, "val_questions": val_q}
    return tmp_path, records, {**sources, "val_annotations": val_a}


def prepare(tmp_path, sources, name="prepared", **kwargs):
    kwargs.setdefault("min_answer_count", 1)
    kwargs.setdefault("features_dir", tmp_path / "store")
    return prepare_vqa(tmp_path / name, cache_dir=tmp_path / "cache", progress=False, **sources, **kwargs)


def test_paper_splits_train_plus_nominival_and_minival(vqa_files):
    tmp_path, _, sources = vqa_files
    splits = prepare(tmp_path, sources, minival_images=2)
    # minival = the questions of the first 2 val images; their other images train along with train2014
    assert sorted(set(splits["minival"]["image_id"])) == [coco_id("val2014", 10), coco_id("val2014", 11)]
    train_images = set(splits["train"]["image_id"])
    assert train_images == {coco_id("train2014", i) for i in TRAIN_IDS} | {coco_id("val2014", i) for i in (12, 13)}
    assert len(splits["train"]) == 2 * 5 and len(splits["minival"]) == 2 * 2


def test_official_splits_and_labels(vqa_files):
    tmp_path, records, sources = vqa_files
    splits = prepare(tmp_path, sources, minival_images=0)
    assert set(splits) == {"train", "val"}
    annotations = json.loads(sources["val_annotations"].read_text())["annotations"]
    raw = [a["answer"] for a in annotations[0]["answers"]]
    dataset = load_prepared(tmp_path / "prepared", "val")
    example = dataset[0]
    assert example["question_id"] == 10000 and example["answers"] == raw
    vocabulary = load_answer_vocabulary(tmp_path / "prepared")
    np.testing.assert_allclose(example["labels"], vocabulary.encode(soft_scores(raw)))
    np.testing.assert_array_equal(example["visual_feats"], records[coco_id("val2014", 10)]["visual_feats"])
    assert example["answer_type"] == "other" and example["question_type"] == "what is"


def test_vocabulary_from_min_count_or_file(vqa_files):
    tmp_path, _, sources = vqa_files
    prepare(tmp_path, sources, minival_images=0, min_answer_count=3)
    built = load_answer_vocabulary(tmp_path / "prepared")
    files = [sources["train_annotations"], sources["val_annotations"]]
    assert built.answers == original_vqa.vocabulary(files, min_count=3)
    prepare(tmp_path, sources, name="ours", minival_images=0, min_answer_count=3, vocabulary_rule="train-split")
    train_answers = [
        a["multiple_choice_answer"] for a in json.loads(sources["train_annotations"].read_text())["annotations"]
    ]
    assert load_answer_vocabulary(tmp_path / "ours") == AnswerVocabulary.build(train_answers, min_count=3)
    (tmp_path / "label2ans.json").write_text(json.dumps(["no", "yes", "red", "2", "blue", "cat"]))
    prepare(tmp_path, sources, name="given", minival_images=0, vocabulary=tmp_path / "label2ans.json")
    example = load_prepared(tmp_path / "given", "val")[0]
    assert example["labels"].shape == (6,)
    given = AnswerVocabulary.load(tmp_path / "label2ans.json")
    np.testing.assert_allclose(example["labels"], given.encode(soft_scores(example["answers"])))


# Annotator answers that the official normalization would merge: number words, articles, case, punctuation.
VARIANTS = ["2", "two", "Two", "left", "the left", "Left", "left.", "yes", "Yes", "yes!", "t-shirt", "T-Shirt",
            "t shirt", "dont", "don't", "none", "0", "a dog", "dog", "x-y- "]  # fmt: skip


def dense(scores, label2id):
    target = np.zeros(len(label2id), dtype=np.float32)
    for label, score in scores.items():
        target[label] = score
    return target


def test_default_labels_and_vocabulary_are_the_originals(tmp_path):
    train_ids, val_ids = list(range(1, 9)), list(range(10, 18))
    images = [coco_id("train2014", i) for i in train_ids] + [coco_id("val2014", i) for i in val_ids]
    make_store(tmp_path / "store", images)
    train_q, train_a = vqa_official(tmp_path, "train2014", train_ids, per_image=4, pool=VARIANTS)
    val_q, val_a = vqa_official(tmp_path, "val2014", val_ids, per_image=4, seed=1, pool=VARIANTS)
    sources = {"train_questions": train_q, "train_annotations": train_a, "val_questions": val_q}
    sources["val_annotations"] = val_a
    prepare(tmp_path, sources, minival_images=3, min_answer_count=2)
    # The vocabulary counts all of train2014 and val2014 (minival included) in file order, as the original.
    vocabulary = load_answer_vocabulary(tmp_path / "prepared")
    assert vocabulary.answers == original_vqa.vocabulary([train_a, val_a], min_count=2)
    assert {"2", "left", "t shirt", "don't", "0", "dog"} <= set(vocabulary)  # the MC answers were processed
    for split in ("train", "minival"):
        for example in load_prepared(tmp_path / "prepared", split):
            expected = original_vqa.targets(example["answers"], vocabulary.label2id)
            np.testing.assert_array_equal(example["labels"], dense(expected, vocabulary.label2id))
    # Ours, by name: the train split counted after normalization, annotator answers normalized.
    prepare(tmp_path, sources, name="ours", minival_images=3, min_answer_count=2, vocabulary_rule="train-split",
            normalize_answers=True)  # fmt: skip
    ours = load_answer_vocabulary(tmp_path / "ours")
    train = load_prepared(tmp_path / "ours", "train")
    assert ours == AnswerVocabulary.build(train["answer"], min_count=2) and ours != vocabulary
    differ = 0
    for example in train:
        np.testing.assert_allclose(example["labels"], ours.encode(soft_scores(example["answers"], normalize=True)))
        differ += not np.array_equal(example["labels"], ours.encode(soft_scores(example["answers"])))
    assert differ > len(train) // 2


def test_original_vocabulary_needs_annotation_files(vqa_files):
    tmp_path, _, _ = vqa_files
    record = {"img_id": coco_id("train2014", 1), "label": {"yes": 1}, "question_id": 7, "sent": "Is it?"}
    (tmp_path / "train.json").write_text(json.dumps([record]))
    with pytest.raises(ValueError, match="counts the `multiple_choice_answer` of the official annotation files"):
        prepare(tmp_path, {"lxmert": {"train": [tmp_path / "train.json"]}})
    prepare(tmp_path, {"lxmert": {"train": [tmp_path / "train.json"]}}, vocabulary_rule="train-split")
    assert load_answer_vocabulary(tmp_path / "prepared").answers == ["yes"]
    with pytest.raises(ValueError, match="`vocabulary_rule` must be one of \\['original', 'train-split'\\]"):
        prepare(tmp_path, {"lxmert": {"train": [tmp_path / "train.json"]}}, vocabulary_rule="paper")


def test_lxmert_json_labels_are_used_as_given(vqa_files):
    tmp_path, _, _ = vqa_files
    records = [
        {
            "answer_type": "yes/no",
            "img_id": coco_id("train2014", 1),
            "label": {"yes": 1, "no": 0.3},
            "question_id": 7,
            "question_type": "is the",
            "sent": "Is the cat red?",
        },
        {
            "answer_type": "number",
            "img_id": coco_id("val2014", 10),
            "label": {"2": 0.9},
            "question_id": 8,
            "question_type": "how many",
            "sent": "How many?",
        },
    ]
    (tmp_path / "train.json").write_text(json.dumps(records[:1]))
    (tmp_path / "minival.json").write_text(json.dumps(records[1:]))
    lxmert = {"train": [tmp_path / "train.json"], "minival": [tmp_path / "minival.json"]}
    (tmp_path / "label2ans.json").write_text(json.dumps(["yes", "no", "2"]))
    prepare(tmp_path, {"lxmert": lxmert}, vocabulary=tmp_path / "label2ans.json")
    train = load_prepared(tmp_path / "prepared", "train")
    assert train[0]["labels"].tolist() == pytest.approx([1.0, 0.3, 0.0])
    assert train[0]["answers"] == [] and train[0]["answer_type"] == "yes/no"
    assert load_prepared(tmp_path / "prepared", "minival")[0]["labels"].tolist() == pytest.approx([0, 0, 0.9])


def test_missing_images_error_or_skip(vqa_files):
    tmp_path, _, sources = vqa_files
    make_store(tmp_path / "partial", [coco_id("train2014", i) for i in TRAIN_IDS] + [coco_id("val2014", 10)])
    with pytest.raises(
        ValueError, match=r"val: 6 questions refer to images that are not in the feature store"
    ) as error:
        prepare(tmp_path, sources, minival_images=0, features_dir=tmp_path / "partial")
    assert "COCO_val2014_000000000011" in str(error.value) and "--skip-missing" in str(error.value)
    assert not (tmp_path / "prepared" / "lxmert_hf_data.json").exists()
    splits = prepare(tmp_path, sources, minival_images=0, features_dir=tmp_path / "partial", skip_missing=True)
    assert len(splits["val"]) == 2 and len(splits["train"]) == 6
    metadata = json.loads((tmp_path / "prepared" / "lxmert_hf_data.json").read_text())
    assert metadata["stats"]["val"]["skipped_missing"] == 6
    make_store(tmp_path / "other", ["unrelated"])
    with pytest.raises(ValueError, match="train: no questions left"):
        prepare(tmp_path, sources, minival_images=0, features_dir=tmp_path / "other", skip_missing=True)


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "message", "skipped"),
    [
        (
            lambda d: d["annotations"][3]["answers"].pop(),
            r"annotation 3 \(question_id 2001\): 'answers' has 9 entries",
            1,
        ),
        (lambda d: d["annotations"][1].pop("answers"), r"annotation 1: an annotation lacks \['answers'\]", 1),
        # the duplicate replaces the annotation of question 2000, which is then reported too
        (lambda d: d["annotations"].__setitem__(2, dict(d["annotations"][0])), "duplicate question id 1000", 2),
    ],
)
def test_bad_annotations_name_file_and_record(vqa_files, change, message, skipped):
    tmp_path, _, sources = vqa_files
    edit_json(sources["train_annotations"], change)
    with pytest.raises(ValueError, match=message) as error:
        prepare(tmp_path, sources, minival_images=0)
    assert str(sources["train_annotations"]) in str(error.value) and "--skip-bad" in str(error.value)
    splits = prepare(tmp_path, sources, minival_images=0, skip_bad=True)
    assert len(splits["train"]) == 5
    metadata = json.loads((tmp_path / "prepared" / "lxmert_hf_data.json").read_text())
    assert metadata["stats"]["train"]["skipped_bad"] == skipped


def test_duplicate_question_ids_across_files(vqa_files):
    tmp_path, _, sources = vqa_files
    # train = train2014 + the val questions after the first 2 images: question 4 of val is on image 12
    edit_json(sources["val_questions"], lambda d: d["questions"][4].update(question_id=1000))
    edit_json(sources["val_annotations"], lambda d: d["annotations"][4].update(question_id=1000))
    with pytest.raises(ValueError, match=r"val2014_questions.json: question 4: duplicate question id 1000"):
        prepare(tmp_path, sources, minival_images=2)


@pytest.mark.parametrize(
    ("swap", "message"),
    [
        ({"train_annotations": "train_questions"}, "did you swap questions and annotations"),
        ({"train_questions": "train_annotations"}, "did you swap questions and annotations"),
        ({"train_questions": "lxmert"}, "JSON list, probably LXMERT's VQA JSON"),
        ({"train_questions": "empty"}, "is empty"),
        ({"train_questions": "garbage"}, r"not valid JSON \(line 1"),
    ],
)
def test_wrong_files_are_named(vqa_files, swap, message):
    tmp_path, _, sources = vqa_files
    (tmp_path / "lxmert.json").write_text(json.dumps([{"img_id": "x", "question_id": 1, "sent": "?"}]))
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "garbage.json").write_text("{not json")
    files = {**sources, "lxmert": tmp_path / "lxmert.json", "empty": tmp_path / "empty.json"}
    files["garbage"] = tmp_path / "garbage.json"
    target, source = next(iter(swap.items()))
    with pytest.raises(ValueError, match=message) as error:
        prepare(tmp_path, {**sources, target: files[source]}, minival_images=0)
    assert str(files[source]) in str(error.value)


def test_lxmert_json_given_official_file(vqa_files):
    tmp_path, _, sources = vqa_files
    with pytest.raises(ValueError, match="is a JSON object .* --train-questions"):
        prepare(tmp_path, {"lxmert": {"train": [sources["train_questions"]]}})


def test_split_sources_need_pairs():
    with pytest.raises(ValueError, match="both the val questions and the val annotations"):
        vqa_split_sources(train_questions="q", train_annotations="a", val_questions="vq")
    with pytest.raises(ValueError, match="give official question files"):
        vqa_split_sources()


def test_cache_follows_file_content(vqa_files):
    tmp_path, _, sources = vqa_files
    assert prepare(tmp_path, sources, minival_images=0)["train"][0]["question"] == "what is 0?"
    edit_json(sources["train_questions"], lambda d: d["questions"][0].update(question="changed?"))
    assert prepare(tmp_path, sources, minival_images=0)["train"][0]["question"] == "changed?"


def tiny_tokenizer(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "what", "is", "0", "1", "?"]
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    return BertTokenizer(str(tmp_path / "vocab.txt"))


def test_examples_feed_the_collator_through_a_dataloader_with_workers(vqa_files):
    tmp_path, records, sources = vqa_files
    prepare(tmp_path, sources, minival_images=0)
    dataset = load_prepared(tmp_path / "prepared", "train")
    collate = VQADataCollator(tiny_tokenizer(tmp_path))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b["input_ids"]) for b in batches) == len(dataset)
    batch = batches[0]
    assert batch["visual_feats"].shape == (4, 4, 8) and batch["visual_pos"].shape == (4, 4, 4)
    assert batch["labels"].shape == (4, len(load_answer_vocabulary(tmp_path / "prepared")))
    assert batch["input_ids"][0, 0].item() == 2  # [CLS]


def test_streaming_shuffle_and_split_by_node(vqa_files):
    tmp_path, _, sources = vqa_files
    prepare(tmp_path, sources, minival_images=0)
    stream = load_prepared(tmp_path / "prepared", "train", streaming=True, num_shards=4)
    assert stream.num_shards == 4
    shuffled = stream.shuffle(seed=0, buffer_size=3)
    ranks = [split_dataset_by_node(shuffled, rank=rank, world_size=2) for rank in (0, 1)]
    seen = [[example["question_id"] for example in rank] for rank in ranks]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(load_prepared(tmp_path / "prepared", "train")["question_id"])
    example = next(iter(ranks[0]))
    assert example["visual_feats"].shape == (4, 8) and example["labels"].dtype == np.float32


def test_builder_streams_from_the_source_files(vqa_files):
    tmp_path, _, sources = vqa_files
    split_sources = vqa_split_sources(**sources, minival_images=2)
    builder = VQABuilder(cache_dir=str(tmp_path / "cache"), split_sources=split_sources)
    stream = builder.as_streaming_dataset(split="minival")
    assert [example["question_id"] for example in stream] == [10000, 10001, 11000, 11001]


def test_one_call_from_arrays_to_training_examples(tmp_path):
    images = [
        image_record(coco_id(subtype, i), seed=i)
        for subtype, ids in (("train2014", [1]), ("val2014", [2]))
        for i in ids
    ]
    write_tsv(tmp_path / "features.tsv", images)
    train_q, train_a = vqa_official(tmp_path, "train2014", [1])
    val_q, val_a = vqa_official(tmp_path, "val2014", [2])
    prepare_vqa(
        tmp_path / "toy",
        feature_files=[tmp_path / "features.tsv"],
        train_questions=train_q,
        train_annotations=train_a,
        val_questions=val_q,
        val_annotations=val_a,
        minival_images=0,
        min_answer_count=1,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert (tmp_path / "toy" / "features" / "store.json").is_file()
    example = load_prepared(tmp_path / "toy", "val")[1]
    np.testing.assert_array_equal(example["visual_feats"], images[1]["visual_feats"])


def test_load_prepared_keeps_the_columns_asked_for(vqa_files):
    tmp_path, _, sources = vqa_files
    prepare(tmp_path, sources, minival_images=0)
    full = load_prepared(tmp_path / "prepared", "train")
    lean = load_prepared(tmp_path / "prepared", "train", columns=["question"])
    assert set(lean[0]) == {"image_id", "question", "label_answers", "label_scores", "visual_feats", "visual_pos",
                            "labels"}  # fmt: skip
    for key in ("question", "labels", "visual_feats"):
        np.testing.assert_array_equal(np.asarray(lean[3][key]), np.asarray(full[3][key]))
    with pytest.raises(ValueError, match=r"has no question columns \['nope'\]; it has \['question_id'"):
        load_prepared(tmp_path / "prepared", "train", columns=["question", "nope"])
    with pytest.raises(ValueError, match=r"a list of column names, got the string 'question'"):
        load_prepared(tmp_path / "prepared", "train", columns="question")
    tokenizer = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "what": 4, "?": 5})
    tokenized = load_prepared(tmp_path / "prepared", "train", columns=["question"], tokenizer=tokenizer)
    assert tokenized[0]["input_ids"] == tokenizer(full[0]["question"])["input_ids"]
    collate = VQADataCollator(tokenizer)
    batch, expected = collate([tokenized[i] for i in range(3)]), collate([full[i] for i in range(3)])
    assert all(batch[key].tolist() == expected[key].tolist() for key in expected)
    streamed = load_prepared(tmp_path / "prepared", "train", columns=[], streaming=True)
    assert set(next(iter(streamed))) == {"image_id", "label_answers", "label_scores", "visual_feats", "visual_pos",
                                         "labels"}  # fmt: skip
