"""NLVR2Pipeline: a sentence about a pair of images in, true/false and its probability out; the input forms,
batching, pictures through the detector, bad input, saving and loading, registration with transformers."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import torch
import transformers
import vqa_helpers as vh
from PIL import Image

from lxmert_hf import LxmertForNLVR2, LxmertNLVR2Config
from lxmert_hf.pipeline import NLVR2_TASK, NLVR2Pipeline

SENTENCE = "there is a red cube"


def nlvr2_model(feat_dim: int = 16, seed: int = 0) -> LxmertForNLVR2:
    torch.manual_seed(seed)
    return LxmertForNLVR2(LxmertNLVR2Config(**vh.SIZES, visual_feat_dim=feat_dim)).eval()


def pair(left_regions: int = 6, right_regions: int = 6, dim: int = 16, seed: int = 0) -> list[dict]:
    return [vh.features(left_regions, dim, seed), vh.features(right_regions, dim, seed + 1)]


@pytest.fixture(scope="module")
def pipe() -> NLVR2Pipeline:
    return NLVR2Pipeline(nlvr2_model(), vh.tokenizer(), device="cpu")


def model_probabilities(model: LxmertForNLVR2, images: list[dict], sentence: str = SENTENCE) -> torch.Tensor:
    """The model's softmax over (false, true), called directly: regions padded by hand, padding masked out."""
    encoding = vh.tokenizer()(sentence, return_tensors="pt")
    longest = max(len(image["visual_feats"]) for image in images)
    feats = torch.zeros(1, 2, longest, images[0]["visual_feats"].shape[1])
    pos = torch.zeros(1, 2, longest, 4)
    mask = torch.zeros(1, 2, longest, dtype=torch.long)
    for side, image in enumerate(images):
        count = len(image["visual_feats"])
        feats[0, side, :count] = torch.as_tensor(image["visual_feats"])
        pos[0, side, :count] = torch.as_tensor(image["visual_pos"])
        mask[0, side, :count] = 1
    with torch.no_grad():
        logits = model(**encoding, visual_feats=feats, visual_pos=pos, visual_attention_mask=mask).logits[0]
    return logits.softmax(-1)


def expected(model: LxmertForNLVR2, images: list[dict], sentence: str = SENTENCE) -> dict:
    probabilities = model_probabilities(model, images, sentence)
    index = int(probabilities.argmax())
    return {"label": ["false", "true"][index], "score": float(probabilities[index])}


def assert_same(got: dict, want: dict) -> None:
    assert got["label"] == want["label"]
    assert got["score"] == pytest.approx(want["score"], abs=1e-5)


# -- outputs ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("regions", [(6, 6), (4, 6)], ids=["same counts", "padded right image"])
def test_label_and_probability_are_the_models(pipe, regions):
    images = pair(*regions)
    result = pipe({"images": images, "sentence": SENTENCE})
    assert sorted(result) == ["label", "score"] and result["label"] in ("true", "false")
    assert 0.5 <= result["score"] <= 1.0
    assert_same(result, expected(pipe.model, images))


def test_both_labels_occur_and_follow_the_images(pipe):
    # The classifier reads both images: over a few pairs, the answers differ and depend on the order of the pair.
    results = [pipe({"images": pair(seed=seed), "sentence": SENTENCE}) for seed in range(0, 40, 2)]
    swapped = [pipe({"images": pair(seed=seed)[::-1], "sentence": SENTENCE}) for seed in range(0, 40, 2)]
    scores = [r["score"] if r["label"] == "true" else 1 - r["score"] for r in results]
    assert len({round(s, 6) for s in scores}) > 1
    assert [r["score"] for r in results] != pytest.approx([r["score"] for r in swapped], abs=1e-6)


def test_input_forms_agree(pipe):
    images = pair()
    one = pipe({"images": images, "sentence": SENTENCE})
    assert_same(pipe(images, sentence=SENTENCE), one)
    assert_same(pipe({"images": tuple(images)}, sentence=SENTENCE), one)
    listed = pipe([{"images": images, "sentence": SENTENCE}])
    assert isinstance(listed, list) and len(listed) == 1
    assert_same(listed[0], one)


