"""Self-describing checkpoints: every model the recipe saves (the final one and each `checkpoint-N`) carries its model
card and, in `config.visual_features`, the extractor its feature store records, so that it answers about pictures.

End to end: images -> `lxmert-hf extract` (tiny detector) -> store -> prepared VQA -> recipe -> `ask --image`."""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import Future
from pathlib import Path

import datasets
import numpy as np
import pytest
import vqa_helpers as vh
from data_factory import coco_id, vqa_official
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from transformers import TrainingArguments

from lxmert_hf import VQAPipeline
from lxmert_hf.cli import main as cli
from lxmert_hf.data import FeatureStore, prepare_vqa
from lxmert_hf.data.collator import VQADataCollator
from lxmert_hf.hub import save_checkpoint
from lxmert_hf.model_card import model_card
from lxmert_hf.toy import ToyWorldConfig
from lxmert_hf.training import ModelArguments, RunRecord, VQATrainer, build_model, prepare_toy
from lxmert_hf.training.data import TOY_FEATURES

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "what is the cube?"
TINY_MODEL = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "l_layers": 1, "x_layers": 1,
              "r_layers": 1}  # fmt: skip


def card_results(folder: Path) -> dict[str, float]:
    card = ModelCard.load(folder / "README.md")
    return {result.metric_name: result.metric_value for result in card.data.eval_results or []}


# -- the copy step and the toy world ------------------------------------------------------------------------------
def test_build_model_takes_the_stores_extractor_and_a_loaded_model_keeps_its_own(tmp_path):
    described = {"detector": "someone/frcnn", "preset": "lxmert", "boxes": "x1 / width, ..."}
    scratch = build_model(ModelArguments(**TINY_MODEL), vh.ANSWERS, vh.tokenizer(), visual_features=described)
    assert scratch.config.visual_features == described
    base = vh.vqa_model()
    base.config.visual_features = {"detector": "base/frcnn"}
    save_checkpoint(base, tmp_path / "base", tokenizer=vh.tokenizer())
    loaded = ModelArguments(model_name_or_path=str(tmp_path / "base"))
    assert build_model(loaded, vh.ANSWERS, vh.tokenizer()).config.visual_features == {"detector": "base/frcnn"}
    assert build_model(loaded, vh.ANSWERS, vh.tokenizer(), visual_features=described).config.visual_features == (
        described
    )


def test_toy_checkpoints_name_no_detector_and_ask_image_says_to_pass_one(tmp_path, capsys):
    root = prepare_toy(ToyWorldConfig(num_images={"train": 4, "validation": 2}, feature_dim=16), tmp_path / "cache")
    extractor = FeatureStore(root / "prepared" / "features").extractor
    assert extractor == TOY_FEATURES and extractor["detector"] is None
    model = build_model(ModelArguments(**TINY_MODEL), vh.ANSWERS, vh.tokenizer(), visual_features=extractor)
    folder = save_checkpoint(model, tmp_path / "toy-checkpoint", tokenizer=vh.tokenizer())
    (tmp_path / "cube.png").write_bytes(vh.png_bytes())
    argv = ["ask", "--model", str(folder), "--image", str(tmp_path / "cube.png"), "--question", QUESTION]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "--detector DIR_OR_ID" in err and "the toy world's generator" in err and "detector=" not in err
    assert "Not from a detector (the toy world's generator)" in (folder / "README.md").read_text()


# -- the Trainer's cards ------------------------------------------------------------------------------------------
def test_each_checkpoint_card_holds_the_results_of_its_own_weights(tmp_path):
    rows = [{**vh.features(seed=i), "question": QUESTION, "labels": np.eye(len(vh.ANSWERS))[i % 3]} for i in range(8)]
    data = datasets.Dataset.from_list(rows)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=3, report_to="none",
        eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, learning_rate=5e-2, use_cpu=True,
        remove_unused_columns=False, load_best_model_at_end=True, metric_for_best_model="vqa_accuracy",
    )  # fmt: skip
    scores = iter([40.0, 70.0, 55.0])  # one per evaluation: step 2 is the best

    def accuracy(prediction):
        return {"vqa_accuracy": next(scores)}

    run = RunRecord(command="python recipes/vqa.py --max_steps 3", dataset_name="toy data", eval_split="val")
    trainer = VQATrainer(
        model=vh.vqa_model(), args=args, train_dataset=data, eval_dataset=data, processing_class=vh.tokenizer(),
        data_collator=VQADataCollator(vh.tokenizer()), compute_metrics=accuracy, run_record=run,
    )  # fmt: skip
    trainer.train()
    out = tmp_path / "out"
    for step, expected in ((1, 40.0), (2, 70.0), (3, 55.0)):
        assert card_results(out / f"checkpoint-{step}") == {"vqa_accuracy (%)": expected}
    trainer.save_model()
    assert card_results(out) == {"vqa_accuracy (%)": 70.0}  # the best checkpoint, loaded at the end
    trainer.save_metrics("eval", {"eval_vqa_accuracy": 71.5, "eval_question_only_vqa_accuracy": 30.25})
    card = ModelCard.load(out / "README.md")
    assert card_results(out) == {"vqa_accuracy (%)": 71.5}  # the final report; the baseline in the body only
    assert "| question_only_vqa_accuracy | 30.25 |" in card.text and "python recipes/vqa.py --max_steps 3" in card.text
    assert card.data.eval_results[0].dataset_name == "toy data" and card.data.eval_results[0].dataset_split == "val"


