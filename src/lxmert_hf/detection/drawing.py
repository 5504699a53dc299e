"""Drawing detected regions, labelled "attribute object", over an image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lxmert_hf.detection.preprocessing import ImageInput, load_image

PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


def region_labels(
    regions: Mapping[str, Any],
    object_names: Sequence[str] | None = None,
    attribute_names: Sequence[str] | None = None,
    attribute_threshold: float = 0.1,
) -> list[str]:
    """
    Return one "attribute object" label per region. Names come from `regions` (`object_names`,
    `attribute_names`), else from the given vocabularies, else are written as ids (`object 12`). The attribute is
    left out when its score is below `attribute_threshold`.
    """
    object_ids = [int(i) for i in regions["object_ids"]]
    attribute_ids = [int(i) for i in regions["attribute_ids"]]
    objects = regions.get("object_names") or _names(object_ids, object_names, "object")
    attributes = regions.get("attribute_names") or _names(attribute_ids, attribute_names, "attribute")
    labels = []
    for index, name in enumerate(objects):
        keep_attribute = float(regions["attribute_scores"][index]) >= attribute_threshold
        labels.append(f"{attributes[index]} {name}" if keep_attribute else str(name))
    return labels


def _names(ids: list[int], vocab: Sequence[str] | None, kind: str) -> list[str]:
    if vocab is None:
        return [f"{kind} {i}" for i in ids]
    return [vocab[i] for i in ids]


def draw_regions(
    image: ImageInput,
    regions: Mapping[str, Any],
    max_regions: int | None = None,
    min_score: float = 0.0,
    object_names: Sequence[str] | None = None,
    attribute_names: Sequence[str] | None = None,
    attribute_threshold: float = 0.1,
) -> Image.Image:
    """
    Draw the boxes of `regions` (one image's output of [`~lxmert_hf.RegionFeatureExtractor`]) over `image`, each
    labelled "attribute object", and return a new RGB PIL image (the input is left untouched).

    Args:
        image: the image the regions were detected on, in any form the extractor accepts.
        regions (`Mapping`): holds `boxes` (original pixels), `object_ids`, `object_scores`, `attribute_ids`,
            `attribute_scores`, and optionally `object_names` / `attribute_names`.
        max_regions (`int`, *optional*): draw only the best this many regions.
        min_score (`float`, *optional*, defaults to 0.0): skip regions whose object score is lower.
        object_names / attribute_names (`Sequence[str]`, *optional*): vocabularies, when `regions` has no names.
        attribute_threshold (`float`, *optional*, defaults to 0.1): leave out attributes scoring lower.

    Example:
        ```python
        >>> import numpy as np, torch
        >>> from lxmert_hf.detection.drawing import draw_regions
        >>> regions = {"boxes": torch.tensor([[2.0, 2.0, 30.0, 20.0]]), "object_ids": torch.tensor([0]),
        ...            "object_scores": torch.tensor([0.9]), "attribute_ids": torch.tensor([0]),
        ...            "attribute_scores": torch.tensor([0.5])}
        >>> picture = draw_regions(np.zeros((40, 60, 3), np.uint8), regions, object_names=["cat"],
        ...                        attribute_names=["black"])
        >>> picture.size
        (60, 40)
        ```
    """
    canvas = Image.fromarray(load_image(image))
    draw = ImageDraw.Draw(canvas)
    font_size = max(10, min(canvas.size) // 40)
    font = ImageFont.load_default(size=font_size)
    line_width = max(1, min(canvas.size) // 200)
    labels = region_labels(regions, object_names, attribute_names, attribute_threshold)
    count = len(labels) if max_regions is None else min(max_regions, len(labels))
    for index in range(count):
        if float(regions["object_scores"][index]) < min_score:
            continue
        color = PALETTE[index % len(PALETTE)]
        x1, y1, x2, y2 = (float(value) for value in regions["boxes"][index])
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line_width)
        _draw_label(draw, (x1, y1), labels[index], color, font)
    return canvas


def _draw_label(draw: ImageDraw.ImageDraw, corner: tuple[float, float], text: str, color, font) -> None:
    left, top, right, bottom = draw.textbbox(corner, text, font=font)
    # Put the label above the box when there is room, inside it otherwise.
    shift = bottom - top + 2 if corner[1] - (bottom - top) - 2 >= 0 else 0
    box = (left, top - shift, right + 2, bottom - shift + 2)
    draw.rectangle(box, fill=color)
    draw.text((corner[0] + 1, corner[1] - shift), text, fill=(0, 0, 0), font=font)
