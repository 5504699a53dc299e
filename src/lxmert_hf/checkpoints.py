"""Loading LXMERT checkpoints of every published layout into `LxmertForVQA`, the layout it saves, and the
answer-head transplant.

`LxmertForVQA` holds its answer head as `classifier` and saves it as transformers' `LxmertForQuestionAnswering`
does, `answer_head.logit_fc.*` (module for module), beside `lxmert.*`, through transformers' own key mapping
([`CHECKPOINT_NAMES`], registered for the class: applied when loading, undone when saving). Its config has model type
`lxmert`; additional keys (`lxmert_hf_version`, the head options, `visual_features`) tell this library's
checkpoints apart from transformers' own. Checkpoints of earlier versions (model type `lxmert_vqa`, head saved as
`classifier.*`) still load.

The head stays `classifier` in memory because transformers' pre-training checkpoints hold a different QA head
(another answer set) under the same `answer_head.logit_fc` names: only a renaming on load keeps it out of the
classifier, and transformers' loader undoes any renaming whose source is a parameter of the model.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import LxmertConfig
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.utils import cached_file

from lxmert_hf.answers import AnswerVocabulary, lxmert_qa_normalize
from lxmert_hf.configuration import LEGACY_MODEL_TYPE, VERSION_KEY, LxmertVQAConfig, answers_to_id2label
from lxmert_hf.configuration_nlvr2 import NLVR2_MODEL_TYPE
from lxmert_hf.locations import first_hub_file, offline_kwargs, reaching_hub

logger = logging.getLogger(__name__)

HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
QA_HEAD = "answer_head.logit_fc."
LAYOUTS = ("vqa_legacy", "question_answering", "pretraining", "model")
# The classifier's name in memory and in transformers' `LxmertForQuestionAnswering` checkpoints, which
# `LxmertForVQA` saves.
CLASSIFIER = "classifier."
CHECKPOINT_NAMES = {r"^answer_head\.logit_fc\.": CLASSIFIER}
# Where a pre-training checkpoint's QA head is read to: nowhere in the model (its answers are not the model's; see
# `pretrain_answers` for the transplant), and not reported as unexpected.
PRETRAINING_QA_HEAD = "pretraining_answer_head."
UNUSED_HEADS = [r"^cls\.", r"^obj_predict_head\.", r"^pretraining_answer_head\."]
# `key_mapping` per layout, applied before the class's own renaming.
KEY_MAPPINGS = {"pretraining": {r"^answer_head\.": PRETRAINING_QA_HEAD}}


def register_checkpoint_names(class_name: str = "LxmertForVQA") -> None:
    """Register [`CHECKPOINT_NAMES`] with transformers for `class_name`: `from_pretrained` renames the checkpoint's
    `answer_head.logit_fc.*` to `classifier.*`, `save_pretrained` the other way (idempotent)."""
    renamings = [WeightRenaming(source, target) for source, target in CHECKPOINT_NAMES.items()]
    register_checkpoint_conversion_mapping(class_name, renamings, overwrite=True)


def accept_saved_names(module, state_dict, prefix: str, *args) -> None:
    """A `load_state_dict` pre-hook: read the classifier's tensors under the names checkpoints hold them
    (`answer_head.logit_fc.*`), as the Trainer does when it resumes or reloads its best checkpoint."""
    saved = prefix + QA_HEAD
    for key in [key for key in state_dict if key.startswith(saved)]:
        state_dict[prefix + CLASSIFIER + key[len(saved) :]] = state_dict.pop(key)


# `from_pretrained` arguments that share a name with a config attribute but are meant for loading.
LOADING_KWARGS = ("dtype", "torch_dtype")


def resolve_weights(name_or_path: str | Path, **hub_kwargs) -> str:
    """Return the local path of the weights file (or shard index) of a folder or Hub repo.

    Raises:
        `FileNotFoundError`: a local file rather than a folder, or a folder or repo that holds none of
            [`WEIGHT_FILES`]: not an LXMERT checkpoint.
        [`~lxmert_hf.locations.HubUnavailableError`]: a Hub repo whose weights are not in the Hub cache while Hub
            access is off (`HF_HUB_OFFLINE`) or the Hub cannot be reached.
    """
    if Path(name_or_path).is_file():
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is a file; pass the checkpoint folder that holds config.json and the weights."
        )
    if Path(name_or_path).exists():
        for filename in WEIGHT_FILES:
            path = cached_file(str(name_or_path), filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
            if path is not None:
                return path
    else:
        found = first_hub_file(str(name_or_path), WEIGHT_FILES, "model", **hub_kwargs)
        if found is not None:
            return found[1]
    raise FileNotFoundError(f"{name_or_path!r} holds none of {', '.join(WEIGHT_FILES)}: not an LXMERT checkpoint.")


# What torch raises when its weights-only loader meets anything but tensors and plain containers (the pickle
# module's own error, reached through torch so that this library imports no unpickler).
_REFUSED_BY_WEIGHTS_ONLY = torch.serialization.pickle.UnpicklingError


@contextlib.contextmanager
def reading_weights(path: str | Path) -> Iterator[None]:
    """Turn the errors of a weights file that cannot be read (truncated or garbled safetensors, a PyTorch file the
    weights-only loader refuses, a broken shard index) into a `ValueError` naming the file and what to do."""
    try:
        yield
    except SafetensorError as error:
        raise ValueError(
            f"{_unreadable_shard(path)}: not a readable safetensors file ({error}); it is truncated or damaged: "
            "re-download it, or re-save the model with `save_pretrained`."
        ) from error
    except _REFUSED_BY_WEIGHTS_ONLY as error:
        raise ValueError(
            f"{path}: refused by the weights-only loader, which reads tensors only: this file holds other Python "
            "objects, and loading those could run code. If you trust its source, convert it to safetensors where "
            "it was made (`save_pretrained(..., safe_serialization=True)`); it is never loaded otherwise."
        ) from error
    except (RuntimeError, EOFError) as error:
        if not (str(path).endswith(".bin") and _is_unreadable_archive(error)):
            raise
        first_line = str(error).strip().splitlines()[:1]
        raise ValueError(
            f"{path}: not a readable PyTorch weights file ({''.join(first_line)}); it is truncated or damaged: "
            "re-download it, or re-save the model with `save_pretrained`."
        ) from error
    except (json.JSONDecodeError, KeyError) as error:
        if not str(path).endswith(".index.json") or (isinstance(error, KeyError) and error.args != ("weight_map",)):
            raise
        raise ValueError(
            f"{path}: not a shard index with a `weight_map` ({error}); re-download the checkpoint."
        ) from error


# What torch's reader says of a file that is not a whole PyTorch archive (other errors pass unchanged).
_UNREADABLE_ARCHIVE = ("PytorchStreamReader", "zip archive", "central directory", "magic number", "Ran out of input")


def _is_unreadable_archive(error: BaseException) -> bool:
    return isinstance(error, EOFError) or any(phrase in str(error) for phrase in _UNREADABLE_ARCHIVE)


def _unreadable_shard(path: str | Path) -> str:
    """The first shard of the index at `path` that safetensors cannot open (`path` itself when it is no index)."""
    if not str(path).endswith(".index.json"):
        return str(path)
    for shard in sorted(set(json.loads(Path(path).read_text())["weight_map"].values())):
        try:
            with safe_open(str(Path(path).parent / shard), framework="pt"):
                pass
        except SafetensorError:
            return str(Path(path).parent / shard)
    return f"a shard listed in {path}"


def read_tensors(weights: str, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Read `names` (all tensors when `None`) from a safetensors/PyTorch file or a sharded index, lazily."""
    if weights.endswith(".index.json"):
        weight_map = json.loads(Path(weights).read_text())["weight_map"]
        shards = sorted({weight_map[name] for name in (names if names is not None else weight_map)})
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(read_tensors(str(Path(weights).parent / shard), names))
        return tensors
    if weights.endswith(".safetensors"):
        with safe_open(weights, framework="pt") as handle:
            wanted = [n for n in handle.keys() if names is None or n in names]  # noqa: SIM118
            return {name: handle.get_tensor(name) for name in wanted}
    state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    return {name: tensor for name, tensor in state.items() if names is None or name in names}


