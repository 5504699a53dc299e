"""Continued pre-training of LXMERT with its five objectives (`recipes/pretrain.py`): arguments, the `Trainer`
and the run."""

from lxmert_hf.training.pretraining.arguments import (
    ObjectiveArguments,
    PretrainingDataArguments,
    PretrainingModelArguments,
    PretrainingTrainingArguments,
    parse_pretraining_args,
)
from lxmert_hf.training.pretraining.run import (
    build_pretraining_model,
    compare_finetuning,
    format_pretraining_report,
    run_pretraining,
)
from lxmert_hf.training.pretraining.trainer import (
    PRETRAIN_ANSWERS,
    PretrainingTrainer,
    objective_statistics,
    pretraining_metrics,
)

__all__ = [
    "PRETRAIN_ANSWERS",
    "ObjectiveArguments",
    "PretrainingDataArguments",
    "PretrainingModelArguments",
    "PretrainingTrainer",
    "PretrainingTrainingArguments",
    "build_pretraining_model",
    "compare_finetuning",
    "format_pretraining_report",
    "objective_statistics",
    "parse_pretraining_args",
    "pretraining_metrics",
    "run_pretraining",
]
