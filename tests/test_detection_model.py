"""RegionFeatureExtractor with random weights: architecture, checkpoints, outputs, and the demo's defects avoided.

The detector is tiny (`tiny.TINY_DETECTOR`, ~1M parameters), images are tiny (64-96 px) and few proposals reach the
res5 head, so each forward pass takes milliseconds; the tests marked slow build the full-size detector.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tiny import TINY_DETECTOR, TINY_DETECTOR_DIM, TINY_EXTRACTION

from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig
from lxmert_hf.detection.checkpoint import CONFIG_NAME, VOCAB_NAME, WEIGHTS_NAME
from lxmert_hf.detection.model import pad_regions

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
NUM_PARAMETERS = 65_439_870
TINY = TINY_EXTRACTION
DIM = TINY_DETECTOR_DIM
RNG = np.random.default_rng(0)
IMAGES = [
    RNG.integers(0, 256, size=shape, dtype=np.uint8) for shape in [(48, 64, 3), (48, 64, 3), (80, 50, 3), (20, 20, 3)]
]
REGION_KEYS = (
    "visual_feats",
    "visual_pos",
    "boxes",
    "object_ids",
    "object_scores",
    "attribute_ids",
    "attribute_scores",
)


@pytest.fixture(scope="module")
def extractor() -> RegionFeatureExtractor:
    torch.manual_seed(0)
    return RegionFeatureExtractor(RegionFeatureExtractorConfig.from_preset("lxmert", **TINY))


def assert_same_regions(actual: dict, expected: dict, exact: bool = True) -> None:
    assert actual["image_size"] == expected["image_size"]
    for key in REGION_KEYS:
        if exact or key.endswith("_ids"):
            assert torch.equal(actual[key], expected[key]), key
        else:
            # Batched convolutions may round differently in the last bits; nothing more may differ.
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-4, msg=key)


# -- architecture and checkpoints ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_size_detector_matches_the_published_checkpoint():
    extractor = RegionFeatureExtractor()
    state = extractor.state_dict()
    assert sum(p.numel() for p in extractor.parameters()) == NUM_PARAMETERS
    assert len(state) == 640
    assert sum(value.dtype == torch.int64 for value in state.values()) == 104
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
    manifest = REFERENCE_DIR / "frcnn_vg_state_dict.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())["keys"]
        ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
        assert ours == [(e["name"], e["shape"], e["dtype"]) for e in entries]


def test_tiny_detector_has_the_published_layout_at_another_size(extractor):
    state = extractor.state_dict()
    assert 0.5e6 < sum(p.numel() for p in extractor.parameters()) < 1.5e6
    # One block per stage: the names of the published checkpoint's first blocks, nothing else.
    assert {key.split(".")[1] for key in state if key.startswith("backbone.")} == {"stem", "res2", "res3", "res4"}
    assert "backbone.res4.0.conv3.norm.running_var" in state and "backbone.res4.1.conv1.weight" not in state
    assert state["roi_heads.box_predictor.cls_score.weight"].shape == (1601, DIM)
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())


def write_hub_layout(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """Save `state` as the published checkpoint is laid out: config.yaml + pytorch_model.bin."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "pytorch_model.bin")
    config = {
        "model": {"max_pool": True, "pixel_mean": [102.9801, 115.9465, 122.7717], "pixel_std": [1.0, 1.0, 1.0]},
        "input": {"min_size_test": 800, "max_size_test": 1333, "format": "BGR"},
        "anchor_generator": {"sizes": [[64, 128, 256, 512]], "aspect_ratios": [[0.5, 1.0, 2.0]], "offset": 0},
        "roi_heads": {"num_classes": 1600, "nms_thresh_test": [0.5, 0.6, 0.7]},
        "roi_box_head": {"res5halve": False, "attr": True, "num_attrs": 400, "pooler_resolution": 14},
        "resnets": {"depth": 101, "stride_in_1x1": True, "out_features": ["res4"]},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_strict_load_of_the_hub_layout(extractor, tmp_path):
    state = {key: torch.randn_like(v) if v.is_floating_point() else v for key, v in extractor.state_dict().items()}
    # Old BatchNorm checkpoints call the affine parameters gamma / beta.
    state["backbone.stem.conv1.norm.gamma"] = state.pop("backbone.stem.conv1.norm.weight")
    loaded = RegionFeatureExtractor.from_pretrained(write_hub_layout(tmp_path / "hub", state), **TINY)
    state["backbone.stem.conv1.norm.weight"] = state.pop("backbone.stem.conv1.norm.gamma")
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert loaded.config.preset == "lxmert" and loaded.config.min_size == 64


@pytest.mark.slow
def test_strict_load_of_a_state_dict_built_from_the_manifest(tmp_path):
    manifest = REFERENCE_DIR / "frcnn_vg_state_dict.json"
    if not manifest.is_file():
        pytest.skip("reference manifest not available")
    state = {}
    for entry in json.loads(manifest.read_text())["keys"]:
        dtype = getattr(torch, entry["dtype"])
        state[entry["name"]] = torch.ones(entry["shape"], dtype=dtype) if dtype.is_floating_point else torch.tensor(7)
    loaded = RegionFeatureExtractor.from_pretrained(write_hub_layout(tmp_path / "hub", state))
    assert loaded.state_dict()["backbone.res4.22.conv3.norm.num_batches_tracked"].item() == 7


def test_mismatched_checkpoint_lists_every_problem(extractor, tmp_path):
    state = dict(extractor.state_dict())
    del state["roi_heads.box_predictor.attr_score.bias"]
    state["roi_heads.box_predictor.extra.weight"] = torch.zeros(1)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(1231, DIM)
    with pytest.raises(ValueError) as error:
        RegionFeatureExtractor.from_pretrained(write_hub_layout(tmp_path / "bad", state), **TINY_DETECTOR)
    message = str(error.value)
    assert "1 missing: roi_heads.box_predictor.attr_score.bias" in message
    assert "1 unexpected: roi_heads.box_predictor.extra.weight" in message
    assert f"cls_score.weight: checkpoint [1231, {DIM}] vs model [1601, {DIM}]" in message


def test_unsupported_hub_config_is_refused(extractor, tmp_path):
    folder = write_hub_layout(tmp_path / "hub", extractor.state_dict())
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["resnets"]["depth"] = 50
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="resnets.depth = 50 is not supported"):
        RegionFeatureExtractor.from_pretrained(folder)


