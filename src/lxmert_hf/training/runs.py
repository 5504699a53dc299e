"""A recipe run's output folder, resume checkpoint, seed and progress display, settled before any expensive work.

A run writes into `--output_dir`. A folder that already holds files belongs to an earlier run: the run continues
it (`--resume_from_checkpoint last` or a checkpoint folder) or replaces it (`--overwrite_output_dir`), never
silently writes over it. These checks run on the main process only, which shares its answer with the other ranks so
that they all agree and only one deletes anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO, TypeVar

import datasets
import huggingface_hub
import torch
import transformers
from transformers import PretrainedConfig, TrainingArguments, enable_full_determinism, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lxmert_hf.files import WriteError, atomic_directory, check_writable
from lxmert_hf.training.arguments import VQATrainingArguments

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint: its presence marks a complete one
RESUME = "--resume_from_checkpoint"
# Entries a Trainer run leaves in its output folder; `--overwrite_output_dir` deletes only a folder holding one.
RUN_FILES = ("trainer_state.json", "training_args.bin", "config.json", "all_results.json", "eval_results.json")
# The config entries that decide whether a checkpoint's weights fit the model a run builds.
MODEL_SHAPE = (
    "model_type", "vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "l_layers", "x_layers",
    "r_layers", "visual_feat_dim", "visual_pos_dim",
)  # fmt: skip
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
T = TypeVar("T")


def find_last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """
    The newest complete checkpoint (`checkpoint-N` folder holding `trainer_state.json`) in `output_dir`, or `None`.

    A newer folder without `trainer_state.json` was cut off while it was written (the Trainer writes that file
    last): it is skipped with a warning.

    Example:
        ```python
        >>> import tempfile
        >>> from pathlib import Path
        >>> run = Path(tempfile.mkdtemp())
        >>> for step in (4, 8):
        ...     (run / f"checkpoint-{step}").mkdir()
        >>> _ = (run / "checkpoint-4" / "trainer_state.json").write_text("{}")
        >>> find_last_checkpoint(run).name  # checkpoint-8 is incomplete
        'checkpoint-4'
        ```
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    steps = sorted(
        ((int(match.group(1)), path) for path in folder.iterdir() if (match := _CHECKPOINT.match(path.name))),
        reverse=True,
    )
    for _, path in steps:
        if (path / TRAINER_STATE).is_file():
            return path
        logger.warning(f"Skipping {path}: it has no {TRAINER_STATE}, so it was not completely written.")
    return None


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | os.PathLike) -> str | None:
    """
    The checkpoint folder `--resume_from_checkpoint` names: `None` when it is empty, the newest complete checkpoint
    of `output_dir` for `last` (see [`find_last_checkpoint`]), else the path itself once checked to be a Trainer
    checkpoint.

    Raises:
        `FileNotFoundError`: the path does not exist, or `last` finds no complete checkpoint.
        `ValueError`: the path is not a Trainer checkpoint (no `trainer_state.json`).

    Example:
        ```python
        >>> import tempfile
        >>> resolve_checkpoint("last", tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: --resume_from_checkpoint last: ... holds no complete checkpoint ...
        ```
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "last":
        found = find_last_checkpoint(output_dir)
        if found is None:
            raise FileNotFoundError(
                f"{RESUME} last: the output folder {str(output_dir)!r} holds no complete checkpoint (a "
                f"{PREFIX_CHECKPOINT_DIR}-N folder with {TRAINER_STATE}); start without {RESUME}, or check "
                "--output_dir."
            )
        return str(found)
    path = Path(resume_from_checkpoint)
    if not path.exists():
        raise FileNotFoundError(
            f"{RESUME} {str(path)!r} does not exist; pass a {PREFIX_CHECKPOINT_DIR}-N folder of an earlier run, "
            "or `last` for the newest one in --output_dir."
        )
    if not (path / TRAINER_STATE).is_file():
        raise ValueError(
            f"{RESUME} {str(path)!r} is not a Trainer checkpoint (it has no {TRAINER_STATE}); pass a "
            f"{PREFIX_CHECKPOINT_DIR}-N folder that a recipe saved during training. To start from a saved model's "
            "weights instead, pass it as --model_name_or_path."
        )
    return str(path)


def check_output_dir(output_dir: str | os.PathLike, resuming: bool, overwrite: bool) -> None:
    """
    Refuse to write a new run into a folder that holds an earlier one, unless `resuming` it or told to `overwrite`
    it; with `overwrite`, delete the folder's whole content first (the earlier run's checkpoints included: left
    there, they would be rotated and resumed as if they were the new run's).

    Raises:
        `FileExistsError`: the folder holds files and neither option is given, or it is a file.
        `ValueError`: both options are given, or `overwrite` is asked of a folder that holds no earlier run or
            holds the current folder.

    Example:
        ```python
        >>> import tempfile
        >>> from pathlib import Path
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = (run / "trainer_state.json").write_text("{}")
        >>> check_output_dir(run, resuming=False, overwrite=False)
        Traceback (most recent call last):
        ...
        FileExistsError: --output_dir ... holds files of an earlier run; ...
        >>> check_output_dir(run, resuming=False, overwrite=True)
        >>> list(run.iterdir())
        []
        ```
    """
    folder = Path(output_dir)
    if resuming and overwrite:
        raise ValueError(
            f"--overwrite_output_dir would delete the run that {RESUME} continues; pass only one of them."
        )
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"--output_dir {str(folder)!r} is a file; choose a folder.")
    if resuming or not folder.is_dir() or not any(folder.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"--output_dir {str(folder)!r} holds files of an earlier run; pass {RESUME} last to continue it, "
            "--overwrite_output_dir to delete it and start again, or choose another --output_dir."
        )
    if folder.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise ValueError(
            f"--overwrite_output_dir: {str(folder)!r} is the current folder or holds it, so it is not deleted; "
            "choose a folder of its own for the run's --output_dir."
        )
    if not _holds_a_run(folder):
        raise ValueError(
            f"--overwrite_output_dir: {str(folder)!r} holds no run of a recipe (no {PREFIX_CHECKPOINT_DIR}-N folder "
            f"or {', '.join(RUN_FILES)}), so it is not deleted; empty it yourself or choose another --output_dir."
        )
    logger.warning(f"--overwrite_output_dir: deleting the earlier run in {folder}.")
    with atomic_directory(folder, overwrite=True):
        pass  # replaces the folder by an empty one in one rename


def _holds_a_run(folder: Path) -> bool:
    return any(_CHECKPOINT.match(path.name) or path.name in RUN_FILES for path in folder.iterdir())


def prepare_output_dir(training_args: VQATrainingArguments) -> str | None:
    """
    Settle the run's output folder before any expensive work and return the checkpoint to resume from (or `None`).

    Resolves `training_args.resume_from_checkpoint` ([`resolve_checkpoint`]) and checks `training_args.output_dir`
    ([`check_output_dir`], with `training_args.overwrite_output_dir`). The main process decides and acts; every
    rank gets its answer, or raises its error.

    Example:
        ```python
        >>> import tempfile
        >>> from lxmert_hf.training import parse_args
        >>> *_, training_args = parse_args(["--output_dir", tempfile.mkdtemp(), "--use_cpu", "true"])
        >>> prepare_output_dir(training_args) is None  # a new run in an empty folder
        True
        ```
    """

    def decide() -> str | None:
        checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
        check_output_dir(training_args.output_dir, checkpoint is not None, training_args.overwrite_output_dir)
        check_writable(training_args.output_dir, what="--output_dir", inside=True)
        return checkpoint

    _ = training_args.world_size  # joins the process group, which the Trainer would otherwise do only later
    return on_main_process(decide)


def on_main_process(function: Callable[[], T]) -> T:
    """Call `function` on the main process only and return its result, or raise its error, on every rank."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return function()
    outcome: list = [None]
    if torch.distributed.get_rank() == 0:
        try:
            outcome = [(True, function())]
        except Exception as error:
            # Share the failure before raising, so that the other ranks stop instead of waiting for an answer.
            torch.distributed.broadcast_object_list([(False, error)], src=0)
            raise
    torch.distributed.broadcast_object_list(outcome, src=0)
    succeeded, value = outcome[0]
    if not succeeded:
        if isinstance(value, (ValueError, FileNotFoundError, FileExistsError)):
            raise value
        raise RuntimeError(f"The main process failed: {value!r}")
    return value


