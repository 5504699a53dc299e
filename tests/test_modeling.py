"""LxmertForVQA: forward/backward, losses, input checks, SDPA, parity with transformers, save/load."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import ANSWERS, TINY, random_inputs
from transformers import LxmertConfig, LxmertForQuestionAnswering

from lxmert_hf import LxmertForVQA, LxmertVQAConfig, set_attention_backend
from lxmert_hf.losses import answer_loss


def test_forward_backward(tiny_config, inputs):
    model = LxmertForVQA(tiny_config)
    labels = torch.tensor([[0.0, 1.0, 0.3, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, len(ANSWERS))
    out.loss.backward()
    assert model.classifier[0].weight.grad is not None
    assert model.lxmert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_classifier_matches_paper(tiny_config):
    head = LxmertForVQA(tiny_config).classifier
    h = tiny_config.hidden_size
    assert [type(m).__name__ for m in head] == ["Linear", "GELU", "LayerNorm", "Linear"]
    assert head[0].weight.shape == (2 * h, h) and head[3].weight.shape == (len(ANSWERS), 2 * h)
    assert head[2].eps == 1e-12


def test_softmax_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    scores = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.0, 0.0]])
    log_p = torch.log_softmax(logits[0], -1)
    # The target is the soft scores made a distribution; the all-zero row carries no target.
    expected = -(1.0 / 1.3 * log_p[0] + 0.3 / 1.3 * log_p[1])
    assert torch.allclose(answer_loss(logits, scores, "softmax"), expected)


def test_bce_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    scores = torch.tensor([[1.0, 0.3], [0.0, 0.6]])

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    # The paper's loss: summed over answers, averaged over the batch.
    expected = (bce(2, 1) + bce(0, 0.3) + bce(-1, 0) + bce(1, 0.6)) / 2
    assert answer_loss(logits, scores, "bce").item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("head_loss", ["softmax", "bce"])
def test_hard_labels_equal_one_hot_scores(head_loss):
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    indices = torch.tensor([2, 0, 3])
    one_hot = torch.nn.functional.one_hot(indices, 4).float()
    assert torch.allclose(answer_loss(logits, indices, head_loss), answer_loss(logits, one_hot, head_loss))


@pytest.mark.parametrize("head_loss", ["softmax", "bce"])
def test_ignored_hard_labels(head_loss):
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    with_ignored = answer_loss(logits, torch.tensor([1, -100, 2]), head_loss)
    assert torch.allclose(with_ignored, answer_loss(logits[[0, 2]], torch.tensor([1, 2]), head_loss))


def test_model_uses_configured_loss(inputs):
    labels = torch.tensor([1, 3])
    for head_loss in ("softmax", "bce"):
        torch.manual_seed(0)
        model = LxmertForVQA(LxmertVQAConfig.from_answers(ANSWERS, head_loss=head_loss, **TINY)).eval()
        out = model(**inputs, labels=labels)
        assert torch.allclose(out.loss, answer_loss(out.logits, labels, head_loss))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x.update(visual_feats=torch.rand(2, 6, 15)), "`visual_feats` has shape (2, 6, 15)"),
        (lambda x: x.update(visual_pos=torch.rand(2, 5, 4)), "`visual_pos` has shape (2, 5, 4), expected (2, 6, 4)"),
        (lambda x: x.update(visual_pos=torch.rand(2, 6, 4) * 2), "expected boxes normalized to [0, 1]"),
        (lambda x: x.update(visual_pos=-torch.rand(2, 6, 4)), "expected boxes normalized to [0, 1]"),
        (lambda x: x.update(labels=torch.rand(2, 4)), "`labels` (soft scores) has shape (2, 4), expected (2, 5)"),
        (lambda x: x.update(labels=torch.tensor([0, 9])), "outside [0, 5)"),
        (lambda x: x.update(labels=torch.tensor([[0], [1]])), "`labels` (answer indices) has shape (2, 1)"),
        (lambda x: x.update(visual_attention_mask=torch.ones(2, 5)), "`visual_attention_mask` has shape (2, 5)"),
    ],
)
def test_bad_inputs_name_the_tensor(tiny_config, inputs, change, message):
    change(inputs)
    with pytest.raises(ValueError) as error:
        LxmertForVQA(tiny_config)(**inputs)
    assert message in str(error.value)


@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_equals_eager(tiny_config, masked):
    torch.manual_seed(0)
    model = LxmertForVQA(tiny_config).eval()
    inputs = random_inputs(boxes=7)
    if masked:
        inputs["visual_attention_mask"] = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        sdpa = model(**inputs).logits
        eager = set_attention_backend(model, "eager")(**inputs).logits
    assert model.config.attention_backend == "eager"
    assert (sdpa - eager).abs().max() < 1e-5


def test_sdpa_falls_back_to_eager_for_attentions(tiny_config, inputs):
    model = LxmertForVQA(tiny_config).eval()
    assert model.config.attention_backend == "sdpa"
    out = model(**inputs, output_attentions=True, output_hidden_states=True)
    assert len(out.language_attentions) == TINY["l_layers"]
    assert out.cross_encoder_attentions[0].shape == (2, 2, 5, 6)
    assert torch.allclose(out.cross_encoder_attentions[0].sum(-1), torch.ones(2, 2, 5), atol=1e-5)
    assert len(out.vision_hidden_states) == TINY["r_layers"] + TINY["x_layers"]


def test_sdpa_training_with_dropout(inputs):
    config = LxmertVQAConfig.from_answers(ANSWERS, **{**TINY, "attention_probs_dropout_prob": 0.5})
    model = LxmertForVQA(config).train()
    model(**inputs, labels=torch.tensor([0, 1])).loss.backward()


def test_parity_with_transformers_question_answering(tmp_path, inputs):
    torch.manual_seed(0)
    reference = LxmertForQuestionAnswering(LxmertConfig(num_qa_labels=len(ANSWERS), **TINY)).eval()
    reference.save_pretrained(tmp_path)
    for backend in ("eager", "sdpa"):
        model = LxmertForVQA.from_pretrained(tmp_path, answers=ANSWERS, attention_backend=backend).eval()
        with torch.no_grad():
            expected = reference(**inputs).question_answering_score
            got = model(**inputs).logits
        assert (expected - got).abs().max() <= 1e-5


def test_save_load_round_trip(tmp_path, tiny_config, inputs):
    model = LxmertForVQA(tiny_config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = LxmertForVQA.from_pretrained(tmp_path).eval()
    assert loaded.config.answers == ANSWERS and loaded.config.head_loss == "softmax"
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


def test_config_validation():
    with pytest.raises(ValueError, match="head_loss"):
        LxmertVQAConfig(head_loss="mse")
    with pytest.raises(ValueError, match="attention_backend"):
        LxmertVQAConfig(attention_backend="flash")
    with pytest.raises(ValueError, match="repeats 'no'"):
        LxmertVQAConfig.from_answers(["yes", "no", "no"])


def test_every_parameter_trains(tiny_config):
    torch.manual_seed(0)
    model = LxmertForVQA(tiny_config).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):
        inputs = random_inputs(seed=step, words=6)
        inputs["token_type_ids"] = torch.randint(0, 2, inputs["input_ids"].shape)
        model(**inputs, labels=torch.tensor([step % 5, (step + 1) % 5])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    # The answer head reads the language stream, so the vision branch of the last cross-modality layer (its
    # self-attention and feed-forward after the cross-attention) cannot influence the loss, in LXMERT as published.
    last = f"lxmert.encoder.x_layers.{TINY['x_layers'] - 1}.visn_"
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    branch = (last + "self_att", last + "inter", last + "output")
    assert unchanged and all(name.startswith(branch) for name in unchanged)
    assert len(unchanged) == 16
