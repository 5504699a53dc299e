"""Reaching the Hub (`lxmert_hf.locations`): offline mode honoured at once, the Hub cache used without the network,
and an unreachable Hub reported as such, never as a repo that is not a checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx2
import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import constants
from vqa_helpers import features, tokenizer, vqa_model

from lxmert_hf import LxmertForVQA
from lxmert_hf.answers import AnswerVocabulary
from lxmert_hf.detection.checkpoint import resolve_checkpoint
from lxmert_hf.locations import HubUnavailableError, hub_offline
from lxmert_hf.training import load_tokenizer
from lxmert_hf.training.arguments import ModelArguments

REPO = "me/tiny-lxmert"
NOT_CACHED = "unc-nlp/lxmert-base-uncased"


@pytest.fixture
def requests_sent(tmp_path, monkeypatch) -> list[str]:
    """An empty Hub cache in `tmp_path`, no offline switch, and every HTTP request recorded and refused as a network
    that is down would refuse it."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    sent = []

    def send(self, request, **kwargs):
        # huggingface_hub's once-a-day fetch of its agent registry, made unless its offline constant is set (it
        # swallows any error): not a request for a repo, so not ours to prevent.
        if not request.url.path.endswith("/api/agent-harnesses"):
            sent.append(str(request.url))
        raise httpx2.ConnectError("[Errno 101] Network is unreachable", request=request)

    monkeypatch.setattr(httpx2.Client, "send", send)
    # huggingface_hub waits between its retries; the tests count requests, they need not wait.
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", lambda seconds: None)
    return sent


@pytest.fixture(params=["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "constants"])
def offline(request, requests_sent, monkeypatch) -> list[str]:
    """Hub access off: either variable set in the environment after import, or huggingface_hub's constant."""
    if request.param == "constants":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.setenv(request.param, "1")
    assert hub_offline()
    return requests_sent


def cache_repo(repo_id: str) -> LxmertForVQA:
    """Save a tiny model and its tokenizer into the Hub cache as huggingface_hub lays a downloaded repo out:
    `models--owner--name/snapshots/<commit>/...`, and `refs/main` naming that commit."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    model = vqa_model()
    model.save_pretrained(repo / "snapshots" / commit)
    tokenizer().save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return model


def test_offline_fails_at_once_without_a_request(offline):
    with pytest.raises(HubUnavailableError) as caught:
        LxmertForVQA.from_pretrained(NOT_CACHED, answers=["yes", "no"])
    message = str(caught.value)
    assert "Hub access is off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)" in message
    assert "model.safetensors" in message and "not an LXMERT checkpoint" not in message
    assert 'from_pretrained("path/to/folder")' in message and "lxmert-hf ask --model DIR" in message
    assert f"hf download {NOT_CACHED}" in message and "HF_HUB_CACHE" in message
    assert "\n" not in message and offline == []


def test_offline_loads_from_the_hub_cache(offline):
    model = cache_repo(REPO)
    loaded = LxmertForVQA.from_pretrained(REPO)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    assert len(load_tokenizer(ModelArguments(model_name_or_path=REPO), default=None)) == len(tokenizer())
    assert offline == []


def test_an_unreachable_hub_is_not_called_a_missing_checkpoint(requests_sent):
    with pytest.raises(HubUnavailableError) as caught:
        LxmertForVQA.from_pretrained(NOT_CACHED, answers=["yes", "no"])
    message = str(caught.value)
    assert "the Hub cannot be reached" in message and "ConnectError: [Errno 101] Network is unreachable" in message
    assert "HF_HUB_ETAG_TIMEOUT" in message and "not an LXMERT checkpoint" not in message
    # The first weights file (tried and retried by huggingface_hub) already tells that the Hub is out of reach: the
    # other weights files are not tried.
    assert requests_sent and all(url.endswith("/resolve/main/model.safetensors") for url in requests_sent)


def test_a_reachable_folder_without_weights_is_not_a_checkpoint(tmp_path, requests_sent):
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of model.safetensors.*not an LXMERT checkpoint") as caught:
        LxmertForVQA.from_pretrained(str(tmp_path / "folder"), answers=["yes", "no"])
    assert not isinstance(caught.value, HubUnavailableError) and requests_sent == []


@pytest.mark.parametrize(
    "load, what",
    [
        (lambda: resolve_checkpoint("unc-nlp/frcnn-vg-finetuned"), "detector 'unc-nlp/frcnn-vg-finetuned'"),
        (lambda: load_tokenizer(ModelArguments(tokenizer_name=NOT_CACHED), default=None), "--tokenizer_name"),
        (lambda: AnswerVocabulary.load("hf://me/vqa/label2ans.json"), "answer list 'me/vqa'"),
    ],
)
def test_every_hub_loader_says_the_hub_is_off_or_out_of_reach(requests_sent, monkeypatch, load, what):
    with pytest.raises(HubUnavailableError, match=f"^{what}.*the Hub cannot be reached"):
        load()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sent = len(requests_sent)
    with pytest.raises(HubUnavailableError, match=f"^{what}.*Hub access is off"):
        load()
    assert len(requests_sent) == sent


def test_an_answer_list_url_is_not_fetched_offline(offline, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "home"))
    with pytest.raises(ValueError, match=r"cannot download .* network access is off \(HF_HUB_OFFLINE"):
        AnswerVocabulary.load("https://example.com/trainval_label2ans.json")


def test_ask_offline_answers_from_the_cache_or_says_how_to_load(offline, tmp_path, capsys):
    from lxmert_hf_cli import main

    regions = tmp_path / "regions.npz"
    np.savez(regions, **features())
    ask = ["ask", "--features", str(regions), "--question", "is it a cube?", "--json"]
    assert main([*ask, "--model", NOT_CACHED]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("lxmert-hf ask: error: model 'unc-nlp/lxmert-base-uncased': the Hub cache")
    assert "Hub access is off" in error and len(error.splitlines()) == 1
    cache_repo(REPO)
    assert main([*ask, "--model", REPO]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5  # every answer of the cached model, scored
    assert offline == []
