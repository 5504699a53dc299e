"""The pre-training collator: each masking rate over many seeded draws, the targets of what is masked, the swapped
pairs, reproducibility, and a tiny `LxmertForPreTraining` trained one step on a collated batch."""

from __future__ import annotations

import json
import pickle
import types

import numpy as np
import pytest
import torch
from tiny import TINY
from torch.utils.data import DataLoader
from transformers import BertTokenizer, LxmertConfig, LxmertForPreTraining

from lxmert_hf.data import FeatureStoreWriter, PretrainingDataCollator, load_pretraining

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{index}" for index in range(195)]
DIM = TINY["visual_feat_dim"]


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={word: index for index, word in enumerate(SPECIALS + WORDS)})


def example(index: int, num_words: int = 18, num_boxes: int = 10, question: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, index])
    return {
        "sentence_id": f"s{index}",
        "sentence": " ".join(rng.choice(WORDS, num_words)),
        "image_id": f"img{index}",
        "visual_feats": rng.standard_normal((num_boxes, DIM)).astype(np.float32),
        "visual_pos": rng.uniform(0, 1, (num_boxes, 4)).astype(np.float32),
        "object_ids": rng.integers(0, 20, num_boxes),
        "object_scores": rng.uniform(0.1, 1.0, num_boxes).astype(np.float32),
        "attribute_ids": rng.integers(0, 10, num_boxes),
        "attribute_scores": rng.uniform(0.1, 1.0, num_boxes).astype(np.float32),
        "is_question": question,
        "qa_label_ids": [index % 5] if question else [],
        "qa_scores": [1.0] if question else [],
    }


def draws(collate, examples, times: int) -> list[dict]:
    return [collate(examples) for _ in range(times)]


def test_word_pieces_are_masked_at_the_paper_rates(tokenizer):
    examples = [example(index, num_words=4 + index % 15) for index in range(64)]
    collate = PretrainingDataCollator(tokenizer, swap_probability=0.0, seed=1)
    originals = collate.__class__(tokenizer, word_mask_probability=0.0, swap_probability=0.0)(examples)["input_ids"]
    pieces = (originals > 4).sum().item()  # the sentences' word pieces (every word is in the vocabulary)
    chosen = masked = kept = 0
    for batch in draws(collate, examples, 30):
        labels, input_ids = batch["labels"], batch["input_ids"]
        is_chosen = labels != -100
        assert torch.equal(labels[is_chosen], originals[is_chosen])  # the target is the original piece
        assert torch.equal(input_ids[~is_chosen], originals[~is_chosen])  # nothing else changes
        assert not is_chosen[originals <= 4].any()  # never [CLS], [SEP] or padding
        chosen += is_chosen.sum().item()
        masked += (input_ids[is_chosen] == tokenizer.mask_token_id).sum().item()
        kept += (input_ids[is_chosen] == originals[is_chosen]).sum().item()
        assert input_ids.max() < len(tokenizer)
    vocabulary = len(tokenizer)
    assert chosen / (30 * pieces) == pytest.approx(0.15, abs=0.01)
    assert masked / chosen == pytest.approx(0.8 + 0.1 / vocabulary, abs=0.02)
    assert kept / chosen == pytest.approx(0.1 + 0.1 / vocabulary, abs=0.015)


def test_regions_are_masked_at_the_paper_rates_with_the_original_targets(tokenizer):
    examples = [example(index, num_boxes=6 + index % 5) for index in range(64)]  # padded to 10 regions
    collate = PretrainingDataCollator(tokenizer, swap_probability=0.0, seed=2)
    chosen = zeroed = kept = from_batch = real_regions = 0
    for batch in draws(collate, examples, 30):
        features, chosen_mask = batch["obj_labels"]["feat"]
        real = batch["visual_attention_mask"].bool()
        is_chosen = chosen_mask.bool()
        assert not is_chosen[~real].any()  # padding is never chosen
        for row, item in enumerate(examples):  # the regression target is the original feature
            count = len(item["visual_feats"])
            torch.testing.assert_close(features[row, :count], torch.from_numpy(item["visual_feats"]))
        inputs = batch["visual_feats"]
        assert torch.equal(inputs[~is_chosen], features[~is_chosen])
        pool = features[real]
        masked = inputs[is_chosen]
        is_zero = (masked == 0).all(-1)
        is_kept = (masked == features[is_chosen]).all(-1)
        in_pool = (masked[:, None, :] == pool[None]).all(-1).any(-1)
        assert (is_zero | in_pool).all()  # a chosen region is zeroed or holds a region feature of the batch
        chosen += len(masked)
        zeroed += is_zero.sum().item()
        kept += is_kept.sum().item()
        from_batch += (in_pool & ~is_kept).sum().item()
        real_regions += real.sum().item()
    assert chosen / real_regions == pytest.approx(0.15, abs=0.01)
    assert zeroed / chosen == pytest.approx(0.8, abs=0.02)
    assert from_batch / chosen == pytest.approx(0.1, abs=0.015)
    assert kept / chosen == pytest.approx(0.1, abs=0.015)