def test_published_config_yaml_is_understood():
    path = REFERENCE_DIR / "frcnn_vg_config.yaml"
    if not path.is_file():
        pytest.skip("reference config not available")
    from lxmert_hf.detection.checkpoint import read_hub_config

    settings = read_hub_config(path)
    assert settings["num_classes"] == 1600 and settings["num_attributes"] == 400
    assert settings["anchor_sizes"] == [64, 128, 256, 512] and settings["input_format"] == "BGR"


def test_save_pretrained_round_trip(extractor, tmp_path):
    objects, attributes = [f"object{i}" for i in range(1600)], [f"attribute{i}" for i in range(400)]
    named = RegionFeatureExtractor(extractor.config, object_names=objects, attribute_names=attributes)
    named.load_state_dict(extractor.state_dict())
    target = tmp_path / "saved"
    named.save_pretrained(target)
    named.save_pretrained(target)  # overwriting an existing checkpoint works too
    assert sorted(p.name for p in target.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, VOCAB_NAME])
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no staging folder left behind
    loaded = RegionFeatureExtractor.from_pretrained(target)
    assert loaded.config == extractor.config
    assert loaded.object_names == objects and loaded.attribute_names == attributes
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, extractor.state_dict()[key]), key
    demo = RegionFeatureExtractor.from_pretrained(target, preset="transformers-demo", max_boxes=10, min_boxes=10)
    assert (demo.config.min_size, demo.config.max_size, demo.config.max_boxes) == (800, 1333, 10)