def check_checkpoint_fits(checkpoint: str | os.PathLike | None, config: PretrainedConfig) -> None:
    """
    Check that the checkpoint a run resumes holds the model the run builds (same answers and sizes).

    A checkpoint without `config.json` (FSDP's sharded layout) is not checked, with a warning.

    Raises:
        `ValueError`: its `config.json` cannot be read, or its answers or sizes differ from `config`'s.

    Example:
        ```python
        >>> import tempfile
        >>> from pathlib import Path
        >>> from lxmert_hf import LxmertVQAConfig
        >>> folder = Path(tempfile.mkdtemp())
        >>> LxmertVQAConfig.from_answers(["yes", "no"], hidden_size=32).save_pretrained(folder)
        >>> check_checkpoint_fits(folder, LxmertVQAConfig.from_answers(["yes", "no", "2"], hidden_size=32))
        Traceback (most recent call last):
        ...
        ValueError: --resume_from_checkpoint ...: its model does not fit this run's: answers: 2 in the checkpoint, ...
        ```
    """
    if checkpoint is None:
        return
    path = Path(checkpoint) / "config.json"
    if not path.exists():
        # FSDP's sharded checkpoints keep the weights in their own layout and save no config.
        logger.warning(f"{RESUME} {checkpoint}: no config.json, so it is not checked against this run's model.")
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{RESUME} {str(checkpoint)!r}: cannot read its config.json ({error}); pass a checkpoint a recipe saved."
        ) from None
    ours = config.to_dict()
    differences = [
        f"{key}: {saved.get(key)!r} in the checkpoint, {ours.get(key)!r} here"
        for key in MODEL_SHAPE
        if saved.get(key) != ours.get(key)
    ]
    answers = [str(name) for _, name in sorted((int(i), n) for i, n in saved.get("id2label", {}).items())]
    if answers != [config.id2label[i] for i in range(len(config.id2label))]:
        differences.insert(0, f"answers: {len(answers)} in the checkpoint, {len(config.id2label)} here (or in "
                              "another order)")  # fmt: skip
    if differences:
        raise ValueError(
            f"{RESUME} {str(checkpoint)!r}: its model does not fit this run's: {'; '.join(differences)}. Resume with "
            "the data and model arguments of the run that saved it, or start a new run in another --output_dir."
        )


