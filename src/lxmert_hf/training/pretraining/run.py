"""The run behind `recipes/pretrain.py`: continue LXMERT's pre-training (or start it) on the user's sentences and
region features with the paper's five objectives, evaluate every objective on held-out data, and save a model that
the task recipes fine-tune. On the toy world it then measures, in miniature, what pre-training is for: fine-tuning
toy VQA from the pre-trained model against training it from scratch with the same budget."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow.compute as pc
from transformers import LxmertConfig

from lxmert_hf.answers import AnswerVocabulary
from lxmert_hf.data import FeatureStore, PretrainingDataCollator, load_answer_vocabulary, load_pretraining
from lxmert_hf.data.pretraining import PretrainingSource
from lxmert_hf.data.pretraining.dataset import REGION_LABEL_COLUMNS, check_region_labels, load_qa_answers
from lxmert_hf.data.store import open_store_dataset
from lxmert_hf.locations import locate, reaching_hub
from lxmert_hf.modeling_pretraining import OBJECTIVES, LxmertForPreTrainingWithLosses
from lxmert_hf.toy import ATTRIBUTE_LABELS, CAPTIONS_FILE, OBJECT_LABELS
from lxmert_hf.training.data import prepare_toy, toy_world_config
from lxmert_hf.training.pretraining.arguments import (
    ObjectiveArguments,
    PretrainingDataArguments,
    PretrainingModelArguments,
    parse_pretraining_args,
)
from lxmert_hf.training.pretraining.trainer import ACCURACY_NAMES, PRETRAIN_ANSWERS, PretrainingTrainer
from lxmert_hf.training.runs import check_checkpoint_fits, prepare_output_dir, seed_run, show_progress, user_errors
from lxmert_hf.training.trainer import load_tokenizer

__all__ = ["PretrainingData", "format_pretraining_report", "run_pretraining"]

OBJECTIVE_TITLES = {
    "lm": "masked LM", "matched": "matching", "obj": "object labels", "attr": "attribute labels",
    "feat": "feature regression", "qa": "question answering",
}  # fmt: skip


@dataclasses.dataclass
class PretrainingData:
    """What a pre-training run reads: its sources, the held-out ones, the feature store, the tokenizer's name, the
    QA head's answers (or `None`), and, for data whose detector labels are known (the toy world's), how many object
    and attribute labels there are."""

    sources: list[str]
    eval_sources: list[str]
    features: str
    tokenizer: str | None
    qa_answers: AnswerVocabulary | None
    num_object_labels: int | None = None
    num_attr_labels: int | None = None


def toy_data(data_args: PretrainingDataArguments) -> PretrainingData:
    """The toy VQA world as pre-training data: its captions and questions (answered by its labels), train split for
    training and val for held-out evaluation; its store carries detector-like object and attribute labels."""
    world = toy_world_config(data_args, "vqa")
    root = prepare_toy(world, data_args.cache_dir, "vqa")
    prepared, raw = root / "prepared", root / "raw"
    return PretrainingData(
        sources=[f"captions:{raw / CAPTIONS_FILE.format(split='train')}", f"prepared:{prepared}@train"],
        eval_sources=[f"captions:{raw / CAPTIONS_FILE.format(split='val')}", f"prepared:{prepared}@val"],
        features=str(prepared / "features"),
        tokenizer=str(root / "tokenizer"),
        qa_answers=load_answer_vocabulary(prepared),
        num_object_labels=len(OBJECT_LABELS),
        num_attr_labels=len(ATTRIBUTE_LABELS),
    )


def user_data(data_args: PretrainingDataArguments, model_args: PretrainingModelArguments) -> PretrainingData:
    """The sources the arguments name, and the QA answers: `--qa_answers`, else the checkpoint's
    `pretrain_answers.json`, else the vocabulary of the first prepared source (else none)."""
    answers = None
    if data_args.qa_answers:
        answers = load_qa_answers(data_args.qa_answers, data_args.qa_sets)
    elif model_args.model_name_or_path and (Path(model_args.model_name_or_path) / PRETRAIN_ANSWERS).is_file():
        answers = AnswerVocabulary.load(Path(model_args.model_name_or_path) / PRETRAIN_ANSWERS)
    else:
        sources = [PretrainingSource.parse(source) for source in data_args.sources]
        prepared = next((source.path for source in sources if source.kind == "prepared"), None)
        answers = load_answer_vocabulary(prepared) if prepared else None
    return PretrainingData(
        sources=list(data_args.sources), eval_sources=list(data_args.eval_sources or []),
        features=data_args.features, tokenizer=None, qa_answers=answers,
    )  # fmt: skip


def build_pretraining_model(
    model_args: PretrainingModelArguments,
    objectives: ObjectiveArguments,
    tokenizer,
    qa_answers: AnswerVocabulary | None,
    feature_dim: int = 2048,
) -> LxmertForPreTrainingWithLosses:
    """The model whose pre-training continues (`model_name_or_path`) or a new one for region features of
    `feature_dim` values, with the objectives asked."""
    switches = {
        "task_mask_lm": objectives.task_mask_lm, "task_matched": objectives.task_matched,
        "task_obj_predict": objectives.task_obj_predict, "task_qa": objectives.task_qa,
        "visual_obj_loss": "obj" in objectives.visual_losses, "visual_attr_loss": "attr" in objectives.visual_losses,
        "visual_feat_loss": "feat" in objectives.visual_losses,
        "visual_loss_normalizer": objectives.visual_loss_normalizer,
        "hidden_dropout_prob": model_args.dropout, "attention_probs_dropout_prob": model_args.dropout,
    }  # fmt: skip
    if objectives.task_qa and qa_answers is None:
        raise ValueError(
            "Image question answering (`--task_qa`, on by default) needs the QA head's answers: pass `--qa_answers` "
            "(e.g. data/lxmert/all_ans.json), a prepared VQA/GQA source, or `--task_qa false`."
        )
    if not model_args.model_name_or_path:
        sizes = {name: getattr(model_args, name) for name in (
            "hidden_size", "num_attention_heads", "intermediate_size", "l_layers", "x_layers", "r_layers",
            "num_object_labels", "num_attr_labels", "initializer_range",
        )}  # fmt: skip
        answers = len(qa_answers) if qa_answers is not None else 1
        config = LxmertConfig(vocab_size=len(tokenizer), num_qa_labels=answers, pad_token_id=tokenizer.pad_token_id,
                              visual_feat_dim=feature_dim, **sizes, **switches)  # fmt: skip
        return LxmertForPreTrainingWithLosses(config)
    location = locate(model_args.model_name_or_path, what="--model_name_or_path")
    with (
        reaching_hub(location.repo_id, "--model_name_or_path") if location.kind == "hub" else contextlib.nullcontext()
    ):
        model = LxmertForPreTrainingWithLosses.from_pretrained(location.name_or_path, **switches)
    if objectives.task_qa and model.config.num_qa_labels != len(qa_answers):
        raise ValueError(
            f"The QA head of {model_args.model_name_or_path} has {model.config.num_qa_labels} answers but the QA "
            f"answers given have {len(qa_answers)}: pass the head's own list as `--qa_answers` (all_ans.json for "
            "unc-nlp/lxmert-base-uncased; pretrain_answers.json beside a model this recipe saved)."
        )
    return model


def check_store_fits(store: FeatureStore, config: LxmertConfig, visual_losses: Sequence[str]) -> None:
    """Raise a `ValueError` when the store's features or its object or attribute ids do not fit the model."""
    check_region_labels(store, visual_losses)
    features = store.store_dir
    if store.feature_dim != config.visual_feat_dim:
        raise ValueError(
            f"The feature store {features} holds features of {store.feature_dim} values, but the model takes "
            f"{config.visual_feat_dim}: give a store made by the model's detector (2048 values for LXMERT's)."
        )
    table = open_store_dataset(features).data.table
    sizes = {
        "obj": ("num_object_labels", config.num_object_labels),
        "attr": ("num_attr_labels", config.num_attr_labels),
    }
    for loss in (loss for loss in visual_losses if loss in REGION_LABEL_COLUMNS):
        column = REGION_LABEL_COLUMNS[loss][0]
        largest = pc.max(pc.list_flatten(table.column(column))).as_py()
        name, size = sizes[loss]
        if largest is not None and largest >= size:
            raise ValueError(
                f"The feature store {features} has {column} up to {largest}, but the model's {name} is {size}: pass "
                f"`--{name} {largest + 1}` (from scratch), use a store from the model's detector, or leave "
                f"{loss!r} out of `--visual_losses`."
            )


