"""The same results on a CUDA GPU as on the CPU: parity with transformers, SDPA vs eager, a bf16 training step,
the pipeline and the detector. Skipped where no GPU is present (CI); run them on a GPU machine with
`pytest tests/test_cuda.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vqa_helpers as vh
from tiny import ANSWERS, TINY, random_inputs
from transformers import LxmertConfig, LxmertForQuestionAnswering

from lxmert_hf import LxmertForVQA, LxmertVQAConfig, VQAPipeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
QUESTION = "what color is the cube?"


@pytest.fixture(autouse=True)
def full_fp32():
    """fp32 comparisons in true fp32: TF32 matrix products (about 1e-3 relative) would hide real differences."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on(device: str, inputs: dict) -> dict:
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def masked_inputs() -> dict:
    inputs = random_inputs(batch=3, boxes=7, seed=1)
    inputs["visual_attention_mask"] = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    return inputs


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_parity_with_transformers_on_cuda(tmp_path, backend):
    torch.manual_seed(0)
    reference = LxmertForQuestionAnswering(LxmertConfig(num_qa_labels=len(ANSWERS), **TINY)).eval()
    reference.save_pretrained(tmp_path)
    model = LxmertForVQA.from_pretrained(tmp_path, answers=ANSWERS, attention_backend=backend).eval()
    inputs = masked_inputs()
    with torch.no_grad():
        on_cpu = model(**inputs).logits
        expected = reference.cuda()(**on("cuda", inputs)).question_answering_score
        got = model.cuda()(**on("cuda", inputs)).logits
    assert got.device.type == "cuda"
    assert (expected - got).abs().max().item() <= 1e-5
    assert (got.cpu() - on_cpu).abs().max().item() <= 1e-5


def test_sdpa_equals_eager_on_cuda():
    torch.manual_seed(0)
    model = LxmertForVQA(LxmertVQAConfig.from_answers(ANSWERS, **TINY)).eval().cuda()
    eager = LxmertForVQA(LxmertVQAConfig.from_answers(ANSWERS, **TINY, attention_backend="eager")).eval().cuda()
    eager.load_state_dict(model.state_dict())
    inputs = on("cuda", masked_inputs())
    with torch.no_grad():
        assert (model(**inputs).logits - eager(**inputs).logits).abs().max().item() < 1e-5
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sdpa_bf16, eager_bf16 = model(**inputs).logits.float(), eager(**inputs).logits.float()
        fp32 = eager(**inputs).logits
    assert torch.isfinite(sdpa_bf16).all()
    scale = fp32.abs().max().item()
    # bf16 keeps 8 bits of mantissa: a few hundredths of the logits' scale after a few layers.
    assert (sdpa_bf16 - fp32).abs().max().item() <= 0.05 * scale
    assert (sdpa_bf16 - eager_bf16).abs().max().item() <= 0.05 * scale


@pytest.mark.parametrize("head_loss", ["softmax", "bce"])
def test_bf16_training_step_on_cuda(head_loss):
    torch.manual_seed(0)
    model = LxmertForVQA(LxmertVQAConfig.from_answers(ANSWERS, head_loss=head_loss, **TINY)).train().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = on("cuda", masked_inputs())
    labels = torch.zeros(3, len(ANSWERS), device="cuda")
    labels[0, 1], labels[1, 3], labels[2, [0, 2]] = 1.0, 0.6, torch.tensor([0.3, 0.9], device="cuda")
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


def test_pipeline_on_cuda_equals_cpu():
    model = vh.vqa_model()
    images = [vh.features(seed=seed) for seed in range(5)]
    examples = [{"image": image, "question": QUESTION} for image in images]
    on_cpu = VQAPipeline(model, vh.tokenizer(), device="cpu")(examples, batch_size=2)
    pipe = VQAPipeline(vh.vqa_model(), vh.tokenizer(), device="cuda")
    assert pipe.model.device.type == "cuda"
    on_gpu = pipe(examples, batch_size=2)
    for expected, got in zip(on_cpu, on_gpu, strict=True):
        assert [a["answer"] for a in got] == [a["answer"] for a in expected]
        assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], abs=1e-5)


