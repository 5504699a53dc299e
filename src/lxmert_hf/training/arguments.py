"""Arguments shared by the recipes of every task, and `--config file.yaml` parsing with command-line overrides."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from transformers import HfArgumentParser, IntervalStrategy, SchedulerType, TrainingArguments
from transformers.hf_argparser import string_to_bool
from transformers.trainer_utils import SaveStrategy

from lxmert_hf.training import speed

if TYPE_CHECKING:
    from lxmert_hf.training.tasks import Task


@dataclasses.dataclass
class ModelSourceArguments:
    """The checkpoint a run starts from, and its tokenizer."""

    model_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Folder or Hub id of an LXMERT checkpoint (e.g. unc-nlp/lxmert-base-uncased); "
                  "empty: a new model of the size below, trained from scratch."},
    )  # fmt: skip
    tokenizer_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Tokenizer folder or Hub id; defaults to the model's (or the toy world's)."}
    )


@dataclasses.dataclass
class ModelSizeArguments:
    """The size of a model trained from scratch, and its dropout."""

    hidden_size: int = dataclasses.field(default=768, metadata={"help": "From scratch only."})
    num_attention_heads: int = dataclasses.field(default=12, metadata={"help": "From scratch only."})
    intermediate_size: int = dataclasses.field(default=3072, metadata={"help": "From scratch only."})
    l_layers: int = dataclasses.field(default=9, metadata={"help": "Language layers, from scratch only."})
    x_layers: int = dataclasses.field(default=5, metadata={"help": "Cross-modality layers, from scratch only."})
    r_layers: int = dataclasses.field(default=5, metadata={"help": "Vision layers, from scratch only."})
    dropout: float = dataclasses.field(default=0.1, metadata={"help": "Hidden and attention dropout."})
    initializer_range: float = dataclasses.field(
        default=0.02,
        metadata={"help": "Standard deviation of the initial weights, from scratch only. Small models learn "
                  "where to attend sooner from a wider start."},
    )  # fmt: skip

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`--dropout` must be in [0, 1), got {self.dropout}.")
        if not self.initializer_range > 0.0:
            raise ValueError(f"`--initializer_range` must be positive, got {self.initializer_range}.")


@dataclasses.dataclass
class ModelArguments(ModelSizeArguments, ModelSourceArguments):
    """Which model to fine-tune, or the size of a model trained from scratch."""

    pretrain_answers: str | None = dataclasses.field(
        default=None,
        metadata={"help": "answer list of a pre-training checkpoint's QA head (all_ans.json; any form "
                  "AnswerVocabulary.load reads: file, URL, hf:// file): initialize the "
                  "classifier from it as the original --loadLXMERTQA (answers the head lacks start at zero)."},
    )  # fmt: skip
    head_loss: str = dataclasses.field(default="softmax", metadata={"help": "softmax or bce (the paper's loss)."})
    attention_backend: str = dataclasses.field(default="sdpa", metadata={"help": "sdpa or eager."})


@dataclasses.dataclass
class DataArguments:
    """Where the questions and region features come from."""

    dataset: str = dataclasses.field(
        default="toy",
        metadata={"help": "A prepared directory of the recipe's task (`lxmert-hf prepare vqa|gqa|nlvr2 ... "
                  "--output DIR`), or toy: the task's built-in synthetic world (generated, prepared like real data "
                  "and cached)."},
    )  # fmt: skip
    train_split: str = dataclasses.field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = dataclasses.field(
        default=None, metadata={"help": "Split to evaluate on; default: the task's preferred split that the data has."}
    )
    max_question_length: int = dataclasses.field(
        default=20, metadata={"help": "Questions are truncated to this many tokens (20 in the paper)."}
    )
    toy_seed: int = dataclasses.field(
        default=0,
        metadata={"help": "Seed of the toy world's content (images, questions, answers). The world is data, cached "
                  "by its settings: --seed does not change it."},
    )  # fmt: skip
    toy_train_images: int = dataclasses.field(default=2000, metadata={"help": "Toy training images."})
    toy_eval_images: int = dataclasses.field(default=250, metadata={"help": "Toy validation and test images."})
    toy_questions_per_image: int = dataclasses.field(default=10, metadata={"help": "Toy questions per image."})
    toy_mask_background: bool = dataclasses.field(
        default=False,
        metadata={"help": "Toy images keep only their objects and one whole-image region, instead of 36 regions "
                  "where the others are background, as a detector gives them."},
    )  # fmt: skip
    cache_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Where generated data is cached (default: the datasets cache)."}
    )
    streaming: bool = dataclasses.field(
        default=False,
        metadata={"help": "Read the training split as a datasets.IterableDataset joined to the feature store on the "
                  "fly, each process reading its own shards, shuffled through a buffer seeded by --seed. Needs "
                  "--max_steps, and step (not epoch) evaluation, saving and logging."},
    )  # fmt: skip
    shuffle_buffer_size: int = dataclasses.field(
        default=10_000, metadata={"help": "With --streaming: questions in the shuffle buffer (before the join)."}
    )
    question_only_baseline: bool = dataclasses.field(
        default=True,
        metadata={"help": "Also evaluate with the visual features zeroed (the question-only baseline; sentence-only "
                  "for NLVR2)."},
    )  # fmt: skip
    show_examples: int = dataclasses.field(default=3, metadata={"help": "Validation examples answered at the end."})


@dataclasses.dataclass
class RecipeTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's fine-tuning defaults (AdamW, lr 5e-5, batch 32, 4 epochs, 10% linear
    warm-up then linear decay, weight decay 0.01, gradient clipping 5.0) and per-epoch evaluation keeping the best
    checkpoint by the task's official metric (VQA accuracy unless a task's defaults say otherwise, see
    [`~lxmert_hf.training.tasks.Task`]), computed batch by batch (`batch_eval_metrics`).

    Speed options left unset (`--precision auto`, `--static_shapes`, `--dataloader_num_workers`,
    `--logging_nan_inf_filter`) take the fast path's values when training on a CUDA GPU and the faithful fp32 eager
    path's elsewhere ([`~lxmert_hf.training.speed.resolve_speed_options`])."""

    output_dir: str | None = dataclasses.field(default="outputs/vqa", metadata={"help": "Where to save."})
    learning_rate: float = 5e-5
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 128
    num_train_epochs: float = 4.0
    warmup_steps: float = 0.1
    lr_scheduler_type: SchedulerType | str = "linear"
    weight_decay: float = 0.01
    max_grad_norm: float = 5.0
    eval_strategy: IntervalStrategy | str = "epoch"
    save_strategy: SaveStrategy | str = "epoch"
    save_total_limit: int | None = 2
    load_best_model_at_end: bool = True
    metric_for_best_model: str | None = dataclasses.field(
        default="vqa_accuracy",
        metadata={
            "help": "Picks the best checkpoint: the task's official metric, in percent (vqa_accuracy: needs the "
            "annotators' answers; gqa_accuracy; nlvr2_accuracy or nlvr2_consistency), vqa_soft_score (VQA eval "
            "splits of LXMERT's JSON files, soft scores only) or loss."
        },
    )
    greater_is_better: bool | None = True
    logging_steps: float = 50
    remove_unused_columns: bool = False
    batch_eval_metrics: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "Hand each eval batch to the metric, which keeps one answer id (or score) per question, instead "
            "of keeping every question's logits and soft-score labels (GBs on VQA v2 val) until the end."
        },
    )
    report_to: None | str | list[str] = "none"
    seed: int = dataclasses.field(
        default=42,
        metadata={"help": "Seed of everything the run draws: the new model's initial weights, dropout and, unless "
                  "--data_seed is given, the order of the training data. Two runs with one seed and one process "
                  "layout give the same weights. The toy world's content has its own --toy_seed."},
    )  # fmt: skip
    resume_from_checkpoint: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Continue an interrupted run exactly (weights, optimizer, schedule, random states, data "
                  "position): a checkpoint-N folder it saved, or last: the newest complete one in --output_dir. "
                  "Pass the arguments of the interrupted run."},
    )  # fmt: skip
    overwrite_output_dir: bool = dataclasses.field(
        default=False,
        metadata={"help": "Delete what an earlier run left in --output_dir (its checkpoints included) and start "
                  "again. Without it (or --resume_from_checkpoint), a non-empty --output_dir is an error."},
    )  # fmt: skip
    early_stopping_patience: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Stop when --metric_for_best_model has not improved for this many evaluations in a "
                  "row (needs --load_best_model_at_end, the default, which keeps the best checkpoint)."},
    )  # fmt: skip
    early_stopping_threshold: float = dataclasses.field(
        default=0.0,
        metadata={"help": "With --early_stopping_patience: how much the metric must improve to count as better."},
    )
    restore_callback_states_from_checkpoint: bool = dataclasses.field(
        default=True,
        metadata={"help": "On resume, continue the callbacks where the checkpoint left them (early stopping's "
                  "count of evaluations without improvement, and its patience), as an uninterrupted run would."},
    )  # fmt: skip
    # Speed options: left unset, each takes the fast path's value on a CUDA GPU and the faithful one elsewhere
    # (lxmert_hf.training.speed).
    precision: str = dataclasses.field(
        default="auto",
        metadata={"help": "auto, bf16, fp16 or fp32. auto: bf16 autocast when training on a CUDA GPU that supports "
                  "it, fp32 otherwise (or what --bf16 / --fp16 say). Weights and optimizer states stay fp32."},
    )  # fmt: skip
    static_shapes: bool | None = dataclasses.field(
        default=None,
        metadata={"help": "Pad every training batch to one shape (questions to --max_question_length tokens, regions "
                  "to the feature store's most per image), so that --torch_compile compiles one graph. Default: on "
                  "when training on a CUDA GPU, off otherwise (padding to the longest in the batch)."},
    )  # fmt: skip
    dataloader_num_workers: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Data loader processes reading the store and collating ahead of the model. Default: 4 when "
                  "training on a CUDA GPU, 0 (the main process) otherwise."},
    )  # fmt: skip
    logging_nan_inf_filter: bool | None = dataclasses.field(
        default=None,
        metadata={"help": "Leave NaN or infinite step losses out of the logged loss; it reads every step's loss "
                  "back from the device. Default: off when training on a CUDA GPU, on otherwise."},
    )  # fmt: skip

    def __post_init__(self):
        # Without an accelerator, transformers only joins the process group of `accelerate launch --multi_gpu`
        # (gloo) when told to run on the CPU; otherwise every process would train alone on the whole dataset.
        if not self.use_cpu and not _accelerator_available():
            self.use_cpu = True
        speed.resolve_speed_options(self)
        super().__post_init__()
        if speed.training_on_cuda(self) and self.dataloader_pin_memory:
            # Pinned batches copy to the GPU while it computes instead of blocking the step.
            self.accelerator_config.non_blocking = True
        self._check_early_stopping()

    def _check_early_stopping(self) -> None:
        if self.early_stopping_patience is None:
            return
        if self.early_stopping_patience < 1:
            raise ValueError(f"`--early_stopping_patience` must be 1 or more, got {self.early_stopping_patience}.")
        if self.early_stopping_threshold < 0:
            raise ValueError(f"`--early_stopping_threshold` must be 0 or more, got {self.early_stopping_threshold}.")
        if not self.load_best_model_at_end or not self.metric_for_best_model or self.eval_strategy == "no":
            raise ValueError(
                "`--early_stopping_patience` stops on the metric of the evaluations and then keeps the best "
                "checkpoint: it needs `--load_best_model_at_end true`, a `--metric_for_best_model` and an "
                f"`--eval_strategy` other than no (got {self.load_best_model_at_end}, "
                f"{self.metric_for_best_model!r}, {getattr(self.eval_strategy, 'value', self.eval_strategy)!r})."
            )


