"""Fine-tune LXMERT for NLVR2 (is a sentence true of a pair of images?) with the Hugging Face `Trainer`.

With no arguments it runs the built-in toy NLVR2 world end to end (settings in `recipes/configs/nlvr2_toy.yaml`):

    accelerate launch --config_file recipes/accelerate/default.yaml recipes/nlvr2.py

On prepared NLVR2 data (`lxmert-hf prepare nlvr2 ... --output data/nlvr2`), from the pre-trained encoder, with the
paper's settings (`recipes/configs/nlvr2.yaml`: lr 5e-5, batch 32, 4 epochs), evaluated on valid (else dev):

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/nlvr2.py \
        --config recipes/configs/nlvr2.yaml --dataset data/nlvr2 --output_dir outputs/nlvr2

Arguments, config files and resuming work as in `recipes/vqa.py`.
"""

from __future__ import annotations

from lxmert_hf.training.recipe import run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run_recipe("nlvr2", argv, __file__)


if __name__ == "__main__":
    main()
