"""Speed options of region-feature extraction: reduced precision, channels-last, batches grouped by resized size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY_DETECTOR
from torchvision.ops import box_iou

from lxmert_hf import RegionFeatureExtractor, RegionFeatureExtractorConfig, load_features
from lxmert_hf.cli import main
from lxmert_hf.data.store import FeatureStore
from lxmert_hf.detection import extraction
from lxmert_hf.detection.batching import SizeGroupedBatchSampler, header_size
from lxmert_hf.detection.config import PRECISIONS
from lxmert_hf.detection.extraction import extract_to_store, list_images
from lxmert_hf.detection.precision import convolution_autocast
from lxmert_hf.detection.preprocessing import load_image, prepare_image
from lxmert_hf.hub import describe_visual_features
from lxmert_hf_cli.commands.extract import PRECISION_NAMES

SETTINGS = {
    **TINY_DETECTOR,
    **{"min_size": 64, "max_size": 112, "rpn_post_nms_topk": 24, "min_boxes": 8, "max_boxes": 8},
    "resize_backend": "torch",  # the "lxmert" preset's Caffe procedure without OpenCV
}
EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return RegionFeatureExtractor(RegionFeatureExtractorConfig.from_preset("lxmert", **SETTINGS))


def variant(reference: RegionFeatureExtractor, **overrides) -> RegionFeatureExtractor:
    """The reference detector's weights under other settings."""
    extractor = RegionFeatureExtractor(reference.config.replace(**overrides))
    extractor.load_state_dict(reference.state_dict())
    return extractor


def images(count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, size=(48 + 8 * (i % 2), 64, 3), dtype=np.uint8) for i in range(count)]


def features_of_proposals(extractor: RegionFeatureExtractor, proposals: list[torch.Tensor], prepared) -> torch.Tensor:
    """Region features of given proposals, as `detect` computes them: the comparison cannot be upset by a near-tied
    score that selects another box."""
    features, _ = extractor._propose(prepared)
    with convolution_autocast(extractor.config, extractor.device):
        return torch.cat(extractor.roi_heads.region_features(features, proposals))


def test_channels_last_weights_give_the_float32_features(reference):
    fast = variant(reference, channels_last=True)
    assert fast.backbone.res4[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    prepared = [reference.prepare(image) for image in images()]
    _, proposals = reference._propose(prepared)
    expected = features_of_proposals(reference, proposals, prepared)
    torch.testing.assert_close(features_of_proposals(fast, proposals, prepared), expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(fast.detect(prepared), reference.detect(prepared), strict=True):
        torch.testing.assert_close(got["visual_feats"], want["visual_feats"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["boxes"], want["boxes"], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bfloat16_on_the_cpu_agrees_with_float32(reference, channels_last):
    fast = variant(reference, precision="bfloat16", channels_last=channels_last)
    prepared = [reference.prepare(image) for image in images()]
    _, proposals = reference._propose(prepared)
    expected = features_of_proposals(reference, proposals, prepared)
    got = features_of_proposals(fast, proposals, prepared)
    assert got.dtype == torch.float32 and not torch.equal(got, expected)  # computed in another precision
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=1)
    assert cosine.mean() >= 0.9995 and cosine.min() >= 0.995, cosine
    # End to end: float32 results; where a region's box is the float32 one, its feature is close.
    matched = total = 0
    for ours, theirs in zip(fast.detect(prepared), reference.detect(prepared), strict=True):
        assert all(ours[key].dtype == torch.float32 for key in ("visual_feats", "boxes", "object_scores"))
        best, index = box_iou(theirs["boxes"], ours["boxes"]).max(dim=1)
        hit = best >= 0.9
        matched, total = matched + int(hit.sum()), total + len(hit)
        cosine = torch.nn.functional.cosine_similarity(theirs["visual_feats"][hit], ours["visual_feats"][index[hit]])
        assert (cosine >= 0.995).all()
    assert matched >= total // 2  # random weights leave many near-tied scores; a few swaps are expected


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"precision": "fp16"}, "`precision` must be one of"), ({"channels_last": "yes"}, "`channels_last` must be")],
)
def test_bad_speed_settings_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        RegionFeatureExtractorConfig.from_preset("lxmert", **overrides)