def test_detector_on_cuda():
    """Proposals come from ranking and NMS, so a float difference can swap near-tied boxes: the GPU's regions are
    compared with the CPU's box by box, where the boxes agree."""
    extractor = vh.detector()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(3)]
    on_cpu = extractor.to("cpu")(images, batch_size=1)
    try:
        extractor.to("cuda")
        singles = extractor(images, batch_size=1)
        batch = extractor(images, batch_size=3)
    finally:
        extractor.to("cpu")
    for single, batched, expected in zip(singles, batch, on_cpu, strict=True):
        assert single["visual_feats"].device.type == "cpu"  # results come back on the CPU
        for key in ("visual_feats", "visual_pos", "boxes"):
            torch.testing.assert_close(batched[key], single[key], atol=1e-4, rtol=1e-4)
        assert single["visual_feats"].shape == expected["visual_feats"].shape
        same = (single["boxes"] - expected["boxes"]).abs().amax(dim=1) < 1e-2
        assert same.float().mean() >= 0.5, "most boxes should agree between the GPU and the CPU"
        torch.testing.assert_close(single["visual_feats"][same], expected["visual_feats"][same], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(("precision", "channels_last"), [("bfloat16", False), ("bfloat16", True), ("float16", True)])
def test_detector_reduced_precision_on_cuda(precision, channels_last):
    """Region features of the same proposals under bf16 / fp16 autocast against true fp32, on the GPU; end to end,
    float32 results and, where the box is fp32's, a close feature."""
    from lxmert_hf import RegionFeatureExtractor
    from lxmert_hf.detection.precision import convolution_autocast

    reference = vh.detector()
    fast = RegionFeatureExtractor(reference.config.replace(precision=precision, channels_last=channels_last))
    fast.load_state_dict(reference.state_dict())
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, size=(48 + 8 * (i % 2), 64, 3), dtype=np.uint8) for i in range(4)]
    try:
        reference.to("cuda")
        fast.to("cuda")
        prepared = [reference.prepare(image) for image in images]
        _, proposals = reference._propose(prepared)
        got, expected = [], []
        for extractor, out in ((fast, got), (reference, expected)):
            features, _ = extractor._propose(prepared)
            with convolution_autocast(extractor.config, extractor.device):
                out.append(torch.cat(extractor.roi_heads.region_features(features, proposals)).cpu())
        results, references = fast.detect(prepared), reference.detect(prepared)
    finally:
        reference.to("cpu")
    assert got[0].dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(got[0], expected[0], dim=1)
    assert cosine.mean() >= 0.9995 and cosine.min() >= 0.995, cosine
    for ours, theirs in zip(results, references, strict=True):
        assert ours["visual_feats"].dtype == torch.float32 and ours["visual_feats"].device.type == "cpu"
        same = (ours["boxes"][:, None] - theirs["boxes"][None]).abs().amax(dim=-1).min(dim=1)
        hit = same.values < 0.5
        pairs = ours["visual_feats"][hit], theirs["visual_feats"][same.indices[hit]]
        assert (torch.nn.functional.cosine_similarity(*pairs) >= 0.995).all()


def test_extract_to_store_on_cuda_with_pinned_workers(tmp_path):
    """Loader workers, pinned memory and grouped batches on a GPU: the store holds every image."""
    from PIL import Image

    from lxmert_hf import load_features
    from lxmert_hf.detection.extraction import extract_to_store, list_images

    rng = np.random.default_rng(6)
    for index in range(6):
        size = (48, 64, 3) if index % 2 else (64, 48, 3)
        Image.fromarray(rng.integers(0, 256, size=size, dtype=np.uint8)).save(tmp_path / f"{index}.png")
    extractor = vh.detector()
    try:
        extractor.to("cuda")
        report = extract_to_store(
            extractor, list_images(tmp_path), tmp_path / "store", batch_size=2, num_workers=2, progress=False
        )
    finally:
        extractor.to("cpu")
    assert report.written == 6 and not report.skipped
    assert sorted(load_features(tmp_path / "store")["image_id"]) == [str(i) for i in range(6)]


