"""`NLVR2Pipeline`: is a sentence true of a pair of images? A `transformers.Pipeline` registered as
`"lxmert-nlvr2"`."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Pipeline, PretrainedConfig

from lxmert_hf.configuration_nlvr2 import LxmertNLVR2Config
from lxmert_hf.data.collator import batch_regions
from lxmert_hf.locations import locate
from lxmert_hf.modeling_nlvr2 import LxmertForNLVR2
from lxmert_hf.pipeline.core import (
    _check_finite,
    _image_params,
    _load_tokenizer,
    _positive_int,
    check_pipeline_arguments,
)
from lxmert_hf.pipeline.examples import is_picture, is_stream, stream_examples
from lxmert_hf.pipeline.inputs import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_TIMEOUT_S,
    PipelineInputs,
    Regions,
    is_features,
)

NLVR2_TASK = "lxmert-nlvr2"
CALL_ARGUMENTS = ("timeout", "max_image_pixels")
_SIDES = ("left", "right")
_FORM = "{'images': [left, right], 'sentence': '...'}"


@dataclasses.dataclass
class _Pair:
    """One example: its sentence and the regions of its two images. `question` is what the batch's finite check
    names the example by."""

    question: str
    regions: tuple[Regions, Regions]

    @property
    def masks(self) -> list[Any]:
        """The regions' masks, `None` for an image whose regions are all real."""
        return [None if bool(r["visual_attention_mask"].all()) else r["visual_attention_mask"] for r in self.regions]


