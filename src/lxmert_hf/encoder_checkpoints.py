"""Loading the encoder of any LXMERT checkpoint into a task model with a head of its own (NLVR2's pair
classifier), whatever head the checkpoint holds.

A task model with its own `config_class` (its own `model_type`) loads its own checkpoints as saved. From every other
LXMERT layout ([`~lxmert_hf.checkpoints.detect_layout`]: transformers' `LxmertForPreTraining`, `LxmertModel`,
`LxmertForQuestionAnswering`, and this library's VQA checkpoints, current and earlier) it keeps the encoder
(`lxmert.*`) and the encoder settings of the config, and starts its head anew: the checkpoint's heads are read into
names the model does not have (`foreign_head.*`) and dropped without a report, and one log line says what was newly
initialized.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from pathlib import Path

from transformers import LxmertConfig

from lxmert_hf.checkpoints import (
    HUB_KWARGS,
    LOADING_KWARGS,
    checkpoint_keys,
    detect_layout,
    read_tensors,
    reading_weights,
    resolve_weights,
)
from lxmert_hf.configuration import LEGACY_MODEL_TYPE, VERSION_KEY
from lxmert_hf.locations import offline_kwargs, reaching_hub

logger = logging.getLogger(__name__)

# Where the question-answering heads of other layouts are read to: nowhere in the model.
FOREIGN_HEAD_MAPPING = {r"^answer_head\.": "foreign_head.answer_head."}
# Checkpoint keys an encoder-only load drops without listing them as unexpected.
IGNORED_HEADS = [r"^cls\.", r"^obj_predict_head\.", r"^foreign_head\."]
# The head of earlier VQA checkpoints, saved under the name task models give their own head. transformers' loader
# undoes a renaming whose source is a parameter of the model, so these tensors are left out of what is loaded.
LEGACY_HEAD = "classifier."
# Keys of a config that describe another model's head, not the encoder.
HEAD_CONFIG_KEYS = (
    "model_type", "architectures", "id2label", "label2id", "num_labels", "num_qa_labels", "head_loss",
    "problem_type", "custom_pipelines", VERSION_KEY,
)  # fmt: skip
LXMERT_MODEL_TYPES = (LxmertConfig.model_type, LEGACY_MODEL_TYPE)


# The prefix of the head being newly initialized while a model loads from another layout: transformers' load report
# must not list it beside this module's own line (read by the model's `_adjust_missing_and_unexpected_keys`).
_NEW_HEAD: contextvars.ContextVar[str | None] = contextvars.ContextVar("new_head", default=None)


def drop_new_head_keys(missing_keys: set[str]) -> set[str]:
    """`missing_keys` without those of the head that a load from another layout initializes anew."""
    head = _NEW_HEAD.get()
    return missing_keys if head is None else {key for key in missing_keys if not key.startswith(head)}


def encoder_config_dict(config_dict: dict) -> dict:
    """The encoder settings of an LXMERT config dict (sizes, layers, `attention_backend`, `visual_features`), without
    what describes its head (answers, head loss, architecture).

    Example:
        ```python
        >>> from lxmert_hf.encoder_checkpoints import encoder_config_dict
        >>> encoder_config_dict({"model_type": "lxmert", "hidden_size": 768, "num_qa_labels": 9500, "l_layers": 9})
        {'hidden_size': 768, 'l_layers': 9}
        ```
    """
    return {key: value for key, value in config_dict.items() if key not in HEAD_CONFIG_KEYS}


def read_config_dict(name_or_path, config_class, hub_kwargs: dict, required: bool = True) -> dict | None:
    """The config dict of a checkpoint, refusing a config that is not LXMERT's, and a folder without config.json
    unless not `required` (then `None`)."""
    local = Path(name_or_path)
    if local.is_dir() and not (local / hub_kwargs.get("subfolder", "") / "config.json").is_file():
        if not required:
            return None
        raise FileNotFoundError(
            f"{str(name_or_path)!r} holds weights but no config.json: not a complete checkpoint folder. Save "
            "models with `save_pretrained` (it writes both), or pass `config=`."
        )
    config_dict, _ = config_class.get_config_dict(str(name_or_path), **hub_kwargs)
    model_type = config_dict.get("model_type")
    if model_type not in (*LXMERT_MODEL_TYPES, config_class.model_type):
        raise ValueError(
            f"{str(name_or_path)!r}: its config has model_type {model_type!r}: not an LXMERT checkpoint. Pass an "
            "LXMERT model (e.g. unc-nlp/lxmert-base-uncased, or a folder this library saved)."
        )
    return config_dict


def as_task_config(config: LxmertConfig, config_class):
    """`config` as a `config_class`: itself when it is one, else its encoder settings in a new one."""
    if isinstance(config, config_class):
        return config
    if not isinstance(config, LxmertConfig):
        raise ValueError(
            f"`config` must be an LxmertConfig (or {config_class.__name__}), got {type(config).__name__}."
        )
    return config_class.from_dict(encoder_config_dict(config.to_dict()))


def _task_config(config_class, config_dict: dict | None, own: bool, kwargs: dict):
    """The model's config: the `config=` given (converted when it is another LXMERT config), else built from the
    checkpoint's (all of it for its own checkpoints, the encoder settings for others), with the config attributes of
    `kwargs` (popped) as overrides."""
    if kwargs.get("config") is not None:
        return as_task_config(kwargs["config"], config_class)
    defaults = config_class()
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if hasattr(defaults, k) and k not in LOADING_KWARGS}
    settings = config_dict if own else encoder_config_dict(config_dict)
    return config_class.from_dict({key: value for key, value in settings.items() if key != "model_type"}, **overrides)


def _leave_heads_out(name_or_path, layout: str, weights: str, kwargs: dict):
    """Set up `kwargs` so that the heads of another layout are not loaded; return what to load from (`None` when
    the tensors themselves are passed as `state_dict`)."""
    kwargs.setdefault("key_mapping", FOREIGN_HEAD_MAPPING)
    if layout != "vqa_legacy":
        return name_or_path
    # transformers takes tensors given as `state_dict` in place of a folder, not beside one.
    with reading_weights(weights):
        names = [key for key in checkpoint_keys(weights) if not key.startswith(LEGACY_HEAD)]
        kwargs["state_dict"] = read_tensors(weights, names)
    return None


def load_encoder_pretrained(
    parent_from_pretrained: Callable, config_class, name_or_path, *model_args, head: str = "classifier.", **kwargs
):
    r"""
    Load a task model whose config class is `config_class` from a folder or Hub id, whatever LXMERT layout it holds.

    Its own checkpoints (config `model_type` that of `config_class`) load as saved. Any other LXMERT checkpoint
    (pre-training as `unc-nlp/lxmert-base-uncased`, `LxmertModel`, transformers' question answering as
    `unc-nlp/lxmert-vqa-uncased`, this library's VQA checkpoints of every version) gives its encoder; the heads it
    holds are ignored and the model's own head is newly initialized, which is logged once (fine-tune before use).

    Args:
        head (`str`, *optional*, defaults to `"classifier."`): the prefix of the model's own head, whose
            parameters the model drops from transformers' load report and this function logs once instead.
        kwargs: anything `PreTrainedModel.from_pretrained` takes (`revision`, `cache_dir`, `token`, `dtype`,
            `config`, ...) and config attributes to override (`attention_backend`, `hidden_dropout_prob`, ...).

    Example:
        ```python
        >>> from lxmert_hf import LxmertForNLVR2
        >>> model = LxmertForNLVR2.from_pretrained("unc-nlp/lxmert-base-uncased")  # doctest: +SKIP
        ```
    """
    hub_kwargs = offline_kwargs({key: kwargs[key] for key in HUB_KWARGS if key in kwargs})
    kwargs.update(hub_kwargs)  # while Hub access is off, transformers must not try it either
    local_only = hub_kwargs.get("local_files_only", False)
    weights = resolve_weights(name_or_path, **hub_kwargs)
    with reading_weights(weights):
        layout = detect_layout(checkpoint_keys(weights))
    with reaching_hub(str(name_or_path), "model", "config.json", local_only):
        config_dict = read_config_dict(name_or_path, config_class, hub_kwargs, required=kwargs.get("config") is None)
    # Without a config.json (a `config=` given), a head saved as `classifier.*` is taken for the model's own.
    own = config_dict["model_type"] == config_class.model_type if config_dict is not None else layout == "vqa_legacy"
    kwargs["config"] = _task_config(config_class, config_dict, own, kwargs)
    source = name_or_path if own else _leave_heads_out(name_or_path, layout, weights, kwargs)
    want_info = kwargs.pop("output_loading_info", False)
    token = _NEW_HEAD.set(None if own else head)
    try:
        with reaching_hub(str(name_or_path), "model", local_files_only=local_only), reading_weights(weights):
            model, info = parent_from_pretrained(source, *model_args, output_loading_info=True, **kwargs)
    finally:
        _NEW_HEAD.reset(token)
    # Saving must not undo the renaming of the other layout's heads (transformers reverts the mappings it loaded
    # with): the model saves in its own layout.
    model._weight_conversions = None
    if not own:
        new_head = {name for name in model.state_dict() if name.startswith(head)}
        info["missing_keys"] = set(info["missing_keys"]) | new_head
        logger.warning(
            "Loaded the encoder of a %r LXMERT checkpoint; its heads are not used and `%s` is newly initialized: "
            "fine-tune before use.",
            layout,
            head.rstrip("."),
        )
    return (model, info) if want_info else model
