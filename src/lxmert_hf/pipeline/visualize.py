"""Drawing an answer: the regions the model saw, labelled, over a heatmap of the question's attention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lxmert_hf.detection.drawing import PALETTE
from lxmert_hf.detection.preprocessing import load_image

# Size of the canvas when only precomputed features (and no picture, no image size) are known.
BLANK_SIZE = (480, 640)
# Share of its brightness an unattended pixel keeps, so the picture stays readable under the heatmap.
FLOOR = 0.3


def draw_answer(
    image: Any,
    result: Mapping[str, Any],
    max_regions: int = 5,
    show_question: bool = True,
) -> Image.Image:
    """
    Draw what [`VQAPipeline`] answered: the image dimmed where the question's cross-attention is low, the
    `max_regions` most attended regions boxed and labelled with their names and attention, and the best answers.

    The attention is the last cross-modality layer's attention of the question's `[CLS]` token over the regions,
    averaged over heads: the pooled output, and so every answer score, is computed from that token.

    Args:
        image: the picture the question was asked about (path, PIL image, array), or `None` for precomputed
            features, drawn on a blank canvas of the image size.
        result (`Mapping`): one output of the pipeline called with `return_regions=True, return_attention=True`.
        max_regions (`int`, *optional*, defaults to 5): how many regions to box, most attended first.
        show_question (`bool`, *optional*, defaults to `True`): write the question and the best answers on top.

    Returns:
        `PIL.Image.Image`: a new RGB image.

    Example:
        ```python
        >>> from lxmert_hf.pipeline import draw_answer
        >>> result = {"answers": [{"answer": "red", "score": 0.9}], "question": "What color is the cube?",
        ...           "regions": {"visual_pos": [[0.1, 0.1, 0.5, 0.6], [0.5, 0.2, 0.9, 0.9]],
        ...                       "object_names": ["cube", "ball"]},
        ...           "attention": [0.8, 0.2]}
        >>> draw_answer(None, result).size
        (640, 480)
        ```
    """
    if "regions" not in result or "attention" not in result:
        raise ValueError(
            "`result` lacks regions or attention: call the pipeline with `return_regions=True, "
            "return_attention=True` (or use `VQAPipeline.visualize`)."
        )
    regions, attention = result["regions"], np.asarray(result["attention"], dtype=np.float64)
    canvas = _canvas(image, regions.get("image_size"))
    boxes = np.asarray(regions["visual_pos"], dtype=np.float64) * np.array([*canvas.size, *canvas.size])
    # Corners in either order draw the same box.
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
    canvas = _heatmap(canvas, boxes, attention)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, min(canvas.size) // 36))
    width = max(1, min(canvas.size) // 160)
    names = region_names(regions)
    for rank, index in enumerate(np.argsort(-attention)[:max_regions]):
        color = PALETTE[rank % len(PALETTE)]
        draw.rectangle(tuple(boxes[index]), outline=color, width=width)
        _label(draw, boxes[index][:2], f"{names[index]} {attention[index]:.0%}", color, font)
    if show_question:
        _caption(draw, result, font)
    return canvas


def region_names(regions: Mapping[str, Any]) -> list[str]:
    """One label per region: "attribute object" when names are known, else ids, else the region's index."""
    count = len(regions["visual_pos"])
    objects = regions.get("object_names")
    if objects is None and regions.get("object_ids") is not None:
        objects = [f"object {int(i)}" for i in regions["object_ids"]]
    if objects is None:
        return [f"region {i}" for i in range(count)]
    attributes = regions.get("attribute_names")
    scores = regions.get("attribute_scores")
    if attributes is None or scores is None:
        return [str(name) for name in objects]
    # The detector's threshold for showing an attribute, as in its own drawings.
    return [f"{a} {o}" if float(s) >= 0.1 else str(o) for a, o, s in zip(attributes, objects, scores, strict=True)]


def _canvas(image: Any, image_size: Sequence[int] | None) -> Image.Image:
    if image is not None:
        return Image.fromarray(load_image(image))
    height, width = image_size if image_size is not None else BLANK_SIZE
    return Image.new("RGB", (int(width), int(height)), (200, 200, 200))


def _heatmap(canvas: Image.Image, boxes: np.ndarray, attention: np.ndarray) -> Image.Image:
    heat = np.zeros((canvas.size[1], canvas.size[0]), dtype=np.float64)
    for (x1, y1, x2, y2), weight in zip(boxes.round().astype(int), attention, strict=True):
        heat[max(y1, 0) : max(y2, y1 + 1), max(x1, 0) : max(x2, x1 + 1)] += weight
    if heat.max() > 0:
        heat /= heat.max()
    pixels = np.asarray(canvas, dtype=np.float64) * (FLOOR + (1 - FLOOR) * heat[..., None])
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _label(draw: ImageDraw.ImageDraw, corner, text: str, color, font) -> None:
    x, y = float(corner[0]), float(corner[1])
    left, top, right, bottom = draw.textbbox((x, y), text, font=font)
    # Above the box when there is room, inside it otherwise.
    shift = bottom - top + 2 if y - (bottom - top) - 2 >= 0 else 0
    draw.rectangle((left, top - shift, right + 2, bottom - shift + 2), fill=color)
    draw.text((x + 1, y - shift), text, fill=(0, 0, 0), font=font)


def _caption(draw: ImageDraw.ImageDraw, result: Mapping[str, Any], font) -> None:
    answers = ", ".join(f"{a['answer']} ({a['score']:.2f})" for a in result.get("answers", [])[:3])
    question = result.get("question")
    text = f"Q: {question}\nA: {answers}" if question else f"A: {answers}"
    left, top, right, bottom = draw.multiline_textbbox((4, 4), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 4), fill=(255, 255, 255))
    draw.multiline_text((4, 4), text, fill=(0, 0, 0), font=font)
