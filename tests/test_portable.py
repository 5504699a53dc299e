"""Checkpoints loadable anywhere: transformers' own `LxmertForQuestionAnswering` layout, read by transformers alone
(in a fresh virtual environment without lxmert_hf), by the Auto classes, by the pipeline registry and by the Hub's
custom-pipeline mechanism; checkpoints of the earlier layout still load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
import vqa_helpers as vh
from guards import HANG_GUARD_S
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForVisualQuestionAnswering,
    LxmertConfig,
    LxmertForQuestionAnswering,
)
from transformers.trainer_utils import load_sharded_checkpoint

import lxmert_hf
from lxmert_hf import LxmertForVQA, LxmertVQAConfig, VQAPipeline
from lxmert_hf.configuration import LegacyLxmertVQAConfig
from lxmert_hf.convert import verification_inputs
from lxmert_hf.hub import CUSTOM_PIPELINE_TASK, describe_visual_features, save_checkpoint

QUESTION = "what color is the cube?"


def described_model(**config) -> LxmertForVQA:
    model = vh.vqa_model(seed=3, head_loss="bce", attention_backend="sdpa", **config)
    model.config.visual_features = describe_visual_features(None, source="toy world", num_boxes=6)
    return model


def model_inputs(seed: int = 0) -> dict:
    return verification_inputs(described_model().config, seed=seed)


@torch.no_grad()
def logits(model, inputs: dict) -> torch.Tensor:
    output = model.eval()(**inputs)
    return output.logits if hasattr(output, "logits") else output.question_answering_score


@pytest.fixture
def folder(tmp_path) -> Path:
    return save_checkpoint(described_model(), tmp_path / "checkpoint", tokenizer=vh.tokenizer())


def test_saved_folder_is_transformers_question_answering_layout(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "lxmert" and config["architectures"] == ["LxmertForQuestionAnswering"]
    assert config["num_qa_labels"] == len(vh.ANSWERS) == len(config["id2label"])
    assert [config["id2label"][str(i)] for i in range(len(vh.ANSWERS))] == vh.ANSWERS
    assert config["lxmert_hf_version"] == lxmert_hf.__version__ and config["head_loss"] == "bce"
    assert config["attention_backend"] == "sdpa" and config["visual_features"]["source"] == "toy world"
    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        saved = set(handle.keys())
    reference = LxmertForQuestionAnswering(LxmertConfig(**vh.SIZES, visual_feat_dim=16, num_qa_labels=6))
    assert saved == set(reference.state_dict())
    # In this process too, transformers' own classes take the folder as theirs.
    model, info = LxmertForQuestionAnswering.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    assert type(AutoModelForQuestionAnswering.from_pretrained(folder)) is LxmertForQuestionAnswering
    inputs = model_inputs()
    torch.testing.assert_close(logits(model, inputs), logits(described_model(), inputs), atol=1e-5, rtol=0)


FRESH_ENVIRONMENT_CHECK = textwrap.dedent(
    """
    import json, logging, sys, warnings
    try:
        import lxmert_hf  # noqa: F401
        has_lxmert_hf = True
    except ImportError:
        has_lxmert_hf = False
    import torch
    from transformers import AutoModelForQuestionAnswering, LxmertForQuestionAnswering

    messages = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logging.getLogger("transformers").addHandler(Keep())
    folder, expected_file = sys.argv[1], sys.argv[2]
    expected = torch.load(expected_file, weights_only=True)
    report = {"has_lxmert_hf": has_lxmert_hf, "loaded": {}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for loader in (LxmertForQuestionAnswering, AutoModelForQuestionAnswering):
            model, info = loader.from_pretrained(folder, output_loading_info=True)
            with torch.no_grad():
                got = model.eval()(**expected["inputs"]).question_answering_score
            config = model.config
            report["loaded"][loader.__name__] = {
                "class": type(model).__name__,
                "info": {key: sorted(map(str, value)) for key, value in info.items()},
                "max_abs_diff": float((got - expected["logits"]).abs().max()),
                "answers": [config.id2label[i] for i in range(config.num_qa_labels)],
                "head_loss": config.head_loss,
            }
    report["messages"] = messages + [str(w.message) for w in caught]
    print(json.dumps(report))
    """
)


def fresh_python(root: Path) -> str:
    """A virtual environment that sees torch and transformers but not lxmert_hf: its `.pth` file names the
    site-packages folder holding them as a plain path, so that folder's own `.pth` files (the editable install of
    lxmert_hf) are not processed."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=HANG_GUARD_S)
    python = str(root / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=HANG_GUARD_S,
    ).stdout.strip()  # fmt: skip
    holders = dict.fromkeys(str(Path(module.__file__).parents[1]) for module in (torch, transformers))
    Path(purelib, "torch_and_transformers.pth").write_text("\n".join(holders) + "\n")
    return python