def test_float16_is_refused_on_the_cpu(reference, tmp_path, capsys):
    with pytest.raises(ValueError, match="precision='float16' on the CPU.*bfloat16"):
        variant(reference, precision="float16")(images(1))
    reference.save_pretrained(tmp_path / "detector")
    write_images(tmp_path / "images", SIZES[:1])
    argv = ["extract", "--images", str(tmp_path / "images"), "--output", str(tmp_path / "store"), "--device", "cpu"]
    assert main([*argv, "--model", str(tmp_path / "detector"), "--precision", "float16", "--no-progress"]) == 2
    assert "precision='float16' on the CPU" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # refused before any work


def test_speed_settings_round_trip_and_are_recorded(reference, tmp_path):
    fast = variant(reference, precision="bfloat16", channels_last=True)
    fast.save_pretrained(tmp_path)  # channels-last weights are saved contiguous
    loaded = RegionFeatureExtractor.from_pretrained(tmp_path)
    assert (loaded.config.precision, loaded.config.channels_last) == ("bfloat16", True)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    plain = RegionFeatureExtractor.from_pretrained(tmp_path, precision="float32", channels_last=False)
    assert not plain.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    described = describe_visual_features("some/detector", fast.config)
    assert described["overrides"]["precision"] == "bfloat16" and described["overrides"]["channels_last"] is True
    assert "precision" not in describe_visual_features("some/detector", reference.config)["overrides"]