def format_pretraining_report(metrics: Mapping[str, float]) -> str:
    """A table of each objective's held-out loss and accuracy (percent) from an evaluation's metrics.

    Example:
        ```python
        >>> print(format_pretraining_report({"eval_lm_loss": 2.5, "eval_masked_lm_accuracy": 41.25}))
        objective            held-out loss  accuracy, %
        ------------------------------------------------
        masked LM                   2.5000        41.25
        ```
    """
    lines = [f"{'objective':<20} {'held-out loss':>13} {'accuracy, %':>12}", "-" * 48]
    for name in OBJECTIVES:
        loss = metrics.get(f"eval_{name}_loss")
        accuracy = metrics.get(f"eval_{ACCURACY_NAMES.get(name, '')}")
        if loss is None and accuracy is None:
            continue
        shown_loss = f"{loss:.4f}" if loss is not None else "-"
        shown_accuracy = f"{accuracy:.2f}" if accuracy is not None else "-"
        lines.append(f"{OBJECTIVE_TITLES[name]:<20} {shown_loss:>13} {shown_accuracy:>12}")
    return "\n".join(lines)


def run_pretraining(argv: Sequence[str] | None = None, recipe_file: str | os.PathLike | None = None) -> dict:
    """
    Pre-train as `recipes/pretrain.py` does with its command-line arguments `argv` (default: `sys.argv[1:]`), and
    return the held-out metrics of the final model (`eval_<objective>_loss`, `eval_masked_lm_accuracy`, ...),
    with, after a toy run with `--finetune_epochs`, the two fine-tuned VQA accuracies
    (`finetuned_vqa_accuracy`, `scratch_vqa_accuracy`).

    Mistakes in the arguments end the run before any work with one line on stderr and exit status 2.

    Example:
        ```python
        >>> from lxmert_hf.training.pretraining import run_pretraining
        >>> metrics = run_pretraining([], "recipes/pretrain.py")  # doctest: +SKIP
        >>> metrics["eval_matching_accuracy"] > 50  # doctest: +SKIP
        True
        ```
    """
    recipe_file = Path(recipe_file or "recipes/pretrain.py")
    argv = list(sys.argv[1:] if argv is None else argv)
    toy_config = recipe_file.resolve().parent / "configs" / "pretrain_toy.yaml"
    with user_errors(recipe_file.name):
        model_args, data_args, objectives, training_args = parse_pretraining_args(argv, toy_config)
        checkpoint = prepare_output_dir(training_args)
    show_progress(training_args)
    with training_args.main_process_first(desc="preparing data"):
        data = toy_data(data_args) if data_args.toy else None
    with user_errors(recipe_file.name):
        data = data or user_data(data_args, model_args)
        if data.num_object_labels and not model_args.model_name_or_path:
            # A new model's label heads fit the data's detector (the toy world's has its own label sets).
            model_args = dataclasses.replace(
                model_args, num_object_labels=data.num_object_labels, num_attr_labels=data.num_attr_labels
            )
        tokenizer = load_tokenizer(model_args, default=data.tokenizer)
        seed_run(training_args)
        store = FeatureStore(data.features)
        model = build_pretraining_model(model_args, objectives, tokenizer, data.qa_answers, store.feature_dim)
        check_store_fits(store, model.config, objectives.active_visual_losses)
        check_checkpoint_fits(checkpoint, model.config)
        with training_args.main_process_first(desc="reading sentences"):
            train, evaluation = _datasets(data, data_args, objectives)
    model.config.visual_features = store.extractor
    if evaluation is None:
        training_args.eval_strategy = "no"
    trainer = PretrainingTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
        data_collator=_collator(tokenizer, data_args, objectives, training_args.seed), processing_class=tokenizer,
        qa_answers=data.qa_answers.answers if objectives.task_qa else None, qa_from_epoch=objectives.qa_from_epoch,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.save_state()  # the log history, each objective's losses included
    metrics = trainer.evaluate() if evaluation is not None else {}
    if metrics:
        trainer.save_metrics("eval", metrics)
    _report(trainer, metrics)
    if data_args.toy and data_args.finetune_epochs > 0:
        metrics.update(_compare_when_alone(trainer, data_args, recipe_file))
    if trainer.is_world_process_zero():
        print(json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}))
    trainer.accelerator.end_training()
    return metrics


