"""`VQAPipeline`: ask LXMERT a question about an image, a `transformers.Pipeline` registered as `"lxmert-vqa"`."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, Pipeline

from lxmert_hf.data.collator import batch_regions
from lxmert_hf.data.tokens import TOKENIZER_FILES, check_vocabulary
from lxmert_hf.locations import cache_first_file, locate
from lxmert_hf.modeling import LxmertForVQA
from lxmert_hf.pipeline.examples import is_example, is_picture, is_stream, stream_examples, with_question
from lxmert_hf.pipeline.inputs import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_TIMEOUT_S,
    REGION_METADATA,
    REGION_NAMES,
    PipelineInputs,
    Regions,
    check_question,
    is_features,
)
from lxmert_hf.pipeline.translation import Translators, check_language
from lxmert_hf.pipeline.visualize import draw_answer

logger = logging.getLogger(__name__)

TASK = "lxmert-vqa"
DEFAULT_TOP_K = 5
CALL_ARGUMENTS = (
    "top_k", "return_regions", "return_attention", "question_lang", "answer_lang", "timeout", "max_image_pixels",
)  # fmt: skip


@dataclasses.dataclass
class _Asked:
    """One example: its question (as the model reads it) and its regions. An opaque object: transformers' batching
    collects these in a list, and `_forward` tokenizes the batch's questions in one call and stacks its regions with
    numpy (one copy), so the per-example host work stays small."""

    question: str
    regions: Regions

    @property
    def mask(self) -> Any:
        """The regions' mask, or `None` when every region is real (the batch then needs none)."""
        mask = self.regions["visual_attention_mask"]
        return None if bool(mask.all()) else mask


