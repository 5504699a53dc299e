"""Image loading and preprocessing of the region detector: every input type and odd image files."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from PIL import Image

from lxmert_hf.detection.config import RegionFeatureExtractorConfig
from lxmert_hf.detection.preprocessing import ImageLoadError, load_image, prepare_image, prepare_rgb, resized_size
from lxmert_hf.detection.vocab import load_vocab

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("height", "width", "min_size", "max_size", "expected"),
    [
        (480, 640, 600, 1000, (600, 800)),
        (512, 512, 800, 1333, (800, 800)),
        (300, 451, 800, 1333, (800, 1203)),
        (100, 1000, 600, 1000, (100, 1000)),  # capped by the longest side
        (20, 20, 600, 1000, (600, 600)),  # tiny images are scaled up
        (1, 2000, 600, 1000, (16, 1000)),  # degenerate strips keep a usable height
    ],
)
def test_resized_size(height, width, min_size, max_size, expected):
    assert resized_size(height, width, min_size, max_size) == expected


@pytest.mark.parametrize("preset", ["lxmert", "lxmert-detectron2"])
def test_prepared_pixels_are_bgr_minus_mean(preset):
    config = RegionFeatureExtractorConfig.from_preset(preset, min_size=30, max_size=40, resize_backend="torch")
    prepared = prepare_rgb(RGB, config)
    assert prepared.image_size == (30, 40) and prepared.resized_size == (30, 40) and prepared.scale == (1.0, 1.0)
    bgr = RGB[..., ::-1].transpose(2, 0, 1)
    mean = np.asarray(config.pixel_mean)[:, None, None]
    if preset == "lxmert":  # Caffe subtracts the float64 mean with numpy, then keeps float32
        expected = torch.from_numpy((bgr.astype(np.float64) - mean).astype(np.float32))
    else:
        expected = torch.from_numpy(bgr.astype(np.float32)) - torch.from_numpy(mean.astype(np.float32))
    torch.testing.assert_close(prepared.pixel_values, expected, rtol=0, atol=0)


def test_rgb_input_format_keeps_channel_order():
    config = RegionFeatureExtractorConfig(
        min_size=30, max_size=40, input_format="RGB", pixel_mean=(0, 0, 0), resize_backend="torch"
    )
    prepared = prepare_rgb(RGB, config)
    torch.testing.assert_close(prepared.pixel_values, torch.from_numpy(RGB).permute(2, 0, 1).float())


def test_resize_backends_differ_only_in_interpolation():
    config = RegionFeatureExtractorConfig.from_preset("lxmert-detectron2", min_size=18, max_size=24)
    pil = prepare_rgb(RGB, config).pixel_values
    demo = prepare_rgb(RGB, config.replace(resize_backend="torch")).pixel_values
    assert pil.shape == demo.shape == (3, 18, 24)
    assert not torch.equal(pil, demo)  # PIL antialiases when shrinking, the demo's interpolate does not


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_every_input_type_gives_the_same_array(tmp_path):
    path = _save(Image.fromarray(RGB), tmp_path / "picture.png")
    same = [
        load_image(path),
        load_image(str(path)),
        load_image(Image.open(path)),
        load_image(RGB),
        load_image(torch.from_numpy(RGB).permute(2, 0, 1)),
        load_image(torch.from_numpy(RGB).permute(2, 0, 1).float() / 255),
        load_image(RGB.astype(np.float32) / 255),
    ]
    for array in same:
        np.testing.assert_array_equal(array, RGB)


@contextlib.contextmanager
def serve(folder):
    """Serve `folder` over HTTP on localhost; yields the base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_input(tmp_path):
    _save(Image.fromarray(RGB), tmp_path / "picture.png")
    with serve(tmp_path) as base:
        np.testing.assert_array_equal(load_image(f"{base}/picture.png"), RGB)
        with pytest.raises(ImageLoadError, match="missing.png"):
            load_image(f"{base}/missing.png")


