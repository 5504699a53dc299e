"""Bad inputs to the Python API, each refused at the library's boundary with an error naming the input, and the
security rules of the source (no pickle, weights-only `torch.load`, safe YAML, no shell)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import ANSWERS, TINY, random_inputs

from lxmert_hf import LxmertForVQA, LxmertVQAConfig


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