def _report(trainer: PretrainingTrainer, metrics: Mapping[str, float]) -> None:
    if not trainer.is_world_process_zero():
        return
    args = trainer.args
    print(f"\n{format_pretraining_report(metrics)}\n" if metrics else "")
    print(f"Pre-trained with {args.world_size} process(es) on {args.device.type}; saved to {args.output_dir}")


def _compare_when_alone(trainer: PretrainingTrainer, data_args: PretrainingDataArguments, recipe_file: Path) -> dict:
    """The fine-tuning comparison of a toy run, in one process (the task recipe ends the process group it runs
    in); with several, the command that fine-tunes the pre-trained model instead."""
    args = trainer.args
    if args.world_size == 1:
        return compare_finetuning(args.output_dir, data_args, args.seed, recipe_file)
    if trainer.is_world_process_zero():
        print(
            "The fine-tuning comparison runs in one process only; fine-tune with recipes/vqa.py --model_name_or_path "
            f"{args.output_dir} --pretrain_answers {Path(args.output_dir) / PRETRAIN_ANSWERS}."
        )
    return {}


def _datasets(data: PretrainingData, data_args: PretrainingDataArguments, objectives: ObjectiveArguments):
    options = {
        "features": data.features, "qa_answers": data.qa_answers, "visual_losses": objectives.active_visual_losses,
        "skip_missing": data_args.skip_missing_images, "cache_dir": data_args.cache_dir,
    }  # fmt: skip
    train = load_pretraining(data.sources, **options)
    evaluation = load_pretraining(data.eval_sources, **options) if data.eval_sources else None
    return train, evaluation


