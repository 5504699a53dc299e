"""Self-describing checkpoints: folder contents, atomic writes, Hub pushes (mocked), and loading by Hub id (plain or
`hf-hub:`) from a local cache laid out like the Hub's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import vqa_helpers as vh
from huggingface_hub import ModelCard
from transformers import LxmertConfig, LxmertForQuestionAnswering

from lxmert_hf import LxmertForVQA, RegionFeatureExtractorConfig, VQAPipeline
from lxmert_hf.convert import convert_checkpoint
from lxmert_hf.hub import describe_visual_features, push_to_hub, save_checkpoint

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
    assert config["model_type"] == "lxmert" and config["head_loss"] == "softmax"
    assert [config["id2label"][str(i)] for i in range(len(vh.ANSWERS))] == vh.ANSWERS
    assert config["visual_features"]["detector"] == "unc-nlp/frcnn-vg-finetuned"
    assert config["visual_features"]["overrides"] == {"min_boxes": 10, "max_boxes": 20}
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "visual-question-answering" and "lxmert" in card.data.tags
    assert "unc-nlp/frcnn-vg-finetuned" in card.text and "6 answers" in card.text
    pipe = VQAPipeline.from_pretrained(folder, device="cpu")
    assert pipe.model.config.visual_features == config["visual_features"]
    assert len(pipe(vh.features(), question=QUESTION)) == 5


def test_checkpoint_writes_are_all_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    save_checkpoint(vh.vqa_model(seed=0), target, tokenizer=vh.tokenizer())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_checkpoint(vh.vqa_model(seed=1), target)
    model = vh.vqa_model(seed=1)
    monkeypatch.setattr(model, "save_pretrained", lambda folder, **kw: (Path(folder, "half").write_text("x"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        save_checkpoint(model, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging folder left behind
    assert "half" not in os.listdir(target)
    monkeypatch.undo()
    save_checkpoint(vh.vqa_model(seed=1), target, tokenizer=vh.tokenizer(), overwrite=True)
    reloaded = VQAPipeline.from_pretrained(target, device="cpu").model
    assert torch.equal(reloaded.classifier[3].weight, vh.vqa_model(seed=1).classifier[3].weight)


def test_overwrite_false_never_replaces_a_folder_filled_meanwhile(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    model = vh.vqa_model()

    def save_while_another_process_writes(folder, **kwargs):
        target.mkdir()
        (target / "theirs.txt").write_text("kept")
        LxmertForVQA.save_pretrained(model, folder, **kwargs)

    monkeypatch.setattr(model, "save_pretrained", save_while_another_process_writes)
    with pytest.raises(FileExistsError, match="created while it was being written"):
        save_checkpoint(model, target, tokenizer=vh.tokenizer())
    assert os.listdir(target) == ["theirs.txt"] and sorted(os.listdir(tmp_path)) == ["ckpt"]


@pytest.fixture
def fake_hub(monkeypatch):
    return vh.record_hub_calls(monkeypatch)


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


def test_hf_hub_prefix_loads_the_repo_from_the_cache(tmp_path, monkeypatch):
    saved = save_checkpoint(vh.vqa_model(seed=2), tmp_path / "saved", tokenizer=vh.tokenizer())
    cache = tmp_path / "cache"
    _hub_cache(cache, "me/tiny-vqa", {"main": saved})
    monkeypatch.chdir(tmp_path)  # no local folder is named like the repo: only the cache can answer
    kwargs = {"cache_dir": cache, "local_files_only": True}
    model = LxmertForVQA.from_pretrained("hf-hub:me/tiny-vqa", **kwargs)
    assert torch.equal(model.classifier[3].weight, vh.vqa_model(seed=2).classifier[3].weight)
    assert model.config.name_or_path == "me/tiny-vqa"  # the repo id, as the card's base model names it
    pipe = VQAPipeline.from_pretrained("hf-hub:me/tiny-vqa", device="cpu", **kwargs)
    assert len(pipe(vh.features(), question=QUESTION)) == 5
    with pytest.raises(FileNotFoundError, match="model_name_or_path: ./tiny-vqa does not exist locally"):
        VQAPipeline.from_pretrained("./tiny-vqa", **kwargs)
    with pytest.raises(FileNotFoundError, match="is not a Hub repo id; write hf-hub:owner/name"):
        VQAPipeline.from_pretrained("hf-hub:me/tiny/vqa", **kwargs)


def test_published_layouts_by_hf_hub_prefix(tmp_path, monkeypatch):
    """The unc-nlp layout (config.json of model_type lxmert, pytorch_model.bin, the tokenizer) read from the cache
    by `hf-hub:` id: loaded as LxmertForVQA, and converted with the repo recorded as the card's base model."""
    torch.manual_seed(0)
    source = LxmertForQuestionAnswering(LxmertConfig(**vh.SIZES, visual_feat_dim=16, num_qa_labels=3)).eval()
    published = tmp_path / "published"
    published.mkdir()
    source.config.save_pretrained(published)
    torch.save(source.state_dict(), published / "pytorch_model.bin")
    vh.tokenizer().save_pretrained(published)
    cache = tmp_path / "cache"
    _hub_cache(cache, "unc-nlp/lxmert-vqa-uncased", {"main": published})
    monkeypatch.chdir(tmp_path)
    kwargs = {"cache_dir": cache, "local_files_only": True}
    name, answers = "hf-hub:unc-nlp/lxmert-vqa-uncased", ["yes", "no", "2"]
    model = LxmertForVQA.from_pretrained(name, answers=answers, **kwargs)
    assert torch.equal(model.classifier[3].weight, source.answer_head.logit_fc[3].weight)
    report = convert_checkpoint(name, tmp_path / "converted", answers=answers, **kwargs)
    assert report.source_format == "transformers" and report.max_abs_diff < 1e-4
    card = ModelCard.load(tmp_path / "converted" / "README.md")
    assert card.data.base_model == "unc-nlp/lxmert-vqa-uncased" and name in card.text


