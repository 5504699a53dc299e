"""The pre-training model: transformers' `LxmertForPreTraining` with each objective's loss apart (the same total),
no `nan` for an objective without targets, checkpoints that transformers and the task models load, and the held-out
statistics that do not depend on how a split is batched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LxmertConfig, LxmertForPreTraining
from transformers.trainer_utils import EvalPrediction

from lxmert_hf import LxmertForVQA
from lxmert_hf.modeling_pretraining import OBJECTIVES, LxmertForPreTrainingWithLosses
from lxmert_hf.training.pretraining import objective_statistics, pretraining_metrics

ANSWERS = ["yes", "no", "2", "red", "cube"]
CONFIG = dict(
    vocab_size=60, hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1, x_layers=1, r_layers=1,
    visual_feat_dim=8, num_qa_labels=len(ANSWERS), num_object_labels=7, num_attr_labels=4,
)  # fmt: skip


def model(**overrides) -> LxmertForPreTrainingWithLosses:
    torch.manual_seed(0)
    return LxmertForPreTrainingWithLosses(LxmertConfig(**{**CONFIG, **overrides})).eval()


def batch(size: int = 4, words: int = 7, regions: int = 5, seed: int = 0, targets: bool = True) -> dict:
    generator = torch.Generator().manual_seed(seed)
    feats = torch.rand(size, regions, 8, generator=generator)
    labels = torch.full((size, words), -100)
    answers = torch.full((size,), -100)
    if targets:
        labels[:, 2] = torch.randint(5, 60, (size,), generator=generator)
        labels[0, 4] = 11
        answers[: size // 2 + 1] = torch.randint(0, len(ANSWERS), (size // 2 + 1,), generator=generator)
    label_ids = torch.full((size, 2), -100)
    label_ids[answers != -100, 0] = answers[answers != -100]
    label_ids[answers != -100, 1] = (answers[answers != -100] + 1) % len(ANSWERS)
    label_scores = torch.where(label_ids != -100, torch.tensor([1.0, 0.3]), 0.0)
    masked = torch.rand(size, regions, generator=generator) < 0.4
    masked[:, 0] = True
    return {
        "input_ids": torch.randint(5, 60, (size, words), generator=generator),
        "attention_mask": torch.ones(size, words, dtype=torch.long),
        "visual_feats": feats,
        "visual_pos": torch.rand(size, regions, 4, generator=generator),
        "labels": labels,
        "matched_label": torch.randint(0, 2, (size,), generator=generator),
        "ans": answers,
        "qa_label_ids": label_ids,
        "qa_scores": label_scores,
        "masked_regions": masked,
        "obj_labels": {
            "obj": (torch.randint(0, 7, (size, regions), generator=generator), torch.rand(size, regions)),
            "attr": (torch.randint(0, 4, (size, regions), generator=generator), torch.rand(size, regions)),
            "feat": (feats, masked.float()),
        },
    }


def plain(inputs: dict) -> dict:
    """The inputs transformers' model names (it ignores the others too; passing only these shows it needs no more)."""
    return {k: v for k, v in inputs.items() if k not in ("masked_regions", "qa_label_ids", "qa_scores")}


def test_the_total_loss_is_transformers_and_the_sum_of_the_objectives():
    ours = model()
    reference = LxmertForPreTraining(ours.config).eval()
    reference.load_state_dict(ours.state_dict())
    inputs = batch()
    with torch.no_grad():
        output = ours(**inputs)
        expected = reference(**plain(inputs)).loss
    assert sorted(output.losses) == sorted(OBJECTIVES)
    torch.testing.assert_close(output.loss, expected)
    torch.testing.assert_close(output.loss, sum(output.losses.values()))
    # Each objective's loss is what its examples add, over what they count.
    for name, (sums, counts) in output.example_losses.items():
        torch.testing.assert_close(output.losses[name], sums.sum() / counts.sum(), msg=name)


def test_an_objective_without_targets_adds_zero_and_keeps_every_head_in_the_graph():
    ours = model().train()
    inputs = batch(targets=False)  # no masked word piece, no question
    output = ours(**inputs)
    assert torch.isfinite(output.loss)
    assert output.losses["lm"].item() == 0.0 and output.losses["qa"].item() == 0.0
    reference = LxmertForPreTraining(ours.config)
    reference.load_state_dict(ours.state_dict())
    assert torch.isnan(reference(**plain(inputs)).loss)
    output.loss.backward()
    # Distributed training needs a gradient (zero or not) for every parameter of every step.
    missing = [name for name, parameter in ours.named_parameters() if parameter.grad is None]
    assert missing == []


def test_objectives_switched_off_are_not_computed():
    ours = model(task_qa=False, visual_attr_loss=False)
    output = ours(**batch())
    assert sorted(output.losses) == ["feat", "lm", "matched", "obj"]
    assert output.question_answering_score is None


