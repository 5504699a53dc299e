"""The detector's speed options: reduced-precision convolutions and the channels-last layout.

`config.precision` runs the backbone and res5 (nearly all of the arithmetic: res5 on 300 regions alone is ~1.7
TFLOP per image) under `torch.autocast`. Everything that ranks or places boxes reads float32: the backbone's output
is turned back to the RPN head's dtype before the RPN (a 1% share of the work, kept in float32 so that the objectness
ranking that picks proposals is not quantized to 8 bits), RoI pooling and box coordinates stay float32, and res5's
output is averaged into float32 region features, from which the scores and the box selection are computed.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from lxmert_hf.detection.config import RegionFeatureExtractorConfig


def convolution_autocast(
    config: RegionFeatureExtractorConfig, device: torch.device
) -> contextlib.AbstractContextManager:
    """
    The context the detector's convolutions run in: nothing for `precision="float32"`, else `torch.autocast` to
    that dtype on `device`'s type. A device type without autocast, and float16 on the CPU (which has no fast float16
    convolutions), are a `ValueError` naming the setting.

    Example:
        ```python
        >>> import torch
        >>> from lxmert_hf import RegionFeatureExtractorConfig
        >>> from lxmert_hf.detection.precision import convolution_autocast
        >>> conv = torch.nn.Conv2d(3, 4, 3)
        >>> with convolution_autocast(RegionFeatureExtractorConfig(precision="bfloat16"), torch.device("cpu")):
        ...     conv(torch.zeros(1, 3, 8, 8)).dtype
        torch.bfloat16
        ```
    """
    if config.precision == "float32":
        return contextlib.nullcontext()
    if config.precision == "float16" and device.type == "cpu":
        raise ValueError(
            "precision='float16' on the CPU: PyTorch has no fast float16 convolutions there (measured about 1000x "
            "slower than float32); use precision='bfloat16' (`--precision bfloat16`) or 'float32' on the CPU, and "
            "float16 on a GPU."
        )
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(
            f"precision={config.precision!r} needs torch.autocast on {device.type}, which this PyTorch does not "
            "offer there; use precision='float32' (`--precision float32`) or another device."
        )
    return torch.autocast(device.type, dtype=getattr(torch, config.precision))


def apply_memory_format(model: nn.Module, config: RegionFeatureExtractorConfig) -> None:
    """Lay `model`'s 4-D weights (its convolutions) out channels-last when `config.channels_last` says so."""
    if config.channels_last:
        model.to(memory_format=torch.channels_last)


def convolution_input(pixels: torch.Tensor, config: RegionFeatureExtractorConfig) -> torch.Tensor:
    """`pixels` (`[N, 3, H, W]`) in the memory layout the convolutions expect."""
    return pixels.contiguous(memory_format=torch.channels_last) if config.channels_last else pixels
