"""Shared fixtures: a tiny LXMERT config, a local tokenizer and random inputs."""

from __future__ import annotations

import pytest
from tiny import ANSWERS, TINY, random_inputs
from transformers import BertTokenizer

from lxmert_hf import LxmertVQAConfig


@pytest.fixture
def tiny_config() -> LxmertVQAConfig:
    return LxmertVQAConfig.from_answers(ANSWERS, **TINY)


@pytest.fixture
def tiny_tokenizer() -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "the", "cube", "?", "how", "many"]
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)})


@pytest.fixture
def inputs() -> dict:
    return random_inputs()
