"""Detector presets and settings, and the box arithmetic and selection rules, on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from lxmert_hf import RegionFeatureExtractorConfig
from lxmert_hf.detection.boxes import clip_boxes, decode_boxes
from lxmert_hf.detection.roi_heads import select_detections
from lxmert_hf.detection.rpn import AnchorGenerator, make_cell_anchors

DETECTRON2_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (  # bottom-up-attention's Caffe config (TEST.SCALES, MAX_SIZE, NMS, RPN_*) and LXMERT's MIN/MAX_BOXES
            "lxmert",
            {
                "procedure": "caffe",
                "min_size": 600,
                "max_size": 1000,
                "resize_backend": "opencv",
                "input_format": "BGR",
                "score_threshold": 0.2,
                "nms_thresholds": (0.3,),
                "min_boxes": 36,
                "max_boxes": 36,
                "rpn_pre_nms_topk": 6000,
                "rpn_post_nms_topk": 300,
                "rpn_nms_threshold": 0.7,
                "rpn_min_box_size": 16.0,
            },
        ),
        (
            "lxmert-detectron2",
            {
                "procedure": "detectron2",
                "min_size": 600,
                "max_size": 1000,
                "resize_backend": "pil",
                "input_format": "BGR",
                "score_threshold": 0.2,
                "nms_thresholds": DETECTRON2_THRESHOLDS,
                "min_boxes": 36,
                "max_boxes": 36,
                "rpn_pre_nms_topk": 6000,
                "rpn_post_nms_topk": 300,
                "rpn_nms_threshold": 0.7,
                "rpn_min_box_size": 0.0,
            },
        ),
        (
            "transformers-demo",
            {
                "procedure": "detectron2",
                "min_size": 800,
                "max_size": 1333,
                "resize_backend": "torch",
                "input_format": "BGR",
                "score_threshold": 0.0,
                "nms_thresholds": (0.5, 0.6, 0.7),
                "min_boxes": 36,
                "max_boxes": 36,
                "rpn_pre_nms_topk": 6000,
                "rpn_post_nms_topk": 300,
                "rpn_nms_threshold": 0.7,
            },
        ),
    ],
)
def test_preset_settings(preset, expected):
    config = RegionFeatureExtractorConfig.from_preset(preset)
    assert config.preset == preset
    assert {key: getattr(config, key) for key in expected} == expected
    assert config.pixel_mean == (102.9801, 115.9465, 122.7717) and config.num_anchors == 12


def test_default_is_the_lxmert_preset():
    assert RegionFeatureExtractorConfig() == RegionFeatureExtractorConfig.from_preset("lxmert")


def test_every_setting_can_be_overridden_and_round_trips():
    config = RegionFeatureExtractorConfig.from_preset("transformers-demo", nms_thresholds=[0.4], max_boxes=50)
    assert config.nms_thresholds == (0.4,) and config.max_boxes == 50 and config.min_size == 800
    assert RegionFeatureExtractorConfig.from_dict(config.to_dict()) == config
    assert config.replace(min_size=700).min_size == 700


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"min_size": 0}, "min_size"),
        ({"max_size": 100}, "max_size"),
        ({"resize_backend": "cv2"}, "resize_backend"),
        ({"procedure": "caffe2"}, "procedure"),
        ({"nms_thresholds": (0.3, 0.5)}, "per-class NMS"),
        ({"input_format": "RGBA"}, "input_format"),
        ({"pixel_mean": (1.0, 2.0)}, "pixel_mean"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"nms_thresholds": ()}, "nms_thresholds"),
        ({"nms_thresholds": 0.5}, "nms_thresholds"),
        ({"min_boxes": 40}, "lower `min_boxes` too"),
        ({"max_boxes": 0}, "max_boxes"),
        ({"num_boxes": 36}, "Unknown detector setting"),
        ({"stage_blocks": (3, 4, 23)}, r"4 block counts \(res2, res3, res4, res5\)"),
        ({"stage_blocks": (1, 0, 1, 1)}, "stage_blocks"),
        ({"stage_blocks": 3}, "stage_blocks"),
        ({"res2_channels": 18}, "multiple of 4"),
        ({"stem_channels": 0}, "stem_channels"),
        ({"rpn_channels": 8.0}, "rpn_channels"),
        ({"attribute_hidden_dim": -1}, "attribute_hidden_dim"),
    ],
)
def test_invalid_settings_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        RegionFeatureExtractorConfig.from_preset("lxmert", **overrides)


def test_architecture_defaults_are_resnet101_and_widths_follow_res2():
    config = RegionFeatureExtractorConfig()
    assert config.stage_blocks == (3, 4, 23, 3) and (config.backbone_channels, config.feature_dim) == (1024, 2048)
    small = config.replace(stage_blocks=[1, 1, 1, 1], res2_channels=16)
    assert small.stage_blocks == (1, 1, 1, 1) and (small.backbone_channels, small.feature_dim) == (64, 128)


def test_unknown_preset():
    with pytest.raises(ValueError, match="transformers-demo"):
        RegionFeatureExtractorConfig.from_preset("caffe")


def test_cell_anchors_are_size_major_with_height_over_width_ratios():
    anchors = make_cell_anchors((64, 128, 256, 512), (0.5, 1.0, 2.0))
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    torch.testing.assert_close(heights / widths, torch.tensor([0.5, 1.0, 2.0] * 4))
    torch.testing.assert_close(
        widths * heights, torch.tensor([64.0**2] * 3 + [128.0**2] * 3 + [256.0**2] * 3 + [512.0**2] * 3)
    )
    torch.testing.assert_close(anchors[:, :2] + anchors[:, 2:], torch.zeros(12, 2))  # centred on 0


def test_anchor_grid_order_is_y_x_anchor():
    anchors = AnchorGenerator((32,), (1.0,))(2, 3)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres.tolist() == [[0, 0], [16, 0], [32, 0], [0, 16], [16, 16], [32, 16]]


def test_decode_and_clip():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    assert torch.equal(decode_boxes(torch.zeros(1, 8), boxes, (10, 10, 5, 5)), boxes.repeat(1, 2))
    grown = decode_boxes(torch.tensor([[0.0, 0.0, 5 * math.log(2), 0.0]]), boxes, (10, 10, 5, 5))
    torch.testing.assert_close(grown, torch.tensor([[-5.0, 0.0, 15.0, 20.0]]))
    huge = decode_boxes(torch.tensor([[0.0, 0.0, 1000.0, 0.0]]), boxes, (1, 1, 1, 1))
    torch.testing.assert_close(huge[0, 2] - huge[0, 0], torch.tensor(10 * 1000 / 16))  # scale clamp
    assert clip_boxes(torch.tensor([[-5.0, -1.0, 15.0, 30.0]]), 20, 12).tolist() == [[0.0, 0.0, 12.0, 20.0]]


def _selection_inputs(num_classes: int = 3):
    """Four proposals: 0 and 1 overlap with IoU 0.6, 2 and 3 stand alone; class 1 wins everywhere."""
    proposals = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 6], [20, 20, 30, 30], [40, 0, 50, 10]], dtype=torch.float32)
    class_logits = torch.full((4, num_classes + 1), -5.0)
    class_logits[:, 1] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    box_deltas = torch.zeros(4, num_classes * 4)
    attribute_logits = torch.zeros(4, 6)
    attribute_logits[:, 2] = 3.0
    attribute_logits[:, 5] = 10.0  # "no attribute" is never a prediction
    return class_logits, box_deltas, attribute_logits, proposals


def select(**overrides):
    config = RegionFeatureExtractorConfig.from_preset(
        "lxmert-detectron2", num_classes=3, num_attributes=5, **overrides
    )
    return select_detections(*_selection_inputs(), image_size=(60, 60), config=config)


def test_nms_thresholds_are_tried_until_enough_boxes():
    # At 0.3 and 0.4, the 0.6-IoU pair collapses to 3 boxes; 0.5 does too; 0.6 keeps 4 (IoU 0.6 is not > 0.6).
    assert select(min_boxes=4, max_boxes=4, score_threshold=0.0).index.tolist() == [0, 1, 2, 3]
    assert select(min_boxes=3, max_boxes=4, score_threshold=0.0).index.tolist() == [0, 2, 3]
    # No threshold keeps 5: the last threshold's result stands, without error.
    assert len(select(min_boxes=5, max_boxes=5, nms_thresholds=[0.3, 0.5]).index) == 3


def test_selection_scores_and_ids():
    found = select(min_boxes=0, max_boxes=4, score_threshold=0.0)
    probs = _selection_inputs()[0].softmax(-1)
    torch.testing.assert_close(found.object_scores, probs[[0, 2, 3], 1])  # softmax over all, background included
    assert found.object_ids.tolist() == [1, 1, 1] and found.attribute_ids.tolist() == [2, 2, 2]
    expected_attribute = torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0]).softmax(-1)[2]  # "no attribute" dropped first
    torch.testing.assert_close(found.attribute_scores, expected_attribute.repeat(3))


def test_score_threshold_with_a_floor():
    scores = select(min_boxes=0, max_boxes=4, score_threshold=0.0).object_scores
    middle = float(scores[1])
    assert len(select(min_boxes=0, max_boxes=4, score_threshold=middle).index) == 2
    assert len(select(min_boxes=3, max_boxes=4, score_threshold=middle).index) == 3
    assert len(select(min_boxes=0, max_boxes=4, score_threshold=1.0).index) == 0