# The name the recipes' arguments had when VQA was their only task.
VQATrainingArguments = RecipeTrainingArguments
ARGUMENT_CLASSES = (ModelArguments, DataArguments, RecipeTrainingArguments)


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def make_parser(task: Task | None = None, classes: tuple[type, ...] = ARGUMENT_CLASSES) -> HfArgumentParser:
    """The recipes' parser: model, data and training arguments (`classes`, the fine-tuning recipes' by default),
    plus `--config file.yaml` (repeatable).

    With a `task` ([`~lxmert_hf.training.tasks.Task`]), its hyper-parameters replace the dataclass defaults, so that
    `--help` shows the values the task's recipe uses, and the help of `--eval_split` names its preferred splits.
    """
    parser = HfArgumentParser(classes)
    for action in parser._actions:
        # An unset speed option takes the device's default; a bare `--static_shapes` still means true.
        if action.dest in speed.SPEED_OPTIONS and action.type is string_to_bool:
            action.nargs, action.const = "?", True
    if task is not None:
        parser.set_defaults(**task.defaults)
        action = next(action for action in parser._actions if action.dest == "eval_split")
        action.help = (
            f"Split to evaluate on; default: the first of {', '.join(task.eval_splits)} that the data has (in the "
            "toy world, the first of them it has)."
        )
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        help="YAML file of argument values, layered over the recipe's defaults: only the keys it names change. "
        "Repeat it to layer several files (later files win); flags given on the command line override them all.",
    )
    return parser


