"""Run `recipes/vqa.py` with its arguments under a test callback: it prints the steps training starts and ends at,
and with `--kill-after-first-save` (taken off the arguments) SIGKILLs the process, every rank, right after the first
checkpoint.

The resume tests launch this in place of the recipe (one process, or `accelerate launch` with two): the run dies at
a known step, as if the machine had been cut off, with no wall-clock guess about when to kill it; and the resumed
run shows that it really started from the checkpoint rather than from scratch.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "vqa.py"
KILL = "--kill-after-first-save"


class Probe(TrainerCallback):
    def __init__(self, kill_after_save: bool):
        self.kill_after_save = kill_after_save
        self.first_step = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step and state.is_world_process_zero:
            print(f"first optimizer step: {state.global_step}", flush=True)
        self.first_step = False

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print(f"last optimizer step: {state.global_step}", flush=True)

    def on_save(self, args, state, control, **kwargs):
        if not self.kill_after_save:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank has written its part of the checkpoint (its random state)
        os.kill(os.getpid(), signal.SIGKILL)


def load_recipe():
    spec = importlib.util.spec_from_file_location("vqa_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def probed_recipe(kill_after_save: bool = False):
    """The recipe module, the trainer of the run it makes given a [`Probe`]."""
    import lxmert_hf.training.recipe as run

    build_trainer = run.build_trainer

    def build_probed_trainer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(Probe(kill_after_save))
        return trainer

    run.build_trainer = build_probed_trainer
    return load_recipe()


if __name__ == "__main__":
    probed_recipe(KILL in sys.argv).main([argument for argument in sys.argv[1:] if argument != KILL])