def test_vocab_from_a_url_is_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    (tmp_path / "attributes.txt").write_text("white\nwooden,wood\nred\n\n")
    with serve(tmp_path) as base:
        url = f"{base}/attributes.txt"
        assert load_vocab(url, expected_size=3) == ["white", "wooden", "red"]
    assert load_vocab(url) == ["white", "wooden", "red"]  # the server is gone: read from the cache
    with pytest.raises(ValueError, match="holds 3 names but the detector predicts 400"):
        load_vocab(url, expected_size=400)


def test_reference_vocabularies_parse():
    reference = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
    if not (reference / "vg_objects_vocab.txt").is_file():
        pytest.skip("reference vocabularies not available")
    objects = load_vocab(reference / "vg_objects_vocab.txt", expected_size=1600)
    attributes = load_vocab(reference / "vg_attributes_vocab.txt", expected_size=400)
    assert all(name and "," not in name for name in objects + attributes)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_odd_modes_become_rgb_uint8(tmp_path, mode):
    image = Image.fromarray(RGB).convert(mode) if mode not in ("I;16", "I", "F") else _gray_image(mode)
    suffix = {"CMYK": ".jpg", "YCbCr": ".jpg", "F": ".tif", "I": ".tif"}.get(mode, ".png")
    loaded = load_image(_save(image, tmp_path / f"image{suffix}"))
    assert loaded.shape == (30, 40, 3) and loaded.dtype == np.uint8


def _gray_image(mode: str) -> Image.Image:
    gray = RNG.integers(0, 65536, size=(30, 40)).astype(np.uint16 if mode == "I;16" else np.int32)
    if mode == "F":
        return Image.fromarray(gray.astype(np.float32) / 65535, mode="F")
    return Image.fromarray(gray)


def test_sixteen_bit_keeps_the_high_byte(tmp_path):
    gray = RNG.integers(0, 65536, size=(10, 12)).astype(np.uint16)
    path = _save(Image.fromarray(gray), tmp_path / "deep.png")
    expected = np.repeat((gray >> 8).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(gray), expected)


def test_alpha_is_dropped_and_gray_is_repeated():
    rgba = np.concatenate([RGB, np.zeros((30, 40, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(rgba), RGB)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgba)), RGB)
    gray = load_image(RGB[..., 0])
    assert (gray == RGB[..., :1]).all()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(RGB)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    loaded = load_image(_save(image, tmp_path / "rotated.png", exif=exif))
    expected = np.array(image.transpose(Image.Transpose.ROTATE_270))
    assert loaded.shape == (40, 30, 3)
    np.testing.assert_array_equal(loaded, expected)


@pytest.mark.parametrize(("content", "match"), [(b"not an image at all", "cannot read image"), (None, "no such file")])
def test_unreadable_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=match) as error:
        load_image(path)
    assert str(path) in str(error.value)


def test_truncated_file_names_the_file(tmp_path):
    full = _save(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), tmp_path / "full.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="truncated.png"):
        load_image(truncated)


def test_decompression_bomb_guard(tmp_path):
    path = _save(Image.fromarray(RGB), tmp_path / "large.png")
    with pytest.raises(ImageLoadError, match="large.png.*max_image_pixels=1000"):
        load_image(path, max_pixels=1000)
    config = RegionFeatureExtractorConfig(max_image_pixels=1000)
    with pytest.raises(ImageLoadError, match="max_image_pixels"):
        prepare_image(Image.fromarray(RGB), config)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (RGB.astype(np.float32), r"\[0, 1\]"),
        (np.zeros((3, 30, 40), np.uint8), r"\[H, W, C\]"),
        (torch.zeros(30, 40, 3, dtype=torch.uint8), r"\[C, H, W\]"),
        (np.zeros((2, 3, 4, 3), np.uint8), "dimensions"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (12, "Unsupported image type"),
    ],
)
def test_bad_arrays_are_refused_with_the_fix(image, match):
    with pytest.raises(ValueError, match=match):
        load_image(image)


def test_tiny_image_is_prepared():
    prepared = prepare_image(np.full((20, 20, 3), 128, np.uint8), RegionFeatureExtractorConfig(resize_backend="torch"))
    assert prepared.pixel_values.shape == (3, 600, 600)
    assert prepared.image_size == (20, 20)
