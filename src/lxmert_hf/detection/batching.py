"""Batches of image files that share a resized size, planned from the files' headers without decoding them.

The detector runs the backbone once per resized size in a batch (images are never padded to each other's size), so a
batch of four sizes costs four small passes. Grouping images of one size into the same batch makes it one pass. The
size comes from the file's header and its EXIF orientation; a header the plan misreads (an orientation PIL only finds
after the pixels, in a PNG) costs an extra pass, never a wrong feature, because the detector groups by the sizes it
actually gets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Sequence

from PIL import Image
from torch.utils.data import Sampler

from lxmert_hf.detection.config import RegionFeatureExtractorConfig
from lxmert_hf.detection.preprocessing import planned_resized_size

# EXIF orientations that turn the picture by 90 degrees (ImageOps.exif_transpose's transposes 5-8).
SIDEWAYS_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """
    The upright `(height, width)` of an image file, read from its header and EXIF orientation without decoding the
    pixels; `None` when the header cannot be read (the image is then reported when it is loaded).

    Example:
        ```python
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from lxmert_hf.detection.batching import header_size
        >>> path = Path(tempfile.mkdtemp()) / "wide.png"
        >>> Image.new("RGB", (64, 48)).save(path)
        >>> header_size(path), header_size(path.with_name("missing.png"))
        ((48, 64), None)
        ```
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = _orientation(image)
    except Exception:
        # Image plugins raise many kinds of errors on malformed files; loading the image reports them.
        return None
    return (width, height) if orientation in SIDEWAYS_ORIENTATIONS else (height, width)


def _orientation(image: Image.Image) -> int:
    try:
        # The base class reads only what the header parsing found (a PNG's own getexif would decode the pixels).
        return int(Image.Image.getexif(image).get(EXIF_ORIENTATION, 1))
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        return 1  # a corrupt EXIF block: the image is loaded as stored (see preprocessing._exif_upright)


class SizeGroupedBatchSampler(Sampler[list[int]]):
    r"""
    Batches of dataset indices in which every image has the same resized size, in the order the images come in
    otherwise: images wait in one group per size, a group is yielded as soon as it holds `batch_size` images, and a
    group whose first image came `window` images ago is yielded as it is. At the end the groups left are yielded
    oldest first. Each index comes exactly once; batches hold 1 to `batch_size` indices.
    Headers are read as batches are asked for, so the first batch does not wait for every header (and the sampler
    has no length).

    Args:
        paths (`Sequence[str | os.PathLike]`): the image files, index = dataset index.
        config ([`RegionFeatureExtractorConfig`]): the settings that decide the resized size.
        batch_size (`int`): most images per batch.
        window (`int`, *optional*): most images an image waits for its group to fill; defaults to
            `16 * batch_size`. No image moves more than `window` places from its place in the list.
        key (`Callable[[int], Hashable]`, *optional*): the grouping key of an index, instead of the resized size read
            from the header (`None` for unreadable headers, which form a group of their own).

    Example:
        ```python
        >>> from lxmert_hf import RegionFeatureExtractorConfig
        >>> from lxmert_hf.detection.batching import SizeGroupedBatchSampler
        >>> sizes = ["wide", "tall", "wide", "wide", "tall"]
        >>> sampler = SizeGroupedBatchSampler(
        ...     sizes, RegionFeatureExtractorConfig(), batch_size=2, key=lambda index: sizes[index]
        ... )
        >>> list(sampler)
        [[0, 2], [1, 4], [3]]
        ```
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        config: RegionFeatureExtractorConfig,
        batch_size: int,
        window: int | None = None,
        key: Callable[[int], Hashable] | None = None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        window = 16 * batch_size if window is None else window
        if isinstance(window, bool) or not isinstance(window, int) or window < batch_size:
            raise ValueError(f"`window` must be an int >= batch_size ({batch_size}), got {window!r}.")
        self.paths = list(paths)
        self.config = config
        self.batch_size = batch_size
        self.window = window
        self.key = key if key is not None else self.resized_size

    def resized_size(self, index: int) -> tuple[int, int] | None:
        """The size the image at `index` is resized to, from its header; `None` when the header is unreadable."""
        size = header_size(self.paths[index])
        return None if size is None else planned_resized_size(*size, self.config)

    def __iter__(self) -> Iterator[list[int]]:
        # Dicts keep insertion order, and a group is inserted when its first waiting image arrives: the first group
        # is always the one holding the longest-waiting image.
        groups: dict[Hashable, list[int]] = {}
        for index in range(len(self.paths)):
            key = self.key(index)
            group = groups.setdefault(key, [])
            group.append(index)
            if len(group) == self.batch_size:
                yield groups.pop(key)
            while groups and index - groups[next(iter(groups))][0] >= self.window:
                yield groups.pop(next(iter(groups)))
        yield from groups.values()
