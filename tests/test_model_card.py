"""The model card: Hub metadata (model-index results, base model, datasets) and the body, from a config, metrics,
hyper-parameters and data, or from a `Trainer` after training."""

from __future__ import annotations

import types

import pytest
import vqa_helpers as vh
from huggingface_hub import ModelCard

from lxmert_hf.files import write_text_atomic
from lxmert_hf.hub import describe_bottom_up_features, describe_visual_features, save_checkpoint
from lxmert_hf.model_card import base_model_of, install_line, model_card, trainer_model_card


def test_model_card_metrics_become_model_index_results_in_percent():
    config = vh.vqa_model(head_loss="bce").config
    card = model_card(
        config, model_name="toy", repo_id="me/toy", base_model="unc-nlp/lxmert-base-uncased", dataset="vqa_v2",
        dataset_split="minival", hyperparameters={"learning_rate": 5e-5}, command="python recipes/vqa.py --seed 1",
        metrics={"vqa_accuracy": 71.25, "vqa_accuracy_yes_no": 88.0, "question_only_vqa_accuracy": 43.5},
    )  # fmt: skip
    reloaded = ModelCard(str(card))
    results = {r.metric_name: r for r in reloaded.data.eval_results}
    # The baseline is shown, not claimed as the model's result.
    assert set(results) == {"vqa_accuracy (%)", "vqa_accuracy_yes_no (%)"}
    assert results["vqa_accuracy (%)"].metric_value == 71.25 and results["vqa_accuracy (%)"].metric_type == "accuracy"
    assert results["vqa_accuracy (%)"].dataset_type == "vqa_v2"
    assert results["vqa_accuracy (%)"].dataset_split == "minival"
    assert "| vqa_accuracy | 71.25 |" in reloaded.text and "| question_only_vqa_accuracy | 43.50 |" in reloaded.text
    assert reloaded.data.base_model == "unc-nlp/lxmert-base-uncased"
    assert 'VQAPipeline.from_pretrained("me/toy")' in reloaded.text
    assert "learning_rate: 5e-05" in reloaded.text and "sigmoids" in reloaded.text
    assert f"{install_line()}\npython recipes/vqa.py --seed 1\n" in reloaded.text
    assert model_card(config).data.eval_results is None


def test_nlvr2_card_names_its_task_pipeline_and_keeps_the_baseline_apart():
    from lxmert_hf import LxmertNLVR2Config

    metrics = {"nlvr2_accuracy": 74.5, "nlvr2_consistency": 40.0, "sentence_only_nlvr2_accuracy": 50.0}
    card = ModelCard(str(model_card(LxmertNLVR2Config(), repo_id="me/nlvr2", metrics=metrics, task="nlvr2")))
    assert {r.metric_name for r in card.data.eval_results} == {"nlvr2_accuracy (%)", "nlvr2_consistency (%)"}
    assert "nlvr2" in card.data.tags and card.data.model_name == "LXMERT for NLVR2"
    assert 'NLVR2Pipeline.from_pretrained("me/nlvr2")' in card.text and "VQAPipeline" not in card.text
    assert "| sentence_only_nlvr2_accuracy | 50.00 |" in card.text


def test_model_card_refuses_a_local_path_as_dataset(tmp_path):
    with pytest.raises(ValueError, match="`dataset` .* is a local path"):
        model_card(vh.vqa_model().config, dataset=str(tmp_path))


@pytest.mark.parametrize(
    ("visual_features", "expected"),
    [
        (None, "Not recorded"),
        (describe_visual_features(None, source="the toy world"), "Not from a detector (the toy world)"),
        (describe_visual_features("someone/frcnn"), "Detector `someone/frcnn`, preset `lxmert`; boxes normalized"),
        (describe_bottom_up_features(), "Made by bottom-up-attention (Anderson et al., 2018): Caffe Faster R-CNN"),
        (describe_bottom_up_features(), "which the detector `unc-nlp/frcnn-vg-finetuned`, preset `lxmert` reproduces"),
    ],
)
def test_card_says_which_region_features_to_feed(visual_features, expected):
    config = vh.vqa_model().config
    config.visual_features = visual_features
    assert expected in model_card(config).text


@pytest.mark.parametrize(
    ("name_or_path", "expected"),
    [
        ("unc-nlp/lxmert-base-uncased", "unc-nlp/lxmert-base-uncased"),
        ("{tmp}", None),  # a local folder is no Hub base model
        ("{tmp}/moved-away", None),
        ("", None),  # built from a config
    ],
)
def test_base_model_is_a_hub_repo_or_nothing(tmp_path, name_or_path, expected):
    config = vh.vqa_model().config
    config.name_or_path = name_or_path.format(tmp=tmp_path)
    assert base_model_of(config) == expected


@pytest.mark.parametrize(
    ("named", "expected"),
    [
        ("unc-nlp/lxmert-base-uncased", "unc-nlp/lxmert-base-uncased"),  # the folder's own base model
        (None, None),  # a card naming none
        ("{tmp}", None),  # a card naming a local path: never passed on
    ],
)
def test_base_model_of_a_local_folder_is_the_one_its_card_names(tmp_path, named, expected):
    folder = save_checkpoint(vh.vqa_model(), tmp_path / "finetuned")
    base = named.format(tmp=tmp_path) if named else None
    write_text_atomic(folder / "README.md", str(model_card(vh.vqa_model().config, base_model=base)))
    config = vh.vqa_model().config
    config.name_or_path = str(folder)
    assert base_model_of(config) == expected


def test_trainer_card_takes_the_last_evaluation_and_the_hyperparameters(tmp_path):
    model = vh.vqa_model()
    model.config.name_or_path = "unc-nlp/lxmert-base-uncased"
    args = types.SimpleNamespace(
        output_dir=str(tmp_path / "run"), hub_model_id=None, learning_rate=1e-3, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, world_size=2, seed=7,
    )  # fmt: skip
    history = [{"loss": 1.0}, {"eval_vqa_accuracy": 50.0, "eval_loss": 2.0}, {"eval_vqa_accuracy": 60.0, "epoch": 2}]
    trainer = types.SimpleNamespace(args=args, state=types.SimpleNamespace(log_history=history), model=model)
    card = trainer_model_card(trainer, dataset="toy")
    assert [(r.metric_name, r.metric_value) for r in card.data.eval_results] == [("vqa_accuracy (%)", 60.0)]
    assert card.data.model_name == "run" and card.data.base_model == "unc-nlp/lxmert-base-uncased"
    assert "total_train_batch_size: 16" in card.text and "seed: 7" in card.text and "eval_loss" not in card.text
