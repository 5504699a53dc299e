"""The `lxmert-hf` entry point: `--help` of every command without the library's heavy imports."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lxmert_hf_cli import main
from lxmert_hf_cli._interrupt import signals_as_interrupt

ROOT = Path(__file__).resolve().parents[1]
# What `lxmert_hf/__init__.py` pulls in (seconds); `--help` must need none of it.
HEAVY = {"lxmert_hf", "torch", "transformers", "datasets", "numpy", "pyarrow", "huggingface_hub"}
COMMANDS = [
    [], ["ask"], ["convert"], ["evaluate"], ["evaluate", "vqa"], ["evaluate", "gqa"], ["evaluate", "nlvr2"],
    ["extract"], ["predict"], ["prepare"], ["prepare", "features"], ["prepare", "vqa"], ["prepare", "gqa"],
    ["prepare", "nlvr2"],
]  # fmt: skip
# Runs an entry point `module:function` on argv, then prints the top-level modules it imported.
PROBE = """
import importlib, json, sys
module, _, function = sys.argv[1].partition(":")
try:
    getattr(importlib.import_module(module), function)(sys.argv[2:])
except SystemExit:
    pass
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
"""


def console_script() -> str:
    """The `lxmert-hf` entry point declared in pyproject.toml (what `pip install` turns into the command)."""
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["lxmert-hf"]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "lxmert-hf")
def test_help_imports_nothing_heavy(command):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, console_script(), *command, "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: lxmert-hf {' '.join(command)}".rstrip() in result.stdout
    assert not set(json.loads(result.stdout.splitlines()[-1])) & HEAVY


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["ask", "--model", "m", "--image", "x.jpg", "--question", "q", "--top-k", "0"], "--top-k must be >= 1"),
        (["convert", "model.pth", "--output", "out", "--atol", "-1"], "--atol must be >= 0"),
        (["evaluate", "nlvr2", "--annotations", "a", "--predictions", "p", "--precision", "-1"], "--precision must"),
    ],
)
def test_argument_errors_come_before_the_library_import(command, message):
    result = subprocess.run([sys.executable, "-c", PROBE, console_script(), *command], capture_output=True, text=True)
    assert f"lxmert-hf {command[0]}: error: {message}" in result.stderr
    assert not set(json.loads(result.stdout.splitlines()[-1])) & HEAVY


def test_library_import_path_is_the_same_command_line():
    from lxmert_hf.cli import main

    assert main is importlib.import_module("lxmert_hf_cli").main


def test_help_defaults_agree_with_the_library():
    # The commands spell these out so that building their parsers imports no torch.
    from lxmert_hf.data.store import FEATURE_DTYPES
    from lxmert_hf.data.vqa import (
        COCO_IMAGE_ID_FORMAT,
        MINIVAL_IMAGES,
        VQA_VOCABULARY_RULES,
        prepare_vqa,
        vqa_split_sources,
    )
    from lxmert_hf.detection.config import PRESETS, RegionFeatureExtractorConfig
    from lxmert_hf.detection.model import DEFAULT_CHECKPOINT
    from lxmert_hf.hub import LXMERT_DETECTOR
    from lxmert_hf_cli import build_parser
    from lxmert_hf_cli.commands import convert, extract, prepare

    assert convert.LXMERT_DETECTOR == LXMERT_DETECTOR
    assert extract.DEFAULT_CHECKPOINT == DEFAULT_CHECKPOINT and tuple(sorted(PRESETS)) == extract.PRESET_NAMES
    assert RegionFeatureExtractorConfig().preset == extract.DEFAULT_PRESET
    assert tuple(FEATURE_DTYPES) == prepare.FEATURE_DTYPES
    assert (prepare.COCO_IMAGE_ID_FORMAT, prepare.MINIVAL_IMAGES) == (COCO_IMAGE_ID_FORMAT, MINIVAL_IMAGES)
    assert tuple(VQA_VOCABULARY_RULES) == prepare.VQA_VOCABULARY_RULES
    # `prepare vqa` without options prepares as `prepare_vqa` does by default (the original labels and vocabulary).
    args = build_parser().parse_args(["prepare", "vqa", "--output", "out"])
    library = {**inspect.signature(prepare_vqa).parameters, **inspect.signature(vqa_split_sources).parameters}
    for option in ("vocabulary_rule", "min_answer_count", "normalize_answers", "minival_images", "image_id_format"):
        assert getattr(args, option) == library[option].default, option


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_any_command_with_one_line_and_128_plus_its_number(signum, code, tmp_path, capsys, monkeypatch):
    import lxmert_hf.metrics

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signum)  # Python runs the handler, which raises, before the next line
        pytest.fail("the signal did not stop the command")

    monkeypatch.setattr(lxmert_hf.metrics, "evaluate_gqa_files", stopped)
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored (tested below): start
    # from the signal's usual handling, whatever launched the tests.
    usual = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
    outside = signal.signal(signum, usual)
    try:
        argv = ["evaluate", "gqa", "--questions", str(tmp_path / "q.json"), "--predictions", str(tmp_path / "p.json")]
        assert main(argv) == code
        assert capsys.readouterr().err == f"lxmert-hf evaluate: interrupted by {signal.Signals(signum).name}.\n"
        assert signal.getsignal(signum) is usual
    finally:
        signal.signal(signum, outside)


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with signals_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
