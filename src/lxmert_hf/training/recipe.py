"""The one fine-tuning run behind every recipe (`recipes/vqa.py`, `recipes/gqa.py`, `recipes/nlvr2.py`): parse the
arguments with the task's defaults, check them before any work, prepare the data (the task's toy world when no
`--dataset` is given), train with the `Trainer`, evaluate the best model against its blind baseline, print the
report and examples, and save (and push) a self-describing model."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lxmert_hf.training.arguments import ModelArguments, parse_args
from lxmert_hf.training.data import (
    check_splits,
    load_splits,
    max_regions,
    prepare_toy,
    streaming_options,
    toy_world_config,
)
from lxmert_hf.training.provenance import record_run
from lxmert_hf.training.runs import (
    check_checkpoint_fits,
    prepare_output_dir,
    seed_run,
    show_progress,
    user_errors,
)
from lxmert_hf.training.tasks import Task, get_task
from lxmert_hf.training.trainer import (
    answer_examples,
    build_model,
    build_trainer,
    final_report,
    format_report,
    load_tokenizer,
)

__all__ = ["check_model_arguments", "run_recipe", "toy_config_path"]


def toy_config_path(task: Task | str, recipe_file: str | os.PathLike) -> Path:
    """The task's toy settings shipped beside its recipe: `configs/<task>_toy.yaml` next to `recipe_file`."""
    return Path(recipe_file).resolve().parent / "configs" / f"{get_task(task).name}_toy.yaml"


def check_model_arguments(task: Task, model_args: ModelArguments, metric_for_best_model: str | None) -> None:
    """Refuse arguments that do not apply to the task, and a best-model metric the task does not report.

    Raises:
        `ValueError`: `--pretrain_answers` or `--head_loss bce` for a task without an answer vocabulary, or a
            `--metric_for_best_model` that is neither the loss nor one of the task's metrics.

    Example:
        ```python
        >>> from lxmert_hf.training import ModelArguments
        >>> from lxmert_hf.training.recipe import check_model_arguments
        >>> from lxmert_hf.training.tasks import GQA
        >>> check_model_arguments(GQA, ModelArguments(), "vqa_accuracy")
        Traceback (most recent call last):
        ...
        ValueError: `--metric_for_best_model vqa_accuracy` is not a GQA metric: pass gqa_accuracy (the official ...
        ```
    """
    if task.label_kind != "answers":
        if model_args.pretrain_answers:
            raise ValueError(
                f"`--pretrain_answers`: {task.title} has no answer vocabulary (its classifier, of fixed classes, "
                "starts new); leave it out."
            )
        if model_args.head_loss != "softmax":
            raise ValueError(
                f"`--head_loss {model_args.head_loss}`: {task.title}'s classifier is trained with cross-entropy on "
                "its classes, the original's loss; leave it out."
            )
    selected = (metric_for_best_model or "loss").removeprefix("eval_")
    known = (task.metric, *task.extra_metrics, *([task.fallback_metric[0]] if task.fallback_metric else []))
    if selected != "loss" and not selected.startswith(known):
        raise ValueError(
            f"`--metric_for_best_model {metric_for_best_model}` is not a {task.title} metric: pass {task.metric} "
            f"(the official one, the default), {' or '.join((*known[1:], 'loss'))}."
        )


def run_recipe(
    task: Task | str, argv: Sequence[str] | None = None, recipe_file: str | os.PathLike | None = None
) -> dict[str, float]:
    """
    Fine-tune and evaluate the model of `task` as `recipes/<task>.py` does, with its command-line arguments `argv`
    (default: `sys.argv[1:]`), and return the final report's metrics (`eval_<task>_accuracy`, ...).

    Arguments are layered: the paper's settings of the task, then `configs/<task>_toy.yaml` beside `recipe_file`
    when the dataset is the toy world, then `--config` files, then flags ([`~lxmert_hf.training.parse_args`]).
    Mistakes in them (a bad value or file, a split or a prepared directory of another task, an output folder
    holding an earlier run) end the run before any work with one line on stderr and exit status 2.

    Example:
        ```python
        >>> from lxmert_hf.training.recipe import run_recipe
        >>> metrics = run_recipe("gqa", ["--dataset", "data/gqa"], "recipes/gqa.py")  # doctest: +SKIP
        >>> metrics["eval_gqa_accuracy"]  # doctest: +SKIP
        60.3
        ```
    """
    task = get_task(task)
    recipe_file = Path(recipe_file or task.recipe)
    argv = list(sys.argv[1:] if argv is None else argv)
    with user_errors(recipe_file.name):
        model_args, data_args, training_args = parse_args(argv, toy_config_path(task, recipe_file), task=task)
        check_model_arguments(task, model_args, training_args.metric_for_best_model)
        check_splits(data_args, task)
        checkpoint = prepare_output_dir(training_args)
    show_progress(training_args)
    toy = data_args.dataset == "toy"
    with training_args.main_process_first(desc="preparing data"):
        root = (
            prepare_toy(toy_world_config(data_args, task.toy_world), data_args.cache_dir, task.toy_world)
            if toy
            else None
        )
    prepared = root / "prepared" if toy else data_args.dataset
    tokenizer = load_tokenizer(model_args, default=str(root / "tokenizer") if toy else None)
    with training_args.main_process_first(desc="tokenizing questions"):
        train, evaluation, answers = load_splits(
            prepared, data_args.train_split, data_args.eval_split, tokenizer, data_args.max_question_length,
            **streaming_options(data_args, training_args),
        )  # fmt: skip
    run = record_run(recipe_file, argv, prepared, data_args.eval_split, toy=toy)  # for the config and cards
    seed_run(training_args)
    model = build_model(model_args, answers, tokenizer, visual_features=run.visual_features, task=task)
    with user_errors(recipe_file.name):
        check_checkpoint_fits(checkpoint, model.config)
    num_regions = max_regions(prepared) if training_args.static_shapes else None
    trainer = build_trainer(
        model, tokenizer, training_args, data_args, train, evaluation, run_record=run, task=task,
        num_regions=num_regions,
    )  # fmt: skip
    if trainer.is_world_process_zero() and (transplant := getattr(model, "answer_head_transplant", None)):
        print(f"Answer head: {transplant}")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    metrics = final_report(trainer, evaluation, data_args)
    trainer.save_metrics("eval", metrics)
    examples = answer_examples(trainer, evaluation, data_args.show_examples)
    if trainer.is_world_process_zero():
        processes = f"{training_args.world_size} process(es) on {training_args.device.type}"
        print(f"\n{format_report(metrics, task)}\n\n{examples}\n")
        print(f"Trained with {processes}; saved to {training_args.output_dir}")
        print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    if training_args.push_to_hub:
        trainer.push_to_hub()
    # Tear the process group down before exit: a gloo group left to the interpreter's shutdown can abort a rank.
    trainer.accelerator.end_training()
    return metrics
