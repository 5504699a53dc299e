"""A recipe run's output folder, resume checkpoint and seed (`lxmert_hf.training.runs`): each bad input a clear
error naming the argument and the path, and only the main process deciding for every rank."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import torch
import transformers
from transformers import TrainingArguments

from lxmert_hf import LxmertVQAConfig
from lxmert_hf.training import parse_args
from lxmert_hf.training.runs import (
    check_checkpoint_fits,
    check_output_dir,
    find_last_checkpoint,
    on_main_process,
    prepare_output_dir,
    resolve_checkpoint,
    seed_run,
    show_progress,
    user_errors,
)


def checkpoint(folder: Path, complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_last_is_the_newest_complete_checkpoint(tmp_path, caplog):
    for step in (4, 12):
        checkpoint(tmp_path / f"checkpoint-{step}")
    checkpoint(tmp_path / "checkpoint-16", complete=False)  # cut off while it was written
    (tmp_path / "checkpoint-final").mkdir()  # not a step
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint("last", tmp_path) == str(tmp_path / "checkpoint-12")  # 12 > 4, numerically
    assert "checkpoint-16" in caplog.text and "trainer_state.json" in caplog.text
    assert find_last_checkpoint(tmp_path / "missing") is None
    assert resolve_checkpoint(None, tmp_path) is None and resolve_checkpoint("", tmp_path) is None


@pytest.mark.parametrize("make, resume, error, message", [
    pytest.param(lambda root: None, "{root}/nowhere/checkpoint-10", FileNotFoundError,
                 "'{root}/nowhere/checkpoint-10' does not exist", id="missing"),
    pytest.param(lambda root: checkpoint(root / "model", complete=False), "{root}/model", ValueError,
                 "'{root}/model' is not a Trainer checkpoint .*--model_name_or_path", id="saved-model-not-checkpoint"),
    pytest.param(lambda root: (root / "file").write_text("x"), "{root}/file", ValueError,
                 "'{root}/file' is not a Trainer checkpoint", id="file"),
    pytest.param(lambda root: (root / "out").mkdir(), "last", FileNotFoundError,
                 "last: the output folder '{root}/out' holds no complete checkpoint", id="last-empty"),
    pytest.param(lambda root: checkpoint(root / "out" / "checkpoint-3", complete=False), "last", FileNotFoundError,
                 "last: the output folder '{root}/out' holds no complete checkpoint", id="last-only-incomplete"),
    pytest.param(lambda root: None, "last", FileNotFoundError,
                 "last: the output folder '{root}/out' holds no complete checkpoint", id="last-no-output-dir"),
])  # fmt: skip
def test_bad_resume_checkpoints(tmp_path, make, resume, error, message):
    make(tmp_path)
    with pytest.raises(error, match=f"--resume_from_checkpoint {message.format(root=tmp_path)}"):
        resolve_checkpoint(resume.format(root=tmp_path), tmp_path / "out")


def earlier_run(folder: Path) -> Path:
    checkpoint(folder / "checkpoint-8")
    (folder / "eval_results.json").write_text("{}")
    return folder


def test_an_earlier_run_is_kept_unless_resumed_or_overwritten(tmp_path):
    out = earlier_run(tmp_path / "out")
    with pytest.raises(FileExistsError, match=f"--output_dir '{out}' holds files of an earlier run; pass "
                                              "--resume_from_checkpoint last .* --overwrite_output_dir"):  # fmt: skip
        check_output_dir(out, resuming=False, overwrite=False)
    check_output_dir(out, resuming=True, overwrite=False)
    assert (out / "checkpoint-8" / "trainer_state.json").is_file()
    check_output_dir(out, resuming=False, overwrite=True)
    assert out.is_dir() and not any(out.iterdir())  # the earlier run's checkpoints went with it
    check_output_dir(out, resuming=False, overwrite=False)  # empty: a new run may start
    check_output_dir(tmp_path / "new", resuming=False, overwrite=False)
    assert not (tmp_path / "new").exists()  # the Trainer creates it when it writes


def test_overwrite_refuses_what_is_not_a_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match=f"--overwrite_output_dir: '{tmp_path}' holds no run of a recipe"):
        check_output_dir(tmp_path, resuming=False, overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_overwrite_never_deletes_the_current_folder(tmp_path, monkeypatch):
    out = earlier_run(tmp_path / "out")
    (out / "work").mkdir()
    for cwd, target in [(out, "."), (out / "work", "..")]:
        monkeypatch.chdir(cwd)
        with pytest.raises(ValueError, match=f"'{target}' is the current folder or holds it"):
            check_output_dir(target, resuming=False, overwrite=True)
    assert (out / "checkpoint-8" / "trainer_state.json").is_file()


def test_contradictory_or_impossible_output_dirs(tmp_path):
    with pytest.raises(ValueError, match="--overwrite_output_dir would delete the run that --resume_from_checkpoint"):
        check_output_dir(earlier_run(tmp_path / "out"), resuming=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=f"--output_dir '{tmp_path / 'file'}' is a file"):
        check_output_dir(tmp_path / "file", resuming=False, overwrite=True)


def test_prepare_output_dir_resolves_last_and_checks_the_folder(tmp_path):
    out = earlier_run(tmp_path / "out")
    flags = ["--output_dir", str(out), "--use_cpu", "true"]
    *_, resuming = parse_args([*flags, "--resume_from_checkpoint", "last"])
    assert prepare_output_dir(resuming) == str(out / "checkpoint-8")
    *_, overwriting = parse_args([*flags, "--overwrite_output_dir", "true"])
    assert prepare_output_dir(overwriting) is None and not any(out.iterdir())


def test_checkpoint_must_fit_the_model(tmp_path):
    config = LxmertVQAConfig.from_answers(["yes", "no", "2"], hidden_size=32, num_attention_heads=2)
    config.save_pretrained(tmp_path / "same")
    check_checkpoint_fits(tmp_path / "same", config)
    check_checkpoint_fits(None, config)
    LxmertVQAConfig.from_answers(["no", "yes", "2"], hidden_size=32, num_attention_heads=2).save_pretrained(
        tmp_path / "reordered"
    )
    with pytest.raises(ValueError, match="answers: 3 in the checkpoint, 3 here \\(or in another order\\)"):
        check_checkpoint_fits(tmp_path / "reordered", config)
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"--resume_from_checkpoint '{tmp_path / 'garbled'}': cannot read its config"):
        check_checkpoint_fits(tmp_path / "garbled", config)
    (tmp_path / "fsdp-sharded").mkdir()
    check_checkpoint_fits(tmp_path / "fsdp-sharded", config)  # nothing to compare: left to the Trainer


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    with pytest.raises(SystemExit) as exit, user_errors("vqa.py"):
        raise FileExistsError("--output_dir 'out' holds files of an earlier run")
    assert exit.value.code == 2
    assert capsys.readouterr().err == "vqa.py: error: --output_dir 'out' holds files of an earlier run\n"
    with pytest.raises(RuntimeError), user_errors("vqa.py"):
        raise RuntimeError("a bug")


class FakeGroup:
    """`torch.distributed` as one rank of two sees it; `broadcast_object_list` delivers what rank 0 sent."""

    def __init__(self, monkeypatch, rank: int, sent=None):
        self.sent, self.calls = sent, []
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)
        monkeypatch.setattr(torch.distributed, "broadcast_object_list", self.broadcast)

    def broadcast(self, objects, src):
        self.calls.append(list(objects))
        if self.sent is not None:
            objects[0] = self.sent


def test_only_the_main_process_decides(monkeypatch):
    calls = []
    group = FakeGroup(monkeypatch, rank=0)
    assert on_main_process(lambda: calls.append("main") or "checkpoint-4") == "checkpoint-4"
    assert calls == ["main"] and group.calls == [[(True, "checkpoint-4")]]
    FakeGroup(monkeypatch, rank=1, sent=(True, "checkpoint-4"))
    assert on_main_process(lambda: calls.append("other rank")) == "checkpoint-4"
    assert calls == ["main"]  # the other rank took the main process's answer and did nothing itself


def test_every_rank_raises_the_main_process_error(monkeypatch):
    def refuse():
        raise FileExistsError("--output_dir 'out' holds files of an earlier run")

    group = FakeGroup(monkeypatch, rank=0)
    with pytest.raises(FileExistsError):
        on_main_process(refuse)
    sent = group.calls[0][0]
    FakeGroup(monkeypatch, rank=1, sent=sent)
    with pytest.raises(FileExistsError, match="holds files of an earlier run"):
        on_main_process(refuse)
    FakeGroup(monkeypatch, rank=1, sent=(False, KeyError("a bug")))
    with pytest.raises(RuntimeError, match="The main process failed: KeyError"):
        on_main_process(refuse)


def test_seed_run_honours_full_determinism(monkeypatch):
    *_, args = parse_args(["--output_dir", "out", "--use_cpu", "true", "--seed", "7", "--full_determinism", "true"])
    seen = []
    monkeypatch.setattr("lxmert_hf.training.runs.enable_full_determinism", seen.append)
    seed_run(args)
    assert seen == [7]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "bars"), [(io.StringIO(), False), (_Terminal(), True)], ids=["file", "terminal"])
def test_progress_bars_only_on_a_terminal(stream, bars):
    args = TrainingArguments(output_dir="out", use_cpu=True, disable_tqdm=False)
    try:
        show_progress(args, stream=stream)
        assert args.disable_tqdm is not bars
        assert datasets.is_progress_bar_enabled() is bars
        assert huggingface_hub.utils.are_progress_bars_disabled() is not bars
        assert transformers.utils.logging.is_progress_bar_enabled() is bars
    finally:
        datasets.enable_progress_bars()
        huggingface_hub.utils.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
