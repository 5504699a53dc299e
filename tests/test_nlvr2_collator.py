"""`NLVR2DataCollator` and the pairs of images `load_prepared` hands it: one store read per batch, the batch the
model takes, and errors that name the example."""

from __future__ import annotations

import dataclasses

import datasets
import numpy as np
import pytest
import torch
from data_factory import image_record, nlvr2_official
from tiny import TINY
from transformers import BertTokenizer, TrainingArguments

from lxmert_hf import LxmertForNLVR2, LxmertNLVR2Config
from lxmert_hf.data import (
    FeatureStore,
    NLVR2DataCollator,
    attach_features,
    load_prepared,
    prepare_features,
    prepare_nlvr2,
    write_tsv,
)
from lxmert_hf.training import VQATrainer


def pair(boxes=(3, 3), dim=8, value=1.0):
    """The regions of two images, `boxes` regions each (padded to the larger count, as `load_prepared` gives them)."""
    longest = max(boxes)
    feats = np.zeros((2, longest, dim), np.float32)
    mask = np.zeros((2, longest), np.int64)
    for image, count in enumerate(boxes):
        feats[image, :count] = value + image
        mask[image, :count] = 1
    return {
        "visual_feats": feats,
        "visual_pos": np.full((2, longest, 4), 0.5, np.float32),
        "visual_attention_mask": mask,
    }


def test_pairs_are_batched_for_the_model(tiny_tokenizer):
    examples = [
        {"identifier": "dev-1-0-0", "question": "what is the cube", "labels": 1, **pair((3, 2))},
        {"identifier": "dev-1-0-1", "question": "how many", "labels": 0, **pair((4, 4), value=5.0)},
    ]
    batch = NLVR2DataCollator(tiny_tokenizer)(examples)
    assert batch["input_ids"].shape == (2, 6) and batch["labels"].tolist() == [1, 0]
    assert batch["visual_feats"].shape == (2, 2, 4, 8) and batch["visual_pos"].shape == (2, 2, 4, 4)
    assert batch["visual_attention_mask"].tolist() == [[[1, 1, 1, 0], [1, 1, 0, 0]], [[1] * 4, [1] * 4]]
    assert batch["visual_feats"][0, 1, :2].eq(2.0).all() and batch["visual_feats"][1, 0].eq(5.0).all()
    assert not batch["visual_feats"][0, 0, 3:].any()  # padding is zero
    model = LxmertForNLVR2(LxmertNLVR2Config(**{**TINY, "visual_feat_dim": 8})).eval()
    assert model(**batch).logits.shape == (2, 2)


def test_pairs_without_masks_and_token_ids(tiny_tokenizer):
    examples = [
        {"input_ids": [2, 5, 6, 3], "visual_feats": np.ones((2, 3, 8)), "visual_pos": np.zeros((2, 3, 4))},
        {"input_ids": [2, 5, 3], "visual_feats": np.ones((2, 3, 8)), "visual_pos": np.zeros((2, 3, 4))},
    ]
    batch = NLVR2DataCollator(tiny_tokenizer)(examples)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 3], [2, 5, 3, 0]]
    assert "visual_attention_mask" not in batch and "labels" not in batch
    assert batch["visual_feats"].shape == (2, 2, 3, 8) and batch["visual_feats"].dtype == torch.float32


def test_zero_visual_inputs_for_sentence_only_baselines(tiny_tokenizer):
    collator = NLVR2DataCollator(tiny_tokenizer, max_question_length=4)
    blind = dataclasses.replace(collator, zero_visual_inputs=True)
    examples = [{"question": "what is the cube", "labels": 1, **pair()}]
    full, zeroed = collator(examples), blind(examples)
    assert isinstance(blind, NLVR2DataCollator) and full["input_ids"].shape == (1, 4)
    assert not zeroed["visual_feats"].any() and not zeroed["visual_pos"].any()
    assert full["visual_feats"].any() and torch.equal(full["input_ids"], zeroed["input_ids"])
    assert zeroed["visual_feats"].shape == (1, 2, 3, 8)


@pytest.mark.parametrize(("given", "expected"), [(1, 1), (0, 0), (-1, -100), (-100, -100), (np.int64(1), 1)])
def test_labels(tiny_tokenizer, given, expected):
    batch = NLVR2DataCollator(tiny_tokenizer)([{"question": "what", "labels": given, **pair()}])
    assert batch["labels"].tolist() == [expected] and batch["labels"].dtype == torch.long