def test_batches_give_what_one_by_one_gives(pipe):
    inputs = [
        {"images": pair(4 + seed % 3, 6, seed=seed), "sentence": sentence}
        for seed, sentence in enumerate([SENTENCE, "how many cats", "the cube is red", "a cat", "is there a cube"])
    ]
    one_by_one = [pipe(example) for example in inputs]
    for batch_size in (2, 5):
        batched = pipe(inputs, batch_size=batch_size)
        assert len(batched) == len(inputs)
        for got, want in zip(batched, one_by_one, strict=True):
            assert_same(got, want)


def test_datasets_and_generators_stream(pipe):
    rows = [{"images": pair(seed=seed), "sentence": SENTENCE} for seed in range(3)]
    want = [pipe(row) for row in rows]
    streamed = list(pipe(row for row in rows))
    table = datasets.Dataset.from_list(rows).with_format("numpy")
    from_dataset = list(pipe(table, batch_size=2))
    for results in (streamed, from_dataset):
        assert len(results) == len(want)
        for got, expect in zip(results, want, strict=True):
            assert_same(got, expect)


def test_half_precision_model_takes_float32_features(pipe):
    images = pair(4, 6)
    result = NLVR2Pipeline(nlvr2_model().to(torch.bfloat16), vh.tokenizer(), device="cpu")(images, sentence=SENTENCE)
    assert result["label"] in ("true", "false") and 0.5 <= result["score"] <= 1.0
    true = result["score"] if result["label"] == "true" else 1 - result["score"]
    assert true == pytest.approx(float(model_probabilities(pipe.model, images)[1]), abs=0.02)


# -- pictures through the detector -------------------------------------------------------------------------------
def picture(size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(vh.png_bytes(size=size))).convert("RGB"))


def test_pictures_go_through_the_detector():
    model = nlvr2_model(feat_dim=vh.DETECTOR_DIM)
    picture_pipe = NLVR2Pipeline(model, vh.tokenizer(), detector=vh.detector(), device="cpu")
    left = Image.open(io.BytesIO(vh.png_bytes()))
    right = picture((48, 64))
    result = picture_pipe({"images": [left, right], "sentence": SENTENCE})
    assert result["label"] in ("true", "false") and 0.5 <= result["score"] <= 1.0

    detected = [vh.detector()(np.asarray(left.convert("RGB"))), vh.detector()(right)]
    as_features = [{"visual_feats": d["visual_feats"], "visual_pos": d["visual_pos"]} for d in detected]
    assert_same(result, expected(model, as_features))
    assert_same(picture_pipe({"images": [as_features[0], right], "sentence": SENTENCE}), result)


def test_a_picture_shown_several_times_is_detected_once(monkeypatch):
    detector = vh.detector()
    calls = []
    original = type(detector).forward
    monkeypatch.setattr(type(detector), "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    picture_pipe = NLVR2Pipeline(
        nlvr2_model(feat_dim=vh.DETECTOR_DIM), vh.tokenizer(), detector=detector, device="cpu"
    )
    shared, other = (np.asarray(Image.open(io.BytesIO(vh.png_bytes(size=size))).convert("RGB")) for size in [(64, 48),
                     (48, 64)])  # fmt: skip
    inputs = [{"images": [shared, other], "sentence": SENTENCE}, {"images": [shared, shared], "sentence": "a cat"}]
    results = picture_pipe(inputs, batch_size=2, timeout=5)
    assert len(results) == 2 and len(calls) == 2  # `shared` once, `other` once
    assert inputs[1]["images"][0] is shared  # the caller's inputs stay as given
    calls.clear()
    assert_same(picture_pipe(inputs[0]), results[0])
    assert len(calls) == 2


