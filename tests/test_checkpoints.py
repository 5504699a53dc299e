"""Loading every published LXMERT layout into LxmertForVQA, and the answer-head transplant."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tiny import ANSWERS, TINY, random_inputs
from transformers import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering, LxmertModel

from lxmert_hf import LxmertForVQA, LxmertVQAConfig, transplant_answer_head
from lxmert_hf.answers import lxmert_qa_normalize
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
    assert model.config.answers == ANSWERS and model.config.model_type == "lxmert"


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


# The original `AnswerTable.convert_ans` and `load_lxmert_qa` surgery (airsplay/lxmert, src/pretrain/
# qa_answer_table.py), restated here independently of the library to check it against.
ORIGINAL_CONVERT = {
    "a man": "man", "the man": "man", "a woman": "woman", "the woman": "woman", "one": "1", "two": "2", "three": "3",
    "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "grey": "gray",
}  # fmt: skip


def original_convert_ans(answer: str) -> str:
    if not answer:
        return ""
    answer = answer.lower()
    if answer[-1] == ".":
        answer = answer[:-1].strip()
    for article in ("a ", "an ", "the "):
        if answer[: len(article)] == article:
            answer = answer[len(article) :].strip()
    return ORIGINAL_CONVERT.get(answer, answer)


def original_rows(answers: list[str], head_answers: list[str]) -> dict[int, int | None]:
    """label -> head row, or None where the original sets the weight and bias rows to zero."""
    index = {answer: row for row, answer in enumerate(head_answers)}
    return {label: index.get(original_convert_ans(answer)) for label, answer in enumerate(answers)}


# Head answers as written in a synthetic all_ans.json (surrounding spaces and capitals are never normalized).
EDGE_HEAD = ["2", "gray", "man", "woman", "dog", "a dog", " cat", "Yes", "yes", "t-shirt", "zero", "left", "3.5",
             "10", "none "]  # fmt: skip
# Fine-tuning answers: whitespace, case, articles, punctuation, number words.
EDGE_ANSWERS = ["two", "Two", " two", "two ", "two .", "The Two.", "GREY.", "the a man", "an the woman", "a dog",
                "the a dog", " cat", "cat ", "YES", "t shirt", "zero", "none", "left.", "3.5", "ten."]  # fmt: skip


def test_original_rule_on_edge_cases():
    assert [lxmert_qa_normalize(a) for a in EDGE_ANSWERS] == [original_convert_ans(a) for a in EDGE_ANSWERS]
    rows = original_rows(EDGE_ANSWERS, EDGE_HEAD)
    # Spelled out: surrounding spaces are kept unless a period or an article is stripped; the head is as written.
    assert [label for label, row in rows.items() if row is None] == [2, 3, 12, 14, 16]  # " two", "two ", "cat ", ...
    assert rows[7] == 2 and rows[8] == 3 and rows[10] == 5 and rows[11] == 6 and rows[13] == 8


def edge_head(seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    config = LxmertConfig(num_qa_labels=len(EDGE_HEAD), **TINY)
    return {
        f"answer_head.logit_fc.{k}": v
        for k, v in LxmertForPreTraining(config).answer_head.logit_fc.state_dict().items()
    }


def test_transplant_copies_and_zeroes_the_rows_of_the_original():
    head = edge_head()
    model = LxmertForVQA(LxmertVQAConfig.from_answers(EDGE_ANSWERS, **TINY))
    report = transplant_answer_head(model, head, EDGE_HEAD)
    expected = original_rows(EDGE_ANSWERS, EDGE_HEAD)
    weight, bias = model.classifier[3].weight, model.classifier[3].bias
    for label, row in expected.items():
        source_weight = head["answer_head.logit_fc.3.weight"][row] if row is not None else torch.zeros_like(weight[0])
        source_bias = head["answer_head.logit_fc.3.bias"][row] if row is not None else torch.zeros(())
        assert torch.equal(weight[label], source_weight) and torch.equal(bias[label], source_bias), label
    for index in (0, 2):
        for name in ("weight", "bias"):
            assert torch.equal(getattr(model.classifier[index], name), head[f"answer_head.logit_fc.{index}.{name}"])
    assert report.rows == {label: row for label, row in expected.items() if row is not None}
    assert report.zeroed == (" two", "two ", "cat ", "t shirt", "none")
    assert str(report) == "transplanted 15 of 20 answers from the pre-training head (5 set to zero)"


def test_transplant_checks_the_head_answers(tiny_config):
    model, head = LxmertForVQA(tiny_config), edge_head()
    with pytest.raises(ValueError, match="lists 3"):
        transplant_answer_head(model, head, EDGE_HEAD[:3])
    with pytest.raises(ValueError, match="more than once"):
        transplant_answer_head(model, head, EDGE_HEAD[:-1] + ["dog"])


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def load_warnings():
    """Warnings of transformers' loading and of this library (transformers' own logger does not propagate)."""
    records = Records()
    loggers = [logging.getLogger("transformers.modeling_utils"), logging.getLogger("lxmert_hf.checkpoints")]
    for logger in loggers:
        logger.addHandler(records)
    yield records.messages
    for logger in loggers:
        logger.removeHandler(records)


def test_transplant_is_what_the_load_report_says(pretraining, tmp_path, load_warnings):
    source, folder = pretraining
    answers_file = tmp_path / "all_ans.json"
    answers_file.write_text(json.dumps([{"ans": a, "dsets": ["vqa"]} for a in PRETRAIN_ANSWERS]))
    target = ["The Two.", "grey", "blue", "a dog", "yes"]
    model, info = LxmertForVQA.from_pretrained(
        folder, answers=target, pretrain_answers=str(answers_file), output_loading_info=True
    )
    head = source.answer_head.logit_fc
    for label, row in {0: 0, 1: 1, 3: 6, 4: 4}.items():
        assert torch.equal(model.classifier[3].weight[label], head[3].weight[row])
        assert torch.equal(model.classifier[3].bias[label], head[3].bias[row])
    assert not model.classifier[3].weight[2].any() and model.classifier[3].bias[2] == 0  # "blue"
    line = "transplanted 4 of 5 answers from the pre-training head (1 set to zero)"
    assert str(info["answer_head_transplant"]) == line and str(model.answer_head_transplant) == line
    assert not any(key.startswith("classifier.") for key in info["missing_keys"])
    assert not any("classifier" in message for message in load_warnings), load_warnings
    # Without the transplant both reports do name the new classifier.
    LxmertForVQA.from_pretrained(folder, answers=target)
    assert sum("classifier" in message for message in load_warnings) == 2


def test_transplant_needs_pretraining_checkpoint(tmp_path, tiny_config):
    LxmertForVQA(tiny_config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs a pre-training checkpoint"):
        LxmertForVQA.from_pretrained(tmp_path, pretrain_answers=PRETRAIN_ANSWERS)


def test_own_checkpoint_keeps_vocabulary_and_options(tmp_path, tiny_config):
    tiny_config.head_loss = "bce"
    LxmertForVQA(tiny_config).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "lxmert" and config["id2label"]["3"] == "red"
    loaded = LxmertForVQA.from_pretrained(tmp_path, attention_backend="eager")
    assert loaded.config.head_loss == "bce" and loaded.config.attention_backend == "eager"
    assert type(loaded.lxmert.encoder.layer[0].attention.self).__name__ == "LxmertAttention"
