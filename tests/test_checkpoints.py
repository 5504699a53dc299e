"""Loading every published LXMERT layout into LxmertForVQA, and the answer-head transplant."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tiny import ANSWERS, TINY, random_inputs
from transformers import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering, LxmertModel

from lxmert_hf import LxmertForVQA, transplant_answer_head
from lxmert_hf.checkpoints import checkpoint_keys, detect_layout, resolve_weights

PRETRAIN_ANSWERS = ["2", "gray", "man", "red", "yes", "cube", "dog"]


def save_hub_layout(model, folder) -> None:
    """Save like the unc-nlp Hub repos: config.json (model_type lxmert) and a pytorch_model.bin state dict."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


@pytest.fixture
def pretraining(tmp_path):
    torch.manual_seed(0)
    model = LxmertForPreTraining(LxmertConfig(num_qa_labels=len(PRETRAIN_ANSWERS), **TINY))
    save_hub_layout(model, tmp_path / "lxmert-base-uncased")
    return model, tmp_path / "lxmert-base-uncased"


def test_layouts_are_detected(tmp_path, pretraining):
    _, folder = pretraining
    assert detect_layout(checkpoint_keys(resolve_weights(folder))) == "pretraining"
    qa = LxmertForQuestionAnswering(LxmertConfig(num_qa_labels=3, **TINY))
    save_hub_layout(qa, tmp_path / "qa")
    assert detect_layout(checkpoint_keys(resolve_weights(tmp_path / "qa"))) == "question_answering"
    save_hub_layout(LxmertModel(LxmertConfig(**TINY)), tmp_path / "bare")
    assert detect_layout(checkpoint_keys(resolve_weights(tmp_path / "bare"))) == "model"
    with pytest.raises(ValueError, match="match no known layout"):
        detect_layout(["foo.weight"])
    with pytest.raises(FileNotFoundError, match="not an LXMERT checkpoint"):
        resolve_weights(tmp_path)


def test_pretraining_layout_loads_encoder_and_logs_new_head(pretraining, caplog):
    source, folder = pretraining
    with caplog.at_level(logging.WARNING, logger="lxmert_hf.checkpoints"):
        model = LxmertForVQA.from_pretrained(folder, answers=ANSWERS)
    for name, tensor in source.lxmert.state_dict().items():
        assert torch.equal(model.lxmert.state_dict()[name], tensor), name
    assert "Newly initialized" in caplog.text and "classifier.3.weight" in caplog.text
    assert model.config.answers == ANSWERS and model.config.model_type == "lxmert_vqa"


def test_pretraining_layout_needs_answers(pretraining):
    with pytest.raises(ValueError, match="pass `answers="):
        LxmertForVQA.from_pretrained(pretraining[1])


def test_bare_model_layout(tmp_path):
    source = LxmertModel(LxmertConfig(**TINY))
    save_hub_layout(source, tmp_path / "bare")
    model = LxmertForVQA.from_pretrained(tmp_path / "bare", answers=ANSWERS)
    assert torch.equal(model.lxmert.pooler.dense.weight, source.pooler.dense.weight)
    assert torch.equal(model.lxmert.embeddings.word_embeddings.weight, source.embeddings.word_embeddings.weight)


def test_question_answering_layout_maps_answer_head(tmp_path):
    torch.manual_seed(1)
    source = LxmertForQuestionAnswering(LxmertConfig(num_qa_labels=len(ANSWERS), **TINY)).eval()
    save_hub_layout(source, tmp_path / "lxmert-vqa-uncased")
    model, info = LxmertForVQA.from_pretrained(
        tmp_path / "lxmert-vqa-uncased", answers=ANSWERS, output_loading_info=True
    )
    assert not info["missing_keys"]
    for index in (0, 2, 3):
        assert torch.equal(model.classifier[index].weight, source.answer_head.logit_fc[index].weight)
    inputs = random_inputs()
    with torch.no_grad():
        assert (model.eval()(**inputs).logits - source(**inputs).question_answering_score).abs().max() <= 1e-5


def test_question_answering_layout_without_answers_warns(tmp_path, caplog):
    save_hub_layout(LxmertForQuestionAnswering(LxmertConfig(num_qa_labels=4, **TINY)), tmp_path / "qa")
    with caplog.at_level(logging.WARNING, logger="lxmert_hf.checkpoints"):
        model = LxmertForVQA.from_pretrained(tmp_path / "qa")
    assert model.config.num_labels == 4 and "carries no answer list" in caplog.text


def test_transplant_copies_matching_rows(pretraining, tmp_path):
    source, folder = pretraining
    answers_file = tmp_path / "all_ans.json"
    answers_file.write_text(json.dumps([{"ans": a, "dsets": ["vqa"]} for a in PRETRAIN_ANSWERS]))
    target = ["The Two.", "grey", "blue", "a dog", "yes"]
    torch.manual_seed(5)
    model = LxmertForVQA.from_pretrained(folder, answers=target, pretrain_answers=str(answers_file))
    head = source.answer_head.logit_fc
    expected_rows = {0: 0, 1: 1, 3: 6, 4: 4}  # "blue" has no match
    for label, row in expected_rows.items():
        assert torch.equal(model.classifier[3].weight[label], head[3].weight[row])
        assert torch.equal(model.classifier[3].bias[label], head[3].bias[row])
    assert not any(torch.equal(model.classifier[3].weight[2], head[3].weight[r]) for r in range(len(PRETRAIN_ANSWERS)))
    assert torch.equal(model.classifier[0].weight, head[0].weight) and torch.equal(
        model.classifier[2].bias, head[2].bias
    )


def test_transplant_returns_count(pretraining, tiny_config):
    source, _ = pretraining
    model = LxmertForVQA(tiny_config)
    head = {f"answer_head.logit_fc.{k}": v for k, v in source.answer_head.logit_fc.state_dict().items()}
    assert transplant_answer_head(model, head, PRETRAIN_ANSWERS) == 4  # yes, 2, red, cube
    with pytest.raises(ValueError, match="lists 3"):
        transplant_answer_head(model, head, PRETRAIN_ANSWERS[:3])


def test_transplant_needs_pretraining_checkpoint(tmp_path, tiny_config):
    LxmertForVQA(tiny_config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs a pre-training checkpoint"):
        LxmertForVQA.from_pretrained(tmp_path, pretrain_answers=PRETRAIN_ANSWERS)


def test_own_checkpoint_keeps_vocabulary_and_options(tmp_path, tiny_config):
    tiny_config.head_loss = "bce"
    LxmertForVQA(tiny_config).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "lxmert_vqa" and config["id2label"]["3"] == "red"
    loaded = LxmertForVQA.from_pretrained(tmp_path, attention_backend="eager")
    assert loaded.config.head_loss == "bce" and loaded.config.attention_backend == "eager"
    assert type(loaded.lxmert.encoder.layer[0].attention.self).__name__ == "LxmertAttention"