def test_picture_without_detector_says_how_to_fix(pipe):
    picture = np.zeros((48, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="the input, left image: .*pass `detector=`"):
        pipe({"images": [picture, vh.features()], "sentence": SENTENCE})


# -- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p, a, b: p({"images": a, "sentence": SENTENCE}), "`images` must be a list of two images .* one dict"),
        (lambda p, a, b: p({"images": [a], "sentence": SENTENCE}), "`images` must hold two images .* got 1"),
        (lambda p, a, b: p({"images": [a, b, a], "sentence": SENTENCE}), "`images` must hold two images .* got 3"),
        (lambda p, a, b: p({"images": [a, b]}), "the input has no `sentence`"),
        (lambda p, a, b: p({"images": [a, b], "sentence": "  "}), "the input: `sentence` must be a non-empty string"),
        (lambda p, a, b: p({"images": [a, b], "sentence": 3}), "the input: `sentence` must be a non-empty .* got 3"),
        (lambda p, a, b: p({"image": a, "sentence": SENTENCE}), "has no `images` \\(one image: NLVR2 judges"),
        (lambda p, a, b: p("left.png", sentence=SENTENCE), "got str 'left.png' \\(one image"),
        (lambda p, a, b: p([a], sentence=SENTENCE), "the input: `images` must hold two images .* got 1"),
        (lambda p, a, b: p([a, b, b], sentence=SENTENCE), "the input: `images` must hold two images .* got 3"),
        (lambda p, a, b: p([{"images": [a, b], "sentence": SENTENCE}, {"images": [a], "sentence": SENTENCE}]),
         "input 1: `images` must hold two images"),
        (lambda p, a, b: p([{"images": [a, b], "sentence": SENTENCE, "identifier": "dev-1-0-0"},
                            {"images": [a, b], "identifier": "dev-1-0-1"}]), "input 1 \\('dev-1-0-1'\\) has no `sen"),
        (lambda p, a, b: p([{"images": [a, {"visual_feats": np.ones((6, 15)), "visual_pos": b["visual_pos"]}],
                             "sentence": SENTENCE}]), "input 0, right image: `visual_feats` has 15 features"),
        (lambda p, a, b: p({"images": [a, b], "sentence": SENTENCE}, sentence=SENTENCE), "already holds a `sentence`"),
        (lambda p, a, b: p([{"images": [a, b], "sentence": SENTENCE}], sentence=SENTENCE), "do not pass `sentence=`"),
        (lambda p, a, b: p(None), "pass an input \\{'images'"),
        (lambda p, a, b: p([]), "the list of inputs is empty"),
        (lambda p, a, b: p({"images": [a, b], "sentence": SENTENCE}, top_k=2), "unknown argument.*top_k"),
        (lambda p, a, b: p({"images": [a, b], "sentence": SENTENCE}, batch_size=0), "`batch_size` must be a positive"),
    ],
    ids=["one image", "list of one image", "three images", "missing sentence", "empty sentence", "sentence not text",
         "image instead of images", "picture with sentence=", "one image with sentence=", "three with sentence=",
         "second of a list", "identifier named", "bad features of the right image", "sentence twice",
         "sentence= with a list", "nothing", "empty list", "unknown argument", "batch size 0"],
)  # fmt: skip
def test_bad_inputs_name_the_input(pipe, call, match):
    left, right = pair()
    with pytest.raises(ValueError, match=match):
        call(pipe, left, right)


def test_non_finite_features_name_the_sentence(pipe):
    left, right = pair()
    right = {**right, "visual_feats": np.full_like(right["visual_feats"], np.nan)}
    with pytest.raises(ValueError, match="NaN or infinite .*there is a red cube"):
        pipe([{"images": pair(), "sentence": "a cat"}, {"images": [left, right], "sentence": SENTENCE}], batch_size=2)


def test_construction_is_checked():
    with pytest.raises(ValueError, match="`model` must be an LxmertForNLVR2, got LxmertForVQA"):
        NLVR2Pipeline(vh.vqa_model(), vh.tokenizer(), device="cpu")
    with pytest.raises(ValueError, match="`tokenizer` is required"):
        NLVR2Pipeline(nlvr2_model(), device="cpu")


# -- loading, saving, registration -------------------------------------------------------------------------------
def test_saved_pipeline_loads_back_and_through_transformers_pipeline(pipe, tmp_path):
    folder = tmp_path / "checkpoint"
    pipe.save_pretrained(folder)
    images = pair(4, 6)
    want = pipe({"images": images, "sentence": SENTENCE})
    again = NLVR2Pipeline.from_pretrained(folder, device="cpu")
    assert_same(again({"images": images, "sentence": SENTENCE}), want)
    generic = transformers.pipeline(NLVR2_TASK, model=str(folder), device="cpu")
    assert isinstance(generic, NLVR2Pipeline) and isinstance(generic.model, LxmertForNLVR2)
    assert_same(generic({"images": images, "sentence": SENTENCE}), want)


def test_checkpoints_of_other_layouts_are_refused(tmp_path):
    vh.vqa_model().save_pretrained(tmp_path / "vqa")
    vh.tokenizer().save_pretrained(tmp_path / "vqa")
    with pytest.raises(ValueError, match="not a fine-tuned LxmertForNLVR2 checkpoint .*model_type is 'lxmert'"):
        NLVR2Pipeline.from_pretrained(tmp_path / "vqa", device="cpu")
