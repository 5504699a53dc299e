"""Activation checkpointing of the library's models (`lxmert_hf.base.LxmertTaskModel`): the same gradients as
without it, with the layers really recomputed in the backward pass."""

from __future__ import annotations

import pytest
import torch
from tiny import ANSWERS, TINY, random_inputs

from lxmert_hf import LxmertForVQA, LxmertVQAConfig

# Two layers per stack, so that `every_n_layers=2` leaves some layers out.
SIZES = {**TINY, "l_layers": 2, "x_layers": 2, "r_layers": 2}


def model_and_batch() -> tuple[LxmertForVQA, dict]:
    torch.manual_seed(0)
    model = LxmertForVQA(LxmertVQAConfig.from_answers(ANSWERS, **SIZES)).train()
    labels = torch.rand(2, len(ANSWERS), generator=torch.Generator().manual_seed(1))
    return model, {**random_inputs(), "labels": labels}


def gradients(model: LxmertForVQA, batch: dict) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    # The last cross-modality layer's vision output feeds nothing: no gradient, or zeros when a reentrant
    # checkpoint replays that layer's whole backward.
    return {name: torch.zeros_like(p) if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


def count_layer_runs(model: LxmertForVQA) -> dict[str, int]:
    """How often the feed-forward block of each encoder layer runs (twice when the backward pass recomputes it)."""
    runs: dict[str, int] = {}
    for name, module in model.lxmert.encoder.named_modules():
        if name.endswith(("intermediate", "lang_inter")):
            runs[name] = 0
            module.register_forward_hook(lambda *_, name=name: runs.__setitem__(name, runs[name] + 1))
    return runs


@pytest.mark.parametrize(
    "options",
    [{}, {"activation_checkpointing_kwargs": {"use_reentrant": True}}, {"every_n_layers": 2}],
    ids=["default", "reentrant", "every_2nd_layer"],
)
def test_checkpointing_gives_the_same_gradients_and_recomputes_the_layers(options):
    model, batch = model_and_batch()
    expected = gradients(model, batch)
    runs = count_layer_runs(model)
    model.activation_checkpointing_enable(**options)
    actual = gradients(model, batch)
    torch.testing.assert_close(actual, expected)
    every = options.get("every_n_layers", 1)
    # Layers are counted in the order of `modules()`: the language, cross-modality, then vision stacks.
    recomputed = [count == 2 for count in runs.values()]
    assert recomputed == [index % every == 0 for index in range(len(runs))], runs


def test_checkpointing_keeps_the_weights_names_and_turns_off():
    model, batch = model_and_batch()
    keys = list(model.state_dict())
    with pytest.warns(FutureWarning, match="activation_checkpointing_enable"):  # transformers' older name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert list(model.state_dict()) == keys and model.is_activation_checkpointing
    model.activation_checkpointing_disable()
    runs = count_layer_runs(model)
    gradients(model, batch)
    assert not model.is_activation_checkpointing and set(runs.values()) == {1}


def test_no_recomputation_in_evaluation():
    model, batch = model_and_batch()
    model.activation_checkpointing_enable()
    runs = count_layer_runs(model.eval())
    with torch.no_grad():
        model(**batch)
    assert set(runs.values()) == {1}
