"""`LxmertForNLVR2`: the original NLVR2 model (checked against transformers' `LxmertModel` by hand), its loss, its
checkpoints and every LXMERT layout it loads, its errors, and that it learns a pair task."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file
from tiny import ANSWERS, TINY
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    LxmertConfig,
    LxmertForPreTraining,
    LxmertForQuestionAnswering,
    LxmertModel,
)

from lxmert_hf import LxmertForNLVR2, LxmertForVQA, LxmertNLVR2Config, LxmertVQAConfig
from lxmert_hf.locations import HubUnavailableError


def nlvr2_model(seed: int = 0, **overrides) -> LxmertForNLVR2:
    torch.manual_seed(seed)
    return LxmertForNLVR2(LxmertNLVR2Config(**{**TINY, **overrides})).eval()


def pair_inputs(batch: int = 3, words: int = 5, boxes: int = 6, seed: int = 0) -> dict:
    """Random inputs for `batch` sentences, each with two images; some words and regions are padding."""
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, words, dtype=torch.long)
    attention_mask[0, -2:] = 0
    visual_attention_mask = torch.ones(batch, 2, boxes, dtype=torch.long)
    visual_attention_mask[0, 1, -3:] = 0
    return {
        "input_ids": torch.randint(5, TINY["vocab_size"], (batch, words), generator=generator),
        "attention_mask": attention_mask,
        "visual_feats": torch.rand(batch, 2, boxes, TINY["visual_feat_dim"], generator=generator),
        "visual_pos": torch.rand(batch, 2, boxes, 4, generator=generator),
        "visual_attention_mask": visual_attention_mask,
    }


def reference_logits(model: LxmertForNLVR2, inputs: dict) -> torch.Tensor:
    """The original NLVR2 model computed by hand: transformers' `LxmertModel` with the same weights, run once per
    image, the pooled outputs concatenated, then Linear -> GeLU (erf) -> LayerNorm -> Linear written out."""
    encoder = LxmertModel(LxmertConfig(**TINY)).eval()
    encoder.load_state_dict(model.lxmert.state_dict())
    pooled = [
        encoder(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            visual_feats=inputs["visual_feats"][:, image],
            visual_pos=inputs["visual_pos"][:, image],
            visual_attention_mask=inputs["visual_attention_mask"][:, image],
        ).pooled_output
        for image in (0, 1)
    ]
    x = torch.cat(pooled, dim=-1)
    weights = {name: tensor for name, tensor in model.classifier.state_dict().items()}
    x = x @ weights["0.weight"].T + weights["0.bias"]
    x = x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-12)
    x = x * weights["2.weight"] + weights["2.bias"]
    return x @ weights["3.weight"].T + weights["3.bias"]


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_logits_equal_two_lxmert_passes_and_the_head_by_hand(backend):
    model = nlvr2_model(attention_backend=backend)
    inputs = pair_inputs()
    with torch.no_grad():
        logits = model(**inputs).logits
        expected = reference_logits(model, inputs)
    assert logits.shape == (3, 2)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_each_example_is_classified_from_its_own_two_images():
    model = nlvr2_model()
    inputs = pair_inputs(batch=4)
    with torch.no_grad():
        together = model(**inputs).logits
        alone = model(**{name: tensor[2:3] for name, tensor in inputs.items()}).logits
        swapped = model(**{**inputs, "visual_feats": inputs["visual_feats"].flip(1)}).logits
    torch.testing.assert_close(together[2:3], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together, swapped, atol=1e-4)  # the head knows which image is which


def test_cross_entropy_loss_and_its_normalization():
    model = nlvr2_model()
    inputs = pair_inputs(batch=4)
    labels = torch.tensor([1, 0, -100, 1])
    out = model(**inputs, labels=labels)
    kept = labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[kept], labels[kept])
    torch.testing.assert_close(out.loss, expected)
    # With the count of the whole global batch, the sum over this batch divided by it.
    halved = model(**inputs, labels=labels, num_items_in_batch=6).loss
    torch.testing.assert_close(halved, expected * 3 / 6)
    assert model.counted_in_loss(labels).tolist() == [True, True, False, True]
    assert model(**inputs, labels=torch.full((4,), -100)).loss.item() == 0.0
    out.loss.backward()
    assert model.classifier[0].weight.grad is not None and model.lxmert.pooler.dense.weight.grad is not None


def test_activation_checkpointing_gives_the_same_gradients():
    inputs, labels = pair_inputs(batch=2), torch.tensor([1, 0])
    grads = []
    for checkpointing in (False, True):
        model = nlvr2_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**inputs, labels=labels).loss.backward()
        grads.append({name: param.grad for name, param in model.named_parameters() if param.grad is not None})
    assert model.is_activation_checkpointing and grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_outputs_of_the_encoder_on_request():
    model = nlvr2_model()
    out = model(**pair_inputs(batch=2), output_hidden_states=True, output_attentions=True)
    assert out.language_hidden_states[0].shape[0] == 4  # 2 sentences x 2 images
    assert out.cross_encoder_attentions is not None
    loss, logits = model(**pair_inputs(batch=2), labels=torch.tensor([0, 1]), return_dict=False)[:2]
    assert logits.shape == (2, 2) and loss.dim() == 0


def test_config():
    config = LxmertNLVR2Config(**TINY)
    assert config.id2label == {0: "false", 1: "true"} and config.num_labels == 2
    assert config.attention_backend == "sdpa" and config.visual_features is None
    with pytest.raises(ValueError, match="`num_labels` must be 2"):
        LxmertNLVR2Config(num_labels=3)
    with pytest.raises(ValueError, match="`id2label` must be"):
        LxmertNLVR2Config(id2label={0: "no", 1: "yes"})
    with pytest.raises(ValueError, match="`attention_backend` must be one of"):
        LxmertNLVR2Config(attention_backend="flash")


def test_save_and_load_round_trip_and_auto_classes(tmp_path):
    model = nlvr2_model(seed=3, attention_backend="eager", visual_features={"source": "toy world"})
    model.save_pretrained(tmp_path / "nlvr2")
    saved = json.loads((tmp_path / "nlvr2" / "config.json").read_text())
    assert saved["model_type"] == "lxmert_nlvr2" and saved["architectures"] == ["LxmertForNLVR2"]
    inputs = pair_inputs()
    with torch.no_grad():
        expected = model(**inputs).logits
    assert type(AutoConfig.from_pretrained(tmp_path / "nlvr2")) is LxmertNLVR2Config
    for loader in (LxmertForNLVR2, AutoModelForSequenceClassification, AutoModel):
        loaded, info = loader.from_pretrained(tmp_path / "nlvr2", output_loading_info=True)
        assert type(loaded) is LxmertForNLVR2, loader
        assert not info["missing_keys"] and not info["unexpected_keys"]
        assert loaded.config.attention_backend == "eager" and loaded.config.visual_features == {"source": "toy world"}
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(**inputs).logits, expected, atol=0, rtol=0)
    overridden = LxmertForNLVR2.from_pretrained(tmp_path / "nlvr2", attention_backend="sdpa")
    assert overridden.config.attention_backend == "sdpa"
    assert type(AutoModelForSequenceClassification.from_config(LxmertNLVR2Config(**TINY))) is LxmertForNLVR2


def save_hub_layout(model, folder) -> None:
    """Save like the unc-nlp Hub repos: config.json (model type lxmert) and a pytorch_model.bin state dict."""
    folder.mkdir(parents=True)
    model.config.to_json_file(folder / "config.json")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


def save_earlier_vqa_layout(model: LxmertForVQA, folder) -> None:
    """An LxmertForVQA checkpoint as earlier versions wrote it: model type lxmert_vqa, head saved as classifier.*."""
    folder.mkdir(parents=True)
    config = model.config.to_dict()
    config.update(model_type="lxmert_vqa", architectures=["LxmertForVQA"])
    config.pop("lxmert_hf_version")
    (folder / "config.json").write_text(json.dumps(config))
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, folder / "model.safetensors")


def vqa_model():
    return LxmertForVQA(LxmertVQAConfig.from_answers(ANSWERS, **TINY))


# Each layout: how to make a checkpoint of it (returns the encoder whose weights must load), and its name.
LAYOUTS = {
    "pretraining": lambda folder: _hub(LxmertForPreTraining(LxmertConfig(num_qa_labels=7, **TINY)), folder).lxmert,
    "model": lambda folder: _hub(LxmertModel(LxmertConfig(**TINY)), folder),
    "question_answering": lambda folder: (
        _hub(LxmertForQuestionAnswering(LxmertConfig(num_qa_labels=5, **TINY)), folder).lxmert
    ),
    "vqa": lambda folder: _saved(vqa_model(), folder).lxmert,
    "vqa_legacy": lambda folder: _earlier(vqa_model(), folder).lxmert,
}


def _hub(model, folder):
    save_hub_layout(model, folder)
    return model


def _saved(model, folder):
    model.save_pretrained(folder)
    return model


def _earlier(model, folder):
    save_earlier_vqa_layout(model, folder)
    return model


class Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)


@pytest.fixture
def load_logs():
    """What loading logs, transformers' load report included (transformers' own logger does not propagate)."""
    records = Records()
    loggers = [logging.getLogger("transformers"), logging.getLogger("lxmert_hf")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(records)
        logger.setLevel(logging.INFO)
    yield records
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(records)
        logger.setLevel(level)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_lxmert_layout_gives_its_encoder_and_a_new_classifier(tmp_path, load_logs, layout):
    torch.manual_seed(1)
    encoder = LAYOUTS[layout](tmp_path / layout)
    model, info = LxmertForNLVR2.from_pretrained(tmp_path / layout, output_loading_info=True)
    assert type(model.config) is LxmertNLVR2Config and model.config.num_labels == 2
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(model.lxmert.state_dict()[name], tensor), name
    # The classifier is initialized as the original's (normal weights, zero biases, an identity LayerNorm) ...
    assert 0.01 < model.classifier[0].weight.std().item() < 0.03 and not model.classifier[3].bias.any()
    assert model.classifier[2].weight.eq(1).all()
    # ... reported once, in one line; the other layouts' heads are dropped without a word.
    assert sorted(info["missing_keys"]) == [f"classifier.{i}.{p}" for i in (0, 2, 3) for p in ("bias", "weight")]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    new_head = [record for record in load_logs.records if "newly initialized" in record.getMessage()]
    assert len(new_head) == 1 and new_head[0].name == "lxmert_hf.encoder_checkpoints", load_logs.text()
    assert "LOAD REPORT" not in load_logs.text() and "answer_head" not in load_logs.text(), load_logs.text()
    # Saved again, it is an NLVR2 checkpoint that loads as saved, in silence.
    model.save_pretrained(tmp_path / "again")
    load_logs.records.clear()
    again, info = LxmertForNLVR2.from_pretrained(tmp_path / "again", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and "newly initialized" not in load_logs.text()
    assert all(torch.equal(again.state_dict()[name], tensor) for name, tensor in model.state_dict().items())


def test_other_layouts_keep_their_encoder_settings(tmp_path):
    source = vqa_model()
    source.config.visual_features = {"source": "toy world"}
    source.save_pretrained(tmp_path / "vqa")
    model = LxmertForNLVR2.from_pretrained(tmp_path / "vqa", hidden_dropout_prob=0.2)
    config = model.config
    assert (config.hidden_size, config.l_layers, config.visual_feat_dim) == (32, 1, 16)
    assert config.visual_features == {"source": "toy world"} and config.hidden_dropout_prob == 0.2
    assert config.id2label == {0: "false", 1: "true"} and not hasattr(config, "head_loss")


def test_a_config_given_does_not_make_another_layout_its_own(tmp_path, load_logs):
    source = LAYOUTS["pretraining"](tmp_path / "pretraining")
    config = LxmertNLVR2Config(**TINY)
    model, info = LxmertForNLVR2.from_pretrained(tmp_path / "pretraining", config=config, output_loading_info=True)
    assert type(model.config) is LxmertNLVR2Config and not info["unexpected_keys"] and len(info["missing_keys"]) == 6
    assert torch.equal(model.lxmert.pooler.dense.weight, source.pooler.dense.weight)
    # A VQA config (what AutoConfig reads from a VQA folder) gives its encoder settings.
    vqa = LxmertForNLVR2.from_pretrained(
        tmp_path / "pretraining", config=LxmertVQAConfig.from_answers(ANSWERS, **TINY)
    )
    assert type(vqa.config) is LxmertNLVR2Config and vqa.config.num_labels == 2


def test_answer_options_are_refused_and_head_loss_ignored(tmp_path, load_logs):
    nlvr2_model().save_pretrained(tmp_path / "nlvr2")
    for name in ("answers", "pretrain_answers"):
        with pytest.raises(ValueError, match=f"`{name}` is an option of LxmertForVQA .*labels are fixed"):
            LxmertForNLVR2.from_pretrained(tmp_path / "nlvr2", **{name: ANSWERS})
    model = LxmertForNLVR2.from_pretrained(tmp_path / "nlvr2", head_loss="bce", answers=None, pretrain_answers=None)
    assert "`head_loss` is ignored" in load_logs.text() and not hasattr(model.config, "head_loss")


def test_vqa_model_says_an_nlvr2_checkpoint_is_one(tmp_path):
    nlvr2_model().save_pretrained(tmp_path / "nlvr2")
    with pytest.raises(ValueError, match=r"is an NLVR2 checkpoint .*`LxmertForNLVR2.from_pretrained`"):
        LxmertForVQA.from_pretrained(tmp_path / "nlvr2", answers=ANSWERS)


def test_loading_refuses_what_is_not_an_lxmert_checkpoint(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    save_file({"lxmert.pooler.dense.weight": torch.zeros(2, 2)}, tmp_path / "bert" / "model.safetensors")
    with pytest.raises(ValueError, match="model_type 'bert': not an LXMERT checkpoint"):
        LxmertForNLVR2.from_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LxmertForNLVR2.from_pretrained(tmp_path / "bert")
    with pytest.raises(FileNotFoundError, match="pretrained_model_name_or_path"):
        LxmertForNLVR2.from_pretrained(tmp_path / "nowhere")


BAD_INPUTS = [
    (
        "one image",
        lambda i: {**i, "visual_feats": i["visual_feats"][:, 0], "visual_pos": i["visual_pos"][:, 0]},
        r"NLVR2 needs two images per example: `visual_feats` must be \[batch, 2, regions, 16\].* got \(3, 6, 16\)",
    ),
    (
        "three images",
        lambda i: {**i, "visual_feats": torch.cat([i["visual_feats"], i["visual_feats"][:, :1]], dim=1)},
        r"NLVR2 needs two images per example: .* got \(3, 3, 6, 16\)",
    ),
    (
        "fewer pairs than sentences",
        lambda i: {**i, "input_ids": i["input_ids"][:2], "attention_mask": None},
        r"`visual_feats` holds 3 image pairs but the text a batch of 2",
    ),
    (
        "boxes of one image",
        lambda i: {**i, "visual_pos": i["visual_pos"][:, 0]},
        r"`visual_pos` has shape \(3, 6, 4\)",
    ),
    (
        "mask of one image",
        lambda i: {**i, "visual_attention_mask": i["visual_attention_mask"][:, 0]},
        r"`visual_attention_mask` has shape \(3, 6\), expected \(3, 2, 6\)",
    ),
    (
        "label 2",
        lambda i: {**i, "labels": torch.tensor([1, 2, 0])},
        r"`labels` holds \[2\] \(batch rows \[1\]\); expected 1 \(true\), 0 \(false\) or -100",
    ),
    ("label -1", lambda i: {**i, "labels": torch.tensor([-1, 0, 0])}, r"`labels` holds \[-1\] \(batch rows \[0\]\)"),
    ("float labels", lambda i: {**i, "labels": torch.tensor([1.0, 0.0, 1.0])}, r"integer class ids .*dtype"),
    (
        "labels per image",
        lambda i: {**i, "labels": torch.ones(3, 2, dtype=torch.long)},
        r"`labels` has shape \(3, 2\), expected \(3,\)",
    ),
    ("fewer labels", lambda i: {**i, "labels": torch.tensor([1, 0])}, r"`labels` has shape \(2,\), expected \(3,\)"),
    (
        "NaN features",
        lambda i: {**i, "visual_feats": i["visual_feats"].index_fill(0, torch.tensor([2]), math.nan)},
        r"`visual_feats` holds NaN or infinite values \(batch rows \[2\]\)",
    ),
    ("boxes out of range", lambda i: {**i, "visual_pos": i["visual_pos"] * 3}, r"`visual_pos` holds values in"),
    (
        "no regions",
        lambda i: {
            **i,
            "visual_feats": i["visual_feats"][:, :, :0],
            "visual_pos": i["visual_pos"][:, :, :0],
            "visual_attention_mask": None,
        },
        "holds no regions",
    ),
    ("numpy features", lambda i: {**i, "visual_feats": i["visual_feats"].numpy()}, "must be a torch.Tensor"),
]


@pytest.mark.parametrize(("what", "change", "message"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_are_refused_naming_the_input(what, change, message):
    with pytest.raises(ValueError, match=message):
        nlvr2_model()(**change(pair_inputs()))


def test_it_learns_a_task_that_needs_both_images():
    """Is the sentence true of the pair: here, "the two images show the same color" (one of two colors per image,
    each image's regions near its color's vector). Neither image alone says it; 100 full-batch steps learn it."""
    generator = torch.Generator().manual_seed(0)
    num, boxes, dim = 64, 4, TINY["visual_feat_dim"]
    first = torch.randint(0, 2, (num,), generator=generator)
    colors = torch.stack([first, first ^ (torch.arange(num) % 2)], dim=1)  # half the pairs alike
    prototypes = torch.randn(2, dim, generator=generator)
    noise = 0.1 * torch.randn(num, 2, boxes, dim, generator=generator)
    inputs = {
        "input_ids": torch.tensor([[2, 7, 8, 3]] * num),
        "visual_feats": prototypes[colors][:, :, None, :] + noise,
        "visual_pos": torch.rand(num, 2, boxes, 4, generator=generator),
    }
    labels = (colors[:, 0] == colors[:, 1]).long()
    model = nlvr2_model(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(100):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(**inputs).logits.argmax(-1) == labels).float().mean().item()
    assert labels.float().mean().item() == 0.5  # chance is 0.5
    assert losses[-1] < 0.5 * losses[0] and accuracy >= 0.9, (losses[0], losses[-1], accuracy)


def cache_repo(repo_id: str, model) -> None:
    """Save `model` into the Hub cache as huggingface_hub lays a downloaded repo out."""
    commit = "0" * 40
    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_ids_load_from_the_hub_cache_while_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_repo("me/lxmert-vqa", vqa_model())
    cache_repo("me/lxmert-nlvr2", nlvr2_model(seed=5))
    assert LxmertForNLVR2.from_pretrained("hf-hub:me/lxmert-vqa").config.num_labels == 2
    loaded = LxmertForNLVR2.from_pretrained("me/lxmert-nlvr2")
    assert torch.equal(loaded.classifier[3].weight, nlvr2_model(seed=5).classifier[3].weight)
    with pytest.raises(HubUnavailableError, match="'unc-nlp/lxmert-base-uncased'.*Hub access is off"):
        LxmertForNLVR2.from_pretrained("unc-nlp/lxmert-base-uncased")
