"""VQAPipeline: inputs and outputs, batching, datasets, pictures through the detector, bad input, translation,
visualization, registration with transformers."""

from __future__ import annotations

import io
import struct
import zlib

import datasets
import numpy as np
import pytest
import torch
import transformers
import vqa_helpers as vh
from guards import HANG_GUARD_S
from PIL import Image
from transformers.pipelines.pt_utils import KeyDataset

from lxmert_hf import VQAPipeline, draw_answer
from lxmert_hf.detection import ImageLoadError
from lxmert_hf.hub import describe_visual_features, save_checkpoint

QUESTION = "what color is the cube?"


@pytest.fixture(scope="module")
def pipe() -> VQAPipeline:
    return VQAPipeline(vh.vqa_model(), vh.tokenizer(), device="cpu")


@pytest.fixture(scope="module")
def picture_pipe() -> VQAPipeline:
    return VQAPipeline(vh.vqa_model(feat_dim=vh.DETECTOR_DIM), vh.tokenizer(), detector=vh.detector(), device="cpu")


def model_scores(model, features: dict, question: str = QUESTION) -> torch.Tensor:
    encoding = vh.tokenizer()(question, return_tensors="pt")
    with torch.no_grad():
        logits = model(
            **encoding,
            visual_feats=torch.as_tensor(features["visual_feats"])[None],
            visual_pos=torch.as_tensor(features["visual_pos"])[None],
        ).logits[0]
    return logits.softmax(-1) if model.config.head_loss == "softmax" else logits.sigmoid()


# -- outputs ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head_loss", ["softmax", "bce"])
def test_top_5_answers_best_first_with_the_heads_scores(head_loss):
    model = vh.vqa_model(head_loss=head_loss)
    features = vh.features()
    answers = VQAPipeline(model, vh.tokenizer(), device="cpu")(features, question=QUESTION)
    assert len(answers) == 5 and all(sorted(a) == ["answer", "score"] for a in answers)
    scores = model_scores(model, features)
    expected = scores.topk(5)
    assert [a["answer"] for a in answers] == [vh.ANSWERS[i] for i in expected.indices]
    assert [a["score"] for a in answers] == pytest.approx(expected.values.tolist(), abs=1e-6)


def test_top_k_is_capped_at_the_vocabulary_and_validated(pipe):
    assert len(pipe(vh.features(), question=QUESTION, top_k=100)) == len(vh.ANSWERS)
    assert len(pipe(vh.features(), question=QUESTION, top_k=1)) == 1
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            pipe(vh.features(), question=QUESTION, top_k=bad)


def test_feature_forms_give_the_same_answers(pipe):
    features = vh.features()
    height, width = 480, 640
    boxes = features["visual_pos"] * np.array([width, height, width, height])
    forms = [
        features,
        {k: torch.as_tensor(v) for k, v in features.items()},
        {k: v.tolist() for k, v in features.items()},
        {"visual_feats": features["visual_feats"], "boxes": boxes, "image_size": (height, width)},
        {"visual_feats": features["visual_feats"], "boxes": boxes, "image_width": width, "image_height": height},
    ]
    expected = pipe(features, question=QUESTION)
    for form in forms:
        got = pipe(form, question=QUESTION)
        assert [a["answer"] for a in got] == [a["answer"] for a in expected]
        assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], abs=1e-6)
    as_dict = pipe({"image": features, "question": QUESTION})
    assert [a["answer"] for a in as_dict] == [a["answer"] for a in expected]
    dataset_row = pipe({**features, "question": QUESTION, "question_id": 7})
    assert [a["answer"] for a in dataset_row] == [a["answer"] for a in expected]


def test_batches_give_what_one_by_one_gives(pipe):
    examples = [
        {"image": vh.features(regions=3 + i, seed=i), "question": q}
        for i, q in enumerate([QUESTION, "how many cubes?", "is there a red cat?", "what?", QUESTION, "cube?", "a"])
    ]
    one_by_one = pipe(examples, batch_size=1)
    batched = pipe(examples, batch_size=4)
    assert len(batched) == len(examples)
    for single, batch in zip(one_by_one, batched, strict=True):
        assert [a["answer"] for a in single] == [a["answer"] for a in batch]
        assert [a["score"] for a in single] == pytest.approx([a["score"] for a in batch], abs=1e-5)


