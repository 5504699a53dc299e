"""Self-describing checkpoints: folder contents, model card metadata, atomic writes, Hub pushes (mocked), loading by
Hub id from a local cache laid out like the Hub's, and the Trainer's push."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import vqa_helpers as vh
from huggingface_hub import HfApi, ModelCard
from transformers import TrainingArguments

from lxmert_hf import RegionFeatureExtractorConfig, VQAPipeline
from lxmert_hf.data.collator import VQADataCollator
from lxmert_hf.hub import VQATrainer, describe_visual_features, model_card, push_to_hub, save_checkpoint

QUESTION = "what color is the cube?"


def described_model():
    model = vh.vqa_model()
    model.config.visual_features = describe_visual_features(
        "unc-nlp/frcnn-vg-finetuned", RegionFeatureExtractorConfig.from_preset("lxmert", max_boxes=20, min_boxes=10)
    )
    return model


def test_checkpoint_folder_describes_itself(tmp_path):
    folder = save_checkpoint(described_model(), tmp_path / "ckpt", tokenizer=vh.tokenizer())
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "lxmert_vqa" and config["head_loss"] == "softmax"
    assert [config["id2label"][str(i)] for i in range(len(vh.ANSWERS))] == vh.ANSWERS
    assert config["visual_features"]["detector"] == "unc-nlp/frcnn-vg-finetuned"
    assert config["visual_features"]["overrides"] == {"min_boxes": 10, "max_boxes": 20}
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "visual-question-answering" and "lxmert" in card.data.tags
    assert "unc-nlp/frcnn-vg-finetuned" in card.text and "6 answers" in card.text
    pipe = VQAPipeline.from_pretrained(folder, device="cpu")
    assert pipe.model.config.visual_features == config["visual_features"]
    assert len(pipe(vh.features(), question=QUESTION)) == 5


def test_model_card_metrics_become_model_index_results():
    config = vh.vqa_model(head_loss="bce").config
    card = model_card(
        config, model_name="toy", repo_id="me/toy", base_model="unc-nlp/lxmert-base-uncased", dataset="vqa_v2",
        dataset_split="minival", metrics={"vqa_accuracy": 0.71, "vqa_accuracy_yes_no": 0.88},
        hyperparameters={"learning_rate": 5e-5},
    )  # fmt: skip
    reloaded = ModelCard(str(card))
    results = {r.metric_name: r for r in reloaded.data.eval_results}
    assert results["vqa_accuracy"].metric_value == 0.71 and results["vqa_accuracy"].metric_type == "accuracy"
    assert results["vqa_accuracy"].dataset_type == "vqa_v2" and results["vqa_accuracy"].dataset_split == "minival"
    assert reloaded.data.base_model == "unc-nlp/lxmert-base-uncased"
    assert 'VQAPipeline.from_pretrained("me/toy")' in reloaded.text
    assert "learning_rate: 5e-05" in reloaded.text and "sigmoids" in reloaded.text
    assert model_card(config).data.eval_results is None


def test_checkpoint_writes_are_all_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    save_checkpoint(vh.vqa_model(seed=0), target, tokenizer=vh.tokenizer())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_checkpoint(vh.vqa_model(seed=1), target)
    model = vh.vqa_model(seed=1)
    monkeypatch.setattr(model, "save_pretrained", lambda folder: (Path(folder, "half").write_text("x"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        save_checkpoint(model, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging folder left behind
    assert "half" not in os.listdir(target)
    monkeypatch.undo()
    save_checkpoint(vh.vqa_model(seed=1), target, tokenizer=vh.tokenizer(), overwrite=True)
    reloaded = VQAPipeline.from_pretrained(target, device="cpu").model
    assert torch.equal(reloaded.classifier[3].weight, vh.vqa_model(seed=1).classifier[3].weight)


@pytest.fixture
def fake_hub(monkeypatch):
    """Record what would be sent to the Hub; reading the uploaded folder while it still exists."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs, self.token))
        return types.SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs, self.token))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        calls.append(("upload_folder", kwargs.pop("repo_id"), {**kwargs, "files": files}, self.token))
        return "commit"

    for name, function in [
        ("create_repo", create_repo),
        ("create_branch", create_branch),
        ("upload_folder", upload_folder),
    ]:
        monkeypatch.setattr(HfApi, name, function)
    return calls