@pytest.mark.parametrize("label", [2, "true", 0.5, True])
def test_other_labels_are_refused_naming_the_example(tiny_tokenizer, label):
    examples = [
        {"identifier": "dev-1-0-0", "question": "what", "labels": 1, **pair()},
        {"identifier": "dev-1-0-1", "question": "what", "labels": label, **pair()},
    ]
    with pytest.raises(ValueError, match=r"NLVR2 example 'dev-1-0-1' has label .*expected 1 \(true\), 0 \(false\)"):
        NLVR2DataCollator(tiny_tokenizer)(examples)


@pytest.mark.parametrize(
    ("feats", "shape"),
    [(np.ones((3, 8)), r"\(3, 8\)"), (np.ones((1, 3, 8)), r"\(1, 3, 8\)"), (np.ones((3, 3, 8)), r"\(3, 3, 8\)")],
)
def test_one_image_is_refused_naming_the_example(tiny_tokenizer, feats, shape):
    example = {
        "question_id": "nlvr2_dev_7",
        "question": "what",
        "visual_feats": feats,
        "visual_pos": np.zeros((2, 3, 4)),
    }
    with pytest.raises(
        ValueError, match=rf"two images per example: example 'nlvr2_dev_7' has `visual_feats` .*{shape}"
    ):
        NLVR2DataCollator(tiny_tokenizer)([example])


def test_nan_features_name_the_example(tiny_tokenizer):
    broken = pair()
    broken["visual_feats"][1, 0, 0] = np.nan
    examples = [
        {"identifier": "dev-1-0-0", "question": "what", **pair()},
        {"identifier": "dev-1-0-1", "question": "what", **broken},
    ]
    with pytest.raises(ValueError, match=r"`visual_feats` holds NaN .* 1 example\(s\) .*'identifier': 'dev-1-0-1'"):
        NLVR2DataCollator(tiny_tokenizer)(examples)
    assert NLVR2DataCollator(tiny_tokenizer, check_finite=False)(examples)["visual_feats"].isnan().sum() == 1


def test_a_mask_of_another_shape_is_refused(tiny_tokenizer):
    example = {"question": "what", **pair(), "visual_attention_mask": np.ones((3,))}
    with pytest.raises(ValueError, match=r"example #0 of the batch has `visual_attention_mask` of shape \(3,\)"):
        NLVR2DataCollator(tiny_tokenizer)([example])


def write_store(folder, images, six_boxes=()):
    """A feature store of `images` (4 regions each, 6 for those in `six_boxes`)."""
    records = [image_record(image, num_boxes=6 if image in six_boxes else 4, seed=i) for i, image in enumerate(images)]
    write_tsv(folder.parent / f"{folder.name}.tsv", records)
    prepare_features([folder.parent / f"{folder.name}.tsv"], folder, progress=False)
    return folder


STEMS = ["dev-1-0", "dev-1-1", "dev-2-0", "dev-2-1"]
IMAGES = [f"{stem}-img{side}" for stem in STEMS for side in (0, 1)]


@pytest.fixture
def prepared(tmp_path):
    """A prepared NLVR2 directory: four pairs, the last pair's second image with 6 regions instead of 4."""
    store = write_store(tmp_path / "store", IMAGES, six_boxes=["dev-2-1-img1"])
    source = nlvr2_official(tmp_path / "dev.json", [f"{stem}-0" for stem in STEMS], ["True", "False"] * 2)
    prepare_nlvr2(tmp_path / "prepared", {"valid": [source]}, features_dir=store, cache_dir=tmp_path / "cache",
                  progress=False)  # fmt: skip
    return tmp_path / "prepared"


