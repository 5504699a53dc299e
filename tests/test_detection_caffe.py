"""The "lxmert" preset follows the Caffe extraction that made LXMERT's features, step by step.

The selection is checked against a small implementation of the rule of bottom-up-attention's `cpu_nms` and LXMERT's
`extract_coco_image.py`, written here in numpy from their description (per-class greedy NMS with "+1" sides and
`IoU >= threshold`, `max_conf`, threshold, then MIN/MAX_BOXES), on the same scores and proposals.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from tiny import TINY_DETECTOR

from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig
from lxmert_hf.detection.boxes import clip_boxes_caffe, decode_boxes_caffe, nms_caffe
from lxmert_hf.detection.preprocessing import (
    caffe_resize_factor,
    caffe_resized_size,
    import_opencv,
    prepare_rgb,
    resized_size,
)
from lxmert_hf.detection.roi_heads import select_caffe_detections, select_detections
from lxmert_hf.detection.rpn import make_caffe_cell_anchors


# -- an independent statement of the Caffe rule ------------------------------------------------------------------
def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS, best score first (ties by index), "+1" sides, suppress at IoU >= threshold (float32 IoU)."""
    x1, y1, x2, y2 = boxes.astype(np.float32).T
    one = np.float32(1)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), dtype=bool)
    kept = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        kept.append(int(i))
        rest = order[position + 1 :]
        width = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        height = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = width * height
        overlap = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[overlap.astype(np.float64) >= threshold]] = True
    return kept


def reference_selection(boxes, probs, threshold=0.3, conf=0.2, min_boxes=36, max_boxes=36) -> list[int]:
    """LXMERT's choice of regions from `[R, 4]` boxes (original pixels) and `[R, C]` foreground probabilities."""
    max_conf = np.zeros(len(boxes))
    for column in range(probs.shape[1]):
        for i in reference_nms(boxes, probs[:, column], threshold):
            max_conf[i] = max(max_conf[i], probs[i, column])
    passing = np.flatnonzero(max_conf >= conf)
    if len(passing) < min_boxes:
        return np.argsort(max_conf, kind="stable")[::-1][:min_boxes].tolist()
    if len(passing) > max_boxes:
        return np.argsort(max_conf, kind="stable")[::-1][:max_boxes].tolist()
    return passing.tolist()


def config(**overrides) -> RegionFeatureExtractorConfig:
    return RegionFeatureExtractorConfig.from_preset("lxmert", **overrides)


def caffe_select(logits: torch.Tensor, proposals: torch.Tensor, scale: float = 1.0, **overrides):
    settings = config(num_classes=logits.shape[1] - 1, num_attributes=3, **overrides)
    attributes = torch.zeros(len(proposals), 4)
    divisor = torch.full((4,), scale)
    return select_caffe_detections(logits, attributes, proposals, divisor, settings)


# -- hand-made cases ---------------------------------------------------------------------------------------------
# Proposals 0 and 1 overlap heavily ("+1" IoU 0.82): class 0 prefers 0, class 1 prefers 1. Proposal 2 overlaps both
# (0.33 and 0.43, above 0.3). Proposal 3 stands alone with weak scores. Per class NMS leaves max_conf
# [0.55, 0.60, 0.35, 0.15]: proposal 2's class 0 score (0.45) is suppressed by proposal 0.
PROPOSALS = torch.tensor(
    [[0, 0, 99, 99], [10, 0, 109, 99], [50, 0, 149, 99], [300, 300, 340, 340]], dtype=torch.float32
)
PROBS = torch.tensor(
    [
        [0.55, 0.30, 0.05],
        [0.25, 0.60, 0.05],
        [0.45, 0.10, 0.35],
        [0.10, 0.10, 0.15],
    ]
)  # class 0, class 1, class 2


