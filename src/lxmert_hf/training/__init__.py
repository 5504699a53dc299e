"""Training support for the recipes of every task (VQA, GQA, NLVR2): the tasks themselves ([`Task`], [`TASKS`]),
arguments and config files, data, the Trainer (`RecipeTrainer`, whose saved models carry this library's model card),
what a run records about itself (`record_run`), the final report, and the run every recipe makes ([`run_recipe`])."""

from lxmert_hf.training.arguments import (
    DataArguments,
    ModelArguments,
    RecipeTrainingArguments,
    VQATrainingArguments,
    make_parser,
    parse_args,
)
from lxmert_hf.training.data import check_splits, load_splits, prepare_toy, streaming_options, toy_world_config
from lxmert_hf.training.provenance import RunRecord, launch_command, record_run
from lxmert_hf.training.recipe import run_recipe
from lxmert_hf.training.tasks import TASKS, Task, get_task
from lxmert_hf.training.trainer import (
    RecipeTrainer,
    VQATrainer,
    answer_examples,
    build_compute_metrics,
    build_model,
    build_trainer,
    final_report,
    format_report,
    load_tokenizer,
)

__all__ = [
    "TASKS",
    "DataArguments",
    "ModelArguments",
    "RecipeTrainer",
    "RecipeTrainingArguments",
    "RunRecord",
    "Task",
    "VQATrainer",
    "VQATrainingArguments",
    "answer_examples",
    "build_compute_metrics",
    "build_model",
    "build_trainer",
    "check_splits",
    "final_report",
    "format_report",
    "get_task",
    "launch_command",
    "load_splits",
    "load_tokenizer",
    "make_parser",
    "parse_args",
    "prepare_toy",
    "record_run",
    "run_recipe",
    "streaming_options",
    "toy_world_config",
]
