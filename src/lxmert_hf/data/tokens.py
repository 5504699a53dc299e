"""Questions tokenized once, ahead of training: an `input_ids` column cached beside a prepared split.

Tokenizing in the collator costs every batch of every epoch the same work; a prepared split tokenized once (a few
seconds for VQA's 443,757 training questions, then read from the `datasets` cache) gives the collator ids to pad.
"""

from __future__ import annotations

import hashlib
from typing import Any

import datasets
import numpy as np
import torch

TOKENIZATION_FORMAT = 1
# A tokenizer's files, one of which any saved tokenizer has (a BERT WordPiece one: vocab.txt).
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")
_ENCODING_FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}


def check_vocabulary(tokenizer: Any, fix: str) -> Any:
    """Return `tokenizer`, or raise a `ValueError` ending with `fix` when its vocabulary holds only special tokens:
    what transformers builds from a folder that has no tokenizer files, which would read every word as [UNK].

    Example:
        ```python
        >>> from transformers import BertTokenizer
        >>> check_vocabulary(BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1}), "pass `tokenizer=`")
        Traceback (most recent call last):
        ...
        ValueError: the tokenizer has no vocabulary, only its 5 special tokens (...): pass `tokenizer=`
        ```
    """
    specials = len(set(tokenizer.all_special_ids))
    if len(tokenizer) <= specials:
        raise ValueError(
            f"the tokenizer has no vocabulary, only its {specials} special tokens (a folder without tokenizer files "
            f"gives one): {fix}"
        )
    return tokenizer


def backend_encoder(tokenizer: Any, max_length: int, padding: bool = True):
    """A private copy of a fast tokenizer's backend set to truncate at `max_length` ([CLS] and [SEP] included) and,
    with `padding`, to pad to the longest: the same ids as calling the tokenizer, without its per-call Python work.
    `None` for a slow tokenizer (or, with `padding`, one without a pad token): call the tokenizer itself then."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or (padding and tokenizer.pad_token is None):
        return None
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(backend.to_str())
    encoder.enable_truncation(max_length, direction=tokenizer.truncation_side)
    if padding:
        encoder.enable_padding(
            direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id, pad_type_id=tokenizer.pad_token_type_id,
            pad_token=tokenizer.pad_token,
        )  # fmt: skip
    else:
        encoder.no_padding()
    return encoder


def _encode_batch(encoder, questions: list[str]) -> list:
    # `encode_batch_fast` (tokenizers >= 0.20) skips the character offsets, which nothing here needs.
    return getattr(encoder, "encode_batch_fast", encoder.encode_batch)(questions)


def encode_with_backend(encoder, questions: list[str], names: list[str]) -> dict[str, torch.Tensor]:
    """Encode `questions` with a [`backend_encoder`] into int64 tensors [len(questions), length], one per model
    input in `names` (the tokenizer's `model_input_names`)."""
    encodings = _encode_batch(encoder, questions)
    return {
        name: torch.from_numpy(np.array([getattr(e, _ENCODING_FIELDS[name]) for e in encodings], dtype=np.int64))
        for name in names
        if name in _ENCODING_FIELDS
    }


def encode_questions(tokenizer: Any, encoder, questions: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """A padded batch of model text inputs for `questions`, truncated at `max_length`: through `encoder` (a padding
    [`backend_encoder`] of `tokenizer`) when there is one, else through the tokenizer's own call. Both give the
    same tensors."""
    if encoder is not None:
        return encode_with_backend(encoder, questions, tokenizer.model_input_names)
    encoding = tokenizer(
        questions, truncation=True, max_length=max_length, padding=len(questions) > 1, return_tensors="pt"
    )
    return {name: encoding[name] for name in _ENCODING_FIELDS if name in encoding}


class QuestionEncoder:
    """Tokenize a batch of questions as the collator would, without padding: `{"input_ids": [[...], ...]}`.

    Fast tokenizers run through a private copy of their backend set to truncate at `max_question_length`
    ([CLS] and [SEP] included); slow ones through their own call with the same truncation.
    """

    def __init__(self, tokenizer: Any, max_question_length: int = 20):
        if max_question_length < 3:
            raise ValueError(f"`max_question_length` must leave room for [CLS] and [SEP], got {max_question_length}.")
        self.tokenizer = tokenizer
        self.max_question_length = max_question_length
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self._state = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
        self._encoder = backend_encoder(tokenizer, max_question_length, padding=False)

    def fingerprint(self) -> str:
        """A digest of everything the ids depend on: the tokenizer's state and the truncation."""
        payload = f"{TOKENIZATION_FORMAT}|{self.max_question_length}|{self.tokenizer.truncation_side}|{self._state}"
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def __call__(self, questions: list[str]) -> dict[str, list[list[int]]]:
        if self._encoder is not None:
            return {"input_ids": [encoding.ids for encoding in _encode_batch(self._encoder, questions)]}
        encoded = self.tokenizer(questions, truncation=True, max_length=self.max_question_length)
        return {"input_ids": encoded["input_ids"]}

    def __reduce__(self):  # pickles (DataLoader workers, datasets' multiprocessing) as its arguments
        return type(self), (self.tokenizer, self.max_question_length)


def tokenize_questions(questions: datasets.Dataset, tokenizer: Any, max_question_length: int = 20) -> datasets.Dataset:
    r"""
    Add an `input_ids` column to a dataset of questions: each `question` tokenized and truncated to
    `max_question_length` tokens, unpadded (the collator pads each batch).

    The ids are computed once per (dataset, tokenizer, length) and cached by `datasets` beside the data (a dataset
    read from disk) or kept in memory; an existing `input_ids` column is replaced. The result is a view joining
    the new column to `questions`, nothing else is copied.

    Example:
        ```python
        >>> import datasets
        >>> from transformers import BertTokenizerFast
        >>> from lxmert_hf.data import tokenize_questions
        >>> vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "what": 4, "color": 5, "?": 6}
        >>> tokenizer = BertTokenizerFast(vocab=vocab)
        >>> questions = datasets.Dataset.from_dict({"question": ["what color?", "what?"]})
        >>> tokenize_questions(questions, tokenizer)[:]["input_ids"]
        [[2, 4, 5, 6, 3], [2, 4, 6, 3]]
        ```
    """
    if "question" not in questions.column_names:
        raise ValueError(f"The questions have no `question` column to tokenize; they have {questions.column_names}.")
    encoder = QuestionEncoder(tokenizer, max_question_length)
    if "input_ids" in questions.column_names:
        questions = questions.remove_columns("input_ids")
    fingerprint = hashlib.sha256(f"{questions._fingerprint}|{encoder.fingerprint()}".encode()).hexdigest()[:32]
    ids = questions.map(
        encoder,
        batched=True,
        batch_size=10_000,
        input_columns="question",
        remove_columns=questions.column_names,
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
        new_fingerprint=fingerprint,
        desc="Tokenizing questions",
    )
    return datasets.concatenate_datasets([questions, ids], axis=1)
