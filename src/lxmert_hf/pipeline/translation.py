"""Translating questions into the model's language and answers back, with Hugging Face translation models."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence

import torch

from lxmert_hf.locations import locate

logger = logging.getLogger(__name__)

# LXMERT was trained on English questions and answers.
MODEL_LANGUAGE = "en"
DEFAULT_MODEL_PATTERN = "Helsinki-NLP/opus-mt-{source}-{target}"
LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]+)*$")

TranslateFn = Callable[[list[str]], list[str]]


class Translator:
    r"""
    Translate short texts with a sequence-to-sequence translation model (a Marian `opus-mt` model, for instance).

    Results are cached: a pipeline translates the same answers again and again.

    Args:
        model ([`~transformers.PreTrainedModel`]): a model with `generate`, e.g. `MarianMTModel`.
        tokenizer: its tokenizer.
        max_new_tokens (`int`, *optional*, defaults to 64): longest translation, in tokens.

    Example:
        ```python
        >>> from lxmert_hf.pipeline import Translator
        >>> to_english = Translator.from_pretrained("Helsinki-NLP/opus-mt-ko-en")  # doctest: +SKIP
        >>> to_english(["고양이는 무슨 색인가요?"])  # doctest: +SKIP
        ['What color is the cat?']
        ```
    """

    def __init__(self, model, tokenizer, max_new_tokens: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self._cache: dict[str, str] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device=None, **hub_kwargs) -> Translator:
        """Load a translation model and its tokenizer from a folder or Hub id (`revision`, `token`, ... pass
        through)."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        name = locate(name_or_path, what="translation model").name_or_path
        tokenizer = AutoTokenizer.from_pretrained(name, **hub_kwargs)
        model = AutoModelForSeq2SeqLM.from_pretrained(name, **hub_kwargs)
        if device is not None:
            model = model.to(device)
        return cls(model, tokenizer)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> list[str]:
        missing = sorted({text for text in texts if text not in self._cache})
        if missing:
            batch = self.tokenizer(missing, return_tensors="pt", padding=True, truncation=True)
            batch = {name: tensor.to(self.model.device) for name, tensor in batch.items()}
            generated = self.model.generate(**batch, max_new_tokens=self.max_new_tokens)
            decoded = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            self._cache.update(zip(missing, (text.strip() for text in decoded), strict=True))
        return [self._cache[text] for text in texts]


def check_language(language: str | None, argument: str) -> str | None:
    """Return a language code, `None` when no translation is wanted (no language, or the model's own)."""
    if language is None:
        return None
    if not isinstance(language, str) or not LANGUAGE_CODE.match(language):
        raise ValueError(f"`{argument}` must be a language code such as 'ko' or 'fr', got {language!r}.")
    return None if language == MODEL_LANGUAGE else language


class Translators:
    """The translation functions of a pipeline, keyed `"source-target"`, loaded on first use.

    `models` maps `"ko-en"`-style keys to a folder or Hub id, a [`Translator`], or any function from a list of
    texts to their translations. A pair with no entry loads `Helsinki-NLP/opus-mt-{source}-{target}`.
    """

    def __init__(self, models: Mapping[str, str | os.PathLike | TranslateFn] | None, device=None, hub_kwargs=None):
        self._models = dict(models or {})
        for key in self._models:
            if not isinstance(key, str) or len(key.split("-", 1)) != 2:
                raise ValueError(f"`translation_models` keys must read 'source-target', e.g. 'ko-en'; got {key!r}.")
        self._device = device
        self._hub_kwargs = hub_kwargs or {}
        self._loaded: dict[str, TranslateFn] = {}

    def get(self, source: str, target: str) -> TranslateFn:
        key = f"{source}-{target}"
        if key not in self._loaded:
            entry = self._models.get(key, DEFAULT_MODEL_PATTERN.format(source=source, target=target))
            if callable(entry):
                self._loaded[key] = entry
            else:
                logger.info("Loading the %s translation model %s.", key, entry)
                self._loaded[key] = self._load(entry, key)
        return self._loaded[key]

    def _load(self, name: str | os.PathLike, key: str) -> Translator:
        try:
            return Translator.from_pretrained(name, device=self._device, **self._hub_kwargs)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"cannot load the {key} translation model {str(name)!r}: {error}. Pass "
                f"`translation_models={{'{key}': 'folder or Hub id'}}` to choose another one."
            ) from error

    def to_model_language(self, texts: list[str], source: str | None) -> list[str]:
        return texts if source is None else self.get(source, MODEL_LANGUAGE)(texts)

    def from_model_language(self, texts: list[str], target: str | None) -> list[str]:
        return texts if target is None else self.get(MODEL_LANGUAGE, target)(texts)