def test_batches_with_masks_and_the_callers_arrays_left_as_given(pipe):
    masked = {**vh.features(regions=6, seed=3), "visual_attention_mask": np.array([1, 1, 1, 1, 0, 0])}
    examples = [{"image": masked, "question": QUESTION}, {"image": vh.features(regions=4, seed=4), "question": "a"}]
    before = [{k: v.copy() for k, v in e["image"].items()} for e in examples]
    one_by_one = pipe(examples, batch_size=1)
    batched = pipe(examples, batch_size=2)
    for single, batch in zip(one_by_one, batched, strict=True):
        assert [a["score"] for a in single] == pytest.approx([a["score"] for a in batch], abs=1e-5)
    for example, saved in zip(examples, before, strict=True):
        for key, value in saved.items():
            np.testing.assert_array_equal(example["image"][key], value)


def test_lists_of_questions_and_images_pair_up(pipe):
    a, b = vh.features(seed=1), vh.features(seed=2)
    assert len(pipe(a, question=[QUESTION, "how many?", "is it red?"])) == 3
    assert len(pipe([a, b], question=QUESTION)) == 2
    paired = pipe([a, b], question=[QUESTION, "how many?"])
    assert paired[1] == pipe(b, question="how many?")
    with pytest.raises(ValueError, match="2 images and 3 questions"):
        pipe([a, b], question=["x", "y", "z"])


def test_datasets_and_generators_stream(pipe):
    rows = [{"image": vh.features(seed=i), "question": QUESTION} for i in range(5)]
    expected = pipe(rows)
    dataset = datasets.Dataset.from_list([{**r["image"], "question": r["question"]} for r in rows])
    images = datasets.Dataset.from_list([{"image": r["image"]} for r in rows])

    def same(results):
        results = list(results)
        assert [[a["answer"] for a in r] for r in results] == [[a["answer"] for a in r] for r in expected]

    same(pipe(KeyDataset(images, "image"), question=QUESTION, batch_size=2))
    same(pipe(dataset, batch_size=3))
    same(pipe(dataset.to_iterable_dataset()))
    same(pipe(row for row in rows))


# -- regions, attention, visualization ---------------------------------------------------------------------------
def test_regions_and_attention_on_request(pipe):
    features = {**vh.features(), "image_size": (100, 200), "visual_attention_mask": [1, 1, 1, 1, 0, 0]}
    result = pipe(features, question=QUESTION, return_regions=True, return_attention=True, top_k=2)
    assert sorted(result) == ["answers", "attention", "question", "regions"]
    assert len(result["answers"]) == 2 and result["question"] == QUESTION
    attention = np.array(result["attention"])
    assert attention.shape == (6,) and attention.sum() == pytest.approx(1, abs=1e-5)
    assert attention[4:] == pytest.approx(0, abs=1e-6)
    regions = result["regions"]
    assert regions["image_size"] == [100, 200]
    assert np.allclose(regions["boxes"], features["visual_pos"] * [200, 100, 200, 100], atol=1e-4)
    plain = pipe(features, question=QUESTION, top_k=2)
    assert [a["answer"] for a in plain] == [a["answer"] for a in result["answers"]]


def test_visualization_of_a_picture(picture_pipe):
    picture = Image.open(io.BytesIO(vh.png_bytes(size=(96, 64))))
    drawn = picture_pipe.visualize(picture, QUESTION, max_regions=3)
    assert isinstance(drawn, Image.Image) and drawn.size == picture.size and drawn.mode == "RGB"
    assert not np.array_equal(np.asarray(drawn), np.asarray(picture.convert("RGB")))


def test_visualization_of_features_draws_on_a_blank_canvas(pipe):
    features = {**vh.features(), "image_size": (120, 160)}
    assert pipe.visualize(features, QUESTION).size == (160, 120)
    with pytest.raises(ValueError, match="return_attention"):
        draw_answer(None, {"answers": pipe(features, question=QUESTION)})


# -- pictures through the detector -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_picture_modes(picture_pipe, tmp_path, mode):
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    if mode == "CMYK":
        Image.open(io.BytesIO(vh.png_bytes())).convert("CMYK").save(path, format="JPEG")
    else:
        path.write_bytes(vh.png_bytes(mode))
    assert Image.open(path).mode == mode
    result = picture_pipe(str(path), question=QUESTION, return_regions=True)
    assert len(result["answers"]) == 5
    regions = result["regions"]
    assert regions["image_size"] == [48, 64] and len(regions["object_names"]) == len(regions["boxes"]) > 0
    assert regions["object_names"][0].startswith("thing")


def test_picture_forms_agree(picture_pipe):
    picture = Image.open(io.BytesIO(vh.png_bytes()))
    array = np.asarray(picture.convert("RGB"))
    from_pil = picture_pipe(picture, question=QUESTION)
    assert picture_pipe(array, question=QUESTION) == from_pil
    assert picture_pipe(torch.from_numpy(array.copy()).permute(2, 0, 1), question=QUESTION) == from_pil