# -- training speed (issue: training throughput on one GPU) ---------------------------------------------------------
TOY_RUN = [
    "--toy_train_images", "400", "--toy_eval_images", "60", "--num_train_epochs", "3", "--logging_steps", "1000",
    "--show_examples", "0", "--save_strategy", "no", "--eval_strategy", "no", "--load_best_model_at_end", "false",
    "--question_only_baseline", "false", "--seed", "7",
]  # fmt: skip
FAITHFUL = ["--precision", "fp32", "--static_shapes", "false", "--torch_compile", "false", "--optim", "adamw_torch"]


def test_training_defaults_on_cuda_are_the_fast_path():
    from lxmert_hf.training import parse_args

    args = parse_args(["--output_dir", "out"])[2]
    assert (args.static_shapes, args.torch_compile, args.optim) == (True, False, "adamw_torch_fused")
    assert args.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert args.dataloader_pin_memory and args.accelerator_config.non_blocking
    assert args.dataloader_num_workers == 4 and args.logging_nan_inf_filter is False


def test_fast_defaults_reach_the_accuracy_of_fp32_eager_on_cuda(tmp_path):
    """The defaults on a GPU (bf16 autocast, static shapes, torch.compile, fused AdamW, loader workers, no loss
    read-back) against the faithful fp32 eager path: the same seed and steps reach the same toy VQA accuracy
    (within 0.01, one point)."""
    from pathlib import Path

    from lxmert_hf.training.recipe import run_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "vqa.py"
    common = [*TOY_RUN, "--cache_dir", str(tmp_path / "cache"), "--dataloader_num_workers", "2"]
    faithful = run_recipe("vqa", [*common, "--output_dir", str(tmp_path / "faithful"), *FAITHFUL], recipe)
    fast = run_recipe("vqa", [*common, "--output_dir", str(tmp_path / "fast")], recipe)
    assert faithful["eval_vqa_accuracy"] > 40.0, "the toy run should learn"
    assert fast["eval_vqa_accuracy"] == pytest.approx(faithful["eval_vqa_accuracy"], abs=1.0)


def test_fast_training_steps_never_wait_on_the_gpu(tmp_path):
    """Between the start and the end of every optimizer step of the fast path (bf16, static shapes, fused AdamW,
    the NaN filter off; compile aside, timed above), nothing waits on the device: CUDA's sync debug mode turns any
    synchronising call into an error. Logging, after the end of a step, may read the loss back."""
    import datasets
    from transformers import TrainerCallback

    from lxmert_hf.data.collator import VQADataCollator
    from lxmert_hf.training import VQATrainer, VQATrainingArguments

    class NoSync(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.set_sync_debug_mode("error")

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.set_sync_debug_mode(0)

    rows = [{**vh.features(seed=i), "question": QUESTION, "labels": np.eye(len(vh.ANSWERS))[i % 3]} for i in range(24)]
    args = VQATrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=6, logging_steps=3,
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False, precision="bf16", static_shapes=True,
        torch_compile=False, logging_nan_inf_filter=False, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = VQATrainer(
        model=vh.vqa_model().train(), args=args, train_dataset=datasets.Dataset.from_list(rows),
        processing_class=vh.tokenizer(), callbacks=[NoSync()],
        data_collator=VQADataCollator(vh.tokenizer(), static_shapes=True, num_regions=6),
    )  # fmt: skip
    try:
        trainer.train()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert trainer.state.global_step == 6
