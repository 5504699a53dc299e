"""The recipes' training-speed options (`lxmert_hf.training.speed`): their defaults by device, static shapes in the
collators, a training step that never waits on the device outside logging steps, `torch.compile`, and the fast
levers that exist on the CPU reaching the accuracy of the faithful fp32 eager path."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import vqa_helpers as vh
from transformers import TrainerCallback

from lxmert_hf import LxmertForNLVR2, LxmertNLVR2Config
from lxmert_hf.data.collator import NLVR2DataCollator, VQADataCollator
from lxmert_hf.training import VQATrainer, VQATrainingArguments, parse_args
from lxmert_hf.training import speed as speed_module
from lxmert_hf.training.speed import HostCheckedCollator, host_value_check

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["what color is the cube?", "how many cat?", "is there a red cube?"]


def parse(*argv: str):
    return parse_args([*argv, "--output_dir", "out"])[2]


# -- defaults and arguments -----------------------------------------------------------------------------------------
def test_cpu_defaults_are_the_faithful_path():
    args = parse()
    assert (args.precision, args.bf16, args.fp16) == ("fp32", False, False)
    assert (args.static_shapes, args.torch_compile, args.dataloader_num_workers) == (False, False, 0)
    assert args.logging_nan_inf_filter is True and args.accelerator_config.non_blocking is False


def test_cuda_defaults_are_the_fast_path(monkeypatch):
    monkeypatch.setattr(speed_module, "training_on_cuda", lambda args: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    args = parse()
    assert (args.precision, args.bf16, args.static_shapes, args.torch_compile) == ("bf16", True, True, False)
    assert args.dataloader_num_workers == 4 and args.logging_nan_inf_filter is False
    assert args.optim == "adamw_torch_fused"
    faithful = parse("--precision", "fp32", "--static_shapes", "false", "--torch_compile", "false",
                     "--optim", "adamw_torch", "--logging_nan_inf_filter", "true")  # fmt: skip
    assert (faithful.precision, faithful.bf16, faithful.static_shapes, faithful.torch_compile) == (
        "fp32", False, False, False,
    )  # fmt: skip
    assert faithful.optim == "adamw_torch" and faithful.logging_nan_inf_filter is True
    assert parse("--torch_compile").torch_compile is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert parse().precision == "fp32"  # no fp16 by default: its loss scale is read back every step


def test_auto_precision_follows_the_launcher(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert (parse().precision, parse().bf16) == ("bf16", True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert (parse().precision, parse().bf16) == ("fp32", False)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--precision", "bf16"], ("bf16", True, False)),
        (["--precision", "auto", "--bf16"], ("bf16", True, False)),
        (["--torch_compile"], None),
        (["--static_shapes"], None),
    ],
)
def test_options_given_keep_their_value(argv, expected):
    args = parse(*argv)
    if expected is not None:
        assert (args.precision, args.bf16, args.fp16) == expected
    else:
        assert getattr(args, argv[0].removeprefix("--")) is True


def test_options_from_a_config_file(tmp_path):
    config = tmp_path / "fast.yaml"
    config.write_text("static_shapes: true\ntorch_compile: false\nprecision: bf16\n")
    args = parse("--config", str(config))
    assert (args.static_shapes, args.torch_compile, args.bf16) == (True, False, True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "fp8"], r"`--precision fp8` is not one of auto, bf16, fp16, fp32"),
        (["--precision", "fp32", "--bf16"], r"`--precision fp32` contradicts `--bf16`"),
        (["--bf16", "--fp16"], r"`--bf16` and `--fp16` both given"),
    ],
)
def test_contradicting_precision_is_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(*argv)


# -- static shapes --------------------------------------------------------------------------------------------------
def examples(counts=(6, 3, 4), ids: bool = False) -> list[dict]:
    tokenizer = vh.tokenizer()
    rows = []
    for index, (question, regions) in enumerate(zip(QUESTIONS, counts, strict=True)):
        row = {**vh.features(regions=regions, seed=index), "labels": np.eye(len(vh.ANSWERS), dtype=np.float32)[index]}
        row.update({"input_ids": tokenizer(question)["input_ids"]} if ids else {"question": question})
        rows.append(row)
    return rows


@pytest.mark.parametrize("ids", [False, True])
def test_static_shapes_pad_to_fixed_sizes_without_changing_the_outputs(ids):
    dynamic = VQADataCollator(vh.tokenizer(), max_question_length=12)(examples(ids=ids))
    static = VQADataCollator(vh.tokenizer(), max_question_length=12, static_shapes=True, num_regions=9)(
        examples(ids=ids)
    )
    assert dynamic["input_ids"].shape[1] < 12 and dynamic["visual_feats"].shape[1] == 6
    assert static["input_ids"].shape == (3, 12) and static["visual_feats"].shape == (3, 9, 16)
    assert static["visual_attention_mask"].tolist()[1] == [1] * 3 + [0] * 6
    width = dynamic["input_ids"].shape[1]
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        torch.testing.assert_close(static[name][:, :width], dynamic[name])
        assert (static[name][:, width:] == 0).all()
    model = vh.vqa_model()
    with torch.no_grad():
        torch.testing.assert_close(model(**static).logits, model(**dynamic).logits, atol=1e-5, rtol=1e-5)


def test_static_shapes_give_a_mask_even_when_every_image_has_all_regions():
    batch = VQADataCollator(vh.tokenizer(), static_shapes=True, num_regions=6)(examples(counts=(6, 6, 6)))
    assert batch["visual_attention_mask"].tolist() == [[1] * 6] * 3
    assert batch["input_ids"].shape == (3, 20)


def test_static_shapes_of_nlvr2_pairs():
    collate = NLVR2DataCollator(vh.tokenizer(), max_question_length=10, static_shapes=True, num_regions=5)
    pairs = []
    for index, regions in enumerate((3, 4)):
        one, two = vh.features(regions=regions, seed=index), vh.features(regions=2, seed=9)
        pairs.append({"question": QUESTIONS[index], "labels": index % 2,
                      "visual_feats": [one["visual_feats"], np.pad(two["visual_feats"], ((0, regions - 2), (0, 0)))],
                      "visual_pos": [one["visual_pos"], np.pad(two["visual_pos"], ((0, regions - 2), (0, 0)))],
                      "visual_attention_mask": [[1] * regions, [1, 1] + [0] * (regions - 2)]})  # fmt: skip
    batch = collate(pairs)
    assert batch["input_ids"].shape == (2, 10) and batch["visual_feats"].shape == (2, 2, 5, 16)
    assert batch["visual_attention_mask"][0].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    dynamic = NLVR2DataCollator(vh.tokenizer(), max_question_length=10)(pairs)
    torch.manual_seed(0)
    model = LxmertForNLVR2(LxmertNLVR2Config(**vh.SIZES, visual_feat_dim=16)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(**dynamic).logits, atol=1e-5, rtol=1e-5)


def test_static_shapes_refuse_more_regions_than_the_fixed_count():
    with pytest.raises(ValueError, match=r"has 6 regions, more than `num_regions` = 4"):
        VQADataCollator(vh.tokenizer(), static_shapes=True, num_regions=4)(examples())
    with pytest.raises(ValueError, match=r"`num_regions` must be at least 1"):
        VQADataCollator(vh.tokenizer(), static_shapes=True, num_regions=0)


# -- no host-device synchronisation inside a step -------------------------------------------------------------------
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


class CountReads(TrainerCallback):
    """Counts, between the start and the end of each optimizer step, the calls that read a tensor's value back to
    the host (on a GPU each would wait for the device); logging happens after the end of a step."""

    def __init__(self, monkeypatch):
        self.counting, self.per_step = False, []
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(original))

    def _counted(self, original):
        def read(tensor, *args, **kwargs):
            if self.counting:
                self.per_step[-1] += 1
            return original(tensor, *args, **kwargs)

        return read

    def on_step_begin(self, args, state, control, **kwargs):
        self.per_step.append(0)
        self.counting = True

    def on_step_end(self, args, state, control, **kwargs):
        self.counting = False


def train_counting_reads(tmp_path, monkeypatch, **options) -> list[int]:
    rows = [{**vh.features(seed=i), "question": QUESTIONS[i % 3], "labels": np.eye(len(vh.ANSWERS))[i % 3]}
            for i in range(24)]  # fmt: skip
    args = VQATrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=6, logging_steps=3,
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False, use_cpu=True,
        **{"logging_nan_inf_filter": False, **options},
    )  # fmt: skip
    counter = CountReads(monkeypatch)
    trainer = VQATrainer(
        model=vh.vqa_model().train(), args=args, train_dataset=datasets.Dataset.from_list(rows),
        processing_class=vh.tokenizer(), data_collator=VQADataCollator(vh.tokenizer()), callbacks=[counter],
    )  # fmt: skip
    trainer.train()
    assert len(counter.per_step) == 6
    return counter.per_step


def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch):
    assert train_counting_reads(tmp_path, monkeypatch) == [0] * 6


def test_the_count_sees_the_reads_it_is_meant_to_catch(tmp_path, monkeypatch):
    # The NaN filter of the logged loss reads each step's loss back; the forward pass's own value checks (skipped
    # in training, where the batches are checked on the host) read their flags back once.
    assert all(train_counting_reads(tmp_path, monkeypatch, logging_nan_inf_filter=True))
    batch, model = VQADataCollator(vh.tokenizer())(examples()), vh.vqa_model()
    counter = CountReads(monkeypatch)
    counter.on_step_begin(None, None, None)
    model(**batch)
    assert counter.per_step == [1]


def test_training_batches_are_checked_on_the_host():
    check = host_value_check(vh.vqa_model())
    collate = HostCheckedCollator(VQADataCollator(vh.tokenizer()), check)
    assert collate(examples())["input_ids"].shape[0] == 3
    bad = examples()
    bad[1]["visual_pos"] = bad[1]["visual_pos"] + 2.0
    with pytest.raises(ValueError, match=r"`visual_pos` holds values in \[.*\], expected boxes normalized"):
        collate(bad)
    nan = examples()
    nan[2]["visual_feats"][0, 0] = np.nan
    unchecked = HostCheckedCollator(VQADataCollator(vh.tokenizer(), check_finite=False), check)
    with pytest.raises(ValueError, match=r"`visual_feats` holds NaN or infinite values \(batch rows \[2\]\)"):
        unchecked(nan)
    labels = examples()
    labels[0]["labels"] = 17
    labels[1]["labels"], labels[2]["labels"] = 1, 2
    with pytest.raises(ValueError, match=r"`labels` holds answer indices \[17\] outside \[0, 6\)"):
        collate(labels)


# -- torch.compile and accuracy -------------------------------------------------------------------------------------
def train_losses(tmp_path, **options) -> tuple[list[float], torch.nn.Module]:
    rows = [{**vh.features(seed=i), "question": QUESTIONS[i % 3], "labels": np.eye(len(vh.ANSWERS))[i % 3]}
            for i in range(12)]  # fmt: skip
    args = VQATrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=3, logging_steps=1,
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False, use_cpu=True, learning_rate=1e-3,
        seed=0, **options,
    )  # fmt: skip
    collator = VQADataCollator(vh.tokenizer(), static_shapes=True, num_regions=6)
    trainer = VQATrainer(
        model=vh.vqa_model().train(), args=args, train_dataset=datasets.Dataset.from_list(rows),
        processing_class=vh.tokenizer(), data_collator=collator,
    )  # fmt: skip
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], trainer.model_wrapped


@pytest.mark.slow
def test_compiled_training_steps_give_the_eager_losses(tmp_path):
    eager, _ = train_losses(tmp_path / "eager")
    compiled, model = train_losses(tmp_path / "compiled", torch_compile=True)
    assert hasattr(model, "_orig_mod"), "the Trainer should have trained the compiled model"
    assert len(compiled) == len(eager) == 3
    assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-4)


TOY_RUN = [
    "--toy_train_images", "400", "--toy_eval_images", "60", "--num_train_epochs", "3", "--logging_steps", "1000",
    "--show_examples", "0", "--save_strategy", "no", "--eval_strategy", "no", "--load_best_model_at_end", "false",
    "--question_only_baseline", "false", "--seed", "7",
]  # fmt: skip


def test_cpu_levers_reach_the_accuracy_of_the_faithful_path(tmp_path):
    """Static shapes and fused AdamW, the levers the CPU has (compile is timed above), against fp32 eager with
    dynamic shapes and AdamW: the same seed and steps reach the same VQA accuracy (within 0.01, one point)."""
    from lxmert_hf.training.recipe import run_recipe

    common = [*TOY_RUN, "--cache_dir", str(tmp_path / "cache")]
    faithful = run_recipe(
        "vqa", [*common, "--output_dir", str(tmp_path / "faithful"), "--precision", "fp32", "--static_shapes",
                "false", "--torch_compile", "false", "--optim", "adamw_torch"], ROOT / "recipes" / "vqa.py",
    )  # fmt: skip
    fast = run_recipe(
        "vqa", [*common, "--output_dir", str(tmp_path / "fast"), "--static_shapes", "--optim", "adamw_torch_fused"],
        ROOT / "recipes" / "vqa.py",
    )  # fmt: skip
    assert faithful["eval_vqa_accuracy"] > 40.0, "the toy run should learn"
    assert fast["eval_vqa_accuracy"] == pytest.approx(faithful["eval_vqa_accuracy"], abs=1.0)


# -- the benchmark --------------------------------------------------------------------------------------------------
def load_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


def test_flops_of_lxmert_base_are_those_of_the_paper_shapes():
    benchmark = load_benchmark()
    flops = benchmark.train_flops_per_sample(benchmark.MODEL_SIZES["base"], 20, 36, 2048, 3129)
    # About 10.5 GFLOP forward (20 tokens x 9 language layers, 36 regions x 5 vision layers, 56 x 5 cross layers),
    # three times that to train.
    assert 30e9 < flops < 33e9
    assert benchmark.train_flops_per_sample(benchmark.MODEL_SIZES["base"], 20, 72, 2048, 3129) > 1.5 * flops


def test_the_benchmark_times_the_recipe_path_and_the_data_path(tmp_path, capsys):
    benchmark = load_benchmark()
    benchmark.main([
        "--model-size", "tiny", "--num-images", "16", "--batch-sizes", "4", "--steps", "2",
        "--warmup", "1", "--rounds", "1", "--rows", "default", "static_shapes", "--workdir", str(tmp_path),
        "--peak-tflops", "1",
    ])  # fmt: skip
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| 4 |")]
    names = [benchmark.ROWS[row][0] for row in ("baseline", "default", "static_shapes")]
    assert [row[1].strip() for row in rows] == [*names, "data path alone (the default's loader, no model)"]
    assert rows[0][4].strip() == "1.00x" and all(float(row[3]) > 0 for row in rows)
    assert all(float(row[5]) > 0 for row in rows[:3])  # MFU against the given peak