def test_object_and_attribute_targets_are_the_detector_labels(tokenizer):
    examples = [example(index, num_boxes=3 + index) for index in range(4)]
    batch = PretrainingDataCollator(tokenizer, seed=3)(examples)
    for key, (ids_column, scores_column) in {
        "obj": ("object_ids", "object_scores"),
        "attr": ("attribute_ids", "attribute_scores"),
    }.items():
        ids, confidences = batch["obj_labels"][key]
        assert ids.dtype == torch.long and ids.shape == confidences.shape == (4, 6)
        for row, item in enumerate(examples):
            count = len(item["visual_feats"])
            assert ids[row, :count].tolist() == item[ids_column].tolist()
            torch.testing.assert_close(confidences[row, :count], torch.from_numpy(item[scores_column]))
            assert (confidences[row, count:] == 0).all()  # padding regions weigh nothing
    masked_only = PretrainingDataCollator(tokenizer, object_labels_on_masked_only=True, seed=3)(examples)
    chosen = masked_only["obj_labels"]["feat"][1]
    torch.testing.assert_close(masked_only["obj_labels"]["obj"][1], batch["obj_labels"]["obj"][1] * chosen)


def test_zero_visual_inputs_leave_no_feature_in_the_inputs(tokenizer):
    examples = [example(index) for index in range(32)]
    batch = PretrainingDataCollator(tokenizer, zero_visual_inputs=True, seed=9)(examples)
    assert (batch["visual_feats"] == 0).all() and (batch["visual_pos"] == 0).all()
    assert batch["obj_labels"]["feat"][1].sum() > 0 and (batch["obj_labels"]["feat"][0] != 0).any()


def test_half_the_sentences_are_swapped_for_another_images(tokenizer):
    examples = [example(index) for index in range(64)]
    examples[1]["image_id"] = examples[0]["image_id"]  # two sentences of one image
    sentence_of = {}
    for item in examples:
        ids = tokenizer(item["sentence"], truncation=True, max_length=20)["input_ids"]
        sentence_of.setdefault(tuple(ids), set()).add(item["image_id"])
    collate = PretrainingDataCollator(tokenizer, word_mask_probability=0.0, seed=4)
    swapped = 0
    for batch in draws(collate, examples, 40):
        for row, (ids, mask, matched) in enumerate(
            zip(batch["input_ids"], batch["attention_mask"], batch["matched_label"], strict=True)
        ):
            images = sentence_of[tuple(ids[mask.bool()].tolist())]
            assert (examples[row]["image_id"] in images) == bool(matched)
        swapped += (batch["matched_label"] == 0).sum().item()
    assert swapped / (40 * 64) == pytest.approx(0.5, abs=0.03)


def test_swapped_pairs_carry_no_qa_label_and_lm_labels_as_chosen(tokenizer):
    examples = [example(index, question=True) for index in range(64)]
    for lm_on_mismatched in (True, False):
        collate = PretrainingDataCollator(tokenizer, lm_on_mismatched=lm_on_mismatched, seed=5)
        lm_on_swapped = 0
        for batch in draws(collate, examples, 10):
            swapped = batch["matched_label"] == 0
            assert (batch["ans"][swapped] == -100).all()
            expected = torch.tensor([item["qa_label_ids"][0] for item in examples])
            assert torch.equal(batch["ans"][~swapped], expected[~swapped])
            lm_on_swapped += (batch["labels"][swapped] != -100).sum().item()
        # The original keeps masked-LM labels on swapped sentences; the option drops them.
        assert (lm_on_swapped > 0) == lm_on_mismatched