def write_images(folder, sizes) -> list:
    """Image files of the given (height, width); a name ending in `-rotated.jpg` stores its picture turned sideways
    with an EXIF orientation that turns it back (the upright size is the one given)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for index, (height, width) in enumerate(sizes):
        rotated = index % 5 == 4
        stored = (width, height) if rotated else (height, width)
        image = Image.fromarray(rng.integers(0, 256, size=(*stored, 3), dtype=np.uint8))
        path = folder / f"{index:02d}{'-rotated.jpg' if rotated else '.png'}"
        if rotated:
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = 6
            image.save(path, exif=exif)
        else:
            image.save(path)
        paths.append(path)
    return paths


SIZES = [(48, 64), (64, 48), (48, 64), (40, 80), (48, 64), (64, 48), (48, 64), (64, 48), (40, 80), (48, 64)] * 2


def test_header_size_reads_the_upright_size_without_decoding(tmp_path):
    paths = write_images(tmp_path, SIZES[:5])
    assert "rotated" in paths[4].name
    for path, size in zip(paths, SIZES, strict=False):
        assert header_size(path) == size == load_image(path).shape[:2]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert header_size(tmp_path / "broken.jpg") is None and header_size(tmp_path / "missing.png") is None


@pytest.mark.parametrize(("batch_size", "window"), [(1, None), (3, None), (4, 4), (4, 7)])
def test_sampler_yields_every_image_once_in_batches_of_one_size(tmp_path, batch_size, window):
    paths = write_images(tmp_path, SIZES)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths.insert(5, tmp_path / "broken.jpg")
    config = RegionFeatureExtractorConfig.from_preset("lxmert", **SETTINGS)
    batches = list(SizeGroupedBatchSampler(paths, config, batch_size=batch_size, window=window))
    assert sorted(index for batch in batches for index in batch) == list(range(len(paths)))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    for batch in batches:
        sizes = {None if "broken" in paths[i].name else prepare_image(paths[i], config).resized_size for i in batch}
        assert len(sizes) == 1, batch
    if window is None:  # no group is cut short: only the last of each size, and the unreadable file's, are partial
        assert sum(len(batch) < batch_size for batch in batches) <= 4
    position = {index: place for place, index in enumerate(i for batch in batches for i in batch)}
    assert all(abs(position[index] - index) <= (window or 16 * batch_size) for index in position)


def test_sampler_arguments_are_checked():
    config = RegionFeatureExtractorConfig()
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        SizeGroupedBatchSampler([], config, batch_size=0)
    with pytest.raises(ValueError, match="`window` must be an int >= batch_size"):
        SizeGroupedBatchSampler([], config, batch_size=4, window=2)


def test_grouped_extraction_runs_one_size_per_batch_and_matches_ungrouped(reference, tmp_path, monkeypatch):
    write_images(tmp_path / "images", SIZES[:10])
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    pairs = list_images(tmp_path / "images")
    seen: list[set] = []
    run_batch = extraction._extract_batch

    def record_sizes(extractor, batch, writer, report):
        seen.append({prepared.resized_size for _, prepared, _ in batch if prepared is not None})
        return run_batch(extractor, batch, writer, report)

    monkeypatch.setattr(extraction, "_extract_batch", record_sizes)
    # One loading worker: the sampler runs in this process, the decoding in the worker.
    grouped = extract_to_store(reference, pairs, tmp_path / "grouped", batch_size=3, num_workers=1, progress=False)
    # Two full batches, then the two groups left and the unreadable file (a batch of its own).
    assert all(len(sizes) <= 1 for sizes in seen) and [len(sizes) for sizes in seen] == [1, 1, 1, 1, 0]
    assert [image_id for image_id, _ in grouped.skipped] == ["broken"] and grouped.written == 10
    extract_to_store(reference, pairs, tmp_path / "plain", batch_size=3, progress=False, group_by_size=False)
    assert any(len(sizes) > 1 for sizes in seen[5:])
    by_id = {}
    for name in ("grouped", "plain"):
        dataset = load_features(tmp_path / name).with_format("numpy")
        by_id[name] = {str(row["image_id"]): row for row in dataset}
    assert sorted(by_id["grouped"]) == sorted(by_id["plain"])
    for image_id, row in by_id["grouped"].items():
        other = by_id["plain"][image_id]
        np.testing.assert_allclose(row["visual_feats"], other["visual_feats"], rtol=1e-4, atol=1e-4)


def test_cli_speed_flags_are_recorded_in_the_store(reference, tmp_path, capsys):
    reference.save_pretrained(tmp_path / "detector")
    write_images(tmp_path / "images", SIZES[:3])
    argv = ["extract", "--images", str(tmp_path / "images"), "--output", str(tmp_path / "store")]
    argv += ["--model", str(tmp_path / "detector"), "--num-workers", "0", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--precision", "bfloat16", "--channels-last"]) == 0
    assert "extracted 3 images" in capsys.readouterr().out
    overrides = FeatureStore(tmp_path / "store").extractor["overrides"]
    assert overrides["precision"] == "bfloat16" and overrides["channels_last"] is True
    # Resuming with other arithmetic would mix features of two extractors in one store: refused.
    assert main([*argv]) == 2
    assert "not by" in capsys.readouterr().err


def test_cli_precisions_are_the_config_ones():
    # Spelled out in the command so that `--help` imports no torch.
    assert PRECISION_NAMES == PRECISIONS


def test_cli_help_lists_the_speed_flags(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    help_text = capsys.readouterr().out
    assert "--precision {float32,bfloat16,float16}" in help_text and "--channels-last" in help_text


def load_benchmark():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "extract.py"
    spec = importlib.util.spec_from_file_location("extract_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = benchmark  # its dataclasses look their module up there
    spec.loader.exec_module(benchmark)
    return benchmark


def test_benchmark_agreement_columns():
    agreement = load_benchmark().agreement
    pos = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.6, 0.4, 0.9]])
    feats = torch.rand(3, 8, generator=torch.Generator().manual_seed(0)) + 0.1
    reference = [{"visual_pos": pos, "visual_feats": feats}]
    assert agreement(reference, reference) == pytest.approx((1.0, 1.0, 1.0))
    # Reordered, one feature scaled (cosine 1), one box moved (IoU 0.6 < 0.9), one feature turned.
    turned = feats.clone()
    turned[0, 0] += 1.0
    moved = pos.clone()
    moved[1] += torch.tensor([0.0, 0.1, 0.0, 0.1])
    ours = [{"visual_pos": moved[[2, 0, 1]], "visual_feats": torch.stack([2 * turned[2], turned[0], turned[1]])}]
    mean, low, matched = agreement(ours, reference)
    expected = torch.nn.functional.cosine_similarity(turned[0], feats[0], dim=0).item()
    assert matched == pytest.approx(2 / 3) and low == pytest.approx(expected, abs=1e-6)
    assert mean == pytest.approx((1 + expected) / 2, abs=1e-6)
    assert agreement([{"visual_pos": pos[:0], "visual_feats": feats[:0]}], reference)[2] == 0.0


def test_benchmark_draws_photo_sized_jpeg_scenes(tmp_path):
    arrays, pairs = load_benchmark().photo_set(3, tmp_path)
    for array, (image_id, path) in zip(arrays, pairs, strict=True):
        assert array.dtype == np.uint8 and array.shape[:2] in {(480, 640), (640, 480), (427, 640), (640, 427)}
        assert load_image(path).shape == array.shape and path.stem == image_id
        assert array.std() > 20  # a scene, not a flat colour
