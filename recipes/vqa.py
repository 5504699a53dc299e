"""Fine-tune LXMERT for visual question answering with the Hugging Face `Trainer`.

With no arguments it runs the built-in toy VQA world end to end (settings in `recipes/configs/toy.yaml`), here in
one process (`recipes/accelerate/default.yaml`: accelerate needs no guesses, so it warns of none):

    accelerate launch --config_file recipes/accelerate/default.yaml recipes/vqa.py

On prepared VQA v2 data (`lxmert-hf prepare vqa ... --output data/vqa`), from the pre-trained model:

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/vqa.py \
        --dataset data/vqa --model_name_or_path unc-nlp/lxmert-base-uncased --output_dir outputs/vqa

Every argument can also come from YAML files (`--config file.yaml`, repeatable), layered over the defaults: the
paper's, then toy.yaml's when the dataset is the toy world, then the files', then the command line's; a file
changes only the keys it names.

An interrupted run continues exactly where its last checkpoint left it (same arguments, plus):

    accelerate launch recipes/vqa.py --output_dir outputs/toy-vqa --resume_from_checkpoint last
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lxmert_hf.training import (
    answer_examples,
    build_model,
    build_trainer,
    check_splits,
    final_report,
    format_report,
    load_splits,
    load_tokenizer,
    parse_args,
    prepare_toy,
    record_run,
    streaming_options,
    toy_world_config,
)
from lxmert_hf.training.runs import check_checkpoint_fits, prepare_output_dir, seed_run, show_progress, user_errors

TOY_CONFIG = Path(__file__).resolve().parent / "configs" / "toy.yaml"


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = sys.argv[1:] if argv is None else argv
    with user_errors(Path(__file__).name):
        model_args, data_args, training_args = parse_args(argv, default_config=TOY_CONFIG)
        check_splits(data_args)
        checkpoint = prepare_output_dir(training_args)
    show_progress(training_args)
    toy = data_args.dataset == "toy"
    with training_args.main_process_first(desc="preparing data"):
        root = prepare_toy(toy_world_config(data_args), data_args.cache_dir) if toy else None
    prepared = root / "prepared" if toy else data_args.dataset
    tokenizer = load_tokenizer(model_args, default=str(root / "tokenizer") if toy else None)
    with training_args.main_process_first(desc="tokenizing questions"):
        train, evaluation, answers = load_splits(
            prepared, data_args.train_split, data_args.eval_split, tokenizer, data_args.max_question_length,
            **streaming_options(data_args, training_args),
        )  # fmt: skip
    run = record_run(__file__, argv, prepared, data_args.eval_split, toy=toy)  # for the config and cards
    seed_run(training_args)
    model = build_model(model_args, answers, tokenizer, visual_features=run.visual_features)
    with user_errors(Path(__file__).name):
        check_checkpoint_fits(checkpoint, model.config)
    trainer = build_trainer(model, tokenizer, training_args, data_args, train, evaluation, run_record=run)
    if trainer.is_world_process_zero() and (transplant := getattr(model, "answer_head_transplant", None)):
        print(f"Answer head: {transplant}")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    metrics = final_report(trainer, evaluation, data_args)
    trainer.save_metrics("eval", metrics)
    examples = answer_examples(trainer, evaluation, data_args.show_examples)
    if trainer.is_world_process_zero():
        processes = f"{training_args.world_size} process(es) on {training_args.device.type}"
        print(f"\n{format_report(metrics)}\n\n{examples}\n")
        print(f"Trained with {processes}; saved to {training_args.output_dir}")
        print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    if training_args.push_to_hub:
        trainer.push_to_hub()
    # Tear the process group down before exit: a gloo group left to the interpreter's shutdown can abort a rank.
    trainer.accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main()