@pytest.mark.parametrize("name", ["me/x", "hf-hub:me/x"])
def test_hub_arguments_pass_through(monkeypatch, name):
    from lxmert_hf import locations
    from lxmert_hf.pipeline import core

    seen = {}

    def fake_model(name, **kwargs):
        seen["model"] = (name, kwargs)
        return vh.vqa_model()

    def fake_tokenizer(name, **kwargs):
        seen["tokenizer"] = (name, kwargs)
        return vh.tokenizer()

    monkeypatch.setattr(core.LxmertForVQA, "from_pretrained", staticmethod(fake_model))
    monkeypatch.setattr(core.AutoTokenizer, "from_pretrained", staticmethod(fake_tokenizer))
    # The tokenizer's files are first brought into the Hub cache, with the same arguments.
    monkeypatch.setattr(
        locations, "first_hub_file", lambda repo, files, what, **kwargs: seen.update(probe=(repo, kwargs))
    )
    VQAPipeline.from_pretrained(name, revision="abc", cache_dir="/c", token="hf_t", device="cpu")
    expected = {"revision": "abc", "cache_dir": "/c", "token": "hf_t"}
    # The model is named in the explicit form (LxmertForVQA.from_pretrained reads it), the tokenizer by repo id.
    assert seen == {"model": ("hf-hub:me/x", expected), "tokenizer": ("me/x", expected), "probe": ("me/x", expected)}


STANDARD_PUSH_ARGUMENTS = {
    "commit_message": "first", "commit_description": "the long story", "private": True, "token": "hf_x",
    "revision": "v2", "create_pr": True, "max_shard_size": "40KB", "tags": ["toy", "lxmert"],
}  # fmt: skip


@pytest.mark.parametrize("push", ["model", "function"])
def test_push_to_hub_takes_transformers_arguments_and_shards(fake_hub, tmp_path, push):
    import inspect

    from transformers.utils import PushToHubMixin

    standard = set(inspect.signature(PushToHubMixin.push_to_hub).parameters) - {"self"}
    for function in (LxmertForVQA.push_to_hub, push_to_hub, VQAPipeline.push_to_hub):
        assert standard <= set(inspect.signature(function).parameters), function
    model = described_model()
    if push == "model":
        model.push_to_hub("me/tiny-vqa", tokenizer=vh.tokenizer(), **STANDARD_PUSH_ARGUMENTS)
    else:
        push_to_hub(model, "hf-hub:me/tiny-vqa", tokenizer=vh.tokenizer(), **STANDARD_PUSH_ARGUMENTS)
    assert [call[0] for call in fake_hub] == ["create_repo", "upload_folder"]  # a pull request needs no branch
    assert fake_hub[0][1:] == ("me/tiny-vqa", {"private": True, "exist_ok": True}, "hf_x")
    upload = fake_hub[1][2]
    assert {k: upload[k] for k in ("commit_message", "commit_description", "revision", "create_pr")} == {
        "commit_message": "first", "commit_description": "the long story", "revision": "v2", "create_pr": True,
    }  # fmt: skip
    card = ModelCard(upload["files"]["README.md"].decode())
    assert {"toy", "lxmert", "vqa"} <= set(card.data.tags) and card.data.tags.count("lxmert") == 1
    shards = sorted(name for name in upload["files"] if name.startswith("model-"))
    assert len(shards) > 1 and "model.safetensors.index.json" in upload["files"]
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for name, content in upload["files"].items():
        (pushed / name).write_bytes(content)
    reloaded = LxmertForVQA.from_pretrained(pushed)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert reloaded.config.visual_features == model.config.visual_features


def test_pipeline_push_to_hub_shares_the_pipeline(fake_hub):
    pipe = VQAPipeline(described_model(), vh.tokenizer(), device="cpu")
    pipe.push_to_hub("me/tiny-vqa", commit_description="with its pipeline")
    upload = fake_hub[-1][2]
    assert upload["commit_description"] == "with its pipeline" and "tokenizer.json" in upload["files"]
    config = json.loads(upload["files"]["config.json"])
    assert config["custom_pipelines"]["visual-question-answering"]["impl"] == "lxmert_hf_pipeline.VQAPipeline"
    assert b"from lxmert_hf import VQAPipeline" in upload["files"]["lxmert_hf_pipeline.py"]
    # A model pushed on its own declares no pipeline code.
    described_model().push_to_hub("me/tiny-vqa", tokenizer=vh.tokenizer())
    assert "custom_pipelines" not in json.loads(fake_hub[-1][2]["files"]["config.json"])