def test_qa_answers_are_drawn_by_score_for_questions_only(tokenizer):
    examples = [example(index, question=index % 2 == 0) for index in range(100)]
    for item in examples[::2]:
        item["qa_label_ids"], item["qa_scores"] = [3, 7], [0.9, 0.3]
    examples[1]["qa_label_ids"], examples[1]["qa_scores"] = [2], [1.0]  # a caption never answers
    examples[2]["qa_label_ids"], examples[2]["qa_scores"] = [], []  # a question whose answers are not in the head
    collate = PretrainingDataCollator(tokenizer, swap_probability=0.0, seed=6)
    answers = torch.stack([batch["ans"] for batch in draws(collate, examples, 40)])
    assert (answers[:, 1::2] == -100).all() and (answers[:, 2] == -100).all()
    drawn = answers[:, 4::2]
    assert set(drawn.unique().tolist()) == {3, 7}
    assert (drawn == 3).float().mean().item() == pytest.approx(0.75, abs=0.03)
    # Rows with an answer carry their whole label too, for scoring a prediction; the others carry none.
    batch = collate(examples)
    answered = batch["ans"] != -100
    assert batch["qa_label_ids"][answered].tolist() == [[3, 7]] * int(answered.sum())
    torch.testing.assert_close(batch["qa_scores"][answered], torch.tensor([[0.9, 0.3]]).expand(int(answered.sum()), 2))
    assert (batch["qa_label_ids"][~answered] == -100).all() and (batch["qa_scores"][~answered] == 0).all()


def test_fixed_draws_depend_on_the_batch_only(tokenizer):
    examples = [{**example(index, question=True), "sentence_id": f"s{index}"} for index in range(8)]
    collate = PretrainingDataCollator(tokenizer, seed=4, fixed_draws=True)
    first = collate(examples)
    collate(list(reversed(examples)))  # draws in between change nothing for the next batch
    again = PretrainingDataCollator(tokenizer, seed=4, fixed_draws=True)(examples)
    for key in ("input_ids", "labels", "visual_feats", "matched_label", "ans", "masked_regions"):
        assert torch.equal(first[key], again[key]), key
    reordered = collate(examples[1:] + examples[:1])
    other_seed = PretrainingDataCollator(tokenizer, seed=5, fixed_draws=True)(examples)
    for other in (reordered, other_seed):
        assert not torch.equal(first["masked_regions"], other["masked_regions"]) or not torch.equal(
            first["labels"], other["labels"]
        )


def test_the_same_seed_gives_the_same_batches(tokenizer, monkeypatch):
    examples = [example(index, question=True) for index in range(8)]

    def flat(batch: dict) -> list[torch.Tensor]:
        labels = [tensor for pair in batch["obj_labels"].values() for tensor in pair]
        return [batch[key] for key in ("input_ids", "labels", "visual_feats", "matched_label", "ans")] + labels

    def same(first: dict, second: dict) -> bool:
        return all(torch.equal(a, b) for a, b in zip(flat(first), flat(second), strict=True))

    first, second = PretrainingDataCollator(tokenizer, seed=7), PretrainingDataCollator(tokenizer, seed=7)
    assert all(same(a, b) for a, b in zip(draws(first, examples, 3), draws(second, examples, 3), strict=True))
    assert not same(first(examples), PretrainingDataCollator(tokenizer, seed=8)(examples))
    copy = pickle.loads(pickle.dumps(first))  # as a DataLoader worker receives it: the worker seeds it
    workers = {}
    for seed in (11, 11, 12):
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda seed=seed: types.SimpleNamespace(seed=seed))
        fresh = pickle.loads(pickle.dumps(copy))
        workers.setdefault(seed, []).append(fresh(examples))
    assert same(*workers[11]) and not same(workers[11][0], workers[12][0])