def isolated_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}


def test_transformers_alone_loads_the_checkpoint(folder, tmp_path):
    inputs = model_inputs(seed=4)
    torch.save({"inputs": inputs, "logits": logits(described_model(), inputs)}, tmp_path / "expected.pt")
    (tmp_path / "check.py").write_text(FRESH_ENVIRONMENT_CHECK)
    python = fresh_python(tmp_path / "venv")
    run = subprocess.run(
        [python, str(tmp_path / "check.py"), str(folder), str(tmp_path / "expected.pt")],
        capture_output=True, text=True, cwd=tmp_path, env=isolated_env(), timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["has_lxmert_hf"] is False
    for loader, expected_class in [
        ("LxmertForQuestionAnswering", "LxmertForQuestionAnswering"),
        ("AutoModelForQuestionAnswering", "LxmertForQuestionAnswering"),
    ]:
        loaded = report["loaded"][loader]
        assert loaded["class"] == expected_class
        assert loaded["info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        assert loaded["max_abs_diff"] <= 1e-5
        assert loaded["answers"] == vh.ANSWERS and loaded["head_loss"] == "bce"
    about_keys = [m for m in report["messages"] if any(w in m.lower() for w in ("missing", "unexpected", "initial"))]
    assert not about_keys, about_keys


def test_round_trip_keeps_answers_and_options(folder):
    loaded = LxmertForVQA.from_pretrained(folder)
    assert type(loaded.config) is LxmertVQAConfig and loaded.config.answers == vh.ANSWERS
    assert loaded.config.head_loss == "bce" and loaded.config.attention_backend == "sdpa"
    assert loaded.config.visual_features == described_model().config.visual_features
    inputs = model_inputs()
    torch.testing.assert_close(logits(loaded, inputs), logits(described_model(), inputs), atol=0, rtol=0)


def test_auto_classes_and_pipeline_registry(folder):
    config = AutoConfig.from_pretrained(folder)
    assert type(config) is LxmertConfig and config.head_loss == "bce"  # transformers' class, our keys kept
    inputs = model_inputs()
    expected = logits(described_model(), inputs)
    vqa = AutoModelForVisualQuestionAnswering.from_pretrained(folder)
    assert type(vqa) is LxmertForVQA and vqa.config.answers == vh.ANSWERS and vqa.config.head_loss == "bce"
    torch.testing.assert_close(logits(vqa, inputs), expected, atol=0, rtol=0)
    # A plain LxmertConfig passed as `config=` is converted, keeping the answers and options it carries.
    given = LxmertForVQA.from_pretrained(folder, config=config)
    assert type(given.config) is LxmertVQAConfig and given.config.visual_features["source"] == "toy world"
    made = AutoModelForVisualQuestionAnswering.from_config(LxmertVQAConfig.from_answers(["a", "b"], **vh.SIZES))
    assert type(made) is LxmertForVQA
    pipe = transformers.pipeline("lxmert-vqa", model=str(folder), device="cpu", top_k=2)
    assert isinstance(pipe, VQAPipeline) and len(pipe(vh.features(), question=QUESTION)) == 2


def earlier_layout(model: LxmertForVQA, folder: Path) -> Path:
    """Write `model` as earlier versions did: model type `lxmert_vqa`, the head saved as `classifier.*`."""
    folder.mkdir()
    config = model.config.to_dict()
    config.update(model_type="lxmert_vqa", architectures=["LxmertForVQA"])
    config.pop("lxmert_hf_version")
    (folder / "config.json").write_text(json.dumps(config))
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    assert any(name.startswith("classifier.") for name in state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    vh.tokenizer().save_pretrained(folder)
    return folder


def test_earlier_layout_loads_and_saves_in_the_current_one(tmp_path):
    old = earlier_layout(described_model(), tmp_path / "old")
    inputs = model_inputs()
    expected = logits(described_model(), inputs)
    assert type(AutoConfig.from_pretrained(old)) is LegacyLxmertVQAConfig
    for loader in (LxmertForVQA, AutoModel, AutoModelForVisualQuestionAnswering):
        model, info = loader.from_pretrained(old, output_loading_info=True)
        assert type(model) is LxmertForVQA and type(model.config) is LxmertVQAConfig, loader
        assert not info["missing_keys"] and not info["unexpected_keys"]
        assert model.config.answers == vh.ANSWERS and model.config.head_loss == "bce"
        torch.testing.assert_close(logits(model, inputs), expected, atol=0, rtol=0)
    model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model_type"] == "lxmert"
    with safe_open(tmp_path / "again" / "model.safetensors", framework="pt") as handle:
        assert not any(name.startswith("classifier.") for name in handle.keys())  # noqa: SIM118
    assert len(VQAPipeline.from_pretrained(old, device="cpu")(vh.features(), question=QUESTION)) == 5


def test_load_state_dict_reads_saved_checkpoints(tmp_path, folder):
    """The Trainer resumes and reloads its best checkpoint with `load_state_dict` on the tensors as saved (sharded:
    `load_sharded_checkpoint(strict=False)`, which lists keys before loading: it reports the renamed ones)."""
    source = described_model()
    model = vh.vqa_model(seed=9)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    assert torch.equal(model.classifier[3].weight, source.classifier[3].weight)
    source.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    model = vh.vqa_model(seed=9)
    load_sharded_checkpoint(model, tmp_path / "sharded", strict=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())


CUSTOM_PIPELINE_CHECK = textwrap.dedent(
    """
    import json, sys
    import torch, transformers

    assert "lxmert_hf" not in sys.modules
    pipe = transformers.pipeline(model=sys.argv[1], trust_remote_code=True, device="cpu")
    features = torch.load(sys.argv[2], weights_only=True)
    answers = pipe(features, question="what color is the cube?", top_k=3)
    print(json.dumps({"pipeline": f"{type(pipe).__module__}.{type(pipe).__name__}",
                      "model": type(pipe.model).__name__, "task": pipe.task, "answers": answers}))
    """
)


def test_saved_pipeline_is_a_hub_custom_pipeline(tmp_path):
    pipe = VQAPipeline(described_model(), vh.tokenizer(), device="cpu")
    pipe.save_pretrained(tmp_path / "shared")
    config = json.loads((tmp_path / "shared" / "config.json").read_text())
    assert config["custom_pipelines"] == {
        CUSTOM_PIPELINE_TASK: {
            "impl": "lxmert_hf_pipeline.VQAPipeline",
            "pt": ["AutoModelForVisualQuestionAnswering"],
            "type": "multimodal",
        }
    }
    assert (tmp_path / "shared" / "lxmert_hf_pipeline.py").is_file()
    # The model read back and saved on its own declares no pipeline (its folder has no module).
    LxmertForVQA.from_pretrained(tmp_path / "shared").save_pretrained(tmp_path / "model-only")
    assert "custom_pipelines" not in json.loads((tmp_path / "model-only" / "config.json").read_text())
    features = {k: torch.from_numpy(v) for k, v in vh.features().items()}
    torch.save(features, tmp_path / "features.pt")
    expected = pipe(features, question=QUESTION, top_k=3)
    (tmp_path / "check.py").write_text(CUSTOM_PIPELINE_CHECK)
    env = {**isolated_env(), "PYTHONPATH": str(Path(lxmert_hf.__file__).parents[1])}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    run = subprocess.run(
        [sys.executable, str(tmp_path / "check.py"), str(tmp_path / "shared"), str(tmp_path / "features.pt")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["pipeline"] == "lxmert_hf.pipeline.core.VQAPipeline" and report["model"] == "LxmertForVQA"
    assert report["task"] == CUSTOM_PIPELINE_TASK
    assert [a["answer"] for a in report["answers"]] == [a["answer"] for a in expected]
    assert [a["score"] for a in report["answers"]] == pytest.approx([a["score"] for a in expected], abs=1e-6)
    # Without trusting the folder's code, transformers refuses the task it declares; the registered task still works.
    with pytest.raises(ValueError, match="trust_remote_code"):
        transformers.pipeline(model=str(tmp_path / "shared"), device="cpu")
    generic = transformers.pipeline("lxmert-vqa", model=str(tmp_path / "shared"), device="cpu")
    assert [a["answer"] for a in generic(features, question=QUESTION, top_k=3)] == [a["answer"] for a in expected]


def test_folder_without_tokenizer_is_refused_not_read_as_empty(tmp_path):
    """transformers builds a tokenizer of special tokens only from a folder of model type `lxmert` without tokenizer
    files: the pipeline and the recipe refuse it instead of reading every word as [UNK]."""
    from lxmert_hf.training import ModelArguments
    from lxmert_hf.training.trainer import load_tokenizer

    bare = save_checkpoint(vh.vqa_model(), tmp_path / "bare")
    with pytest.raises(ValueError, match="no vocabulary.*pass `tokenizer=`"):
        transformers.pipeline("lxmert-vqa", model=str(bare), device="cpu")
    with pytest.raises(ValueError, match="no vocabulary.*--tokenizer_name"):
        load_tokenizer(ModelArguments(model_name_or_path=str(bare)), None)
