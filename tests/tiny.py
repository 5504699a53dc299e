"""Tiny LXMERT configs and random inputs shared by the tests."""

from __future__ import annotations

import torch

TINY = dict(
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    l_layers=1,
    x_layers=1,
    r_layers=1,
    visual_feat_dim=16,
    vocab_size=40,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
ANSWERS = ["yes", "no", "2", "red", "cube"]
# The detector's architecture settings for tests: one bottleneck block per stage and narrow layers, about 1.1M
# parameters (most in the 1600-class box regressor) where the published ResNet-101 detector has 65M.
TINY_DETECTOR = dict(
    stage_blocks=(1, 1, 1, 1),
    stem_channels=8,
    res2_channels=16,
    rpn_channels=16,
    class_embedding_dim=8,
    attribute_hidden_dim=16,
)
TINY_DETECTOR_DIM = 8 * TINY_DETECTOR["res2_channels"]  # the region feature size (2048 for the published one)
# The tiny detector on tiny images (64-96 px), 3 regions from 4 proposals, with the "lxmert" preset's Caffe procedure
# and torch's resize, which needs no OpenCV (tests/test_detection_caffe.py runs OpenCV's).
TINY_EXTRACTION = {
    **TINY_DETECTOR,
    **{"min_size": 64, "max_size": 96, "rpn_post_nms_topk": 4, "score_threshold": 0.0, "min_boxes": 3, "max_boxes": 3},
    "resize_backend": "torch",
}


def random_inputs(batch: int = 2, words: int = 5, boxes: int = 6, feat_dim: int = 16, seed: int = 0) -> dict:
    """Random model inputs; the first question ends with two padding tokens."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 40, (batch, words), generator=generator)
    attention_mask = torch.ones(batch, words, dtype=torch.long)
    attention_mask[0, -2:] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "visual_feats": torch.rand(batch, boxes, feat_dim, generator=generator),
        "visual_pos": torch.rand(batch, boxes, 4, generator=generator),
    }