def test_one_picture_many_questions_detects_once(monkeypatch):
    detector = vh.detector()
    calls = []
    original = type(detector).forward
    monkeypatch.setattr(type(detector), "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    pipe = VQAPipeline(vh.vqa_model(feat_dim=vh.DETECTOR_DIM), vh.tokenizer(), detector=detector, device="cpu")
    picture = np.asarray(Image.open(io.BytesIO(vh.png_bytes())).convert("RGB"))
    assert len(pipe(picture, question=[QUESTION, "how many?", "is it red?"])) == 3
    assert len(calls) == 1
    assert len(pipe(picture, question=[QUESTION, "how many?"], batch_size=2, num_workers=0, timeout=5)) == 2
    assert len(calls) == 2


def test_detector_is_loaded_from_the_checkpoint_description(monkeypatch):
    from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig

    loaded = []

    def fake_from_pretrained(source, **kwargs):
        loaded.append((source, kwargs))
        return vh.detector()

    monkeypatch.setattr(RegionFeatureExtractor, "from_pretrained", staticmethod(fake_from_pretrained))
    model = vh.vqa_model(feat_dim=vh.DETECTOR_DIM)
    settings = RegionFeatureExtractorConfig.from_preset("lxmert", max_boxes=20, min_boxes=10)
    model.config.visual_features = describe_visual_features("someone/frcnn", settings)
    pipe = VQAPipeline(model, vh.tokenizer(), device="cpu")
    pipe(Image.open(io.BytesIO(vh.png_bytes())), question=QUESTION)
    pipe(np.zeros((40, 50, 3), np.uint8), question=QUESTION)
    assert loaded == [("someone/frcnn", {"preset": "lxmert", "min_boxes": 10, "max_boxes": 20})]


def test_detector_extracted_in_float16_runs_in_float32_on_the_cpu(monkeypatch):
    """float16 is a GPU speed setting of the extraction: a pipeline on the CPU detects in float32 instead of
    refusing the picture."""
    from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig

    loaded = []

    def fake_from_pretrained(source, **kwargs):
        loaded.append(kwargs)
        return vh.detector()

    monkeypatch.setattr(RegionFeatureExtractor, "from_pretrained", staticmethod(fake_from_pretrained))
    model = vh.vqa_model(feat_dim=vh.DETECTOR_DIM)
    settings = RegionFeatureExtractorConfig.from_preset("lxmert", precision="float16", channels_last=True)
    model.config.visual_features = describe_visual_features("someone/frcnn", settings)
    VQAPipeline(model, vh.tokenizer(), device="cpu")(np.zeros((40, 50, 3), np.uint8), question=QUESTION)
    assert loaded == [{"preset": "lxmert", "precision": "float32", "channels_last": True}]


def test_picture_without_detector_says_how_to_fix(pipe):
    with pytest.raises(ValueError, match="detector="):
        pipe(np.zeros((40, 50, 3), np.uint8), question=QUESTION)


# -- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("question", ["", "   ", None, 3])
def test_bad_questions(pipe, question):
    with pytest.raises(ValueError, match="question"):
        pipe(vh.features(), question=question)


def with_one(array: np.ndarray, value: float) -> np.ndarray:
    array.flat[7] = value
    return array


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ({"visual_feats": np.ones((6, 15)), "visual_pos": np.zeros((6, 4))}, "visual_feat_dim"),
        ({"visual_feats": np.ones((6, 16)), "visual_pos": np.full((6, 4), 2.0)}, "normalized"),
        ({"visual_feats": np.ones((6, 16)), "boxes": np.ones((6, 4))}, "image_size"),
        ({"visual_feats": np.ones((6, 16)), "boxes": np.full((6, 4), 500.0), "image_size": (100, 100)}, "outside"),
        ({"visual_feats": np.ones((6, 16)), "visual_pos": np.zeros((5, 4))}, "one box per region"),
        ({"visual_feats": np.ones((0, 16)), "visual_pos": np.zeros((0, 4))}, "num_regions >= 1"),
        ({"visual_feats": np.full((6, 16), np.nan), "visual_pos": np.zeros((6, 4))}, "NaN"),
        ({"visual_feats": with_one(np.ones((6, 16), np.float32), np.inf), "visual_pos": np.zeros((6, 4))}, "infinite"),
        ({"visual_feats": np.ones((6, 16), np.float32), "visual_pos": with_one(np.zeros((6, 4)), np.nan)}, "NaN"),
        ({"visual_feats": np.ones((6, 16))}, "need boxes"),
    ],
)
def test_bad_features(pipe, features, match):
    with pytest.raises(ValueError, match=match):
        pipe(features, question=QUESTION)


