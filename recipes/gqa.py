"""Fine-tune LXMERT for GQA (compositional question answering) with the Hugging Face `Trainer`.

With no arguments it runs the built-in toy GQA world end to end (settings in `recipes/configs/gqa_toy.yaml`):

    accelerate launch --config_file recipes/accelerate/default.yaml recipes/gqa.py

On prepared GQA data (`lxmert-hf prepare gqa ... --output data/gqa`), from the pre-trained model, with the paper's
settings (`recipes/configs/gqa.yaml`: lr 1e-5, batch 32, 4 epochs), evaluated on testdev (else val, else valid):

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/gqa.py \
        --config recipes/configs/gqa.yaml --dataset data/gqa --output_dir outputs/gqa

Arguments, config files and resuming work as in `recipes/vqa.py`.
"""

from __future__ import annotations

from lxmert_hf.training.recipe import run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run_recipe("gqa", argv, __file__)


if __name__ == "__main__":
    main()