def test_examples_without_detector_labels_are_refused_for_the_label_losses(tokenizer):
    examples = [example(index) for index in range(2)]
    for item in examples:
        del item["attribute_ids"]
    with pytest.raises(ValueError, match=r"s0.*no `attribute_ids`.*visual loss 'attr'.*load_pretraining"):
        PretrainingDataCollator(tokenizer)(examples)
    batch = PretrainingDataCollator(tokenizer, visual_losses=("obj", "feat"))(examples)
    assert sorted(batch["obj_labels"]) == ["feat", "obj"]
    examples[1]["object_ids"] = examples[1]["object_ids"][:-1]
    with pytest.raises(ValueError, match="'s1' has 9 `object_ids` for 10 regions"):
        PretrainingDataCollator(tokenizer, visual_losses=("obj",))(examples)
    with pytest.raises(ValueError, match="unknown `visual_losses`"):
        PretrainingDataCollator(tokenizer, visual_losses=("objects",))
    with pytest.raises(ValueError, match="`swap_probability` must lie in"):
        PretrainingDataCollator(tokenizer, swap_probability=1.5)
    with pytest.raises(ValueError, match="empty list"):
        PretrainingDataCollator(tokenizer)([])


ANSWERS = ["yes", "no", "2", "red", "cube"]


def pretraining_dataset(tmp_path):
    """Six captions and six questions of three stored images, through `load_pretraining`."""
    store = tmp_path / "store"
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(store, resume=True) as writer:
        for index, count in enumerate([4, 5, 4]):
            writer.add(
                {
                    "image_id": f"img{index}",
                    "visual_feats": rng.standard_normal((count, DIM)),
                    "boxes": np.tile([1.0, 2.0, 20.0, 30.0], (count, 1)),
                    "image_width": 40,
                    "image_height": 40,
                    "object_ids": rng.integers(0, 20, count),
                    "object_scores": rng.uniform(0.1, 1, count),
                    "attribute_ids": rng.integers(0, 10, count),
                    "attribute_scores": rng.uniform(0.1, 1, count),
                }
            )
    records = [
        {
            "img_id": f"img{index}",
            "sentf": {"mscoco": ["w1 w2 w3 w4 w5", "w6 w7 w8"], "vqa": ["w9 w10 w11 w12", "w13 w14 w15"]},
            "labelf": {"vqa": [{"yes": 1.0, "no": 0.3}, {"2": 0.6}]},
        }
        for index in range(3)
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    return load_pretraining([f"lxmert:{tmp_path / 'train.json'}"], store, ANSWERS, cache_dir=tmp_path / "cache")


def test_a_collated_batch_trains_lxmert_for_pretraining_on_every_objective(tokenizer, tmp_path):
    dataset = pretraining_dataset(tmp_path)
    batch = PretrainingDataCollator(tokenizer, seed=0)([dataset[index] for index in range(len(dataset))])
    assert (batch["labels"] != -100).any() and (batch["ans"] != -100).any() and (batch["matched_label"] == 0).any()
    settings = {**TINY, "vocab_size": len(tokenizer)}
    config = LxmertConfig(**settings, num_qa_labels=len(ANSWERS), num_object_labels=20, num_attr_labels=10)
    model = LxmertForPreTraining(config)
    output = model(**batch)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    for head in ("cls.predictions", "cls.seq_relationship", "obj_predict_head", "answer_head"):
        grads = [p.grad for name, p in model.named_parameters() if name.startswith(head)]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), head
    for key in ("obj", "attr", "feat"):
        decoder = model.obj_predict_head.decoder_dict[key].weight
        assert decoder.grad.abs().sum() > 0, key


def test_dataloader_workers_draw_reproducibly_from_the_loader_seed(tokenizer, tmp_path):
    dataset = pretraining_dataset(tmp_path)
    collate = PretrainingDataCollator(tokenizer)

    def epoch(seed: int) -> list[dict]:
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(dataset, batch_size=6, num_workers=2, collate_fn=collate, generator=generator)
        return list(loader)

    first, again, other = epoch(0), epoch(0), epoch(1)
    for batch, repeat in zip(first, again, strict=True):
        for key in ("input_ids", "labels", "visual_feats", "matched_label", "ans"):
            assert torch.equal(batch[key], repeat[key]), key
    assert any(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other, strict=True))