def logits_for(probs: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax (background last) gives `probs` for the foreground classes."""
    background = 1 - probs.sum(dim=1, keepdim=True)
    return torch.cat((probs, background), dim=1).log()


def test_per_class_nms_keeps_what_class_agnostic_nms_drops():
    logits = logits_for(PROBS)
    found = caffe_select(logits, PROPOSALS, min_boxes=0, max_boxes=4)
    expected = reference_selection(PROPOSALS.numpy(), logits.softmax(-1)[:, :-1].numpy(), min_boxes=0, max_boxes=4)
    # Class 0 keeps proposal 0 and class 1 proposal 1 though they overlap; class 2 keeps proposal 2 (0.35).
    assert found.index.tolist() == expected == [0, 1, 2]
    assert torch.equal(found.boxes, PROPOSALS[[0, 1, 2]])  # the proposals themselves, no regression
    # detectron2's class-agnostic NMS at 0.3 keeps only the best of the overlapping three.
    detectron2 = RegionFeatureExtractorConfig.from_preset(
        "lxmert-detectron2",
        num_classes=3,
        num_attributes=3,
        nms_thresholds=[0.3],
        score_threshold=0.0,
        min_boxes=0,
        max_boxes=4,
    )
    agnostic = select_detections(logits, torch.zeros(4, 12), torch.zeros(4, 4), PROPOSALS, (400, 400), detectron2)
    assert agnostic.index.tolist() == [1, 3]


def test_kept_regions_in_proposal_order_unless_too_few_or_too_many_pass():
    logits = logits_for(PROBS)
    probs = logits.softmax(-1)[:, :-1].numpy()
    # Exactly three pass 0.2 and three are wanted: proposal order, as the script leaves them.
    assert caffe_select(logits, PROPOSALS, min_boxes=3, max_boxes=3).index.tolist() == [0, 1, 2]
    # Too many pass: the best two by max_conf (0.60, 0.55).
    assert caffe_select(logits, PROPOSALS, min_boxes=2, max_boxes=2).index.tolist() == [1, 0]
    # Too few pass: the best four by max_conf, proposal 3 (0.15) last.
    found = caffe_select(logits, PROPOSALS, min_boxes=4, max_boxes=4)
    assert found.index.tolist() == reference_selection(PROPOSALS.numpy(), probs, min_boxes=4, max_boxes=4)
    assert found.index.tolist() == [1, 0, 2, 3]
    # max_conf of proposal 2 is 0.35: its class 0 score, 0.45, was suppressed by proposal 0.
    strict = caffe_select(logits, PROPOSALS, min_boxes=0, max_boxes=4, score_threshold=0.4)
    assert strict.index.tolist() == [0, 1]


def test_scores_are_caffe_softmax_columns():
    logits = logits_for(PROBS)
    attributes = torch.tensor([[2.0, 0.0, 0.0, 5.0]]).repeat(4, 1)  # "no attribute" (last) is the most likely
    settings = config(num_classes=3, num_attributes=3, min_boxes=0, max_boxes=4)
    found = select_caffe_detections(logits, attributes, PROPOSALS, torch.ones(4), settings)
    torch.testing.assert_close(found.object_scores, PROBS[[0, 1, 2]].max(dim=1).values)
    assert found.object_ids.tolist() == [0, 1, 0] and found.attribute_ids.tolist() == [0, 0, 0]
    # Not renormalized after dropping "no attribute": Caffe's attr_prob[:, 1:].
    torch.testing.assert_close(found.attribute_scores, attributes[:3].softmax(-1)[:, 0])


def test_nms_runs_on_boxes_in_original_pixels():
    # Two boxes 3 px apart: "+1" IoU 8*11 / (2*11*11 - 8*11) = 0.571 as given, but divided by the resize factor 4
    # (boxes of 2.5 px, 0.75 apart) the "+1" convention makes them overlap more: 0.647.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [3.0, 0.0, 13.0, 10.0]])
    logits = logits_for(torch.tensor([[0.9, 0.05], [0.8, 0.05]]))
    assert caffe_select(logits, boxes, nms_thresholds=[0.6], min_boxes=0, max_boxes=2).index.tolist() == [0, 1]
    assert caffe_select(logits, boxes, 4.0, nms_thresholds=[0.6], min_boxes=0, max_boxes=2).index.tolist() == [0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("min_boxes", "max_boxes"), [(36, 36), (10, 100), (5, 8)])
def test_selection_matches_the_reference_on_random_scores(seed, min_boxes, max_boxes):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randint(0, 300, (60, 2), generator=generator).float()
    sizes = torch.randint(20, 160, (60, 2), generator=generator).float()
    proposals = torch.cat((centres - sizes / 2, centres + sizes / 2), dim=1).clamp(0, 399)
    logits = torch.randn(60, 21, generator=generator) * 3
    found = caffe_select(logits, proposals, 1.6, min_boxes=min_boxes, max_boxes=max_boxes, score_threshold=0.2)
    probs = logits.softmax(-1)[:, :-1].numpy()
    expected = reference_selection((proposals / 1.6).numpy(), probs, 0.3, 0.2, min_boxes, max_boxes)
    assert found.index.tolist() == expected


def test_proposal_nms_matches_the_reference():
    generator = torch.Generator().manual_seed(1)
    corners = torch.rand(300, 2, generator=generator) * 200
    boxes = torch.cat((corners, corners + 10 + torch.rand(300, 2, generator=generator) * 60), dim=1)
    ranking = -torch.arange(300.0)  # given best first
    for threshold in (0.3, 0.7):
        expected = reference_nms(boxes.numpy(), ranking.numpy(), threshold)
        assert nms_caffe(boxes, threshold, chunk=64).tolist() == expected


# -- Caffe's proposal layer ---------------------------------------------------------------------------------------
def test_caffe_anchors_in_size_major_order():
    # generate_anchors(scales=(4, 8, 16, 32)) lists ratio-major; the weights' channels go size-major.
    caffe = {
        (64, 0.5): [-38, -16, 53, 31],
        (128, 0.5): [-84, -40, 99, 55],
        (256, 0.5): [-176, -88, 191, 103],
        (512, 0.5): [-360, -184, 375, 199],
        (64, 1.0): [-24, -24, 39, 39],
        (128, 1.0): [-56, -56, 71, 71],
        (256, 1.0): [-120, -120, 135, 135],
        (512, 1.0): [-248, -248, 263, 263],
        (64, 2.0): [-14, -36, 29, 51],
        (128, 2.0): [-36, -80, 51, 95],
        (256, 2.0): [-80, -168, 95, 183],
        (512, 2.0): [-168, -344, 183, 359],
    }
    expected = [caffe[size, ratio] for size in (64, 128, 256, 512) for ratio in (0.5, 1.0, 2.0)]
    assert make_caffe_cell_anchors((64, 128, 256, 512), (0.5, 1.0, 2.0)).tolist() == expected


def test_caffe_box_decoding_and_clipping_count_pixels_plus_one():
    anchor = torch.tensor([[-84.0, -40.0, 99.0, 55.0]])
    # Zero deltas move the far corner one pixel: centre at x1 + (x2 - x1 + 1) / 2, half-width (x2 - x1 + 1) / 2.
    assert decode_boxes_caffe(torch.zeros(1, 4), anchor).tolist() == [[-84.0, -40.0, 100.0, 56.0]]
    grown = decode_boxes_caffe(torch.tensor([[0.0, 0.0, float(np.log(2)), 0.0]]), anchor)
    torch.testing.assert_close(grown, torch.tensor([[-176.0, -40.0, 192.0, 56.0]]))
    assert clip_boxes_caffe(torch.tensor([[-5.0, -1.0, 15.0, 30.0]]), 20, 12).tolist() == [[0.0, 0.0, 11.0, 19.0]]


def test_min_proposal_size_scales_with_the_resize_factor():
    settings = config(**TINY_DETECTOR, anchor_sizes=(32,), anchor_aspect_ratios=(1.0,), rpn_nms_threshold=1.0)
    rpn = RegionFeatureExtractor(settings).proposal_generator
    torch.nn.init.zeros_(rpn.rpn_head.anchor_deltas.weight)
    torch.nn.init.zeros_(rpn.rpn_head.anchor_deltas.bias)
    features = torch.zeros(1, settings.backbone_channels, 3, 3)
    # Anchor [-8, -8, 23, 23] decodes to [-8, -8, 24, 24], shifted by 16 * (x, y) and clipped to a 40x40 image:
    # sides (+1) of 25, 32 or 16 pixels, kept from 16 x the resize factor up.
    proposals = {scale: rpn(features, [(40, 40)], [scale])[0] for scale in (1.0, 1.5, 2.0)}
    widths = {scale: (boxes[:, 2] - boxes[:, 0] + 1).unique().tolist() for scale, boxes in proposals.items()}
    assert widths == {1.0: [16.0, 25.0, 32.0], 1.5: [25.0, 32.0], 2.0: [32.0]}


# -- Caffe's resize -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("height", "width", "factor", "size"),
    [
        (480, 640, 1.25, (600, 800)),
        (375, 500, 1.6, (600, 800)),
        (300, 1000, 1.0, (300, 1000)),  # 2000 would exceed 1000: the longest side sets the factor
        (400, 503, 1.5, (600, 754)),  # 754.5 rounds to even (int(x + 0.5) would give 755)
        (400, 667, 1.5, (600, 1000)),  # 1000.5 rounds to 1000: not over the cap, so the factor stays
        (1200, 1600, 0.5, (600, 800)),
        (20, 2000, 0.5, (16, 1000)),  # the 16-pixel floor
    ],
)
def test_caffe_resize_factor_and_size(height, width, factor, size):
    assert caffe_resize_factor(height, width, 600, 1000) == factor
    assert caffe_resized_size(height, width, factor) == size
    prepared = prepare_rgb(np.zeros((height, width, 3), np.uint8), config(resize_backend="torch"))
    assert prepared.resized_size == size
    stretched = (size[0] / height, factor) if size[0] != round(height * factor) else (factor, factor)
    assert prepared.scale == stretched


@pytest.mark.parametrize("shape", [(48, 64), (64, 48), (37, 53), (120, 160), (130, 150)])
def test_torch_resize_differs_from_opencv_by_float_rounding_only(shape):
    pytest.importorskip("cv2")
    image = np.random.default_rng(sum(shape)).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    settings = config(min_size=60, max_size=100)  # upsampling, downsampling, a factor of exactly 0.5
    opencv, torch_resize = prepare_rgb(image, settings), prepare_rgb(image, settings.replace(resize_backend="torch"))
    assert opencv.resized_size == torch_resize.resized_size == tuple(opencv.pixel_values.shape[1:])
    torch.testing.assert_close(opencv.pixel_values, torch_resize.pixel_values, rtol=0, atol=1e-4)


def test_missing_opencv_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` fail
    with pytest.raises(ImportError, match=r'pip install "lxmert-hf\[vision\]".*resize_backend="torch"'):
        import_opencv()
    with pytest.raises(ImportError, match="opencv"):
        prepare_rgb(np.zeros((30, 40, 3), np.uint8), config())


def test_lxmert_preset_end_to_end_with_opencv():
    pytest.importorskip("cv2")
    torch.manual_seed(0)
    settings = config(**TINY_DETECTOR, min_size=64, max_size=96, rpn_post_nms_topk=20, min_boxes=10, max_boxes=10)
    extractor = RegionFeatureExtractor(settings)
    image = np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    regions = extractor(image)
    assert regions["visual_feats"].shape == (10, settings.feature_dim)
    # Boxes are the proposals divided by the resize factor (64 / 50), within the image.
    prepared = extractor.prepare(image)
    assert prepared.scale == (1.28, 1.28) and prepared.resized_size == (64, 90)
    assert (regions["boxes"][:, 2] <= 70).all() and (regions["boxes"][:, 3] <= 50).all()
    torch.testing.assert_close(regions["visual_pos"], regions["boxes"] / torch.tensor([70.0, 50.0, 70.0, 50.0]))


# -- detectron2's resize size ------------------------------------------------------------------------------------
def detectron2_size(height: int, width: int, short: int, longest: int) -> tuple[int, int]:
    """detectron2's `ResizeShortestEdge.get_transform` as written there: short side set, then the cap."""
    scale = short * 1.0 / min(height, width)
    new_height, new_width = (short, scale * width) if height < width else (scale * height, short)
    if max(new_height, new_width) > longest:
        scale = longest * 1.0 / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    return int(new_height + 0.5), int(new_width + 0.5)


def other_order(height: int, width: int, short: int, longest: int) -> tuple[int, int]:
    """Both sides multiplied by the factor, then shrunk: mathematically the same, rounded differently."""
    scale = short / min(height, width)
    new_height, new_width = height * scale, width * scale
    if max(new_height, new_width) > longest:
        shrink = longest / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return int(new_height + 0.5), int(new_width + 0.5)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(73, 400, (182, 1000)), (1117, 2000, (558, 1000)), (1131, 2320, (487, 1000)), (1187, 2000, (594, 1000))],
)
def test_resized_size_rounds_as_detectron2_where_the_order_matters(height, width, expected):
    assert other_order(height, width, 600, 1000) != expected  # a case where the order of products matters
    assert resized_size(height, width, 600, 1000) == expected == detectron2_size(height, width, 600, 1000)
    assert resized_size(width, height, 600, 1000) == expected[::-1]


def test_resized_size_is_detectron2s_on_every_size_of_a_range():
    # Short sides from 20 px: narrower strips would reach the 16-pixel floor, which detectron2 does not have.
    cases = [(h, w) for h in range(20, 60) for w in range(h, 1000, 3)] + [
        (w, h) for h in range(20, 60) for w in (90, 500)
    ]
    ordered = [case for case in cases if other_order(*case, 800, 1333) != detectron2_size(*case, 800, 1333)]
    assert ordered  # the range holds sizes where the order of the products changes the rounding
    for height, width in cases:
        assert resized_size(height, width, 800, 1333) == detectron2_size(height, width, 800, 1333)
