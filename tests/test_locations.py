"""The one rule for "local path or Hub repo id" (`lxmert_hf.locations.locate`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxmert_hf.locations import HUB_PREFIX, Location, locate


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A current folder holding a file, a folder, and a folder laid out like the repo id `owner/model`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.pth").write_bytes(b"x")
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "owner" / "model").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize(
    ("given", "kind", "expected"),
    [
        ("unc-nlp/lxmert-base-uncased", "hub", "unc-nlp/lxmert-base-uncased"),
        ("gpt2", "hub", "gpt2"),
        ("me/model.v1_2-x", "hub", "me/model.v1_2-x"),
        ("hf-hub:unc-nlp/frcnn-vg-finetuned", "hub", "unc-nlp/frcnn-vg-finetuned"),
        ("hf-hub:owner/model", "hub", "owner/model"),  # the prefix wins over the local folder of that name
        ("owner/model", "local", "owner/model"),  # an existing folder wins over the repo id it looks like
        ("checkpoint", "local", "checkpoint"),
        ("./checkpoint/", "local", "checkpoint"),
        ("weights.pth", "local", "weights.pth"),
        (Path("checkpoint"), "local", "checkpoint"),
        (Path("owner/model"), "local", "owner/model"),
    ],
)
def test_rule(workdir, given, kind, expected):
    location = locate(given)
    assert location.kind == kind and location.is_local == (kind == "local")
    assert location.name_or_path == expected
    if kind == "local":
        assert location.path.exists() and location.repo_id is None
        assert str(location) == expected
    else:
        assert location.repo_id == expected and location.path is None
        assert str(location) == f"{HUB_PREFIX}{expected}"
        assert locate(str(location)) == location  # the printed form reads back as the same place


def test_absolute_paths_and_home(workdir, monkeypatch):
    assert locate(str(workdir / "checkpoint")) == Location("local", path=workdir / "checkpoint")
    monkeypatch.setenv("HOME", str(workdir))
    assert locate("~/weights.pth").path == workdir / "weights.pth"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("./missing", "--model: ./missing does not exist locally and is not a Hub repo id"),
        ("../missing/folder", "does not exist locally"),
        ("/no/such/folder", "does not exist locally"),
        ("a/b/c", "does not exist locally"),  # too many parts for a repo id
        ("owner/bad name", "does not exist locally"),
        ("owner/mo--del", "does not exist locally"),  # "--" is not allowed in repo ids
        ("~/surely-missing-lxmert-folder", "does not exist locally"),
        (Path("missing"), "--model: missing does not exist locally"),  # a Path is never a repo id
        (Path("owner/other"), "does not exist locally"),
        ("hf-hub:", "'' after 'hf-hub:' is not a Hub repo id"),
        ("hf-hub:a/b/c", "is not a Hub repo id; write hf-hub:owner/name"),
        ("hf-hub:./checkpoint", "is not a Hub repo id"),
        ("", "--model is empty"),
        ("   ", "--model is empty"),
    ],
)
def test_refusals_name_the_argument(workdir, given, message):
    with pytest.raises(FileNotFoundError, match=message.replace("(", r"\(")) as error:
        locate(given, what="--model")
    assert "--model" in str(error.value)


@pytest.mark.parametrize("given", [None, 3, b"owner/model", ["owner/model"]])
def test_wrong_types_are_refused(given):
    with pytest.raises(TypeError, match="--model must be a path or a Hub repo id"):
        locate(given, what="--model")


def test_missing_path_error_says_how_to_fix(workdir):
    with pytest.raises(FileNotFoundError, match=r"check the path, or give a repo id"):
        locate("./missing")