def checkpoint_keys(weights: str) -> list[str]:
    """List the tensor names of a weights file or shard index without loading the tensors."""
    if weights.endswith(".index.json"):
        return list(json.loads(Path(weights).read_text())["weight_map"])
    if weights.endswith(".safetensors"):
        with safe_open(weights, framework="pt") as handle:
            return list(handle.keys())
    return list(torch.load(weights, map_location="cpu", weights_only=True, mmap=True))


def detect_layout(keys: Sequence[str]) -> str:
    """Name the layout of an LXMERT state dict: one of `vqa_legacy` (earlier versions of this library),
    `question_answering` (transformers' `LxmertForQuestionAnswering`, which this library saves), `pretraining`,
    `model`."""
    if any(key.startswith("classifier.") for key in keys):
        return "vqa_legacy"
    if any(key.startswith(("cls.", "obj_predict_head.")) for key in keys):
        return "pretraining"
    if any(key.startswith(QA_HEAD) for key in keys):
        return "question_answering"
    if any(key.startswith(("lxmert.", "embeddings.", "encoder.")) for key in keys):
        return "model"
    raise ValueError(f"Unrecognized LXMERT checkpoint: keys such as {list(keys)[:3]} match no known layout.")


def build_config(
    name_or_path: str | Path,
    layout: str,
    answers: Sequence[str] | None,
    config_kwargs: dict,
    hub_kwargs: dict,
    given: LxmertConfig | None = None,
) -> LxmertVQAConfig:
    """Build the `LxmertVQAConfig` of a checkpoint from its config (or the `given` one), converting transformers'
    `LxmertConfig` when needed."""
    if given is not None:
        config_dict = given.to_dict()
    else:
        local = Path(name_or_path)
        if local.is_dir() and not (local / hub_kwargs.get("subfolder", "") / "config.json").is_file():
            raise FileNotFoundError(
                f"{str(name_or_path)!r} holds weights but no config.json: not a complete checkpoint folder. Save "
                "models with `save_pretrained` (it writes both), or pass `config=`."
            )
        config_dict, _ = LxmertVQAConfig.get_config_dict(str(name_or_path), **hub_kwargs)
    model_type = config_dict.get("model_type")
    if model_type == NLVR2_MODEL_TYPE:
        raise ValueError(
            f"{str(name_or_path)!r} is an NLVR2 checkpoint (a classifier of image pairs, not of answers): load it "
            "with `LxmertForNLVR2.from_pretrained`."
        )
    if model_type not in (LxmertVQAConfig.model_type, LEGACY_MODEL_TYPE):
        raise ValueError(
            f"{str(name_or_path)!r}: its config has model_type {model_type!r}, not 'lxmert': not an LXMERT "
            "checkpoint. Pass an LXMERT model (e.g. unc-nlp/lxmert-base-uncased or a folder this library saved)."
        )
    return vqa_config_from_dict(config_dict, layout, answers, config_kwargs)