class VQAPipeline(PipelineInputs, Pipeline):
    r"""
    Visual question answering with an LXMERT checkpoint: an image and a question in, the best answers out.

    Create it with [`VQAPipeline.from_pretrained`] (a folder or Hub id) or `transformers.pipeline("lxmert-vqa",
    model=...)` once `lxmert_hf` is imported.

    Images may be given as a path, an http(s) URL, a PIL image or a numpy array / torch tensor; the region detector
    (see `detector`) turns them into region features. Precomputed features are passed as a dict with
    `visual_feats` [num_regions, dim] and either `visual_pos` (boxes normalized to [0, 1]) or `boxes` in pixels with
    `image_size` (height, width). Calls:

    - `pipe(image, question="...")`: one list of answers.
    - `pipe(image, question=[...])`, `pipe([image, ...], question="...")`, `pipe([image, ...], question=[...])`
      (paired), `pipe([{"image": ..., "question": ...}, ...])`: a list, one entry per question.
    - `pipe(KeyDataset(dataset, "image"), question="...")`, `pipe(dataset)` (a `datasets.Dataset` whose rows hold
      `question` and `image` or the features), or a generator of such dicts: an iterator, batched by
      `batch_size`.

    Examples are wrapped one by one, as in every `transformers.Pipeline`; their questions are tokenized and their
    features stacked and checked once per batch (`benchmarks/RESULTS.md` times the host work against calling the
    model directly). To answer a whole prepared split, [`~lxmert_hf.predict.predict_answers`] (`lxmert-hf
    predict`) batches with the training collator and loader workers.

    Each answer is `{"answer": str, "score": float}`, best first. The score is the softmax probability over the
    answer vocabulary for checkpoints trained with `head_loss="softmax"`, and the answer's own sigmoid for
    `head_loss="bce"` (the paper's loss), where scores do not sum to one. With `return_regions=True` and/or
    `return_attention=True` an entry becomes a dict: `answers`, `question` (as the model saw it), `regions` (boxes,
    names when known) and `attention` (the question's `[CLS]` cross-attention over the regions in the last
    cross-modality layer, averaged over heads; see [`draw_answer`]).

    Args:
        model ([`LxmertForVQA`]): the answer classifier.
        tokenizer: the checkpoint's tokenizer.
        detector ([`RegionFeatureExtractor`], `str`, *optional*): the region detector for pictures, or a folder /
            Hub id to load it from on first use. Defaults to the one named in `model.config.visual_features`.
        translation_models (`dict`, *optional*): translation models for `question_lang` / `answer_lang`, keyed
            `"ko-en"`, `"en-ko"`: a folder or Hub id, a [`Translator`] or a function from texts to translations.
            A missing pair loads `Helsinki-NLP/opus-mt-{source}-{target}`.
        max_question_length (`int`, *optional*, defaults to 20): questions are truncated to this many tokens, as in
            training.
        top_k (`int`, *optional*, defaults to 5): answers returned per question (at most the vocabulary size).
        question_lang / answer_lang (`str`, *optional*): the language questions are asked in and answers wanted
            in (`"ko"`, `"fr"`, ...); English needs no translation.
        timeout (`float`, *optional*, defaults to 10): seconds to wait for an image URL.
        max_image_pixels (`int`, *optional*): larger images are refused before decoding.
        batch_size, device, dtype: as for every `transformers.Pipeline`.

    Example:
        ```python
        >>> import torch
        >>> from transformers import BertTokenizer
        >>> from lxmert_hf import LxmertForVQA, LxmertVQAConfig, VQAPipeline
        >>> config = LxmertVQAConfig.from_answers(["yes", "no", "red"], hidden_size=32, num_attention_heads=2,
        ...     intermediate_size=64, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=8)
        >>> tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "is",
        ...     "it", "red", "?"])})
        >>> pipe = VQAPipeline(LxmertForVQA(config), tokenizer, device="cpu")
        >>> features = {"visual_feats": torch.rand(36, 16), "visual_pos": torch.rand(36, 4)}
        >>> answers = pipe(features, question="is it red?", top_k=2)
        >>> len(answers), sorted(answers[0])
        (2, ['answer', 'score'])
        ```
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False
    _load_tokenizer = True

    def __init__(
        self,
        model: LxmertForVQA,
        tokenizer=None,
        detector: nn.Module | str | os.PathLike | None = None,
        translation_models: Mapping[str, Any] | None = None,
        max_question_length: int = 20,
        **kwargs,
    ):
        check_pipeline_arguments(type(self), model, LxmertForVQA, tokenizer, max_question_length, kwargs)
        super().__init__(model=model, tokenizer=tokenizer, **kwargs)
        self.model.eval()
        self.max_question_length = max_question_length
        self.detector = detector.to(self.device) if isinstance(detector, nn.Module) else detector
        self.translators = Translators(translation_models, device=self.device)
        self._hub_kwargs: dict[str, Any] = {}
        self._question_encoder: tuple[Any, int, Any] | None = None

    # -- loading and saving --------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike,
        *,
        tokenizer=None,
        detector: nn.Module | str | os.PathLike | None = None,
        answers=None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        dtype: torch.dtype | str | None = None,
        **kwargs,
    ) -> VQAPipeline:
        r"""
        Load a pipeline from a checkpoint folder or Hub id (downloaded through `huggingface_hub`; `revision`,
        `cache_dir`, `token` and `local_files_only` pass through, also to the detector when it is loaded). Folders
        and Hub ids are told apart by [`lxmert_hf.locations.locate`]: `hf-hub:owner/name` always names the Hub.

        Args:
            model_name_or_path (`str` or `os.PathLike`): an `LxmertForVQA` checkpoint, or any LXMERT layout
                [`LxmertForVQA.from_pretrained`] reads (`unc-nlp/lxmert-vqa-uncased` needs `answers=`).
            tokenizer (*optional*): a tokenizer, folder or Hub id; defaults to the checkpoint's own.
            detector (*optional*): see [`VQAPipeline`].
            answers (`list[str]` or path, *optional*): the answer vocabulary of a checkpoint that carries none.
            dtype (`torch.dtype` or `str`, *optional*): the model's dtype.
            kwargs: [`VQAPipeline`] arguments (`device`, `top_k`, `batch_size`, ...).

        Example:
            ```python
            >>> from lxmert_hf import VQAPipeline
            >>> pipe = VQAPipeline.from_pretrained("me/lxmert-vqa", device="cpu")  # doctest: +SKIP
            >>> pipe("cat.jpg", question="What color is the cat?")  # doctest: +SKIP
            [{'answer': 'black', 'score': 0.62}, {'answer': 'gray', 'score': 0.11}, ...]
            ```
        """
        hub_kwargs = {
            key: value
            for key, value in (
                ("revision", revision), ("cache_dir", cache_dir), ("token", token),
                ("local_files_only", local_files_only),
            )
            if value is not None
        }  # fmt: skip
        model_kwargs = {"dtype": dtype} if dtype is not None else {}
        if answers is not None:
            model_kwargs["answers"] = answers
        location = locate(model_name_or_path, what="model_name_or_path")
        model = LxmertForVQA.from_pretrained(str(location), **hub_kwargs, **model_kwargs)
        _check_named_answers(model, answers)
        if tokenizer is None or isinstance(tokenizer, str | os.PathLike):
            tokenizer = _load_tokenizer(tokenizer or str(location), hub_kwargs)
        pipeline = cls(model=model, tokenizer=tokenizer, detector=detector, **kwargs)
        # The revision names a version of this checkpoint, not of the detector or translation models.
        pipeline._hub_kwargs = {k: v for k, v in hub_kwargs.items() if k in ("cache_dir", "token")}
        pipeline.translators = Translators(kwargs.get("translation_models"), pipeline.device, pipeline._hub_kwargs)
        return pipeline

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the model, its tokenizer and a model card as a self-describing checkpoint folder (see
        [`lxmert_hf.hub.save_checkpoint`], whose arguments `kwargs` are, e.g. `max_shard_size`), declaring this
        pipeline: `VQAPipeline.from_pretrained`, `transformers.pipeline("lxmert-vqa", model=...)` and, where
        lxmert_hf is installed, `transformers.pipeline(model=..., trust_remote_code=True)` read it back."""
        from lxmert_hf.hub import save_checkpoint

        kwargs = {"overwrite": True, "custom_pipeline": True, **kwargs}
        save_checkpoint(self.model, save_directory, tokenizer=self.tokenizer, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
        card=None,
        **kwargs,
    ):
        """Upload the model and tokenizer as [`save_pretrained`] writes them, with transformers' `push_to_hub`
        arguments (see [`lxmert_hf.hub.push_to_hub`], which also takes `card`, `dry_run`, `local_dir`).

        Example:
            ```python
            >>> pipe.push_to_hub("me/lxmert-vqa", private=True)  # doctest: +SKIP
            ```
        """
        from lxmert_hf.hub import push_to_hub

        return push_to_hub(
            self.model, repo_id, commit_message=commit_message, commit_description=commit_description,
            private=private, token=token, revision=revision, create_pr=create_pr, max_shard_size=max_shard_size,
            tags=tags, tokenizer=self.tokenizer, card=card, custom_pipeline=True, **kwargs,
        )  # fmt: skip

    # -- calling -------------------------------------------------------------------------------------------------
    def __call__(self, image=None, question: str | list[str] | None = None, **kwargs):
        """Answer questions about images; see the class docstring for the accepted inputs and outputs."""
        if kwargs.get("batch_size") is not None:
            _positive_int(kwargs["batch_size"], "batch_size")
        examples, single = self._examples(image, question)
        if isinstance(examples, list):
            self._share_regions(examples, kwargs)
        results = super().__call__(examples, **kwargs)
        return results[0] if single else results

    def visualize(self, image, question: str, max_regions: int = 5, **kwargs):
        """Answer `question` about one image and draw it with [`draw_answer`]: the regions, labelled, over a
        heatmap of the question's attention. Returns a PIL image."""
        check_question(question)
        result = self(image, question=question, return_regions=True, return_attention=True, **kwargs)
        return draw_answer(None if is_features(image) else image, result, max_regions=max_regions)

    def _examples(self, image, question) -> tuple[Any, bool]:
        if image is None:
            raise ValueError("pass an image (path, URL, PIL image, array) or precomputed features, and a question.")
        if is_stream(image):
            return stream_examples(image, question), False
        if is_example(image):
            return [with_question(image, question)], True
        if isinstance(image, list | tuple) and image and all(is_example(item) for item in image):
            return [with_question(item, question) for item in image], False
        if question is None:
            raise ValueError("`question` is required: pass `question='...'` (or a list of questions).")
        images = list(image) if isinstance(image, list | tuple) else [image]
        if not isinstance(question, str | list | tuple):
            check_question(question)  # raises, naming what a question must be
        questions = [question] if isinstance(question, str) else list(question)
        single = not isinstance(image, list | tuple) and isinstance(question, str)
        if len(images) > 1 and len(questions) > 1 and len(images) != len(questions):
            raise ValueError(
                f"got {len(images)} images and {len(questions)} questions: pass one question for all images, one "
                "image for all questions, or equally many of both (paired in order)."
            )
        if not images or not questions:
            raise ValueError("nothing to answer: the list of images or of questions is empty.")
        count = max(len(images), len(questions))
        images, questions = images * (count // len(images)), questions * (count // len(questions))
        return [{"image": i, "question": q} for i, q in zip(images, questions, strict=True)], single

    def _share_regions(self, examples: list[dict], call_kwargs: dict) -> None:
        """Run the detector once on a picture asked about several times."""
        pictures = [e["image"] for e in examples if is_picture(e.get("image"))]
        repeated = {key for key, count in Counter(id(p) for p in pictures).items() if count > 1}
        if not repeated:
            return
        # The call's own arguments only: `batch_size` and `num_workers` are the base class's.
        asked = {key: value for key, value in call_kwargs.items() if key in CALL_ARGUMENTS}
        params = {**self._preprocess_params, **self._sanitize_parameters(**asked)[0]}
        done: dict[int, Regions] = {}
        for index, example in enumerate(examples):
            key = id(example.get("image"))
            if key in repeated:
                if key not in done:
                    done[key] = self._picture_regions(example["image"], **_image_params(params))
                examples[index] = {**example, "image": done[key]}  # a new dict: the caller's stays as given

    # -- transformers.Pipeline steps -----------------------------------------------------------------------------
    def _sanitize_parameters(
        self,
        top_k=None,
        return_regions=None,
        return_attention=None,
        question_lang=None,
        answer_lang=None,
        timeout=None,
        max_image_pixels=None,
        **unknown,
    ):
        if unknown:
            raise ValueError(f"unknown argument(s) {sorted(unknown)}; VQAPipeline takes {', '.join(CALL_ARGUMENTS)}.")
        preprocess, forward, postprocess = {}, {}, {}
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
                raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}.")
            preprocess["timeout"] = float(timeout)
        if max_image_pixels is not None:
            preprocess["max_image_pixels"] = _positive_int(max_image_pixels, "max_image_pixels")
        if question_lang is not None:
            preprocess["question_lang"] = check_language(question_lang, "question_lang")
        if top_k is not None:
            forward["top_k"] = postprocess["top_k"] = _positive_int(top_k, "top_k")
        if answer_lang is not None:
            postprocess["answer_lang"] = check_language(answer_lang, "answer_lang")
        if return_regions is not None:
            postprocess["return_regions"] = bool(return_regions)
        if return_attention is not None:
            forward["return_attention"] = postprocess["return_attention"] = bool(return_attention)
        return preprocess, forward, postprocess

    def preprocess(
        self,
        example: Mapping[str, Any],
        timeout: float = DEFAULT_TIMEOUT_S,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        question_lang: str | None = None,
    ) -> dict[str, Any]:
        if not isinstance(example, Mapping):
            raise ValueError(
                "each input must be a dict with `image` (or the features) and `question`, got "
                f"{type(example).__name__}."
            )
        question = check_question(example.get("question"))
        asked = self.translators.to_model_language([question], question_lang)[0]
        # Tokenizing, stacking the regions and checking their values happen once per batch, in `_forward`.
        return {"asked": _Asked(asked, self._regions(example, timeout, max_image_pixels))}

    def _forward(
        self, model_inputs: dict[str, Any], return_attention: bool = False, top_k: int = DEFAULT_TOP_K
    ) -> dict[str, Any]:
        asked = model_inputs["asked"]
        examples = asked if isinstance(asked, list) else [asked]  # a list when batched
        text = self._encode_questions([a.question for a in examples])
        visual = batch_regions(
            [a.regions["visual_feats"] for a in examples], [a.regions["visual_pos"] for a in examples],
            [a.mask for a in examples],
        )  # fmt: skip
        model_inputs = {name: tensor.to(self.device) for name, tensor in {**text, **visual}.items()}
        _check_finite(model_inputs["visual_feats"], examples)
        for name in ("visual_feats", "visual_pos"):
            model_inputs[name] = model_inputs[name].to(self.model.dtype)
        outputs = self.model(**model_inputs, output_attentions=return_attention, return_dict=True)
        logits = outputs.logits.float()
        probabilities = logits.softmax(-1) if self.model.config.head_loss == "softmax" else logits.sigmoid()
        # The best answers of the whole batch at once, where the logits are. "scores" comes first: the batch
        # unroller reads the batch size from the first entry.
        scores, indices = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
        result = {"scores": scores, "indices": indices}
        if return_attention:
            # The [CLS] row of the last cross-attention layer: the pooled output the classifier reads.
            result["attention"] = outputs.cross_encoder_attentions[-1][:, :, 0, :].float().mean(dim=1)
        result["asked"] = asked
        return result

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        top_k: int = DEFAULT_TOP_K,
        return_regions: bool = False,
        return_attention: bool = False,
        answer_lang: str | None = None,
    ):
        scores, indices = model_outputs["scores"][0].tolist(), model_outputs["indices"][0].tolist()
        names = [self.model.config.id2label[index] for index in indices]
        shown = self.translators.from_model_language(names, answer_lang)
        answers = [{"answer": text, "score": score} for text, score in zip(shown, scores, strict=True)]
        if answer_lang is not None:
            for answer, name in zip(answers, names, strict=True):
                answer["model_answer"] = name
        if not (return_regions or return_attention):
            return answers
        asked: _Asked = model_outputs["asked"]
        detail: dict[str, Any] = {"answers": answers, "question": asked.question}
        if return_regions:
            detail["regions"] = region_payload(asked.regions)
        if return_attention:
            detail["attention"] = model_outputs["attention"][0][: len(asked.regions["visual_pos"])].tolist()
        return detail

    def _regions(self, example: Mapping[str, Any], timeout: float, max_image_pixels: int) -> Regions:
        return self._image_regions(example.get("image", example), timeout, max_image_pixels)


