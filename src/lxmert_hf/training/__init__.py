"""Training support for the recipes: arguments and config files, data, the Trainer (`VQATrainer`, whose saved
models carry this library's model card), what a run records about itself (`record_run`) and the final report."""

from lxmert_hf.training.arguments import DataArguments, ModelArguments, VQATrainingArguments, make_parser, parse_args
from lxmert_hf.training.data import check_splits, load_splits, prepare_toy, streaming_options, toy_world_config
from lxmert_hf.training.provenance import RunRecord, launch_command, record_run
from lxmert_hf.training.trainer import (
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
    "DataArguments",
    "ModelArguments",
    "RunRecord",
    "VQATrainer",
    "VQATrainingArguments",
    "answer_examples",
    "build_compute_metrics",
    "build_model",
    "build_trainer",
    "check_splits",
    "final_report",
    "format_report",
    "load_splits",
    "launch_command",
    "load_tokenizer",
    "make_parser",
    "parse_args",
    "prepare_toy",
    "record_run",
    "streaming_options",
    "toy_world_config",
]