def _collator(tokenizer, data_args: PretrainingDataArguments, objectives: ObjectiveArguments, seed: int):
    # Each batch's draws follow from the seed and its sentences (in their shuffled order): a resumed run masks what
    # the uninterrupted one masked, however far ahead the data loader collated when the checkpoint was saved.
    return PretrainingDataCollator(
        tokenizer, max_question_length=data_args.max_seq_length,
        word_mask_probability=objectives.word_mask_probability if objectives.task_mask_lm else 0.0,
        object_mask_probability=objectives.object_mask_probability,
        swap_probability=objectives.swap_probability if objectives.task_matched else 0.0,
        visual_losses=objectives.active_visual_losses, lm_on_mismatched=objectives.lm_on_mismatched,
        object_labels_on_masked_only=objectives.object_labels_on_masked_only, seed=seed, fixed_draws=True,
    )  # fmt: skip


def compare_finetuning(
    pretrained: str | os.PathLike, data_args: PretrainingDataArguments, seed: int, recipe_file: Path
) -> dict[str, float]:
    """Fine-tune the toy VQA task of the same world for `data_args.finetune_epochs` epochs, from the pre-trained
    model (its QA head transplanted) and from scratch with the same architecture, and print both accuracies: the
    paper's ablation in miniature. Returns `finetuned_vqa_accuracy` and `scratch_vqa_accuracy`."""
    from lxmert_hf.training.recipe import run_recipe

    pretrained = Path(pretrained)
    world = ("toy_seed", "toy_train_images", "toy_eval_images", "toy_questions_per_image", "toy_mask_background")
    common = [value for name in world for value in (f"--{name}", str(getattr(data_args, name)))]
    common += ["--seed", str(seed), "--num_train_epochs", str(data_args.finetune_epochs), "--show_examples", "0",
               "--question_only_baseline", "false", "--overwrite_output_dir", "true"]  # fmt: skip
    config = LxmertConfig.from_pretrained(pretrained)
    sizes = ("hidden_size", "num_attention_heads", "intermediate_size", "l_layers", "x_layers", "r_layers")
    runs = {
        "finetuned": [
            "--model_name_or_path",
            str(pretrained),
            "--pretrain_answers",
            str(pretrained / PRETRAIN_ANSWERS),
        ],
        "scratch": [value for name in sizes for value in (f"--{name}", str(getattr(config, name)))],
    }
    accuracies = {}
    for name, extra in runs.items():
        arguments = [*common, *extra, "--output_dir", str(pretrained / f"finetune-{name}")]
        metrics = run_recipe("vqa", arguments, recipe_file.resolve().parent / "vqa.py")
        accuracies[f"{name}_vqa_accuracy"] = metrics["eval_vqa_accuracy"]
    print(
        f"\nToy VQA accuracy after {data_args.finetune_epochs:g} epoch(s) of fine-tuning, %\n"
        f"{'from the pre-trained model':<28} {accuracies['finetuned_vqa_accuracy']:>7.2f}\n"
        f"{'from scratch':<28} {accuracies['scratch_vqa_accuracy']:>7.2f}"
    )
    return accuracies