def test_load_prepared_feeds_the_collator_with_one_store_read_per_batch(prepared, tiny_tokenizer, monkeypatch):
    reads = []
    gather = FeatureStore.gather

    def counted(self, image_ids):
        reads.append(list(image_ids))
        return gather(self, image_ids)

    monkeypatch.setattr(FeatureStore, "gather", counted)
    dataset = load_prepared(prepared, "valid")
    examples = dataset[:4]
    examples = [{key: examples[key][row] for key in examples} for row in range(4)]
    assert reads == [[f"dev-{p}-{s}-img{i}" for p in (1, 2) for s in (0, 1) for i in (0, 1)]]
    batch = NLVR2DataCollator(tiny_tokenizer)(examples)
    assert batch["labels"].tolist() == [1, 0, 1, 0]
    assert batch["visual_feats"].shape == (4, 2, 6, 8)
    assert batch["visual_attention_mask"][:, :, 4:].sum() == 2  # only the last image has 6 regions
    assert batch["visual_attention_mask"][3, 1].all()
    expected = FeatureStore(prepared.parent / "store").gather(["dev-2-1-img1"]).visual_feats[0]
    np.testing.assert_array_equal(batch["visual_feats"][3, 1].numpy(), expected)
    # Rows that the join read as one array reach the model without a copy.
    assert np.shares_memory(batch["visual_feats"].numpy(), examples[0]["visual_feats"])
    model = LxmertForNLVR2(LxmertNLVR2Config(**{**TINY, "visual_feat_dim": 8})).eval()
    assert model(**batch).logits.shape == (4, 2)


def test_an_image_missing_from_the_store_names_the_example(prepared, tmp_path):
    # Iterable datasets are joined as they stream, without the check a map-style dataset gets when it is loaded.
    questions = datasets.load_from_disk(str(prepared / "questions"))["valid"].to_iterable_dataset()
    half = write_store(tmp_path / "half", [image for image in IMAGES if image != "dev-1-1-img1"])
    joined = attach_features(questions, half, image_columns=("img0", "img1"))
    with pytest.raises(ValueError, match=r"'dev-1-1-0' lacks 'dev-1-1-img1'.*needs both of its images"):
        next(iter(joined))


def colored_pairs(tmp_path, num_pairs: int = 64, dim: int = 16):
    """A prepared NLVR2 directory of a task that needs both images: each image shows one of two colors (its regions
    near that color's vector), and "same color" is true when the pair's colors match (half the pairs)."""
    rng = np.random.default_rng(0)
    prototypes = rng.standard_normal((2, dim)).astype(np.float32)
    first = rng.integers(0, 2, num_pairs)
    colors = np.stack([first, first ^ (np.arange(num_pairs) % 2)], axis=1)
    records = []
    for pair_index, pair_colors in enumerate(colors):
        for side, color in enumerate(pair_colors):
            record = image_record(f"train-{pair_index}-0-img{side}", dim=dim, seed=2 * pair_index + side)
            record["visual_feats"] = prototypes[color] + 0.1 * rng.standard_normal((4, dim)).astype(np.float32)
            records.append(record)
    write_tsv(tmp_path / "pairs.tsv", records)
    prepare_features([tmp_path / "pairs.tsv"], tmp_path / "store", progress=False)
    labels = ["True" if left == right else "False" for left, right in colors]
    source = nlvr2_official(tmp_path / "train.json", [f"train-{i}-0-0" for i in range(num_pairs)], labels)
    prepare_nlvr2(tmp_path / "prepared", {"train": [source]}, features_dir=tmp_path / "store",
                  cache_dir=tmp_path / "cache", progress=False)  # fmt: skip
    return tmp_path / "prepared"


def test_the_trainer_learns_pairs_from_a_prepared_directory(tmp_path):
    """load_prepared -> NLVR2DataCollator -> LxmertForNLVR2 under the library's Trainer (which hands the model the
    number of examples its loss counts): the training loss drops and the pairs are told apart."""
    train = load_prepared(colored_pairs(tmp_path), "train")
    tokenizer = BertTokenizer(
        vocab={word: i for i, word in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "sentence"])}
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=32, max_steps=100, learning_rate=3e-3,
        lr_scheduler_type="constant", weight_decay=0.0, logging_steps=10, save_strategy="no", report_to="none",
        remove_unused_columns=False, use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LxmertForNLVR2(LxmertNLVR2Config(**TINY))
    trainer = VQATrainer(model=model, args=args, train_dataset=train, data_collator=NLVR2DataCollator(tokenizer))
    assert trainer.model_accepts_loss_kwargs is True
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    predictions = trainer.predict(train)
    accuracy = (predictions.predictions.argmax(-1) == predictions.label_ids).mean()
    assert losses[-1] < 0.5 * losses[0] and accuracy >= 0.9, (losses, accuracy)