def vqa_config_from_dict(config_dict: dict, layout: str, answers, config_kwargs: dict) -> LxmertVQAConfig:
    """The `LxmertVQAConfig` of an LXMERT config dict: this library's own as it is, transformers' converted for a
    checkpoint of `layout` (see [`load_pretrained`])."""
    if is_own_config(config_dict):
        # `custom_pipelines` belongs to a folder saved with its pipeline module (`VQAPipeline.save_pretrained`);
        # kept in the config, a model saved on its own would declare a module its folder lacks.
        config_dict = {k: v for k, v in config_dict.items() if k not in ("model_type", "custom_pipelines")}
    else:
        config_dict = _from_lxmert_config(config_dict, layout, answers, config_kwargs)
    if answers is not None:
        config_dict["id2label"] = answers_to_id2label(answers)
        config_dict.pop("label2id", None)
    config_dict.update(config_kwargs)
    return LxmertVQAConfig.from_dict(config_dict)


def is_own_config(config_dict: Mapping) -> bool:
    """Whether a config dict was written by this library (any version)."""
    return VERSION_KEY in config_dict or config_dict.get("model_type") == LEGACY_MODEL_TYPE


def as_vqa_config(config: LxmertConfig) -> LxmertVQAConfig:
    """`config` as an `LxmertVQAConfig`: itself when it is one, else converted (a plain `LxmertConfig` read by
    `AutoConfig` from one of this library's checkpoints keeps its answers and options; transformers' own answers
    with its QA head's `num_qa_labels`)."""
    if type(config) is LxmertVQAConfig:
        return config
    if not isinstance(config, LxmertConfig):
        raise ValueError(f"`config` must be an LxmertConfig (or LxmertVQAConfig), got {type(config).__name__}.")
    return vqa_config_from_dict(config.to_dict(), "question_answering", None, {})


