"""Continue LXMERT's pre-training (or start it) with its five objectives: masked cross-modality language modeling,
masked object prediction (detected object and attribute labels, RoI-feature regression), cross-modality matching
and image question answering, with the paper's settings (batch 256, lr 1e-4, 20 epochs, 5% warm-up, QA for the
last 10 epochs).

With no arguments it pre-trains a small LXMERT on the built-in toy world (settings in
`recipes/configs/pretrain_toy.yaml`), evaluates each objective on held-out toy images, then fine-tunes toy VQA from
it and from scratch with the same budget and prints both accuracies:

    accelerate launch --config_file recipes/accelerate/default.yaml recipes/pretrain.py

On your own captions and questions, continuing from the released model (`recipes/configs/pretrain.yaml`; the
feature store must carry the detector's object and attribute labels):

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/pretrain.py \
        --config recipes/configs/pretrain.yaml \
        --sources captions:my_captions.jsonl prepared:data/vqa@train --features data/features \
        --eval_sources captions:my_captions_val.jsonl --qa_answers data/lxmert/all_ans.json \
        --output_dir outputs/pretrain

Then fine-tune from it, its QA head transplanted:

    accelerate launch recipes/vqa.py --config recipes/configs/vqa.yaml --dataset data/vqa \
        --model_name_or_path outputs/pretrain --pretrain_answers outputs/pretrain/pretrain_answers.json

An interrupted run continues exactly where its last checkpoint left it (same arguments, plus
`--resume_from_checkpoint last`).
"""

from __future__ import annotations

from lxmert_hf.training.pretraining import run_pretraining


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run_pretraining(argv, __file__)


if __name__ == "__main__":
    main()