def test_settings_saved_without_a_procedure_are_detectron2s(extractor, tmp_path):
    # Complete settings that name no procedure were written when detectron2's was the only one.
    detectron2 = RegionFeatureExtractor(extractor.config.replace(procedure="detectron2", nms_thresholds=[0.3, 0.5]))
    detectron2.load_state_dict(extractor.state_dict())
    detectron2.save_pretrained(tmp_path / "saved")
    config_path = tmp_path / "saved" / CONFIG_NAME
    stored = json.loads(config_path.read_text())
    del stored["config"]["procedure"]
    config_path.write_text(json.dumps(stored))
    assert RegionFeatureExtractor.from_pretrained(tmp_path / "saved").config == detectron2.config


def test_missing_checkpoint_folder_content(tmp_path):
    with pytest.raises(ValueError, match="holds no detector checkpoint"):
        RegionFeatureExtractor.from_pretrained(tmp_path)


def test_vocab_names_are_attached(extractor, tmp_path):
    (tmp_path / "objects.txt").write_text("".join(f"thing{i},synonym\n" for i in range(1600)))
    (tmp_path / "attributes.txt").write_text("".join(f"quality{i}\n" for i in range(400)))
    named = RegionFeatureExtractor(extractor.config)
    named.load_state_dict(extractor.state_dict())
    named.set_vocab(tmp_path / "objects.txt", tmp_path / "attributes.txt")
    regions = named(IMAGES[0])
    assert regions["object_names"] == [f"thing{i}" for i in regions["object_ids"].tolist()]
    assert regions["attribute_names"] == [f"quality{i}" for i in regions["attribute_ids"].tolist()]
    with pytest.raises(ValueError, match="holds 400 names but the detector predicts 1600"):
        named.set_vocab(objects=tmp_path / "attributes.txt")


def test_train_mode_is_refused(extractor):
    with pytest.warns(UserWarning, match="inference-only"):
        extractor.train()
    assert not extractor.training and not extractor.roi_heads.res5[0].conv1.norm.training


# -- outputs --------------------------------------------------------------------------------------------------------
def test_output_fields_shapes_and_ranges(extractor):
    regions = extractor(IMAGES[2])
    n = len(regions["visual_feats"])
    assert n == 3 and regions["image_size"] == (80, 50)
    assert regions["visual_feats"].shape == (n, DIM) and regions["visual_feats"].dtype == torch.float32
    assert (regions["visual_feats"] >= 0).all()
    for key, shape in (("visual_pos", (n, 4)), ("boxes", (n, 4)), ("object_ids", (n,)), ("attribute_scores", (n,))):
        assert regions[key].shape == shape, key
    boxes, pos = regions["boxes"], regions["visual_pos"]
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= 50).all() and (boxes[:, 1::2] <= 80).all()
    torch.testing.assert_close(pos, boxes / torch.tensor([50.0, 80.0, 50.0, 80.0]))
    assert (regions["object_ids"] < 1600).all() and (regions["attribute_ids"] < 400).all()
    assert (regions["object_scores"][:-1] >= regions["object_scores"][1:]).all()  # best first
    assert ((regions["attribute_scores"] > 0) & (regions["attribute_scores"] <= 1)).all()


def test_deterministic(extractor):
    assert_same_regions(extractor(IMAGES[0]), extractor(IMAGES[0]))


def test_same_features_for_every_input_type(extractor, tmp_path):
    path = tmp_path / "picture.png"
    Image.fromarray(IMAGES[0]).save(path)
    expected = extractor(IMAGES[0])
    chw = torch.from_numpy(IMAGES[0]).permute(2, 0, 1)
    for image in (path, str(path), Image.open(path), chw, chw.float() / 255):
        assert_same_regions(extractor(image), expected)


def test_batch_equals_images_one_by_one(extractor):
    singles = [extractor(image) for image in IMAGES]
    # In the first chunk of 3, two images share a size (one backbone pass) and all regions share the res5 pass.
    batch = extractor(IMAGES, batch_size=3)
    assert len(batch) == len(IMAGES)
    for actual, expected in zip(batch, singles, strict=True):
        assert_same_regions(actual, expected, exact=False)


