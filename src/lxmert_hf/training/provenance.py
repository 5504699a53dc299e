"""Where a recipe's checkpoints come from, for their config and model card: the command that ran the recipe, and
what its data says about itself (the extractor of its region features, the Hub dataset it was made from).

The command is the one to type again: the launcher (`python`, or `accelerate launch` with the process count and
mixed precision it was given), the recipe's path in the repository, and its arguments, shell-quoted, without the
values of token arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lxmert_hf.data.builder import read_prepared
from lxmert_hf.data.store import FeatureStore
from lxmert_hf.data.store.format import HUB_DATASET_KEY, read_complete_manifest

logger = logging.getLogger(__name__)

# `accelerate launch` sets this in every process it starts.
ACCELERATE_MARKER = "ACCELERATE_MIXED_PRECISION"
TOY_DATASET_NAME = "toy {task} world (lxmert_hf.toy)"


@dataclasses.dataclass
class RunRecord:
    """
    What the checkpoints of a recipe run say about how they were made (see [`record_run`]).

    Args:
        command (`str`, *optional*): the shell command that ran the recipe.
        dataset (`str`, *optional*): the Hub id of the dataset the data was made from, when its files record one.
        dataset_name (`str`, *optional*): how the data is named in the card (a Hub id or a description, never a
            local path).
        eval_split (`str`, *optional*): the split the results are measured on.
        visual_features (`dict`, *optional*): what made the region features, as the feature store records it
            (`None`: not recorded), for `config.visual_features`.
    """

    command: str | None = None
    dataset: str | None = None
    dataset_name: str | None = None
    eval_split: str | None = None
    visual_features: dict[str, Any] | None = None


def record_run(
    script: str | os.PathLike,
    argv: Sequence[str],
    prepared_dir: str | os.PathLike,
    eval_split: str | None = None,
    toy: bool = False,
) -> RunRecord:
    """
    The [`RunRecord`] of a recipe run: its command ([`launch_command`]) and what the prepared directory and its
    feature store record. A store that does not record its extractor is reported (a warning): then the checkpoints
    cannot say which detector makes their features from a picture.

    Example:
        ```python
        >>> from lxmert_hf.training.provenance import record_run
        >>> record = record_run("recipes/vqa.py", ["--dataset", "data/vqa"], "data/vqa")  # doctest: +SKIP
        >>> record.visual_features["detector"]  # doctest: +SKIP
        'unc-nlp/frcnn-vg-finetuned'
        ```
    """
    metadata = read_prepared(prepared_dir)
    store = FeatureStore(metadata["features"])
    if store.extractor is None:
        logger.warning(
            f"the feature store at {store.store_dir} does not record what made its features; the checkpoints of this "
            "run cannot name a region detector, so answering about pictures will need one given (`ask --detector`). "
            "Stores made by `lxmert-hf extract` or `lxmert-hf prepare features` record it."
        )
    hub_dataset = metadata.get(HUB_DATASET_KEY) or read_complete_manifest(store.store_dir).get(HUB_DATASET_KEY)
    toy_name = TOY_DATASET_NAME.format(task=str(metadata["task"]).upper())
    name = hub_dataset or (toy_name if toy else f"{metadata['task']} (prepared with lxmert-hf)")
    return RunRecord(
        command=launch_command(script, argv), dataset=hub_dataset, dataset_name=name, eval_split=eval_split,
        visual_features=store.extractor,
    )  # fmt: skip


def launch_command(script: str | os.PathLike, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """
    The shell command that runs `script` (a recipe, shown by its path in the repository) with `argv` again, as it was
    launched: with `python`, or `accelerate launch` and the process count and mixed precision it gave (`environ`,
    default `os.environ`, tells which). The values of `--*_token` arguments are left out.

    Example:
        ```python
        >>> from lxmert_hf.training.provenance import launch_command
        >>> launch_command("/src/repo/recipes/vqa.py", ["--dataset", "my data", "--hub_token", "hf_x"], environ={})
        "python recipes/vqa.py --dataset 'my data'"
        >>> environ = {"ACCELERATE_MIXED_PRECISION": "bf16", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        >>> launch_command("/src/repo/recipes/vqa.py", ["--max_steps", "10"], environ)
        'accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16 recipes/vqa.py --max_steps 10'
        ```
    """
    environ = os.environ if environ is None else environ
    script = Path(script).resolve()
    return shlex.join([*_launcher(environ), script.relative_to(script.parents[1]).as_posix(), *_without_secrets(argv)])


def _launcher(environ: Mapping[str, str]) -> list[str]:
    processes = int(environ.get("WORLD_SIZE", "1"))
    if ACCELERATE_MARKER not in environ:
        return ["python"] if processes == 1 else ["torchrun", "--nproc_per_node", environ.get("LOCAL_WORLD_SIZE", "1")]
    launcher = ["accelerate", "launch"]
    machines = processes // max(int(environ.get("LOCAL_WORLD_SIZE", processes)), 1)
    if processes > 1:
        launcher += ["--multi_gpu", "--num_processes", str(processes)]
    if machines > 1:
        launcher += ["--num_machines", str(machines)]
    if environ[ACCELERATE_MARKER] not in ("", "no"):
        launcher += ["--mixed_precision", environ[ACCELERATE_MARKER]]
    return launcher


def _without_secrets(argv: Sequence[str]) -> list[str]:
    kept, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        flag, has_value, _ = arg.partition("=")
        if flag.startswith("--") and (flag.endswith("_token") or flag == "--token"):
            skip_value = not has_value
            continue
        kept.append(arg)
    return kept