def test_model_push_to_hub_uploads_a_self_describing_folder(fake_hub):
    model = described_model()
    result = model.push_to_hub(
        "me/tiny-vqa", tokenizer=vh.tokenizer(), token="hf_test", revision="v1", private=True, commit_message="hi"
    )
    assert result == "commit"
    kinds = [call[0] for call in fake_hub]
    assert kinds == ["create_repo", "create_branch", "upload_folder"]
    assert fake_hub[0][1:] == ("me/tiny-vqa", {"private": True, "exist_ok": True}, "hf_test")
    assert fake_hub[1][2] == {"branch": "v1", "exist_ok": True}
    upload = fake_hub[2][2]
    assert upload["revision"] == "v1" and upload["commit_message"] == "hi" and fake_hub[2][3] == "hf_test"
    config = json.loads(upload["files"]["config.json"])
    assert config["id2label"]["5"] == "cat" and config["visual_features"]["detector"]
    assert "tokenizer.json" in upload["files"] and b"me/tiny-vqa" in upload["files"]["README.md"]


def test_dry_run_writes_the_folder_and_uploads_nothing(fake_hub, tmp_path):
    folder = push_to_hub(vh.vqa_model(), "me/tiny-vqa", tokenizer=vh.tokenizer(), dry_run=True, local_dir=tmp_path)
    assert folder == tmp_path and (tmp_path / "model.safetensors").is_file() and not fake_hub
    with pytest.raises(ValueError, match="repo_id"):
        push_to_hub(vh.vqa_model(), "a/b/c", dry_run=True)


def _hub_cache(cache: Path, repo_id: str, revisions: dict[str, Path]) -> None:
    """Lay out `cache` as huggingface_hub's cache holding `repo_id` at the given revisions (name -> folder)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for index, (name, folder) in enumerate(revisions.items()):
        commit = f"{index + 1:040x}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / name).write_text(commit)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for file in folder.iterdir():
            (snapshot / file.name).write_bytes(file.read_bytes())


def test_loading_by_hub_id_and_revision_from_the_cache(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    save_checkpoint(vh.vqa_model(seed=0), first, tokenizer=vh.tokenizer())
    save_checkpoint(vh.vqa_model(seed=1, head_loss="bce"), second, tokenizer=vh.tokenizer())
    cache = tmp_path / "cache"
    _hub_cache(cache, "me/tiny-vqa", {"main": first, "v1": second})
    kwargs = {"cache_dir": cache, "local_files_only": True, "device": "cpu"}
    assert VQAPipeline.from_pretrained("me/tiny-vqa", **kwargs).model.config.head_loss == "softmax"
    pipe = VQAPipeline.from_pretrained("me/tiny-vqa", revision="v1", **kwargs)
    assert pipe.model.config.head_loss == "bce"
    assert torch.equal(pipe.model.classifier[3].weight, vh.vqa_model(seed=1).classifier[3].weight)
    assert pipe._hub_kwargs == {"cache_dir": cache}
    with pytest.raises(OSError):
        VQAPipeline.from_pretrained("me/tiny-vqa", revision="v2", **kwargs)


def test_hub_arguments_pass_through(monkeypatch):
    from lxmert_hf.pipeline import core

    seen = {}

    def fake_model(name, **kwargs):
        seen["model"] = kwargs
        return vh.vqa_model()

    def fake_tokenizer(name, **kwargs):
        seen["tokenizer"] = kwargs
        return vh.tokenizer()

    monkeypatch.setattr(core.LxmertForVQA, "from_pretrained", staticmethod(fake_model))
    monkeypatch.setattr(core.AutoTokenizer, "from_pretrained", staticmethod(fake_tokenizer))
    VQAPipeline.from_pretrained("me/x", revision="abc", cache_dir="/c", token="hf_t", device="cpu")
    expected = {"revision": "abc", "cache_dir": "/c", "token": "hf_t"}
    assert seen == {"model": expected, "tokenizer": expected}


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

    model = described_model()
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
    assert "learning_rate: 0.001" in card.text
    assert json.loads(files["config.json"])["id2label"]["0"] == "yes" and "tokenizer.json" in files