def _from_lxmert_config(config_dict: dict, layout: str, answers, config_kwargs: dict) -> dict:
    config_dict = {k: v for k, v in config_dict.items() if k not in ("model_type", "architectures", "label2id")}
    config_dict.pop("id2label", None)
    if layout == "question_answering":
        # transformers' QA checkpoints (unc-nlp/lxmert-vqa-uncased, -gqa-) hold the original code's heads, trained
        # with a sigmoid BCE: their answers' probabilities are sigmoids.
        config_dict["head_loss"] = "bce"
    has_vocabulary = answers is not None or "id2label" in config_kwargs or "num_labels" in config_kwargs
    if has_vocabulary:
        return config_dict
    if layout == "question_answering":
        num = int(config_dict.get("num_qa_labels", 0))
        logger.warning(
            "This checkpoint carries no answer list; its %d answers are named LABEL_i. Pass `answers=` (the "
            "original trainval_label2ans.json list) to get answer strings.",
            num,
        )
        config_dict["num_labels"] = num
        return config_dict
    raise ValueError(
        f"A {layout!r} checkpoint has no answer vocabulary: pass `answers=[...]` (index = label id), or "
        "`id2label=`, to `LxmertForVQA.from_pretrained`."
    )


@dataclasses.dataclass(frozen=True)
class AnswerHeadTransplant:
    """What [`transplant_answer_head`] did: `rows` maps each label id that received a row of the pre-training QA
    head to that row; the `zeroed` answers (in label order) had no counterpart and start from zero, as in the
    original `load_lxmert_qa`.

    Example:
        ```python
        >>> from lxmert_hf.checkpoints import AnswerHeadTransplant
        >>> str(AnswerHeadTransplant(rows={0: 4, 2: 0}, zeroed=("blue",), num_answers=3))
        'transplanted 2 of 3 answers from the pre-training head (1 set to zero)'
        ```
    """

    rows: dict[int, int]
    zeroed: tuple[str, ...]
    num_answers: int
    source: str = "the pre-training head"

    @property
    def copied(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        return (
            f"transplanted {self.copied} of {self.num_answers} answers from {self.source} "
            f"({len(self.zeroed)} set to zero)"
        )


def check_answer_head(head: Mapping[str, torch.Tensor], head_answers: Sequence[str]) -> None:
    """Check that `head_answers` names the rows of the QA head `head`, once each, before anything is loaded."""
    rows = head[QA_HEAD + "3.weight"].shape[0]
    if rows != len(head_answers):
        raise ValueError(
            f"The QA head has {rows} answers but `pretrain_answers` lists {len(head_answers)}: pass the answer list "
            "of this checkpoint's head (all_ans.json for unc-nlp/lxmert-base-uncased)."
        )
    seen: set[str] = set()
    repeated = [answer for answer in head_answers if answer in seen or seen.add(answer)]
    if repeated:
        raise ValueError(
            f"`pretrain_answers` names {repeated[:3]} more than once; each row of the QA head needs its own answer."
        )


@torch.no_grad()
def transplant_answer_head(
    model, head: Mapping[str, torch.Tensor], head_answers: Sequence[str]
) -> AnswerHeadTransplant:
    """Initialize `model.classifier` from a pre-training QA head, as the original `load_lxmert_qa` does (the paper's
    `--loadLXMERTQA`).

    `head` holds the tensors of `answer_head.logit_fc.{0,2,3}.{weight,bias}` and `head_answers` its answers in
    head order, as written (`all_ans.json`). The shared layers (0 and 2) are copied. Each answer of the model is
    converted by the original rule ([`lxmert_qa_normalize`]) and looked up among the head's answers as written: on
    a match the answer's weight and bias rows of the output layer (3) are copied from that head row, otherwise both
    are set to zero.

    Returns:
        [`AnswerHeadTransplant`]: the rows copied and the answers set to zero; its `str` is the one-line summary.

    Example:
        ```python
        >>> from lxmert_hf import transplant_answer_head
        >>> report = transplant_answer_head(model, head, pretrain_answers)  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
        transplanted 3124 of 3129 answers from the pre-training head (5 set to zero)
        ```
    """
    check_answer_head(head, head_answers)
    weight, bias = head[QA_HEAD + "3.weight"], head[QA_HEAD + "3.bias"]
    for index in (0, 2):
        model.classifier[index].weight.copy_(head[f"{QA_HEAD}{index}.weight"])
        model.classifier[index].bias.copy_(head[f"{QA_HEAD}{index}.bias"])
    head_rows = {answer: row for row, answer in enumerate(head_answers)}
    rows, zeroed = {}, []
    output = model.classifier[3]
    for label, answer in enumerate(model.config.answers):
        row = head_rows.get(lxmert_qa_normalize(answer))
        if row is None:
            output.weight[label].zero_()
            output.bias[label].zero_()
            zeroed.append(answer)
        else:
            output.weight[label].copy_(weight[row])
            output.bias[label].copy_(bias[row])
            rows[label] = row
    report = AnswerHeadTransplant(rows=rows, zeroed=tuple(zeroed), num_answers=len(model.config.answers))
    logger.info("Answer head: %s.", report)
    return report


@torch.no_grad()
def remap_answer_head(model, answers: Sequence[str]) -> AnswerHeadTransplant:
    """Give `model` the answer vocabulary `answers`, keeping the trained rows of its classifier's output layer for
    the answers it already has (same string) and starting the others from zero, as [`transplant_answer_head`] does
    for a pre-training head; the shared layers stay as they are.

    Example:
        ```python
        >>> from lxmert_hf import LxmertForVQA, LxmertVQAConfig
        >>> from lxmert_hf.checkpoints import remap_answer_head
        >>> config = LxmertVQAConfig.from_answers(["yes", "no"], hidden_size=32, num_attention_heads=2,
        ...     intermediate_size=64, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, vocab_size=50)
        >>> print(remap_answer_head(LxmertForVQA(config), ["no", "red", "blue"]))
        transplanted 1 of 3 answers from the checkpoint's head (2 set to zero)
        ```
    """
    answers = AnswerVocabulary(answers).answers
    known = {answer: row for row, answer in enumerate(model.config.answers)}
    old = model.classifier[3]
    new = torch.nn.Linear(old.in_features, len(answers), device=old.weight.device, dtype=old.weight.dtype)
    new.weight.zero_()
    new.bias.zero_()
    rows, zeroed = {}, []
    for label, answer in enumerate(answers):
        row = known.get(answer)
        if row is None:
            zeroed.append(answer)
            continue
        new.weight[label].copy_(old.weight[row])
        new.bias[label].copy_(old.bias[row])
        rows[label] = row
    model.classifier[3] = new
    model.config.id2label = answers_to_id2label(answers)
    model.config.label2id = {answer: label for label, answer in model.config.id2label.items()}
    model.config.num_qa_labels = len(answers)
    return AnswerHeadTransplant(rows, tuple(zeroed), len(answers), source="the checkpoint's head")


def _answers_to_remap(name_or_path, layout: str, answers: list[str] | None, hub_kwargs: dict) -> list[str] | None:
    """`answers` when they differ from the named answers of a trained head (the classifier is then loaded as
    saved and remapped, see [`remap_answer_head`]); `None` when they name the head's rows or there is no head.
    Refuses an answer list that cannot name the rows of an unnamed head (transformers' own QA checkpoints)."""
    if answers is None or layout not in ("question_answering", "vqa_legacy"):
        return None
    config_dict, _ = LxmertVQAConfig.get_config_dict(str(name_or_path), **hub_kwargs)
    if not is_own_config(config_dict):
        rows = int(config_dict.get("num_qa_labels", len(answers)))
        if rows != len(answers):
            raise ValueError(
                f"`answers` lists {len(answers)} answers, but the answer head of {str(name_or_path)!r} has {rows} "
                "rows that its config does not name: pass this head's own answer list (trainval_label2ans.json "
                "for unc-nlp/lxmert-vqa-uncased), or start from unc-nlp/lxmert-base-uncased for another vocabulary."
            )
        return None
    saved = [config_dict["id2label"][key] for key in sorted(config_dict["id2label"], key=int)]
    return list(answers) if saved != list(answers) else None


# Set while transformers loads a model whose classifier is transplanted right after, so that its load report does
# not list the classifier as newly initialized (read by `LxmertForVQA._adjust_missing_and_unexpected_keys`).
_CLASSIFIER_SUPPLIED: contextvars.ContextVar[bool] = contextvars.ContextVar("classifier_supplied", default=False)


def drop_supplied_keys(missing_keys: set[str]) -> set[str]:
    """`missing_keys` without the classifier's while a transplant is on its way (see [`load_pretrained`])."""
    if not _CLASSIFIER_SUPPLIED.get():
        return missing_keys
    return {key for key in missing_keys if not key.startswith(CLASSIFIER)}


def load_pretrained(parent_from_pretrained: Callable, name_or_path, *model_args, **kwargs):
    r"""
    Load an `LxmertForVQA` from a folder or Hub id, whatever LXMERT layout it was saved in.

    Accepted layouts: this model's own checkpoints (transformers' `LxmertForQuestionAnswering` layout with the
    answers and options in the config, and the `classifier.*` layout of earlier versions); transformers'
    `LxmertForQuestionAnswering` (`unc-nlp/lxmert-vqa-uncased`, whose config names no answers);
    `LxmertForPreTraining` (`unc-nlp/lxmert-base-uncased`) and `LxmertModel` (a new classifier is initialized: a
    pre-training checkpoint's QA head is never read as the classifier unless transplanted, see `pretrain_answers`).
    Newly initialized weights are logged. A `config=` that is a plain `LxmertConfig` (as `AutoConfig` reads one of
    these folders) is converted to an `LxmertVQAConfig`.

    Args:
        answers (`list[str]`, path or URL, *optional*): the answer vocabulary (index = label id), in any form
            [`AnswerVocabulary.load`] reads. Required for pre-training and bare-model checkpoints, which have none;
            for transformers' QA checkpoints, whose config does not name its answers, it names the head's rows (as
            many). Given for one of this library's checkpoints with other answers, the head is remapped to them
            ([`remap_answer_head`]: answers the checkpoint knows keep their trained rows, new ones start from
            zero), with a warning and the report in `answer_head_transplant`, as for `pretrain_answers`.
        pretrain_answers (`list[str]`, path or URL, *optional*): the answers of a pre-training checkpoint's QA head,
            in head order (`all_ans.json`). When given, the classifier is initialized from that head as the
            original `load_lxmert_qa` does ([`transplant_answer_head`]: matched answers get their head row, the
            others zero). The classifier is then not reported as newly initialized; the loading info
            (`output_loading_info=True`) and the model's `answer_head_transplant` attribute hold the
            [`AnswerHeadTransplant`] ("transplanted N of M answers from the pre-training head (K set to zero)").
        kwargs: anything `PreTrainedModel.from_pretrained` takes (`revision`, `cache_dir`, `token`, `dtype`, ...)
            and config attributes to override (`head_loss`, `attention_backend`, ...).

    Example:
        ```python
        >>> from lxmert_hf import LxmertForVQA
        >>> model = LxmertForVQA.from_pretrained(
        ...     "unc-nlp/lxmert-base-uncased", answers=["yes", "no"]
        ... )  # doctest: +SKIP
        ```
    """
    answers = kwargs.pop("answers", None)
    pretrain_answers = kwargs.pop("pretrain_answers", None)
    answers = AnswerVocabulary.load(answers).answers if answers is not None else None
    hub_kwargs = offline_kwargs({key: kwargs[key] for key in HUB_KWARGS if key in kwargs})
    kwargs.update(hub_kwargs)  # while Hub access is off, transformers must not try it either
    weights = resolve_weights(name_or_path, **hub_kwargs)
    with reading_weights(weights):
        layout = detect_layout(checkpoint_keys(weights))
    given = kwargs.get("config")
    with reaching_hub(str(name_or_path), "model", "config.json", hub_kwargs.get("local_files_only", False)):
        remap_to = _answers_to_remap(name_or_path, layout, answers, hub_kwargs) if given is None else None
    if remap_to is not None:
        answers = None  # built with the checkpoint's own answers, remapped once loaded
    if given is None or (isinstance(given, LxmertConfig) and type(given) is not LxmertVQAConfig):
        defaults = LxmertVQAConfig()
        config_kwargs = {
            k: kwargs.pop(k)
            for k in list(kwargs)
            if (hasattr(defaults, k) or k in ("num_labels",)) and k not in LOADING_KWARGS
        }
        with reaching_hub(str(name_or_path), "model", "config.json", hub_kwargs.get("local_files_only", False)):
            kwargs["config"] = build_config(name_or_path, layout, answers, config_kwargs, hub_kwargs, given=given)
    if layout in KEY_MAPPINGS:
        kwargs.setdefault("key_mapping", KEY_MAPPINGS[layout])
    head = _pretraining_head(weights, layout, pretrain_answers)
    want_info = kwargs.pop("output_loading_info", False)
    token = _CLASSIFIER_SUPPLIED.set(head is not None)
    try:
        with (
            reaching_hub(str(name_or_path), "model", local_files_only=hub_kwargs.get("local_files_only", False)),
            reading_weights(weights),
        ):
            model, info = parent_from_pretrained(name_or_path, *model_args, output_loading_info=True, **kwargs)
    finally:
        _CLASSIFIER_SUPPLIED.reset(token)
    # transformers saves a model with the renamings that loading it used undone (`revert_weight_conversion` reads
    # `_weight_conversions`): a folder of an earlier layout, which needs none, would be written back in that layout.
    # Without them it saves with the class's registered renaming, in the current layout.
    model._weight_conversions = None
    if head is not None:
        info["answer_head_transplant"] = transplant_answer_head(model, *head)
        model.answer_head_transplant = info["answer_head_transplant"]
    if remap_to is not None:
        info["answer_head_transplant"] = model.answer_head_transplant = remap_answer_head(model, remap_to)
        logger.warning("Answer head for the new `answers`: %s; fine-tune before use.", model.answer_head_transplant)
    missing = sorted(info["missing_keys"])
    if missing:
        logger.warning("Newly initialized from a %r checkpoint (train before use): %s", layout, ", ".join(missing))
    return (model, info) if want_info else model


def _pretraining_head(weights: str, layout: str, pretrain_answers) -> tuple[dict, list[str]] | None:
    """The QA head tensors and answers to transplant (checked against each other), or `None` without
    `pretrain_answers`."""
    if pretrain_answers is None:
        return None
    if layout != "pretraining":
        raise ValueError(f"`pretrain_answers` needs a pre-training checkpoint with a QA head; this one is {layout!r}.")
    names = [f"{QA_HEAD}{i}.{p}" for i in (0, 2, 3) for p in ("weight", "bias")]
    head = read_tensors(weights, names)
    if len(head) != len(names):
        raise ValueError(
            "`pretrain_answers` needs a pre-training checkpoint with a QA head; this one has no "
            f"{', '.join(sorted(set(names) - set(head)))}."
        )
    answers = AnswerVocabulary.load(pretrain_answers).answers
    check_answer_head(head, answers)
    return head, answers


register_checkpoint_names()
