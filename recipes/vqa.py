"""Fine-tune LXMERT for visual question answering (VQA v2) with the Hugging Face `Trainer`.

With no arguments it runs the built-in toy VQA world end to end (settings in `recipes/configs/vqa_toy.yaml`), here
in one process (`recipes/accelerate/default.yaml`: accelerate needs no guesses, so it warns of none):

    accelerate launch --config_file recipes/accelerate/default.yaml recipes/vqa.py

On prepared VQA v2 data (`lxmert-hf prepare vqa ... --output data/vqa`), from the pre-trained model, with the
paper's settings (`recipes/configs/vqa.yaml`), evaluated on minival:

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/vqa.py \
        --config recipes/configs/vqa.yaml --dataset data/vqa --output_dir outputs/vqa

Every argument can also come from YAML files (`--config file.yaml`, repeatable), layered over the defaults: the
paper's, then vqa_toy.yaml's when the dataset is the toy world, then the files', then the command line's; a file
changes only the keys it names.

An interrupted run continues exactly where its last checkpoint left it (same arguments, plus):

    accelerate launch recipes/vqa.py --output_dir outputs/toy-vqa --resume_from_checkpoint last
"""

from __future__ import annotations

from lxmert_hf.training.recipe import run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run_recipe("vqa", argv, __file__)


if __name__ == "__main__":
    main()
