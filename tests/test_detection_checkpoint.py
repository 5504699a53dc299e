"""Finding and writing detector checkpoint files: local folders and Hub repos (downloads recorded, never made), and
atomic saves. No detector is built: these functions only move files."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

from lxmert_hf.detection import checkpoint
from lxmert_hf.detection.checkpoint import (
    CONFIG_NAME,
    HUB_CONFIG_NAME,
    HUB_WEIGHTS_NAME,
    VOCAB_NAME,
    WEIGHTS_NAME,
    read_native_config,
    read_vocab,
    resolve_checkpoint,
    save_checkpoint,
)
from lxmert_hf.detection.checkpoint import load_weights as load_checkpoint_weights

STATE = {"head.weight": torch.arange(6.0).reshape(2, 3), "head.steps": torch.tensor(4)}
VOCAB = {"objects": ["cube", "cat"], "attributes": ["red"]}
NOT_FOUND = types.SimpleNamespace(status_code=404, headers={}, request=None)  # what the Hub's errors keep of a reply


def published_layout(folder: Path) -> Path:
    """A folder laid out like `unc-nlp/frcnn-vg-finetuned`: config.yaml and pytorch_model.bin."""
    folder.mkdir(parents=True)
    (folder / HUB_CONFIG_NAME).write_text("model: {}\n")
    torch.save(STATE, folder / HUB_WEIGHTS_NAME)
    return folder


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Serve `hub.repos[repo_id]` (a folder laid out like the repo) in place of `hf_hub_download`, recording calls."""
    repos: dict[str, Path] = {}
    calls: list[tuple[str, str, dict]] = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        if repo_id not in repos:
            raise RepositoryNotFoundError(f"no repo {repo_id}", response=NOT_FOUND)
        path = repos[repo_id] / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{repo_id} has no {filename}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.chdir(tmp_path)
    return types.SimpleNamespace(repos=repos, calls=calls)


@pytest.mark.parametrize("name", ["unc-nlp/frcnn-vg-finetuned", "hf-hub:unc-nlp/frcnn-vg-finetuned"])
def test_published_layout_from_the_hub(hub, tmp_path, name):
    hub.repos["unc-nlp/frcnn-vg-finetuned"] = published_layout(tmp_path / "served")
    files = resolve_checkpoint(name, revision="v1")
    assert files.layout == "hub" and files.config.name == HUB_CONFIG_NAME and files.vocab is None
    assert {call[0] for call in hub.calls} == {"unc-nlp/frcnn-vg-finetuned"}  # the bare repo id, prefix removed
    assert [call[1] for call in hub.calls] == [CONFIG_NAME, HUB_CONFIG_NAME, HUB_WEIGHTS_NAME]
    assert all(call[2] == {"revision": "v1"} for call in hub.calls)
    assert torch.equal(load_checkpoint_weights(files)["head.weight"], STATE["head.weight"])


def test_own_layout_from_the_hub(hub, tmp_path):
    hub.repos["me/detector"] = save_checkpoint(tmp_path / "served", STATE, {"preset": "lxmert"}, VOCAB)
    files = resolve_checkpoint("hf-hub:me/detector")
    assert files.layout == "native" and read_vocab(files.vocab) == (VOCAB["objects"], VOCAB["attributes"])
    assert [call[:2] for call in hub.calls] == [("me/detector", n) for n in (CONFIG_NAME, WEIGHTS_NAME, VOCAB_NAME)]


def test_hf_hub_prefix_wins_over_a_local_folder_of_that_name(hub, tmp_path):
    published_layout(tmp_path / "me" / "detector")  # a local folder spelled like the repo id
    assert resolve_checkpoint("me/detector").config == Path("me/detector") / HUB_CONFIG_NAME
    hub.repos["me/detector"] = published_layout(tmp_path / "served")
    assert resolve_checkpoint("hf-hub:me/detector").config == tmp_path / "served" / HUB_CONFIG_NAME


def test_unreachable_and_missing_sources(hub, tmp_path):
    with pytest.raises(ValueError, match="'me/absent' is neither an existing folder nor a reachable Hub repo"):
        resolve_checkpoint("me/absent")
    with pytest.raises(FileNotFoundError, match="detector: ./absent does not exist locally"):
        resolve_checkpoint("./absent")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file; pass the folder"):
        resolve_checkpoint(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="holds no detector checkpoint"):
        resolve_checkpoint(tmp_path)


def test_save_writes_a_new_folder_whole(tmp_path):
    folder = save_checkpoint(tmp_path / "a" / "saved", STATE, {"preset": "lxmert"}, VOCAB)
    assert sorted(os.listdir(folder)) == sorted([CONFIG_NAME, WEIGHTS_NAME, VOCAB_NAME])
    assert sorted(os.listdir(tmp_path / "a")) == ["saved"]  # no staging folder left behind
    files = resolve_checkpoint(folder)
    assert read_native_config(files.config) == {"preset": "lxmert"}
    assert json.loads((folder / VOCAB_NAME).read_text()) == VOCAB
    assert torch.equal(load_checkpoint_weights(files)["head.weight"], STATE["head.weight"])


def test_save_over_an_existing_folder_replaces_its_files_and_drops_a_stale_vocab(tmp_path):
    folder = save_checkpoint(tmp_path / "saved", STATE, {"preset": "lxmert"}, VOCAB)
    (folder / "notes.txt").write_text("the user's own file")
    doubled = {key: value * 2 for key, value in STATE.items()}
    save_checkpoint(folder, doubled, {"preset": "transformers-demo"}, None)
    assert sorted(os.listdir(folder)) == sorted([CONFIG_NAME, WEIGHTS_NAME, "notes.txt"])
    files = resolve_checkpoint(folder)
    assert files.vocab is None and read_native_config(files.config) == {"preset": "transformers-demo"}
    assert torch.equal(load_checkpoint_weights(files)["head.weight"], doubled["head.weight"])
    assert sorted(os.listdir(tmp_path)) == ["saved"]


def test_a_failed_save_leaves_the_checkpoint_as_it_was(tmp_path, monkeypatch):
    folder = save_checkpoint(tmp_path / "saved", STATE, {"preset": "lxmert"}, VOCAB)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(folder, STATE, {"preset": "transformers-demo"}, None)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "new", STATE, {}, None)
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    assert sorted(os.listdir(tmp_path)) == ["saved"]