def test_unknown_arguments_are_refused(pipe):
    with pytest.raises(ValueError, match="topk"):
        pipe(vh.features(), question=QUESTION, topk=3)


def test_unreadable_pictures(picture_pipe, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(vh.png_bytes()[:60])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path in (truncated, text, tmp_path / "missing.png"):
        with pytest.raises(ImageLoadError, match=path.name):
            picture_pipe(str(path), question=QUESTION)


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_before_decoding(picture_pipe, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(40_000, 40_000))  # 1.6 gigapixels declared in 60 bytes
    with pytest.raises(ImageLoadError, match="bomb.png"):
        picture_pipe(str(bomb), question=QUESTION)
    small = tmp_path / "small.png"
    small.write_bytes(vh.png_bytes())
    with pytest.raises(ImageLoadError, match="max_image_pixels"):
        picture_pipe(str(small), question=QUESTION, max_image_pixels=1000)


def test_urls(picture_pipe):
    routes = {"/ok.png": (200, vh.png_bytes()), "/text": (200, b"hello"), "/slow.png": vh.SILENT}
    with vh.serve(routes) as base:
        # A server that answers is given all the time a loaded machine needs; one that never does, a short timeout.
        ok = picture_pipe(f"{base}/ok.png", question=QUESTION, timeout=HANG_GUARD_S)
        local = picture_pipe(Image.open(io.BytesIO(vh.png_bytes())), question=QUESTION)
        assert ok == local
        with pytest.raises(ImageLoadError, match="HTTP 404"):
            picture_pipe(f"{base}/missing.png", question=QUESTION)
        with pytest.raises(ImageLoadError, match="/text"):
            picture_pipe(f"{base}/text", question=QUESTION)
        with pytest.raises(ImageLoadError, match="no answer within 0.5 s"):
            picture_pipe(f"{base}/slow.png", question=QUESTION, timeout=0.5)
    with pytest.raises(ImageLoadError, match="cannot download"):
        picture_pipe(f"{base}/ok.png", question=QUESTION, timeout=HANG_GUARD_S)  # the server is gone: refused at once


# -- translation --------------------------------------------------------------------------------------------------
def test_translation_with_functions(pipe):
    to_english = {"고양이는 무슨 색인가요?": "what color is the cat?"}
    to_korean = {answer: f"ko:{answer}" for answer in vh.ANSWERS}
    models = {"ko-en": lambda t: [to_english[x] for x in t], "en-ko": lambda t: [to_korean[x] for x in t]}
    translated = VQAPipeline(pipe.model, pipe.tokenizer, device="cpu", translation_models=models)
    features = vh.features()
    result = translated(features, question="고양이는 무슨 색인가요?", question_lang="ko", answer_lang="ko",
                        return_regions=True)  # fmt: skip
    english = pipe(features, question="what color is the cat?")
    assert result["question"] == "what color is the cat?"
    assert [a["model_answer"] for a in result["answers"]] == [a["answer"] for a in english]
    assert [a["answer"] for a in result["answers"]] == [f"ko:{a['answer']}" for a in english]
    assert translated(features, question=QUESTION, question_lang="en") == pipe(features, question=QUESTION)
    with pytest.raises(ValueError, match="question_lang"):
        translated(features, question=QUESTION, question_lang="korean!")


def test_translation_with_local_marian_models(pipe, tmp_path):
    from lxmert_hf.pipeline import Translator

    ko_en, en_ko = vh.marian(tmp_path / "ko-en", seed=0), vh.marian(tmp_path / "en-ko", seed=1)
    translated = VQAPipeline(
        pipe.model, pipe.tokenizer, device="cpu", translation_models={"ko-en": str(ko_en), "en-ko": str(en_ko)}
    )
    result = translated(vh.features(), question="고양이는 무슨 색인가요?", question_lang="ko", answer_lang="ko",
                        return_regions=True, top_k=3)  # fmt: skip
    assert result["question"] == Translator.from_pretrained(ko_en)(["고양이는 무슨 색인가요?"])[0]
    back = Translator.from_pretrained(en_ko)
    assert [a["answer"] for a in result["answers"]] == back([a["model_answer"] for a in result["answers"]])


def test_missing_translation_model_names_the_default_and_the_fix(pipe, monkeypatch):
    from lxmert_hf.pipeline import Translator

    asked = []

    def unavailable(name, **kwargs):
        asked.append(str(name))
        raise OSError("not found")

    monkeypatch.setattr(Translator, "from_pretrained", staticmethod(unavailable))
    with pytest.raises(ValueError, match="translation_models"):
        pipe(vh.features(), question=QUESTION, answer_lang="xx")
    assert asked == ["Helsinki-NLP/opus-mt-en-xx"]


# -- loading, saving, registration -------------------------------------------------------------------------------
def test_saved_pipeline_loads_back_and_through_transformers_pipeline(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "checkpoint")
    features = vh.features()
    expected = pipe(features, question=QUESTION)
    again = VQAPipeline.from_pretrained(tmp_path / "checkpoint", device="cpu")
    assert [a["answer"] for a in again(features, question=QUESTION)] == [a["answer"] for a in expected]
    generic = transformers.pipeline("lxmert-vqa", model=str(tmp_path / "checkpoint"), device="cpu", top_k=2)
    assert isinstance(generic, VQAPipeline)
    got = generic(features, question=QUESTION)
    assert [a["answer"] for a in got] == [a["answer"] for a in expected[:2]]
    assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected[:2]], abs=1e-6)


