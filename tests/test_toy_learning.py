"""The toy GQA and NLVR2 worlds are learnable: a small LXMERT trained for a few hundred steps on each answers
questions it never saw better than the words alone can."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from lxmert_hf import LxmertForNLVR2, LxmertForVQA, LxmertNLVR2Config, LxmertVQAConfig
from lxmert_hf.data import NLVR2DataCollator, load_prepared
from lxmert_hf.data.collator import VQADataCollator
from lxmert_hf.toy import ToyWorldConfig
from lxmert_hf.training.data import load_splits, prepare_toy

SIZES = dict(
    hidden_size=64, num_attention_heads=2, intermediate_size=128, l_layers=1, x_layers=2, r_layers=0,
    visual_feat_dim=32, initializer_range=0.1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)  # fmt: skip


def world(train_images: int, **options) -> ToyWorldConfig:
    return ToyWorldConfig(
        num_images={"train": train_images, "validation": 60}, feature_dim=32, mask_background=True, seed=3, **options
    )


def train(model, collate, examples, steps: int, batch_size: int = 64, lr: float = 2e-3) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    order = np.random.default_rng(0).permutation(np.arange(steps * batch_size) % len(examples))
    model.train()
    for step in range(steps):
        batch = collate([examples[int(i)] for i in order[step * batch_size : (step + 1) * batch_size]])
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@torch.no_grad()
def predict(model, collate, examples) -> np.ndarray:
    rows = [examples[i] for i in range(len(examples))]
    return np.concatenate(
        [model(**collate(rows[i : i + 256])).logits.argmax(-1).numpy() for i in range(0, len(rows), 256)]
    )


@pytest.mark.slow
def test_gqa_world_is_learned_beyond_the_question_alone(tmp_path):
    root = prepare_toy(world(300), cache_dir=tmp_path, task="gqa")
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    examples, evaluation, answers = load_splits(root / "prepared", "train", "val", tokenizer)
    torch.manual_seed(0)
    sizes = {**SIZES, "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 256}
    config = LxmertVQAConfig.from_answers(answers, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                          **sizes)  # fmt: skip
    model = LxmertForVQA(config)
    collate = VQADataCollator(tokenizer)
    train(model, collate, examples, steps=500, lr=1e-3)
    gold = np.array([answers.index(answer) for answer in evaluation.with_format(None)["answer"]])
    accuracy = (predict(model, collate, evaluation) == gold).mean()
    blind = (predict(model, dataclasses.replace(collate, zero_visual_inputs=True), evaluation) == gold).mean()
    # Measured: 53.2% against 12.3% with the regions zeroed (the recipe's longer run: 89.8% against 39.8%).
    assert accuracy > blind + 0.2, (accuracy, blind)


@pytest.mark.slow
def test_nlvr2_statements_are_learned_from_the_pairs_features(tmp_path):
    """The examples of one sentence ("both images contain a ...": true of half its pairs) are learned from the
    features the prepared world joins to each pair, so labels, identifiers and both images line up.

    The whole world (every sentence at once) leaves a small model at chance for its first ~1,700 steps of 32
    (measured with the recipe's settings), far longer than a test: the recipe's run shows that part."""
    root = prepare_toy(world(2000, min_objects=1, max_objects=4, questions_per_image=20), cache_dir=tmp_path,
                       task="nlvr2")  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    examples = load_prepared(root / "prepared", "train", tokenizer=tokenizer)
    sentences = Counter(s for s in examples.with_format(None)["question"] if s.startswith("both images contain"))
    sentence = sentences.most_common(1)[0][0]
    chosen = examples.filter(lambda example: example["question"] == sentence, input_columns=None)
    train_part, held_out = chosen.select(range(len(chosen) // 2)), chosen.select(range(len(chosen) // 2, len(chosen)))
    torch.manual_seed(0)
    model = LxmertForNLVR2(LxmertNLVR2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **SIZES))
    collate = NLVR2DataCollator(tokenizer)
    train(model, collate, train_part, steps=300, batch_size=32)
    gold = np.array(held_out.with_format(None)["label"])
    accuracy = (predict(model, collate, held_out) == gold).mean()
    # Measured: 82% of the 100 held-out pairs (the sentence alone: 50%, as every sentence is true of half its pairs).
    assert abs(gold.mean() - 0.5) < 0.15 and accuracy > 0.7, (sentence, len(chosen), accuracy)
