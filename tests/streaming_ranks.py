"""Launched by `tests/test_streaming.py` with `accelerate launch --multi_gpu --num_processes 2`: builds the recipe's
streamed training split and `Trainer` (`recipes/vqa.py --streaming`), reads one pass of the Trainer's training data
loader and writes the question ids this process was given to `OUT/rank-<process index>.json`.

    accelerate launch --multi_gpu --num_processes 2 tests/streaming_ranks.py OUT --streaming --max_steps 5 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lxmert_hf.training import (
    build_model,
    build_trainer,
    load_splits,
    load_tokenizer,
    parse_args,
    prepare_toy,
    streaming_options,
    toy_world_config,
)

TOY_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "vqa_toy.yaml"


class RecordingCollator:
    """The recipe's collator, noting the question ids of every batch it collates."""

    def __init__(self, collator):
        self.collator = collator
        self.question_ids: list[int] = []

    def __call__(self, examples):
        self.question_ids.extend(int(example["question_id"]) for example in examples)
        return self.collator(examples)


def main(output: Path, argv: list[str]) -> None:
    model_args, data_args, training_args = parse_args(argv, default_config=TOY_CONFIG)
    with training_args.main_process_first(desc="preparing data"):
        root = prepare_toy(toy_world_config(data_args), data_args.cache_dir)
    tokenizer = load_tokenizer(model_args, default=str(root / "tokenizer"))
    with training_args.main_process_first(desc="tokenizing questions"):
        train, evaluation, answers = load_splits(
            root / "prepared", data_args.train_split, data_args.eval_split, tokenizer, data_args.max_question_length,
            **streaming_options(data_args, training_args),
        )  # fmt: skip
    trainer = build_trainer(build_model(model_args, answers, tokenizer), tokenizer, training_args, data_args, train,
                            evaluation)  # fmt: skip
    recorder = trainer.data_collator = RecordingCollator(trainer.data_collator)
    batches = sum(1 for _ in trainer.get_train_dataloader())
    report = {"question_ids": recorder.question_ids, "batches": batches, "world_size": training_args.world_size}
    (output / f"rank-{training_args.process_index}.json").write_text(json.dumps(report))
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