def test_a_visual_loss_without_targets_is_named():
    inputs = batch()
    del inputs["obj_labels"]["attr"]
    with pytest.raises(ValueError, match=r"no 'attr' targets.*visual_attr_loss"):
        model()(**inputs)


def test_checkpoints_load_in_transformers_and_in_the_task_models(tmp_path):
    ours = model()
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["LxmertForPreTraining"]
    loaded = LxmertForPreTraining.from_pretrained(tmp_path).eval()
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**plain(inputs)).prediction_logits,
            ours(**inputs).prediction_logits,
        )
    (tmp_path / "pretrain_answers.json").write_text(json.dumps(ANSWERS))
    vqa = LxmertForVQA.from_pretrained(
        tmp_path, answers=["cube", "no", "blue"], pretrain_answers=str(tmp_path / "pretrain_answers.json")
    )
    head = ours.answer_head.logit_fc[-1]
    classifier = vqa.classifier[-1]
    torch.testing.assert_close(classifier.weight[0], head.weight[ANSWERS.index("cube")])
    torch.testing.assert_close(classifier.weight[1], head.weight[ANSWERS.index("no")])
    assert "transplanted 2 of 3 answers" in str(vqa.answer_head_transplant)


def _metrics(ours, parts: list[dict]) -> dict[str, float]:
    metric = pretraining_metrics()
    for index, part in enumerate(parts):
        with torch.no_grad():
            statistics = objective_statistics(ours(**part), part)
        result = metric(EvalPrediction(predictions=statistics, label_ids=None), compute_result=index == len(parts) - 1)
    return result


def _split(inputs: dict, rows: slice) -> dict:
    def take(value):
        if isinstance(value, dict):
            return {key: take(item) for key, item in value.items()}
        if isinstance(value, tuple):
            return tuple(take(item) for item in value)
        return value[rows]

    return take(inputs)


def test_held_out_metrics_do_not_depend_on_the_batching():
    ours = model()
    inputs = batch(size=6, seed=3)
    whole = _metrics(ours, [inputs])
    halves = _metrics(ours, [_split(inputs, slice(0, 2)), _split(inputs, slice(2, 6))])
    assert set(whole) == {
        *(f"{name}_loss" for name in OBJECTIVES),
        "masked_lm_accuracy", "matching_accuracy", "object_accuracy", "attribute_accuracy", "qa_accuracy",
    }  # fmt: skip
    for key, value in whole.items():
        assert halves[key] == pytest.approx(value, rel=1e-5), key
    # The matching accuracy counts the rows the head gets right.
    with torch.no_grad():
        predicted = ours(**inputs).cross_relationship_score.argmax(-1)
    expected = 100.0 * float((predicted == inputs["matched_label"]).float().mean())
    assert whole["matching_accuracy"] == pytest.approx(expected)
    # Object accuracy counts masked regions only.
    with torch.no_grad():
        scores = ours(**inputs).visual_prediction_scores["obj"].argmax(-1)
    ids, _ = inputs["obj_labels"]["obj"]
    masked = inputs["masked_regions"]
    expected = 100.0 * float((scores == ids)[masked].float().mean())
    assert whole["object_accuracy"] == pytest.approx(expected)
    # QA accuracy: the score of the predicted answer in each counted question's label, as the original evaluates.
    with torch.no_grad():
        answers = ours(**inputs).question_answering_score.argmax(-1)
    counted = inputs["ans"] != -100
    hits = (inputs["qa_label_ids"] == answers.unsqueeze(1)).float() * inputs["qa_scores"]
    assert whole["qa_accuracy"] == pytest.approx(100.0 * float(hits.sum(1)[counted].mean()))
    assert np.isfinite(list(whole.values())).all()


def test_micro_batch_losses_add_up_to_the_loss_of_their_union():
    # Given the global batch's count of each objective's items, the losses of its parts add up to its own loss.
    ours = model()
    inputs = batch(size=6, seed=5)
    counts = ours.objective_counts(inputs)
    assert counts.tolist() == [
        float((inputs["labels"] != -100).sum()),
        6.0,
        30.0,
        30.0,
        30.0,
        float((inputs["ans"] != -100).sum()),
    ]
    with torch.no_grad():
        whole = ours(**inputs)
        parts = [ours(**_split(inputs, rows), num_items_in_batch=counts) for rows in (slice(0, 2), slice(2, 6))]
    for name in OBJECTIVES:
        torch.testing.assert_close(parts[0].losses[name] + parts[1].losses[name], whole.losses[name], msg=name)
    torch.testing.assert_close(parts[0].loss + parts[1].loss, whole.loss)


def test_activation_checkpointing_gives_the_same_gradients():
    inputs = batch(seed=7)
    gradients = []
    for checkpointing in (False, True):
        ours = model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
        if checkpointing:
            ours.activation_checkpointing_enable()
        ours(**inputs).loss.backward()
        assert ours.is_activation_checkpointing is checkpointing
        gradients.append({name: p.grad for name, p in ours.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, msg=name)