# -- end to end ---------------------------------------------------------------------------------------------------
def run_recipe(argv: list[str]) -> dict[str, float]:
    spec = importlib.util.spec_from_file_location("vqa_recipe", ROOT / "recipes" / "vqa.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe.main(argv)


def extracted_vqa(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Pictures -> `lxmert-hf extract` with the tiny detector -> store -> prepared VQA over it."""
    detector = tmp_path / "detector"
    vh.detector().save_pretrained(detector)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    ids = {"train2014": [1, 2], "val2014": [3, 4]}
    for subtype, numbers in ids.items():
        for number in numbers:
            pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"{coco_id(subtype, number)}.png")
    store = tmp_path / "store"
    argv = ["extract", "--images", str(images), "--output", str(store), "--model", str(detector)]
    assert cli([*argv, "--num-workers", "0", "--no-progress", "--device", "cpu"]) == 0
    sources = {}
    for subtype, split in (("train2014", "train"), ("val2014", "val")):
        questions, annotations = vqa_official(tmp_path, subtype, ids[subtype])
        sources |= {f"{split}_questions": questions, f"{split}_annotations": annotations}
    # The base checkpoint's answers, so that its classifier carries over.
    prepare_vqa(
        tmp_path / "prepared", features_dir=store, minival_images=0, vocabulary=vh.ANSWERS,
        cache_dir=tmp_path / "cache", progress=False, **sources,
    )  # fmt: skip
    return detector, store, tmp_path / "prepared"


@pytest.mark.slow
def test_recipe_checkpoints_of_extracted_features_answer_about_pictures(tmp_path, capsys):
    detector, store, prepared = extracted_vqa(tmp_path)
    assert FeatureStore(store).extractor["detector"] == str(detector.resolve())
    base = vh.vqa_model(feat_dim=vh.DETECTOR_DIM)
    card = model_card(base.config, base_model="unc-nlp/lxmert-base-uncased")
    save_checkpoint(base, tmp_path / "base", tokenizer=vh.tokenizer(), card=card)
    out = tmp_path / "out"
    argv = [
        "--dataset", str(prepared), "--model_name_or_path", str(tmp_path / "base"), "--output_dir", str(out),
        "--eval_split", "val", "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1",
        "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "3", "--logging_steps", "1",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4", "--show_examples", "0",
        "--dataloader_num_workers", "0", "--use_cpu", "true", "--hub_token", "hf_never_written",
    ]  # fmt: skip
    metrics = run_recipe(argv)
    capsys.readouterr()

    folders = [out, out / "checkpoint-1", out / "checkpoint-2"]
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        assert config["visual_features"] == FeatureStore(store).extractor
        text = (folder / "README.md").read_text()
        card = ModelCard(text)
        assert card.data.base_model == "unc-nlp/lxmert-base-uncased" and card.data.datasets is None
        assert str(tmp_path) not in text.split("\n---\n", 1)[0]  # the metadata names no local path
        assert "python recipes/vqa.py --dataset" in text and "hf_never_written" not in text
        assert 'pip install "lxmert-hf' in text and f"Detector `{detector.resolve()}`, preset `lxmert`" in text
    assert card_results(out)["vqa_accuracy (%)"] == metrics["eval_vqa_accuracy"]
    assert json.loads((out / "eval_results.json").read_text())["eval_vqa_accuracy"] == metrics["eval_vqa_accuracy"]

    picture = next((tmp_path / "images").glob("COCO_val2014_*.png"))
    asked = {}
    for folder in (out, out / "checkpoint-1"):
        assert cli(["ask", "--model", str(folder), "--image", str(picture), "--question", QUESTION, "--json"]) == 0
        asked[folder] = [answer["answer"] for answer in json.loads(capsys.readouterr().out)]
        assert len(asked[folder]) == 5
    # The pipeline loads the same detector from the config, with the same settings.
    answers = VQAPipeline.from_pretrained(out, device="cpu")(str(picture), question=QUESTION, top_k=5)
    assert [answer["answer"] for answer in answers] == asked[out]


def test_pushes_during_training_upload_the_checkpoints_card(tmp_path, monkeypatch):
    calls = vh.record_hub_calls(monkeypatch)
    recorded = HfApi.upload_folder

    def upload_folder(self, run_as_future=False, **kwargs):  # pushes during training run in the background
        future = Future()
        future.set_result(recorded(self, **kwargs))
        return future if run_as_future else future.result()

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    rows = [{**vh.features(seed=i), "question": QUESTION, "labels": np.eye(len(vh.ANSWERS))[i % 3]} for i in range(4)]
    data = datasets.Dataset.from_list(rows)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, report_to="none",
        eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, use_cpu=True,
        remove_unused_columns=False, push_to_hub=True, hub_model_id="me/tiny", hub_strategy="every_save",
    )  # fmt: skip
    trainer = VQATrainer(
        model=vh.vqa_model(), args=args, train_dataset=data, eval_dataset=data, processing_class=vh.tokenizer(),
        data_collator=VQADataCollator(vh.tokenizer()), compute_metrics=lambda prediction: {"vqa_accuracy": 12.5},
    )  # fmt: skip
    trainer.train()
    upload = next(call for call in calls if call[0] == "upload_folder")
    card = ModelCard(upload[2]["files"]["README.md"].decode())
    assert [(r.metric_name, r.metric_value) for r in card.data.eval_results] == [("vqa_accuracy (%)", 12.5)]
