"""Bad inputs to the Python API, each refused at the library's boundary with an error naming the input, and the
security rules of the source (no pickle, weights-only `torch.load`, safe YAML, no shell)."""

from __future__ import annotations

import ast
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_factory import make_store
from tiny import ANSWERS, TINY, random_inputs
from transformers import LxmertConfig, LxmertForQuestionAnswering

from lxmert_hf import LxmertForVQA, LxmertVQAConfig, VQAPipeline
from lxmert_hf.data import FeatureStore
from lxmert_hf.data.collator import VQADataCollator
from lxmert_hf.data.store import open_store_dataset
from lxmert_hf.validation import check_values


@pytest.fixture(scope="module")
def model() -> LxmertForVQA:
    return LxmertForVQA(LxmertVQAConfig.from_answers(ANSWERS, **TINY)).eval()


def _nan_at(tensor: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[3] = value
    return tensor


# (change to the inputs of `random_inputs()` (batch 2, 5 words, 6 regions), fragment of the expected message)
FORWARD_CASES = {
    "float64 features": (lambda x: x.update(visual_feats=x["visual_feats"].double()), "`visual_feats` has dtype"),
    "float64 boxes": (lambda x: x.update(visual_pos=x["visual_pos"].double()), "`visual_pos` has dtype"),
    "integer features": (lambda x: x.update(visual_feats=x["visual_feats"].long()), "`visual_feats` must be a float"),
    "ids beyond vocabulary": (
        lambda x: x["input_ids"].__setitem__((1, 2), 40),
        "`input_ids` holds token ids up to 40",
    ),
    "negative ids": (lambda x: x["input_ids"].__setitem__((0, 0), -1), "`input_ids` holds token ids down to -1"),
    "float ids": (lambda x: x.update(input_ids=x["input_ids"].float()), "`input_ids` must hold integer token ids"),
    "numpy ids": (lambda x: x.update(input_ids=x["input_ids"].numpy()), "`input_ids` must be a torch.Tensor"),
    "numpy features": (lambda x: x.update(visual_feats=x["visual_feats"].numpy()), "torch.from_numpy"),
    "list boxes": (lambda x: x.update(visual_pos=x["visual_pos"].tolist()), "`visual_pos` must be a torch.Tensor"),
    "1-d ids": (lambda x: x.update(input_ids=x["input_ids"][0]), "`input_ids` has shape (5,)"),
    "no text": (lambda x: x.update(input_ids=None), "got neither"),
    "ids and embeddings": (lambda x: x.update(inputs_embeds=torch.rand(2, 5, 32)), "got both"),
    "embeddings of wrong width": (
        lambda x: x.update(input_ids=None, inputs_embeds=torch.rand(2, 5, 31)),
        "`inputs_embeds` has shape (2, 5, 31)",
    ),
    "text longer than positions": (
        lambda x: x.update(input_ids=torch.ones(2, 513, dtype=torch.long), attention_mask=None),
        "`input_ids` holds 513 tokens",
    ),
    "attention mask of other shape": (
        lambda x: x.update(attention_mask=torch.ones(2, 4)),
        "`attention_mask` has shape (2, 4)",
    ),
    "token types beyond vocabulary": (
        lambda x: x.update(token_type_ids=torch.full((2, 5), 2)),
        "`token_type_ids` holds token ids up to 2",
    ),
    "more images than questions": (
        lambda x: x.update(visual_feats=torch.rand(3, 6, 16), visual_pos=torch.rand(3, 6, 4)),
        "`visual_feats` holds 3 images but the text a batch of 2",
    ),
    "zero regions": (
        lambda x: x.update(visual_feats=torch.rand(2, 0, 16), visual_pos=torch.rand(2, 0, 4)),
        "`visual_feats` holds no regions",
    ),
    "no boxes": (lambda x: x.update(visual_pos=None), "`visual_feats` and `visual_pos` are required"),
    "NaN features": (lambda x: x.update(visual_feats=_nan_at(x["visual_feats"])), "`visual_feats` holds NaN"),
    "infinite features": (
        lambda x: x.update(visual_feats=_nan_at(x["visual_feats"], float("inf"))),
        "`visual_feats` holds NaN or infinite",
    ),
    "NaN boxes": (lambda x: x.update(visual_pos=_nan_at(x["visual_pos"])), "`visual_pos` holds NaN"),
    "boxes beyond the image": (lambda x: x.update(visual_pos=x["visual_pos"] * 1.5 + 0.01), "`visual_pos` holds"),
    "visual mask of other shape": (
        lambda x: x.update(visual_attention_mask=torch.ones(2, 7)),
        "`visual_attention_mask` has shape (2, 7)",
    ),
    "soft labels of wrong width": (lambda x: x.update(labels=torch.rand(2, 4)), "`labels` (soft scores) has shape"),
    "label index beyond answers": (
        lambda x: x.update(labels=torch.tensor([0, 5])),
        "`labels` holds answer indices [5]",
    ),
    "numpy labels": (lambda x: x.update(labels=np.zeros(2, dtype=np.int64)), "`labels` must be a torch.Tensor"),
}


@pytest.mark.parametrize("change, message", FORWARD_CASES.values(), ids=FORWARD_CASES.keys())
def test_forward_refuses(model, change, message):
    inputs = random_inputs()
    change(inputs)
    with pytest.raises(ValueError) as error:
        model(**inputs)
    assert message in str(error.value)


def test_forward_lets_non_finite_features_through_on_request(model):
    inputs = random_inputs()
    inputs["visual_feats"] = _nan_at(inputs["visual_feats"])
    with torch.no_grad():
        logits = model(**inputs, check_finite=False).logits
    assert torch.isnan(logits[0]).all()
    assert torch.isfinite(logits[1]).all()


def test_forward_accepts_other_dtypes_under_autocast(model):
    inputs = random_inputs()
    inputs["visual_feats"] = inputs["visual_feats"].bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(**inputs).logits.shape == (2, len(ANSWERS))


# -- from_pretrained --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save_pretrained(folder)
    return folder


def _copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def _without_config(folder: Path) -> str:
    (folder / "config.json").unlink()
    return str(folder)


def _bert_config(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert", "lxmert_hf_version": None}))
    return str(folder)


def _truncated_weights(folder: Path) -> str:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return str(folder)


def _garbled_weights(folder: Path) -> str:
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    return str(folder)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def _code_in_pickle(folder: Path) -> str:
    (folder / "model.safetensors").unlink()
    torch.save({"lxmert.pooler.dense.bias": torch.zeros(2), "payload": _RunsCode()}, folder / "pytorch_model.bin")
    return str(folder)


def _truncated_bin(folder: Path) -> str:
    (folder / "model.safetensors").unlink()
    torch.save({"lxmert.pooler.dense.bias": torch.zeros(2)}, folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    return str(folder)


def _truncated_shard(folder: Path) -> str:
    LxmertForVQA.from_pretrained(folder).save_pretrained(folder, max_shard_size="20KB")
    (folder / "model.safetensors").unlink(missing_ok=True)
    _halve(folder / "model-00002-of-00012.safetensors")
    return str(folder)


def _weights_file(folder: Path) -> str:
    return str(folder / "model.safetensors")


def _path_in_local_folder(folder: Path) -> str:
    (folder.parent / "data").mkdir()
    return "data/features"


# (makes a broken checkpoint from a good copy `folder` in the current folder, returns what to load; message)
LOAD_CASES = {
    "no config.json": (_without_config, "holds weights but no config.json"),
    "a BERT config": (_bert_config, "model_type 'bert', not 'lxmert'"),
    "truncated safetensors": (_truncated_weights, "model.safetensors: not a readable safetensors file"),
    "garbled safetensors": (_garbled_weights, "re-download it, or re-save the model"),
    "truncated shard of a sharded checkpoint": (_truncated_shard, "model-00002-of-00012.safetensors: not a readable"),
    "pickle refused by weights_only": (_code_in_pickle, "pytorch_model.bin: refused by the weights-only loader"),
    "truncated pytorch_model.bin": (_truncated_bin, "pytorch_model.bin: not a readable PyTorch weights file"),
    "a weights file, not a folder": (_weights_file, "is a file; pass the checkpoint folder"),
    "missing relative path": (lambda folder: "./no/such/model", "./no/such/model does not exist locally"),
    "missing path in a local folder": (_path_in_local_folder, "data/features does not exist locally"),
}


@pytest.mark.parametrize("make, message", LOAD_CASES.values(), ids=LOAD_CASES.keys())
def test_from_pretrained_refuses(saved, tmp_path, monkeypatch, capsys, make, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = make(_copy(saved, tmp_path))
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        LxmertForVQA.from_pretrained(name)
    assert message in str(error.value)
    assert "must never run" not in capsys.readouterr().out


def test_from_pretrained_with_other_answers_remaps_the_head(saved, caplog):
    before = LxmertForVQA.from_pretrained(saved).classifier[3]
    model = LxmertForVQA.from_pretrained(saved, answers=["no", "purple", "yes"])
    assert model.config.answers == ["no", "purple", "yes"] and model.config.num_labels == 3
    assert (
        str(model.answer_head_transplant) == "transplanted 2 of 3 answers from the checkpoint's head (1 set to zero)"
    )
    assert "fine-tune before use" in caplog.text
    after = model.classifier[3]
    torch.testing.assert_close(after.weight[[0, 2]], before.weight[[1, 0]])
    assert not after.weight[1].any() and not after.bias[1].any()


def test_from_pretrained_refuses_answers_that_cannot_name_an_unnamed_head(tmp_path):
    LxmertForQuestionAnswering(LxmertConfig(num_qa_labels=5, **TINY)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="`answers` lists 2 answers, but the answer head of .* has 5 rows"):
        LxmertForVQA.from_pretrained(tmp_path, answers=["a", "b"])


# -- VQAPipeline ------------------------------------------------------------------------------------------------------
def _regions(**change) -> dict:
    return {"visual_feats": torch.rand(6, 16), "visual_pos": torch.rand(6, 4), **change}


# (VQAPipeline arguments, call arguments, message)
PIPELINE_CASES = {
    "batch_size 0": ({"batch_size": 0}, {}, "`batch_size` must be a positive int, got 0"),
    "batch_size -1": ({"batch_size": -1}, {}, "`batch_size` must be a positive int, got -1"),
    "batch_size text": ({"batch_size": "2"}, {}, "`batch_size` must be a positive int, got '2'"),
    "batch_size 0 in the call": ({}, {"batch_size": 0}, "`batch_size` must be a positive int, got 0"),
    "top_k 0": ({}, {"top_k": 0}, "`top_k` must be a positive int"),
    "unknown argument": ({}, {"topk": 2}, "unknown argument(s) ['topk']"),
    "regions without visual_pos": ({}, {"image": {"visual_feats": torch.rand(6, 16)}}, "need boxes: `visual_pos`"),
    "boxes of other count": ({}, {"image": _regions(visual_pos=torch.rand(5, 4))}, "expected one box per region"),
    "features of other width": ({}, {"image": _regions(visual_feats=torch.rand(6, 15))}, "`visual_feats` has 15"),
    "zero regions": ({}, {"image": _regions(visual_feats=torch.rand(0, 16))}, "num_regions >= 1"),
    "NaN features": ({}, {"image": _regions(visual_feats=torch.full((6, 16), float("nan")))}, "NaN or infinite"),
    "features as text": ({}, {"image": _regions(visual_feats="abc")}, "`visual_feats`: expected an array of numbers"),
    "ragged features": ({}, {"image": _regions(visual_feats=[[1.0] * 16, [1.0]])}, "`visual_feats`: "),
    "question not a string": ({}, {"question": 3}, "`question` must be a string"),
}


@pytest.mark.parametrize("init, call, message", PIPELINE_CASES.values(), ids=PIPELINE_CASES.keys())
def test_pipeline_refuses(model, tiny_tokenizer, init, call, message):
    call = {"image": _regions(), "question": "what color is the cube?", **call}
    with pytest.raises(ValueError) as error:
        VQAPipeline(model=model, tokenizer=tiny_tokenizer, **init)(**call)
    assert message in str(error.value)


def test_pipeline_refuses_a_model_that_is_not_one(tiny_tokenizer):
    with pytest.raises(ValueError, match="`model` must be an LxmertForVQA, got str"):
        VQAPipeline(model="some/folder", tokenizer=tiny_tokenizer)


@pytest.mark.parametrize(
    "answers, message",
    [
        (["a", "b"], "`answers`: this checkpoint names its own answer list"),
        ([1, 2, 3, 4, 5], "`answers`: entry 0 must be an answer string, got int"),
        (["yes", "yes", "no", "2", "red"], "`answers` repeats 'yes'"),
    ],
)
def test_pipeline_refuses_answers(saved, tiny_tokenizer, answers, message):
    with pytest.raises(ValueError) as error:
        VQAPipeline.from_pretrained(saved, tokenizer=tiny_tokenizer, answers=answers)
    assert message in str(error.value)


# -- feature stores ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("store") / "store"
    make_store(folder, ["a", "b", "c"])
    return folder


def _halve(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# (damage done to a copy of a good store, file named in the message, message)
STORE_CASES = {
    "manifest not JSON": (lambda d: (d / "store.json").write_text("{oops"), "store.json", "not valid JSON"),
    "manifest a list": (lambda d: (d / "store.json").write_text("[1]"), "store.json", "not an lxmert_hf feature"),
    "manifest without keys": (
        lambda d: (d / "store.json").write_text('{"format": "lxmert_hf.feature_store", "version": 1}'),
        "store.json",
        "the manifest lacks complete",
    ),
    "truncated shard": (lambda d: _halve(d / "shard-00000.arrow"), "shard-00000.arrow", "the shard ends at byte"),
    "garbled shard": (
        lambda d: (d / "shard-00000.arrow").write_bytes(b"garbage" * 100),
        "shard-00000.arrow",
        "the shard ends at byte",
    ),
    "missing shard": (lambda d: (d / "shard-00000.arrow").unlink(), "shard-00000.arrow", "is missing"),
    "truncated index": (lambda d: _halve(d / "store.index"), "store.index", "not a readable index"),
    "missing index": (lambda d: (d / "store.index").unlink(), "store.index", "is missing"),
}


@pytest.mark.parametrize("damage, file, message", STORE_CASES.values(), ids=STORE_CASES.keys())
def test_feature_store_names_the_damaged_file(store, tmp_path, damage, file, message):
    copy = Path(shutil.copytree(store, tmp_path / "copy"))
    damage(copy)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        FeatureStore(copy)
    assert f"{copy / file}" in str(error.value) and message in str(error.value)
    assert "delete that folder and prepare it again" in str(error.value) or "prepare the store again" in str(
        error.value
    )


@pytest.mark.parametrize("damage", [_halve, lambda path: path.write_bytes(b"garbage" * 100)], ids=["cut", "garbled"])
def test_store_dataset_names_the_damaged_shard(store, tmp_path, damage):
    copy = Path(shutil.copytree(store, tmp_path / "copy"))
    damage(copy / "shard-00000.arrow")
    with pytest.raises(ValueError, match=r"shard-00000\.arrow: not a readable shard .* delete that folder"):
        open_store_dataset(copy)


# -- security rules of the source -------------------------------------------------------------------------------------
SOURCES = sorted((Path(__file__).parents[1] / "src").rglob("*.py"))


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _calls(name: str):
    """(file, call node) of every call of a function or method called `name` in the source."""
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call):
                function = node.func
                called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
                if called == name:
                    yield path, node


def _keyword(call: ast.Call, name: str):
    return next((keyword.value for keyword in call.keywords if keyword.arg == name), None)


def test_sources_are_found():
    assert len(SOURCES) > 50 and any(path.name == "checkpoints.py" for path in SOURCES)


def test_torch_load_only_reads_weights():
    calls = [(path, call) for path, call in _calls("load") if ast.unparse(call.func) == "torch.load"]
    assert calls, "torch.load is used to read .bin/.pth weights"
    for path, call in calls:
        value = _keyword(call, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"


def test_no_unpickler_is_used():
    # `pickle` may be imported for its exception class (torch's weights-only loader raises it); nothing may load.
    loaders = {"load", "loads", "Unpickler", "_Unpickler"}
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            assert not {"cPickle", "dill", "_pickle", "marshal"} & {n.split(".")[0] for n in names}, path
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in {"pickle", "dill", "marshal"}:
                assert not loaders & {alias.name for alias in node.names}, f"{path}:{node.lineno}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert not (node.value.id == "pickle" and node.attr in loaders), f"{path}:{node.lineno}"


def test_yaml_only_through_the_safe_loader():
    for name in ("load", "load_all", "unsafe_load", "full_load"):
        for path, call in _calls(name):
            assert not ast.unparse(call.func).startswith("yaml."), f"{path}:{call.lineno}: yaml.{name}"
    assert any(ast.unparse(call.func) == "yaml.safe_load" for _, call in _calls("safe_load"))


def test_no_shell_in_subprocess_calls():
    for name in ("run", "Popen", "call", "check_call", "check_output", "system", "popen"):
        for path, call in _calls(name):
            shell = _keyword(call, "shell")
            assert shell is None or (isinstance(shell, ast.Constant) and shell.value is False), f"{path}:{call.lineno}"
            assert ast.unparse(call.func) not in ("os.system", "os.popen"), f"{path}:{call.lineno}"


def test_numpy_never_loads_pickles():
    for path, call in _calls("load"):
        if ast.unparse(call.func) in ("np.load", "numpy.load"):
            allow = _keyword(call, "allow_pickle")
            assert isinstance(allow, ast.Constant) and allow.value is False, f"{path}:{call.lineno}"


def test_no_assert_statements_check_inputs():
    # `python -O` strips asserts: a check of user input must raise an error of its own.
    for path in SOURCES:
        asserts = [node.lineno for node in ast.walk(_tree(path)) if isinstance(node, ast.Assert)]
        assert not asserts, f"{path}: assert at lines {asserts}"


def test_value_checks_read_the_device_once(monkeypatch):
    reads = []
    for name in ("tolist", "item", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, _f=original, _n=name: reads.append(_n) or _f(self))
    inputs = random_inputs()
    named = {**inputs, "token_type_ids": torch.zeros(2, 5, dtype=torch.long), "labels": torch.tensor([1, -100])}
    check_values(named, vocab_size=40, type_vocab_size=2, num_labels=5)
    assert reads == ["tolist"]


def test_value_checks_are_skipped_while_compiling(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    check_values(
        {"visual_feats": torch.full((1, 2, 16), float("nan"))}, vocab_size=40, type_vocab_size=2, num_labels=5
    )


# -- other entry points -----------------------------------------------------------------------------------------------
# (call, error type, message)
OTHER_CASES = {
    "answers not a list": (lambda saved: LxmertForVQA.from_pretrained(saved, answers=5), ValueError, "`answers`: "),
    "empty answers": (lambda saved: LxmertForVQA.from_pretrained(saved, answers=[]), ValueError, "`answers` is empty"),
    "no model name": (lambda saved: LxmertForVQA.from_pretrained(None), TypeError, "pretrained_model_name_or_path"),
    "config a dict": (lambda saved: LxmertForVQA({"hidden_size": 32}), ValueError, "`config` must be an LxmertConfig"),
    "answer not a string": (lambda saved: LxmertVQAConfig.from_answers(["a", 1]), ValueError, "`answers`: entry 1"),
    "pretrain_answers without a pre-training head": (
        lambda saved: LxmertForVQA.from_pretrained(saved, pretrain_answers=["a"]),
        ValueError,
        "`pretrain_answers` needs a pre-training checkpoint",
    ),
    "store that is not one": (lambda saved: FeatureStore(saved), FileNotFoundError, "is not a feature store"),
}


@pytest.mark.parametrize("call, kind, message", OTHER_CASES.values(), ids=OTHER_CASES.keys())
def test_other_entry_points_refuse(saved, call, kind, message):
    with pytest.raises(kind) as error:
        call(saved)
    assert message in str(error.value)


@pytest.mark.parametrize("name", ["visual_feats", "visual_pos"])
def test_collator_names_examples_with_non_finite_regions(tiny_tokenizer, name):
    examples = [
        {"question": "what color?", "visual_feats": np.ones((3, 16)), "visual_pos": np.zeros((3, 4)), "image_id": i}
        for i in ("a", "b", "c")
    ]
    examples[1] = {**examples[1], name: np.full_like(examples[1][name], np.inf), "question_id": 7}
    with pytest.raises(
        ValueError, match=rf"`{name}` holds NaN or infinite values for 1 example\(s\).*'image_id': 'b'"
    ):
        VQADataCollator(tiny_tokenizer)(examples)
    assert VQADataCollator(tiny_tokenizer, check_finite=False)(examples)[name].isinf().any()