def parse_args(
    argv: list[str] | None = None,
    default_config: str | Path | None = None,
    task: Task | None = None,
    classes: tuple[type, ...] = ARGUMENT_CLASSES,
    is_toy: Callable[[argparse.Namespace], bool] | None = None,
):
    """Parse `argv` into `(ModelArguments, DataArguments, RecipeTrainingArguments)` (or one instance of each of
    `classes`, whose second holds the data arguments and last the training arguments).

    Values come in layers, each changing only the keys it names, in increasing priority:

    1. the dataclass defaults (the paper's settings for VQA);
    2. the paper's settings of the recipe's `task` ([`~lxmert_hf.training.tasks.Task.defaults`], e.g. GQA's
       learning rate, 1e-5);
    3. `default_config`, the task's toy settings (the recipes pass `recipes/configs/<task>_toy.yaml`), applied only
       when the run's dataset, as the layers above it leave it, is the one that file names (any dataset when it
       names none; with `is_toy`, when `is_toy(arguments as the layers above leave them)` says the run is on the
       toy world): a run on `data/vqa` does not get the toy world's model size;
    4. the YAML files given with `--config`, in order;
    5. the command-line flags.

    Raises:
        `ValueError`: a config file that is not valid YAML, holds no mapping, names no argument ("did you mean")
            or gives a value of the wrong type; each names the file (and the line, or the key).
        `FileNotFoundError`: a config file that does not exist.

    Example:
        ```python
        >>> from lxmert_hf.training import parse_args
        >>> model_args, data_args, training_args = parse_args(["--learning_rate", "1e-4", "--output_dir", "out"])
        >>> training_args.learning_rate, training_args.per_device_train_batch_size
        (0.0001, 32)
        ```
    """
    parser = make_parser(task, classes)
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("--config", action="append", default=[])
    known, _ = config_parser.parse_known_args(argv)
    user_values: dict = {}
    for path in known.config:
        user_values.update(read_config_file(path, parser))
    task_values = read_config_file(default_config, parser) if default_config is not None else {}
    parser.set_defaults(**user_values)
    known = parser.parse_known_args(argv)[0]
    toy = is_toy(known) if is_toy is not None else task_values.get("dataset", known.dataset) == known.dataset
    if toy:
        parser.set_defaults(**{**task_values, **user_values})
    *dataclass_args, _config = parser.parse_args_into_dataclasses(args=argv)
    check_streaming(dataclass_args[1], dataclass_args[-1])
    return tuple(dataclass_args)