def seed_run(training_args: TrainingArguments) -> None:
    """
    Seed every random draw of the run from `training_args.seed` (with `training_args.full_determinism`, also make
    torch's kernels deterministic). Call it before building the model so that its initial weights derive from the
    seed as well as dropout and the data order (the Trainer draws that from `data_seed` when given).

    Example:
        ```python
        >>> import torch
        >>> from transformers import TrainingArguments
        >>> args = TrainingArguments(output_dir="out", seed=3, use_cpu=True)
        >>> seed_run(args); first = torch.rand(2)
        >>> seed_run(args); torch.equal(first, torch.rand(2))
        True
        ```
    """
    if training_args.full_determinism:
        enable_full_determinism(training_args.seed)
    else:
        set_seed(training_args.seed)


def show_progress(training_args: TrainingArguments, stream: TextIO | None = None) -> None:
    """
    Show progress bars only where they can redraw themselves: when `stream` (where they are written; default: the
    current `sys.stderr`) is a terminal.

    Written to a file, every redraw of a bar is kept, joined by carriage returns and cursor-moving escape codes. So
    off a terminal the `Trainer` prints its logs one line each instead of its bars (`disable_tqdm`), and the bars of
    `datasets` (generating, tokenizing, saving), `huggingface_hub` and `transformers` (writing shards) are off; the
    library's own bars turn themselves off there.

    Example:
        ```python
        >>> import io
        >>> from transformers import TrainingArguments
        >>> args = TrainingArguments(output_dir="out", use_cpu=True)
        >>> show_progress(args, stream=io.StringIO())  # not a terminal
        >>> args.disable_tqdm
        True
        ```
    """
    if (sys.stderr if stream is None else stream).isatty():
        return
    training_args.disable_tqdm = True
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def user_errors(program: str) -> Iterator[None]:
    """
    Report a user's mistake raised in the block (`ValueError`, `FileNotFoundError`, `FileExistsError`, and an
    output that cannot be written, [`~lxmert_hf.files.WriteError`]) as one line on stderr and exit with status 2, as
    argparse does. Wrap only the checks of a run's inputs in it: an error of
    the same kinds raised later, during training, is a bug and keeps its traceback.

    Example:
        ```python
        >>> with user_errors("vqa.py"):
        ...     raise ValueError("--dropout must be in [0, 1), got 1.5.")
        Traceback (most recent call last):
        ...
        SystemExit: 2
        ```
    """
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError, WriteError) as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
