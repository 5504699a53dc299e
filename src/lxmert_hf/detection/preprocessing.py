"""Image loading and preprocessing for the region detector.

Every input type is first turned into the same thing, an RGB uint8 array of shape `[height, width, 3]`, and only
then resized, put in the detector's channel order and normalized. That single path is what makes a picture give
identical features whether it comes as a file, a URL, a PIL image, a numpy array or a torch tensor.
"""

from __future__ import annotations

import dataclasses
import io
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from lxmert_hf.downloads import URL_PREFIXES, URL_TIMEOUT_S, check_url_scheme

if TYPE_CHECKING:
    from lxmert_hf.detection.config import RegionFeatureExtractorConfig

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024
# The caffe max-pool of the stem has no output below 3 input pixels; one full stride-16 cell is a safe floor.
MIN_RESIZED_SIDE = 16
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageLoadError(ValueError):
    """An image could not be read or decoded; the message names the image."""


@dataclass
class PreparedImage:
    """
    An image ready for the detector.

    Attributes:
        pixel_values (`torch.Tensor`): `[3, resized_height, resized_width]` float32, in the detector's channel
            order, mean-subtracted.
        image_size (`tuple[int, int]`): original `(height, width)`; boxes are returned in this frame.
        resized_size (`tuple[int, int]`): `(height, width)` after resizing, before any batching.
        scale (`tuple[float, float]`): `(y, x)` factors from original to resized pixels (Caffe's resize factor
            for both sides, or detectron2's resized over original side lengths).
        boxes (`torch.Tensor`, *optional*): `[n, 4]` float32 boxes given for this image (x1, y1, x2, y2, pixels of
            the original image, inside it), described instead of detected; `None`: the detector finds the regions.
    """

    pixel_values: torch.Tensor
    image_size: tuple[int, int]
    resized_size: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.0)
    boxes: torch.Tensor | None = None

    def pin_memory(self) -> PreparedImage:
        """A copy with the pixels in page-locked memory, for asynchronous copies to a GPU (`DataLoader` calls it
        when `pin_memory=True`)."""
        return dataclasses.replace(self, pixel_values=self.pixel_values.pin_memory())


def is_image_input(value: object) -> bool:
    """Return whether `value` is one image (as opposed to a list of images)."""
    return isinstance(value, str | os.PathLike | Image.Image | np.ndarray | torch.Tensor)


def describe(image: object) -> str:
    """A short name for an image in error messages."""
    if isinstance(image, str | os.PathLike):
        return str(image)
    if isinstance(image, np.ndarray | torch.Tensor):
        return f"{type(image).__name__} of shape {list(image.shape)}"
    return type(image).__name__


def load_image(image: ImageInput, max_pixels: int = 178_956_970) -> np.ndarray:
    """
    Read one image into an RGB uint8 array `[height, width, 3]`.

    Accepts a local path, an http(s) URL, a PIL image, a numpy array (`[H, W, 3]` RGB, `[H, W, 4]` RGBA or `[H, W]`
    grayscale; uint8, uint16, or float in [0, 1]) or a torch tensor laid out `[C, H, W]` with the same value types.
    Files and PIL images are rotated by their EXIF orientation; grayscale, palette, CMYK and 16-bit images are
    converted to 8-bit RGB; an alpha channel is dropped (as OpenCV does when reading in color).

    Raises:
        `ImageLoadError` (a `ValueError`): the image cannot be read, is malformed, or has more than `max_pixels`
        pixels (a decompression-bomb guard). The message names the file or URL.

    Example:
        ```python
        >>> import numpy as np
        >>> from lxmert_hf.detection.preprocessing import load_image
        >>> load_image(np.zeros((4, 6), dtype=np.uint8)).shape
        (4, 6, 3)
        ```
    """
    if isinstance(image, str | os.PathLike):
        source = str(image)
        if source.startswith(URL_PREFIXES):
            return decode_image_bytes(download_image(source), source, max_pixels)
        try:
            check_url_scheme(source, "image")
        except ValueError as error:
            raise ImageLoadError(str(error)) from None
        return _read_file(Path(source), max_pixels)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image, "PIL image", max_pixels)
    if isinstance(image, np.ndarray):
        return array_to_rgb(image, channels_first=False, name=describe(image))
    if isinstance(image, torch.Tensor):
        return array_to_rgb(image.detach().cpu().numpy(), channels_first=True, name=describe(image))
    raise ValueError(
        f"Unsupported image type {type(image).__name__}; pass a path, an http(s) URL, a PIL image, "
        "a numpy array [H, W, C] or a torch tensor [C, H, W]."
    )


