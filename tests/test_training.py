"""The recipes' `Trainer` (`lxmert_hf.training.VQATrainer`): its Hub push carries this library's model card."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pytest
import vqa_helpers as vh
from huggingface_hub import ModelCard
from transformers import TrainingArguments

from lxmert_hf.data.collator import VQADataCollator
from lxmert_hf.hub import describe_visual_features
from lxmert_hf.training import ModelArguments, VQATrainer, build_model, load_tokenizer

QUESTION = "what color is the cube?"


@pytest.fixture
def fake_hub(monkeypatch):
    return vh.record_hub_calls(monkeypatch)


def test_trainer_push_writes_the_library_card(fake_hub, tmp_path):
    rows = [{**vh.features(seed=i), "question": QUESTION, "labels": np.eye(len(vh.ANSWERS))[i % 3]} for i in range(8)]
    data = datasets.Dataset.from_list(rows)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=1, report_to="none",
        eval_strategy="epoch", save_strategy="no", hub_model_id="me/toy-vqa", learning_rate=1e-3, use_cpu=True,
        remove_unused_columns=False,
    )  # fmt: skip

    def accuracy(prediction):
        return {"vqa_accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids.argmax(-1)).mean())}

    model = vh.vqa_model()
    model.config.visual_features = describe_visual_features("unc-nlp/frcnn-vg-finetuned")
    trainer = VQATrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=vh.tokenizer(),
        data_collator=VQADataCollator(vh.tokenizer()), compute_metrics=accuracy,
    )  # fmt: skip
    trainer.train()
    trainer.push_to_hub(dataset_name="toy")
    upload = next(call for call in fake_hub if call[0] == "upload_folder")
    files = upload[2]["files"]
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "lxmert-hf" and card.data.datasets == ["toy"]
    assert {r.metric_name for r in card.data.eval_results} == {"vqa_accuracy"}
    assert "learning_rate: 0.001" in card.text and "unc-nlp/frcnn-vg-finetuned" in card.text
    assert json.loads(files["config.json"])["id2label"]["0"] == "yes" and "tokenizer.json" in files


def test_prepare_toy_keeps_the_copy_another_process_finished_first(tmp_path, monkeypatch):
    from lxmert_hf.toy import ToyWorldConfig
    from lxmert_hf.training import data

    config = ToyWorldConfig(num_images={"train": 4, "validation": 2}, feature_dim=8)
    root = tmp_path / "lxmert_hf_toy" / data._fingerprint(config)

    def racing_build(world_config, staging):
        (root / "prepared").mkdir(parents=True)  # the other rank's copy lands while this one is built
        (root / "prepared" / "theirs").write_text("x")
        (staging / "prepared").mkdir()

    monkeypatch.setattr(data, "_build_toy", racing_build)
    assert data.prepare_toy(config, cache_dir=tmp_path) == root
    assert os.listdir(root / "prepared") == ["theirs"] and os.listdir(root.parent) == [root.name]


@pytest.mark.parametrize(
    ("build", "flag"),
    [
        (lambda: build_model(ModelArguments(model_name_or_path="./absent"), ["yes"], vh.tokenizer()), "--model_name"),
        (lambda: load_tokenizer(ModelArguments(tokenizer_name="./absent"), None), "--tokenizer_name"),
        (lambda: load_tokenizer(ModelArguments(model_name_or_path="./absent"), None), "--model_name_or_path"),
    ],
)
def test_missing_local_models_name_their_flag(build, flag):
    with pytest.raises(FileNotFoundError, match=f"{flag}.*: ./absent does not exist locally"):
        build()