def _check_finite(feats: torch.Tensor, examples: list[_Asked]) -> None:
    """Refuse a batch whose features hold NaN or infinity, naming the questions asked about those images. Checked on
    the batch, where it is (one pass on the device instead of one per example on the host)."""
    finite = torch.isfinite(feats.sum(dim=tuple(range(1, feats.dim()))))  # a finite sum: no NaN, no infinity
    if bool(finite.all()):
        return
    # A sum that is not finite comes from a NaN or an infinity, or from large finite values overflowing: look.
    rows = (~finite).nonzero().flatten().tolist()
    bad = [examples[row].question for row in rows if not bool(torch.isfinite(feats[row]).all())]
    if not bad:
        return
    raise ValueError(
        f"`visual_feats` holds NaN or infinite values for {len(bad)} input(s) (asked: {bad[:3]!r}); re-extract the "
        "features of these images."
    )


def region_payload(regions: Mapping[str, Any]) -> dict[str, Any]:
    """The regions of one answer as plain lists: `visual_pos` (normalized), `visual_attention_mask` and, when known,
    `boxes` (pixels), `image_size` (height, width), object / attribute ids, scores and names."""
    payload = {"visual_pos": regions["visual_pos"].tolist()}
    payload["visual_attention_mask"] = regions["visual_attention_mask"].tolist()
    if "boxes" in regions:
        payload["boxes"] = torch.as_tensor(regions["boxes"]).tolist()
    if "image_size" in regions:
        payload["image_size"] = [int(v) for v in regions["image_size"]]
    for key in REGION_METADATA:
        if key in regions:
            payload[key] = torch.as_tensor(regions[key]).tolist()
    for key in REGION_NAMES:
        if key in regions:
            payload[key] = list(regions[key])
    return payload