def _read_file(path: Path, max_pixels: int) -> np.ndarray:
    if not path.is_file():
        raise ImageLoadError(f"cannot read image {path}: no such file.")
    try:
        with Image.open(path) as image:
            return pil_to_rgb(image, str(path), max_pixels)
    except ImageLoadError:
        raise
    except Exception as error:
        # Image plugins raise many kinds of errors on malformed files; all mean "unreadable".
        raise ImageLoadError(f"cannot read image {path}: {error}") from error


def download_image(url: str, timeout: float = URL_TIMEOUT_S) -> bytes:
    """The body of `url`, or an `ImageLoadError` saying why not (HTTP status, timeout, network error, size)."""
    request = urllib.request.Request(url, headers={"User-Agent": "lxmert_hf"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise ImageLoadError(f"cannot download image {url}: HTTP {error.code} {error.reason}.") from error
    except (TimeoutError, urllib.error.URLError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(error, TimeoutError) or isinstance(reason, TimeoutError):
            raise ImageLoadError(
                f"cannot download image {url}: no answer within {timeout:g} s; pass a larger `timeout=` or "
                "download the image and pass the file."
            ) from error
        raise ImageLoadError(f"cannot download image {url}: {reason}.") from error
    except OSError as error:
        raise ImageLoadError(f"cannot download image {url}: {error}.") from error
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ImageLoadError(f"image {url} is larger than {MAX_DOWNLOAD_BYTES} bytes; download it yourself.")
    return data


def decode_image_bytes(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) to RGB uint8 `[H, W, 3]`, or raise an `ImageLoadError` naming it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return pil_to_rgb(image, name, max_pixels)
    except ImageLoadError:
        raise
    except Exception as error:
        raise ImageLoadError(f"cannot read image {name}: {error}") from error


def pil_to_rgb(image: Image.Image, name: str, max_pixels: int) -> np.ndarray:
    """Check the size of a PIL image, apply its EXIF orientation and return it as RGB uint8 `[H, W, 3]`."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"image {name} has {width}x{height} = {width * height} pixels, more than max_image_pixels={max_pixels}; "
            "raise `max_image_pixels` if you trust this image."
        )
    if width == 0 or height == 0:
        raise ImageLoadError(f"image {name} is empty ({width}x{height}).")
    image = _exif_upright(image)
    if image.mode in SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_sixteen_to_eight_bit(np.asarray(image)))
    if image.mode == "F":
        return _gray_to_rgb(_float_gray_to_uint8(np.asarray(image, dtype=np.float32)))
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _exif_upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        # A corrupt EXIF block should not make an otherwise readable image unusable; keep it as stored.
        return image


def array_to_rgb(array: np.ndarray, channels_first: bool, name: str) -> np.ndarray:
    """Turn a grayscale, RGB or RGBA array (HWC, or CHW when `channels_first`) into RGB uint8 `[H, W, 3]`."""
    layout = "[C, H, W]" if channels_first else "[H, W, C]"
    if array.ndim == 2:
        array = array[None] if channels_first else array[..., None]
    if array.ndim != 3:
        raise ValueError(
            f"image {name}: expected a 2-D grayscale or 3-D {layout} array, got {array.ndim} dimensions; "
            "pass several images as a list (e.g. list(batch))."
        )
    if channels_first:
        array = array.transpose(1, 2, 0)
    if array.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"image {name}: expected 1, 3 or 4 channels laid out {layout} (RGB order), got shape {list(array.shape)}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image {name} is empty (shape {list(array.shape)}).")
    array = _to_uint8(array, name)
    if array.shape[2] == 1:
        return _gray_to_rgb(array[..., 0])
    return np.ascontiguousarray(array[..., :3])


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return _sixteen_to_eight_bit(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"image {name}: float pixels must lie in [0, 1]; pass uint8 values 0-255 or divide by 255 first."
            )
        return np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    raise ValueError(f"image {name}: unsupported pixel type {array.dtype}; pass uint8 RGB values 0-255.")


def _sixteen_to_eight_bit(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array).astype(np.int64)
    if array.max(initial=0) <= 255:
        # 32-bit integer images that only hold 8-bit values need no rescaling.
        return array.clip(0, 255).astype(np.uint8)
    # Keep the high byte, as OpenCV does when it reads a 16-bit image in 8-bit color.
    return (array.clip(0, 65535) >> 8).astype(np.uint8)


def _float_gray_to_uint8(gray: np.ndarray) -> np.ndarray:
    gray = np.nan_to_num(gray, nan=0.0)
    # Float images are either normalized to [0, 1] or hold 0-255 values; tell them apart by their range.
    scale = 255.0 if gray.max(initial=0.0) <= 1.0 else 1.0
    return np.rint(np.clip(gray * scale, 0, 255)).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """
    Return the `(height, width)` after scaling the shortest side to `min_size` while keeping the longest side at
    most `max_size`, computed as detectron2's `ResizeShortestEdge` and the transformers demo do (the shortest side
    set to `min_size` exactly, the other multiplied by the factor, both shrunk together, then rounded half up).
    Degenerate aspect ratios are stretched so no side ends up shorter than 16 pixels.

    Example:
        ```python
        >>> from lxmert_hf.detection.preprocessing import resized_size
        >>> resized_size(480, 640, 600, 1000), resized_size(300, 451, 800, 1333)
        ((600, 800), (800, 1203))
        ```
    """
    scale = min_size / min(height, width)
    if height < width:
        new_height, new_width = float(min_size), scale * width
    else:
        new_height, new_width = scale * height, float(min_size)
    if max(new_height, new_width) > max_size:
        shrink = max_size / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return max(int(new_height + 0.5), MIN_RESIZED_SIDE), max(int(new_width + 0.5), MIN_RESIZED_SIDE)


def caffe_resize_factor(height: int, width: int, min_size: int, max_size: int) -> float:
    """
    Return the factor bottom-up-attention's Caffe test code (`_get_image_blob`) resizes an image by: `min_size`
    over the shortest side, unless the longest side would then round to more than `max_size`, in which case
    `max_size` over the longest side. Both sides are multiplied by this one factor.

    Example:
        ```python
        >>> from lxmert_hf.detection.preprocessing import caffe_resize_factor
        >>> caffe_resize_factor(480, 640, 600, 1000), caffe_resize_factor(300, 1000, 600, 1000)
        (1.25, 1.0)
        ```
    """
    factor = min_size / min(height, width)
    # numpy's round, like Python's, rounds half to even.
    if round(factor * max(height, width)) > max_size:
        factor = max_size / max(height, width)
    return factor


def caffe_resized_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """
    Return the `(height, width)` that `cv2.resize(image, None, fx=factor, fy=factor)` produces: each side times the
    factor, rounded to nearest with ties to even (OpenCV's `saturate_cast<int>`). Sides below 16 pixels are
    raised to 16 (where Caffe would have failed or made an unusable feature map).

    Example:
        ```python
        >>> from lxmert_hf.detection.preprocessing import caffe_resized_size
        >>> caffe_resized_size(333, 500, 600 / 333)
        (600, 901)
        ```
    """
    return max(round(height * factor), MIN_RESIZED_SIDE), max(round(width * factor), MIN_RESIZED_SIDE)


def prepare_image(image: ImageInput, config: RegionFeatureExtractorConfig) -> PreparedImage:
    """
    Load, resize, reorder channels and normalize one image as `config` says.

    Example:
        ```python
        >>> import numpy as np
        >>> from lxmert_hf import RegionFeatureExtractorConfig
        >>> from lxmert_hf.detection.preprocessing import prepare_image
        >>> config = RegionFeatureExtractorConfig.from_preset("lxmert", resize_backend="torch")
        >>> prepared = prepare_image(np.zeros((30, 40, 3), np.uint8), config)
        >>> tuple(prepared.pixel_values.shape), prepared.image_size, prepared.scale
        ((3, 600, 800), (30, 40), (20.0, 20.0))
        ```
    """
    rgb = load_image(image, config.max_image_pixels)
    return prepare_rgb(rgb, config)


def prepare_rgb(rgb: np.ndarray, config: RegionFeatureExtractorConfig) -> PreparedImage:
    """Resize, reorder and normalize an RGB uint8 `[H, W, 3]` array (see [`prepare_image`])."""
    height, width = rgb.shape[:2]
    size, scale = _resize_plan(height, width, config)
    ordered = rgb[..., ::-1] if config.input_format == "BGR" else rgb
    if config.resize_backend == "pil":
        # detectron2 resizes the uint8 image with PIL, which antialiases when shrinking.
        resized = Image.fromarray(np.ascontiguousarray(ordered)).resize(size[::-1], Image.Resampling.BILINEAR)
        pixels = _normalize(torch.from_numpy(np.array(resized)).permute(2, 0, 1).float(), config)
    elif config.procedure == "caffe":
        # Caffe subtracts the mean from the float image in float64 (numpy), then resizes the result.
        mean, std = np.asarray(config.pixel_mean), np.asarray(config.pixel_std)
        normalized = ((ordered.astype(np.float64) - mean) / std).astype(np.float32)
        pixels = _resize_float(normalized, size, scale, config.resize_backend)
    else:
        raw = _resize_float(np.ascontiguousarray(ordered, dtype=np.float32), size, None, config.resize_backend)
        pixels = _normalize(raw, config)
    return PreparedImage(pixels.contiguous(), (height, width), size, scale)


def planned_resized_size(height: int, width: int, config: RegionFeatureExtractorConfig) -> tuple[int, int]:
    """
    The `(height, width)` that [`prepare_image`] resizes an upright `height` x `width` image to under `config`.

    Example:
        ```python
        >>> from lxmert_hf import RegionFeatureExtractorConfig
        >>> from lxmert_hf.detection.preprocessing import planned_resized_size
        >>> planned_resized_size(480, 640, RegionFeatureExtractorConfig())
        (600, 800)
        ```
    """
    return _resize_plan(height, width, config)[0]


def _resize_plan(
    height: int, width: int, config: RegionFeatureExtractorConfig
) -> tuple[tuple[int, int], tuple[float, float]]:
    """The resized `(height, width)` and the `(y, x)` factors from original to resized pixels."""
    if config.procedure == "caffe":
        factor = caffe_resize_factor(height, width, config.min_size, config.max_size)
        size = caffe_resized_size(height, width, factor)
        # A side raised to the 16-pixel floor is stretched: its own factor maps boxes back.
        scale_y = factor if size[0] == round(height * factor) else size[0] / height
        scale_x = factor if size[1] == round(width * factor) else size[1] / width
        return size, (scale_y, scale_x)
    size = resized_size(height, width, config.min_size, config.max_size)
    return size, (size[0] / height, size[1] / width)


def _normalize(pixels: torch.Tensor, config: RegionFeatureExtractorConfig) -> torch.Tensor:
    mean = torch.tensor(config.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.pixel_std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean) / std


def _resize_float(
    pixels: np.ndarray, size: tuple[int, int], scale: tuple[float, float] | None, backend: str
) -> torch.Tensor:
    """
    Bilinearly resize a float32 `[H, W, 3]` image to `size`; returns `[3, h, w]`. With `scale`, source pixels are
    sampled at `(x + 0.5) / scale - 0.5` (the factor itself, as `cv2.resize(..., fx=, fy=)` does); without, at the
    size ratio.
    """
    height, width = size
    if backend == "opencv":
        cv2 = import_opencv()
        if scale is not None and (round(pixels.shape[0] * scale[0]), round(pixels.shape[1] * scale[1])) == size:
            resized = cv2.resize(pixels, None, fx=scale[1], fy=scale[0], interpolation=cv2.INTER_LINEAR)
        else:
            resized = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(resized).permute(2, 0, 1)
    batch = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    if scale is None:
        return F.interpolate(batch, size=size, mode="bilinear", align_corners=False)[0]
    # The aten op takes the output size and the sampling factors separately, as cv2.resize does. In float32 it
    # places source pixels to ~4e-6 (ulp of the coordinate), a 1e-3 error on 0-255 pixels; float64 does not.
    resized = torch.ops.aten.upsample_bilinear2d(batch.double(), [height, width], False, scale[0], scale[1])
    return resized[0].float()


def check_resize_backend(config: RegionFeatureExtractorConfig) -> None:
    """Raise the `ImportError` of [`import_opencv`] now if `config` resizes with OpenCV and it is missing."""
    if config.resize_backend == "opencv":
        import_opencv()


def import_opencv():
    """Import OpenCV for `resize_backend="opencv"`, or raise an `ImportError` saying how to get it."""
    try:
        import cv2
    except ImportError as error:
        raise ImportError(
            'resize_backend="opencv" (the "lxmert" preset: Caffe\'s extraction resized its images with OpenCV) needs '
            'OpenCV: pip install "lxmert-hf[vision]" (or opencv-python-headless). Or pass resize_backend="torch" '
            "(`--set resize_backend=torch` on the command line): the same bilinear resize in torch, whose pixels "
            "differ from OpenCV's by float rounding only."
        ) from error
    return cv2
