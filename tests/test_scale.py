"""Training at scale with the recipe: the shipped accelerate configs (two CPU processes, DeepSpeed ZeRO-2/3, FSDP),
gradient checkpointing and TensorBoard logging."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from guards import HANG_GUARD_S

from lxmert_hf import LxmertForVQA

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "vqa.py"
CONFIGS = ROOT / "recipes" / "accelerate"
DEEPSPEED = ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
# A small toy world and two optimizer steps, each saved; the final report without extras.
TINY_RUN = [
    "--toy_train_images", "8", "--toy_eval_images", "4", "--hidden_size", "32", "--num_attention_heads", "2",
    "--intermediate_size", "64", "--max_steps", "2", "--per_device_train_batch_size", "8", "--logging_steps", "1",
    "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end", "false",
    "--question_only_baseline", "false", "--show_examples", "0", "--per_device_eval_batch_size", "64",
]  # fmt: skip


def launch(config: str, tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file recipes/accelerate/<config> recipes/vqa.py ...` (CPU processes, full precision,
    any free port)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
        "--mixed_precision", "no", "--main_process_port", "0", *options,
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=HANG_GUARD_S)


def train(config: str, tmp_path: Path, *launch_options: str) -> tuple[str, Path]:
    output = tmp_path / "out"
    recipe = [str(RECIPE), *TINY_RUN, "--output_dir", str(output), "--use_cpu", "true"]
    result = launch(config, tmp_path, *launch_options, *recipe)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout, output


@pytest.mark.slow
def test_the_cpu_config_trains_with_two_processes(tmp_path):
    stdout, output = train("cpu.yaml", tmp_path)
    assert "Trained with 2 process(es) on cpu" in stdout
    assert (output / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DEEPSPEED, reason="DeepSpeed is not installed (pip install deepspeed)")
@pytest.mark.parametrize(("config", "sharded"), [(DEEPSPEED[0], "optim_states"), (DEEPSPEED[1], "model_states")])
def test_deepspeed_configs_train_with_two_processes(tmp_path, config, sharded):
    stdout, output = train(config, tmp_path, "--num_processes", "2")
    assert "Trained with 2 process(es) on cpu" in stdout
    # One shard per process in DeepSpeed's checkpoint, and an ordinary model folder from `save_model`.
    shards = sorted(path.name for path in (output / "checkpoint-1" / "global_step1").glob(f"*{sharded}.pt"))
    assert shards == [f"zero_pp_rank_{rank}_mp_rank_00_{sharded}.pt" for rank in (0, 1)]
    assert (output / "model.safetensors").is_file() and (output / "config.json").is_file()


@pytest.mark.parametrize("config", [*DEEPSPEED, "fsdp.yaml"])
def test_the_scale_configs_launch_the_recipe(tmp_path, config):
    # accelerate runs FSDP only on GPUs (on the CPU it falls back to plain data parallelism), and DeepSpeed is not a
    # dependency: here the configs are read and checked by `accelerate launch`; benchmarks/run_gpu.sh trains with
    # each of them on a GPU.
    result = launch(config, tmp_path, "--num_processes", "1", str(RECIPE), "--help")
    if config in DEEPSPEED and not HAS_DEEPSPEED:
        assert result.returncode != 0 and "DeepSpeed is not installed" in result.stderr, result.stderr[-3000:]
    else:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        assert "--gradient_checkpointing" in result.stdout and "--dataset" in result.stdout


@pytest.mark.parametrize("config", [None, "default.yaml"], ids=["no_config", "default"])
def test_the_default_config_leaves_accelerate_nothing_to_guess(tmp_path, config):
    # No config of the user's own (accelerate looks for it under HF_HOME), no thread count from the environment.
    env = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}
    env["HF_HOME"] = str(tmp_path / "home")
    chosen = ["--config_file", str(CONFIGS / config)] if config else []
    command = [sys.executable, "-m", "accelerate.commands.launch", *chosen, str(RECIPE), "--help"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=HANG_GUARD_S)
    assert result.returncode == 0 and "--dataset" in result.stdout, result.stderr[-3000:]
    # Without a config, accelerate lists the values it guessed; the shipped default names them all.
    assert ("were not passed to `accelerate launch`" in result.stderr) == (config is None), result.stderr[-3000:]


def test_fsdp_shards_every_encoder_layer_on_its_own(tiny_config):
    settings = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=settings["fsdp_version"], auto_wrap_policy=settings["fsdp_auto_wrap_policy"]
    )
    model = LxmertForVQA(tiny_config)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    units = [name for name, module in model.named_modules() if policy(module)]
    assert units == ["lxmert.encoder.layer.0", "lxmert.encoder.x_layers.0", "lxmert.encoder.r_layers.0"]


def run_recipe_here(tmp_path: Path, monkeypatch, *options: str) -> Path:
    """Run the recipe in this process on a small toy world; returns its output folder."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("vqa_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    output = tmp_path / "out"
    recipe.main([*TINY_RUN, "--save_strategy", "no", "--output_dir", str(output), "--use_cpu", "true", *options])
    return output


def test_the_recipe_trains_with_gradient_checkpointing(tmp_path, monkeypatch):
    import transformers.modeling_utils

    calls = []
    checkpoint = transformers.modeling_utils.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        calls.append(function)
        return checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting_checkpoint)
    with pytest.warns(FutureWarning, match="activation_checkpointing"):  # transformers' older name of the flag
        run_recipe_here(tmp_path, monkeypatch, "--gradient_checkpointing", "true")
    # Two steps of a model with one language and one cross-modality layer: each layer checkpointed at each step.
    assert len(calls) == 2 * 2


def test_the_recipe_logs_to_tensorboard(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = run_recipe_here(tmp_path, monkeypatch, "--report_to", "tensorboard")
    (run,) = (output / "runs").iterdir()
    events = EventAccumulator(str(run)).Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2]