def test_transformers_demo_preset_runs(extractor):
    demo = RegionFeatureExtractor(RegionFeatureExtractorConfig.from_preset("transformers-demo", **TINY))
    demo.load_state_dict(extractor.state_dict())
    regions = demo(IMAGES[2])
    assert regions["visual_feats"].shape == (3, DIM) and regions["image_size"] == (80, 50)
    assert not torch.equal(regions["visual_feats"], extractor(IMAGES[2])["visual_feats"])  # other resizing


def test_padding_gives_a_mask(extractor):
    batch = extractor(IMAGES[:2], padding=True)
    assert batch["visual_feats"].shape == (2, 3, DIM) and batch["visual_pos"].shape == (2, 3, 4)
    assert batch["visual_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]
    assert batch["image_size"].tolist() == [[48, 64], [48, 64]]


def test_fewer_boxes_than_asked_never_crash(extractor):
    # At most 4 proposals exist, yet 36 are asked for (and, for detectron2, no NMS threshold can deliver them).
    greedy = RegionFeatureExtractor(extractor.config.replace(min_boxes=36, max_boxes=36))
    greedy.load_state_dict(extractor.state_dict())
    regions = greedy(IMAGES[3])
    assert 0 < len(regions["visual_feats"]) <= 4
    detectron2 = extractor.config.replace(
        procedure="detectron2", min_boxes=36, max_boxes=36, nms_thresholds=[0.3, 0.5]
    )
    greedy = RegionFeatureExtractor(detectron2)
    greedy.load_state_dict(extractor.state_dict())
    regions = greedy(IMAGES[3])
    assert 0 < len(regions["visual_feats"]) <= 4
    batch = greedy(IMAGES[3], padding=True)
    assert batch["visual_feats"].shape == (1, 36, DIM)
    assert batch["visual_attention_mask"].sum() == len(regions["visual_feats"])
    assert (batch["object_ids"][0, len(regions["visual_feats"]) :] == -1).all()


def test_score_threshold_is_applied(extractor):
    scores = extractor(IMAGES[1])["object_scores"]
    threshold = float(scores[1])  # between the best and the worst of the three boxes
    strict = RegionFeatureExtractor(extractor.config.replace(score_threshold=threshold, min_boxes=0))
    strict.load_state_dict(extractor.state_dict())
    kept = strict(IMAGES[1])
    assert 1 <= len(kept["object_scores"]) < len(scores) and (kept["object_scores"] >= threshold).all()
    # min_boxes keeps the best boxes even below the threshold, as the original extraction did.
    floor = RegionFeatureExtractor(extractor.config.replace(score_threshold=threshold, min_boxes=3))
    floor.load_state_dict(extractor.state_dict())
    assert len(floor(IMAGES[1])["object_scores"]) == 3
    # Nothing passes a threshold of 1: an empty result, not an error.
    empty = RegionFeatureExtractor(extractor.config.replace(score_threshold=1.0, min_boxes=0))
    empty.load_state_dict(extractor.state_dict())
    regions = empty(IMAGES[1])
    assert regions["visual_feats"].shape == (0, DIM) and regions["visual_pos"].shape == (0, 4)
    assert empty([IMAGES[1]], padding=True)["visual_attention_mask"].sum() == 0


def test_no_proposal_at_all_gives_an_empty_result(extractor):
    blind = RegionFeatureExtractor(extractor.config.replace(rpn_min_box_size=10_000.0))
    blind.load_state_dict(extractor.state_dict())
    regions = blind(IMAGES[:2])
    assert [len(r["visual_feats"]) for r in regions] == [0, 0]
    assert regions[0]["visual_feats"].shape == (0, DIM) and regions[0]["object_ids"].shape == (0,)


def test_pad_regions_refuses_too_few_slots(extractor):
    with pytest.raises(ValueError, match="num_boxes"):
        pad_regions([extractor(IMAGES[0])], num_boxes=2)
    with pytest.raises(ValueError, match="batch_size"):
        extractor(IMAGES, batch_size=0)