def _load_tokenizer(name_or_path, hub_kwargs: dict):
    location = locate(name_or_path, what="tokenizer")
    hub_kwargs = cache_first_file(location, TOKENIZER_FILES, "tokenizer", **hub_kwargs)
    try:
        return AutoTokenizer.from_pretrained(location.name_or_path, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot load a tokenizer from {str(name_or_path)!r} ({error}); pass `tokenizer=` (LXMERT uses "
            "'unc-nlp/lxmert-base-uncased')."
        ) from error


def _check_named_answers(model: LxmertForVQA, answers) -> None:
    # `answers=` names the rows of a head whose checkpoint names none; a checkpoint with answers of its own would
    # answer with rows remapped to untrained zeros (which fine-tuning wants, and answering never does).
    remapped = getattr(model, "answer_head_transplant", None)
    if answers is not None and remapped is not None and remapped.source == "the checkpoint's head":
        raise ValueError(
            "`answers`: this checkpoint names its own answer list; "
            "`answers=` is for checkpoints that carry none (unc-nlp/lxmert-vqa-uncased). Leave it out, or fine-tune "
            "the model with `LxmertForVQA.from_pretrained(path, answers=...)` first."
        )


def check_pipeline_arguments(
    pipeline_class: type, model: Any, model_class: type, tokenizer: Any, max_question_length: Any, kwargs: Mapping
) -> None:
    """Refuse what a pipeline of `pipeline_class` cannot be built from, naming the argument: a model that is not a
    `model_class`, no tokenizer or one without a vocabulary, a `batch_size` or `max_question_length` that is not a
    positive integer (the latter at least 3: [CLS], a word, [SEP])."""
    if not isinstance(model, model_class):
        raise ValueError(
            f"`model` must be an {model_class.__name__}, got {type(model).__name__}; to load a folder or Hub id, "
            f"use `{pipeline_class.__name__}.from_pretrained(path)`."
        )
    if tokenizer is None:
        raise ValueError("`tokenizer` is required: pass the checkpoint's tokenizer (e.g. AutoTokenizer).")
    if kwargs.get("batch_size") is not None:
        _positive_int(kwargs["batch_size"], "batch_size")
    check_vocabulary(tokenizer, "pass `tokenizer=` (LXMERT uses 'unc-nlp/lxmert-base-uncased').")
    if _positive_int(max_question_length, "max_question_length") < 3:
        raise ValueError(f"`max_question_length` must be >= 3 ([CLS], a word, [SEP]), got {max_question_length}.")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return value


def _image_params(params: dict) -> dict:
    return {key: params[key] for key in ("timeout", "max_image_pixels") if key in params}