class NLVR2Pipeline(PipelineInputs, Pipeline):
    r"""
    Natural language for visual reasoning (NLVR2) with an [`LxmertForNLVR2`] checkpoint: a sentence and a pair of
    images in, whether the sentence is true of the pair out.

    Create it with [`NLVR2Pipeline.from_pretrained`] (a folder or Hub id) or `transformers.pipeline("lxmert-nlvr2",
    model=...)` once `lxmert_hf` is imported.

    Each input is a dict `{"images": [left, right], "sentence": "..."}`; an image is what [`VQAPipeline`] takes: a
    path, an http(s) URL, a PIL image or an array (run through the region detector, see `detector`), or precomputed
    features `{"visual_feats": [num_regions, dim], "visual_pos": [num_regions, 4]}` (or `boxes` in pixels with
    `image_size`). An input may carry an `identifier`, which errors name it by. Calls:

    - `pipe({"images": [left, right], "sentence": "..."})` or `pipe([left, right], sentence="...")`: one result.
    - `pipe([{"images": ..., "sentence": ...}, ...])`: a list, one result per input.
    - `pipe(dataset)` (rows holding `images` and `sentence`) or a generator of such dicts: an iterator, batched by
      `batch_size`.

    Each result is `{"label": "true" | "false", "score": float}`: the predicted truth value and its probability
    (the softmax of the model's two logits, so at least 0.5).

    Args:
        model ([`LxmertForNLVR2`]): the fine-tuned classifier.
        tokenizer: the checkpoint's tokenizer.
        detector ([`RegionFeatureExtractor`], `str`, *optional*): the region detector for pictures, or a folder /
            Hub id to load it from on first use. Defaults to the one named in `model.config.visual_features`.
        max_question_length (`int`, *optional*, defaults to 20): sentences are truncated to this many tokens, as in
            training.
        timeout (`float`, *optional*, defaults to 10): seconds to wait for an image URL.
        max_image_pixels (`int`, *optional*): larger images are refused before decoding.
        batch_size, device, dtype: as for every `transformers.Pipeline`.

    Example:
        ```python
        >>> import torch
        >>> from transformers import BertTokenizer
        >>> from lxmert_hf import LxmertForNLVR2, LxmertNLVR2Config, NLVR2Pipeline
        >>> config = LxmertNLVR2Config(hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1,
        ...     x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=8)
        >>> tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "both",
        ...     "images", "have", "dogs"])})
        >>> pipe = NLVR2Pipeline(LxmertForNLVR2(config), tokenizer, device="cpu")
        >>> left, right = ({"visual_feats": torch.rand(36, 16), "visual_pos": torch.rand(36, 4)} for _ in range(2))
        >>> result = pipe({"images": [left, right], "sentence": "both images have dogs"})
        >>> result["label"] in ("true", "false"), 0.5 <= result["score"] <= 1.0
        (True, True)
        ```
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False
    _load_tokenizer = True

    def __init__(
        self,
        model: LxmertForNLVR2,
        tokenizer=None,
        detector: nn.Module | str | os.PathLike | None = None,
        max_question_length: int = 20,
        **kwargs,
    ):
        check_pipeline_arguments(type(self), model, LxmertForNLVR2, tokenizer, max_question_length, kwargs)
        super().__init__(model=model, tokenizer=tokenizer, **kwargs)
        self.model.eval()
        self.max_question_length = max_question_length
        self.detector = detector.to(self.device) if isinstance(detector, nn.Module) else detector
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
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        dtype: torch.dtype | str | None = None,
        **kwargs,
    ) -> NLVR2Pipeline:
        r"""
        Load a pipeline from a fine-tuned [`LxmertForNLVR2`] checkpoint folder or Hub id (`revision`, `cache_dir`,
        `token` and `local_files_only` pass through to `huggingface_hub`; `cache_dir` and `token` also to the
        detector when it is loaded). Checkpoints of other LXMERT layouts are refused: their classifier would be
        untrained.

        Args:
            model_name_or_path (`str` or `os.PathLike`): the checkpoint (see [`lxmert_hf.locations.locate`]).
            tokenizer (*optional*): a tokenizer, folder or Hub id; defaults to the checkpoint's own.
            detector (*optional*): see [`NLVR2Pipeline`].
            dtype (`torch.dtype` or `str`, *optional*): the model's dtype.
            kwargs: [`NLVR2Pipeline`] arguments (`device`, `batch_size`, ...).

        Example:
            ```python
            >>> from lxmert_hf import NLVR2Pipeline
            >>> pipe = NLVR2Pipeline.from_pretrained("me/lxmert-nlvr2", device="cpu")  # doctest: +SKIP
            >>> pipe({"images": ["left.jpg", "right.jpg"], "sentence": "There are two dogs."})  # doctest: +SKIP
            {'label': 'true', 'score': 0.91}
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
        location = locate(model_name_or_path, what="model_name_or_path")
        _check_fine_tuned(str(location), model_name_or_path, hub_kwargs)
        model_kwargs = {"dtype": dtype} if dtype is not None else {}
        model = LxmertForNLVR2.from_pretrained(str(location), **hub_kwargs, **model_kwargs)
        if tokenizer is None or isinstance(tokenizer, str | os.PathLike):
            tokenizer = _load_tokenizer(tokenizer or str(location), hub_kwargs)
        pipeline = cls(model=model, tokenizer=tokenizer, detector=detector, **kwargs)
        pipeline._hub_kwargs = {k: v for k, v in hub_kwargs.items() if k in ("cache_dir", "token")}
        return pipeline

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the model, its tokenizer and a model card as a checkpoint folder that [`from_pretrained`] and
        `transformers.pipeline("lxmert-nlvr2", model=folder)` load (see [`lxmert_hf.hub.save_checkpoint`], whose
        arguments `kwargs` are, e.g. `max_shard_size`)."""
        from lxmert_hf.hub import save_checkpoint

        save_checkpoint(self.model, save_directory, tokenizer=self.tokenizer, **{"overwrite": True, **kwargs})

    # -- calling -------------------------------------------------------------------------------------------------
    def __call__(self, inputs=None, sentence: str | None = None, **kwargs):
        """Judge sentences about pairs of images; see the class docstring for the accepted inputs and outputs."""
        if kwargs.get("batch_size") is not None:
            _positive_int(kwargs["batch_size"], "batch_size")
        examples, single = self._examples(inputs, sentence)
        if isinstance(examples, list):
            self._share_regions(examples, kwargs)
        results = super().__call__(examples, **kwargs)
        return results[0] if single else results

    def _share_regions(self, examples: list[dict], call_kwargs: dict) -> None:
        """Run the detector once on a picture that several pairs (or both sides of one) show, as NLVR2's pairs
        share images. `examples` are this call's own checked dicts: their lists of images are replaced in place."""
        pictures = [image for example in examples for image in example["images"] if is_picture(image)]
        repeated = {key for key, count in Counter(id(picture) for picture in pictures).items() if count > 1}
        if not repeated:
            return
        # The call's own arguments only: `batch_size` and `num_workers` are the base class's.
        asked = {key: value for key, value in call_kwargs.items() if key in CALL_ARGUMENTS}
        params = {**self._preprocess_params, **self._sanitize_parameters(**asked)[0]}
        done: dict[int, Regions] = {}
        for example in examples:
            for side, image in enumerate(example["images"]):
                if id(image) in repeated:
                    if id(image) not in done:
                        done[id(image)] = self._picture_regions(image, **_image_params(params))
                    example["images"][side] = done[id(image)]

    def _examples(self, inputs, sentence) -> tuple[Any, bool]:
        if inputs is None:
            raise ValueError(f"pass an input {_FORM}, or a list of them.")
        if is_stream(inputs):
            if sentence is not None:
                raise ValueError("with a dataset or generator, give each row its `sentence`; do not pass `sentence=`.")
            return stream_examples(inputs, None), False
        if isinstance(inputs, Mapping):
            return [_checked(_with_sentence(inputs, sentence), "the input")], True
        if not isinstance(inputs, list | tuple):
            one = " (one image: NLVR2 judges a sentence about two, pass [left, right])" if sentence is not None else ""
            raise ValueError(f"pass an input {_FORM}, or a list of them; got {_describe(inputs)}{one}.")
        if not inputs:
            raise ValueError(f"nothing to judge: the list of inputs is empty; pass inputs {_FORM}.")
        if sentence is not None and not any(_is_example(item) for item in inputs):
            # `pipe([left, right], sentence=...)`: one pair.
            return [_checked({"images": list(inputs), "sentence": sentence}, "the input")], True
        if sentence is not None:
            raise ValueError(f"with a list of inputs {_FORM}, give each its `sentence`; do not pass `sentence=`.")
        return [_checked(item, _name(item, index)) for index, item in enumerate(inputs)], False

    # -- transformers.Pipeline steps -----------------------------------------------------------------------------
    def _sanitize_parameters(self, timeout=None, max_image_pixels=None, **unknown):
        if unknown:
            raise ValueError(
                f"unknown argument(s) {sorted(unknown)}; NLVR2Pipeline takes {', '.join(CALL_ARGUMENTS)}."
            )
        preprocess = {}
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
                raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}.")
            preprocess["timeout"] = float(timeout)
        if max_image_pixels is not None:
            preprocess["max_image_pixels"] = _positive_int(max_image_pixels, "max_image_pixels")
        return preprocess, {}, {}

    def preprocess(
        self,
        example: Mapping[str, Any],
        timeout: float = DEFAULT_TIMEOUT_S,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> dict[str, Any]:
        name = _name(example)
        example = _checked(example, name)  # rows of a dataset or generator reach here unchecked
        regions = []
        for side, image in zip(_SIDES, example["images"], strict=True):
            try:
                regions.append(self._image_regions(image, timeout, max_image_pixels))
            except ValueError as error:
                raise ValueError(f"{name}, {side} image: {error}") from error
        # Tokenizing, stacking the regions and checking their values happen once per batch, in `_forward`.
        return {"pair": _Pair(example["sentence"], tuple(regions))}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        pair = model_inputs["pair"]
        pairs = pair if isinstance(pair, list) else [pair]  # a list when batched
        text = self._encode_questions([p.question for p in pairs])
        regions = [r for p in pairs for r in p.regions]  # left, right, left, right, ...: [2B, ...] rows
        visual = batch_regions(
            [r["visual_feats"] for r in regions], [r["visual_pos"] for r in regions],
            [mask for p in pairs for mask in p.masks],
        )  # fmt: skip
        # [2B, n, ...] -> [B, 2, n, ...]: each example's two images side by side, as the model takes them.
        visual = {name: tensor.unflatten(0, (len(pairs), 2)) for name, tensor in visual.items()}
        model_inputs = {name: tensor.to(self.device) for name, tensor in {**text, **visual}.items()}
        _check_finite(model_inputs["visual_feats"], pairs)
        for name in ("visual_feats", "visual_pos"):
            model_inputs[name] = model_inputs[name].to(self.model.dtype)
        logits = self.model(**model_inputs, return_dict=True).logits.float()
        # "probabilities" comes first: the batch unroller reads the batch size from the first entry.
        return {"probabilities": logits.softmax(-1), "pair": pair}

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any]:
        probabilities = model_outputs["probabilities"][0]
        index = int(probabilities.argmax())
        return {"label": self.model.config.id2label[index], "score": float(probabilities[index])}


def _is_example(value: Any) -> bool:
    """A dict describing one input (a pair and its sentence), as opposed to one image's precomputed features."""
    return isinstance(value, Mapping) and not is_features(value)


def _name(example: Any, index: int | None = None) -> str:
    """How errors name an input: its position in the list and its `identifier` when it has one."""
    if isinstance(example, Mapping) and "_input" in example:
        return example["_input"]  # named when its list was checked
    identifier = example.get("identifier") if isinstance(example, Mapping) else None
    named = f" ({identifier!r})" if identifier is not None else ""
    if index is None:
        return f"input{named}" if named else "an input"
    return f"input {index}{named}"


def _with_sentence(example: Mapping[str, Any], sentence: str | None) -> Mapping[str, Any]:
    if sentence is None:
        return example
    if "sentence" in example:
        raise ValueError("the input dict already holds a `sentence`; do not also pass `sentence=`.")
    return {**example, "sentence": sentence}


def _checked(example: Any, name: str) -> dict[str, Any]:
    """`example` as `{"images": [left, right], "sentence": str, "_input": name}`, or a `ValueError` naming it and
    what it lacks."""
    if not isinstance(example, Mapping):
        raise ValueError(f"{name} must be a dict {_FORM}, got {_describe(example)}.")
    if "images" not in example:
        hint = " (one image: NLVR2 judges a sentence about two)" if "image" in example or is_features(example) else ""
        raise ValueError(f"{name} has no `images`{hint}; pass {_FORM}.")
    images = example["images"]
    if isinstance(images, np.ndarray) and images.dtype == object and images.ndim == 1:
        images = list(images)  # a dataset row in numpy format: the list of images as an object array
    if not isinstance(images, list | tuple):
        raise ValueError(
            f"{name}: `images` must be a list of two images [left, right], got one {_describe(images)}; NLVR2 "
            "judges a sentence about a pair of images."
        )
    if len(images) != 2:
        raise ValueError(
            f"{name}: `images` must hold two images [left, right], got {len(images)}; NLVR2 judges a sentence about "
            "exactly one pair of images (give each pair its own input)."
        )
    if example.get("sentence") is None:
        raise ValueError(f"{name} has no `sentence`: pass {_FORM}, the statement to judge about the two images.")
    sentence = example["sentence"]
    if not isinstance(sentence, str) or not sentence.strip():
        raise ValueError(
            f"{name}: `sentence` must be a non-empty string, the statement to judge about the two images; got "
            f"{sentence!r}."
        )
    return {"images": list(images), "sentence": sentence.strip(), "_input": name}


def _describe(value: Any) -> str:
    if isinstance(value, str | os.PathLike):
        return f"{type(value).__name__} {str(value)!r}"
    return type(value).__name__


def _check_fine_tuned(location: str, name: str | os.PathLike, hub_kwargs: dict) -> None:
    """Refuse a checkpoint that is not an NLVR2 classifier: [`LxmertForNLVR2`] would load its encoder under a new,
    untrained classifier, and the pipeline would answer at random."""
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(location, **hub_kwargs)
    except OSError as error:
        raise ValueError(f"`model_name_or_path` {str(name)!r}: cannot read its config ({error}).") from error
    model_type = config_dict.get("model_type")
    if model_type != LxmertNLVR2Config.model_type:
        raise ValueError(
            f"`model_name_or_path` {str(name)!r} is not a fine-tuned LxmertForNLVR2 checkpoint (its model_type is "
            f"{model_type!r}, not {LxmertNLVR2Config.model_type!r}): its NLVR2 classifier would be untrained. "
            "Fine-tune it first (recipes/nlvr2.py), then load the saved folder."
        )