def check_streaming(data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Check the training arguments of a `--streaming` run, and have each process read its own shards.

    A stream has no length: the run needs `--max_steps`. Processes may see a few questions more or fewer than
    each other in a pass over the split, so their passes end at different steps: whatever the processes do
    together (evaluating, saving, logging) must happen at steps, not at the end of a pass. Unless
    `accelerator_config` says otherwise, `dispatch_batches` is turned off, so that `accelerate` gives each process
    its own shards of the stream (`datasets.IterableDataset.shard`) instead of reading every batch on the main
    process and sending it to the others.
    """
    if not getattr(data_args, "streaming", False):
        return
    if data_args.shuffle_buffer_size < 1:
        raise ValueError(f"`--shuffle_buffer_size` must be at least 1, got {data_args.shuffle_buffer_size}.")
    if training_args.max_steps <= 0:
        raise ValueError(
            "`--streaming` needs `--max_steps`: a stream has no length, so the number of training steps cannot come "
            "from `--num_train_epochs`. Pass e.g. `--max_steps N` with N = epochs x questions / global batch size."
        )
    for name in ("eval_strategy", "save_strategy", "logging_strategy"):
        if getattr(training_args, name) == "epoch":
            raise ValueError(
                f"`--streaming` with `--{name} epoch`: processes end their passes over a stream at different steps. "
                f"Pass `--{name} steps` with `--{name.split('_')[0]}_steps N`."
            )
    if training_args.accelerator_config.dispatch_batches is None:
        training_args.accelerator_config.dispatch_batches = False


def read_config_file(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """Read a YAML argument file: every key must name one of the parser's arguments and every value fit its type.

    Returns the values converted as the command line would convert them (`1e-4` is a number there, a string in
    YAML).

    Example:
        ```python
        >>> import tempfile
        >>> from lxmert_hf.training.arguments import make_parser, read_config_file
        >>> path = Path(tempfile.mkdtemp()) / "run.yaml"
        >>> _ = path.write_text("learning_rate: fast\\n")
        >>> read_config_file(path, make_parser())
        Traceback (most recent call last):
        ...
        ValueError: Config file '...run.yaml': `learning_rate: fast` is not a number (float).
        ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    values = _load_yaml(path) or {}
    if not isinstance(values, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of argument names to values.")
    actions = {action.dest: action for action in parser._actions if f"--{action.dest}" in action.option_strings}
    known = set(actions) - {"help", "config"}
    checked = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown key {key!r} in config file {str(path)!r}: no such argument.{hint}")
        checked[key] = _convert(actions[key], key, value, path)
    return checked


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        if isinstance(error, yaml.constructor.ConstructorError):
            problem += " (config files hold plain values: strings, numbers, booleans, lists, mappings)"
        raise ValueError(f"Config file {str(path)!r}{where}: not valid YAML: {problem}.") from None


def _convert(action: argparse.Action, key: str, value, path: Path):
    """`value` as the command line would give it for `action`, or a `ValueError` naming the key and the file."""
    if value is None or action.type is None:
        return value
    items = value if isinstance(value, list) and action.nargs in ("+", "*") else [value]
    converted = [_convert_one(action, item) for item in items]
    if None in converted or (action.choices is not None and not all(c in action.choices for c in converted)):
        raise ValueError(f"Config file {str(path)!r}: `{key}: {value}` is not {_expected(action)}.")
    return converted if items is value else converted[0]


def _convert_one(action: argparse.Action, item):
    """The converted item, or `None` when it does not fit the action's type."""
    if isinstance(item, str):
        try:
            return action.type(item)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            return None
    if action.type in (int, float):
        if isinstance(item, bool) or not isinstance(item, int | float):
            return None
        return item if action.type is float or float(item).is_integer() else None
    if action.type is string_to_bool:
        return item if isinstance(item, bool) else None
    return item


def _expected(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(str(choice) for choice in action.choices)
    names = {int: "an integer (int)", float: "a number (float)", string_to_bool: "true or false (bool)"}
    return names.get(action.type, f"a {getattr(action.type, '__name__', action.type)}")