def test_half_precision_model_takes_float32_features():
    model = vh.vqa_model().to(torch.bfloat16)
    answers = VQAPipeline(model, vh.tokenizer(), device="cpu")(vh.features(), question=QUESTION)
    assert len(answers) == 5 and all(0 <= a["score"] <= 1 for a in answers)


def test_missing_tokenizer_is_explained(tmp_path):
    save_checkpoint(vh.vqa_model(), tmp_path / "no-tokenizer")
    with pytest.raises(ValueError, match="tokenizer="):
        VQAPipeline.from_pretrained(tmp_path / "no-tokenizer", device="cpu")
    pipe = VQAPipeline.from_pretrained(tmp_path / "no-tokenizer", tokenizer=vh.tokenizer(), device="cpu")
    assert len(pipe(vh.features(), question=QUESTION)) == 5


class _WithoutBackend(transformers.BertTokenizer):
    """A tokenizer the pipeline must call itself, as it would a slow (pure Python) one."""

    is_fast = False


@pytest.mark.parametrize("fast", [False, True])
def test_questions_encode_as_the_tokenizer_does(fast, tmp_path):
    vh.tokenizer().save_pretrained(tmp_path)
    tokenizer = (transformers.BertTokenizerFast if fast else _WithoutBackend).from_pretrained(tmp_path)
    pipe = VQAPipeline(vh.vqa_model(), tokenizer, device="cpu", max_question_length=6)
    batches = [["what color is the cube?", "how many red cat is there a cube cat ?", "cube"], ["cube ?"]]
    for side in ("right", "left"):
        tokenizer.padding_side = side
        for questions in batches:
            for length in (6, 20):
                pipe.max_question_length = length
                expected = tokenizer(questions, truncation=True, max_length=length, padding=True, return_tensors="pt")
                got = pipe._encode_questions(questions)
                assert sorted(got) == sorted(
                    k for k in expected if k in ("input_ids", "attention_mask", "token_type_ids")
                )
                for name, tensor in got.items():
                    assert tensor.dtype == torch.int64 and torch.equal(tensor, expected[name]), (
                        questions,
                        length,
                        name,
                    )
    assert (pipe._question_encoder[2] is not None) == fast


def test_non_finite_features_in_a_batch_name_the_question(pipe):
    broken = {"visual_feats": with_one(np.ones((6, 16), np.float32), np.nan), "visual_pos": np.zeros((6, 4))}
    examples = [{"image": vh.features(seed=i), "question": QUESTION} for i in range(3)]
    examples.insert(2, {"image": broken, "question": "how many cubes?"})
    with pytest.raises(ValueError, match=r"NaN or infinite values for 1 input\(s\) \(asked: \['how many cubes\?'\]\)"):
        pipe(examples, batch_size=4)


def test_finite_check_tells_overflowing_sums_from_nan():
    from lxmert_hf.pipeline.core import _Asked, _check_finite

    examples = [_Asked(f"question {i}", None) for i in range(3)]
    huge = torch.full((3, 4, 8), 3e38)  # finite, but each row's sum overflows float32
    _check_finite(huge, examples)
    huge[1, 2, 3] = float("-inf")
    with pytest.raises(ValueError, match=r"for 1 input\(s\) \(asked: \['question 1'\]\)"):
        _check_finite(huge, examples)
