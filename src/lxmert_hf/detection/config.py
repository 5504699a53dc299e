"""Configuration and named presets of :class:`~lxmert_hf.RegionFeatureExtractor`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

RESIZE_BACKENDS = ("opencv", "pil", "torch")
INPUT_FORMATS = ("BGR", "RGB")
PROCEDURES = ("caffe", "detectron2")
PRECISIONS = ("float32", "bfloat16", "float16")

# Caffe's test-time per-class NMS IoU (`cfg.TEST.NMS`) and minimum proposal side (`cfg.TEST.RPN_MIN_SIZE`, in
# original-image pixels).
CAFFE_NMS_THRESHOLD = 0.3
CAFFE_RPN_MIN_SIZE = 16.0
# py-bottom-up-attention's detectron2 script tried class-agnostic NMS at 0.3, 0.4, ..., 0.9 until 36 boxes survived.
DETECTRON2_NMS_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

PRESETS: dict[str, dict[str, Any]] = {
    # The Caffe extraction that made LXMERT's released features (airsplay/lxmert `extract_coco_image.py` on
    # bottom-up-attention): the dataclass defaults.
    "lxmert": {},
    # The same weights through py-bottom-up-attention's detectron2 script (`detectron2_mscoco_proposal_maxnms.py`):
    # class-regressed boxes, class-agnostic NMS; about half of its 36 regions differ from the Caffe extraction's.
    "lxmert-detectron2": {
        "procedure": "detectron2",
        "resize_backend": "pil",
        "rpn_min_box_size": 0.0,
        "nms_thresholds": DETECTRON2_NMS_THRESHOLDS,
    },
    # The transformers research-project demo: larger images, fewer NMS thresholds, no score threshold, and the
    # float-tensor resize. Kept to reproduce features made with that demo (minus its defects).
    "transformers-demo": {
        "procedure": "detectron2",
        "min_size": 800,
        "max_size": 1333,
        "resize_backend": "torch",
        "rpn_min_box_size": 0.0,
        "score_threshold": 0.0,
        "nms_thresholds": (0.5, 0.6, 0.7),
    },
}

# Fields that change the shapes of the weights; the rest only change how images are processed.
ARCHITECTURE_FIELDS = (
    "num_classes",
    "num_attributes",
    "anchor_sizes",
    "anchor_aspect_ratios",
    "stage_blocks",
    "stem_channels",
    "res2_channels",
    "rpn_channels",
    "class_embedding_dim",
    "attribute_hidden_dim",
)
# Bottleneck blocks of ResNet-101's res2, res3, res4 (the backbone) and res5 (the box head).
RESNET101_STAGE_BLOCKS = (3, 4, 23, 3)


@dataclass
class RegionFeatureExtractorConfig:
    r"""
    Settings of the Visual Genome Faster R-CNN that turns images into LXMERT region features.

    The defaults are the `"lxmert"` preset, the Caffe extraction that made the features LXMERT was pre-trained and
    fine-tuned on (airsplay/lxmert's `extract_coco_image.py` on bottom-up-attention), step by step: the BGR image,
    mean-subtracted in float, resized with OpenCV so that its shortest side is 600 (longest at most 1000); Caffe's
    proposal layer (its anchors, "+1" box widths, proposals of at least 16 original pixels, NMS 0.7, 300 kept);
    then the proposals themselves as regions (no class-specific regression), each scored by the best class score
    that survives a per-class NMS at 0.3, those scoring at least 0.2 kept, and exactly 36 regions per image (the
    best by that score when more or fewer pass). A fine-tuned LXMERT therefore sees inputs like the ones it learned
    from. `"lxmert-detectron2"` runs py-bottom-up-attention's detectron2 script instead (class-regressed boxes,
    class-agnostic NMS tried at 0.3, ..., 0.9, PIL resize): same weights, but only about half of its 36 regions
    are the Caffe extraction's. `"transformers-demo"` (800 / 1333, NMS 0.5-0.7, no score threshold) reproduces the
    transformers demo, whose features were measured to cost GQA accuracy (about 33% against 59%); use those two
    only to match features already made with them.

    Args:
        preset (`str`, *optional*, defaults to `"lxmert"`):
            Name of the preset these settings started from; descriptive once fields are overridden.
        procedure (`str`, *optional*, defaults to `"caffe"`):
            Whose arithmetic to follow where the two originals differ. `"caffe"`: bottom-up-attention's Caffe
            test code (resize factor rounded as `cv2.resize` does, boxes with "+1" widths, its anchors and proposal
            layer, per-class NMS over the proposals, boxes mapped back by the resize factor). `"detectron2"`:
            detectron2's (`ResizeShortestEdge`, continuous boxes, class-regressed boxes and class-agnostic NMS).
        min_size (`int`, *optional*, defaults to 600):
            Target length of the shortest image side after resizing.
        max_size (`int`, *optional*, defaults to 1000):
            Cap on the longest side after resizing (the shortest side then ends up below `min_size`).
        resize_backend (`str`, *optional*, defaults to `"opencv"`):
            `"opencv"` resizes the float image with `cv2.resize` (bilinear), as Caffe's extraction did; it needs
            OpenCV (`pip install "lxmert-hf[vision]"`). `"torch"` resizes the float image with torch's bilinear
            interpolation, without antialiasing: with `procedure="caffe"` it follows OpenCV's sampling (same
            pixel centres, same factor) and differs from it only by float rounding; with `"detectron2"` it is the
            transformers demo's resize. `"pil"` resizes the uint8 image with PIL bilinear (detectron2, which
            antialiases when shrinking).
        input_format (`str`, *optional*, defaults to `"BGR"`):
            Channel order the weights expect. Every input type is converted to it, so a picture given as a file,
            a PIL image or an array yields the same features.
        pixel_mean (`tuple[float, float, float]`, *optional*):
            Per-channel mean subtracted from 0-255 pixels, in `input_format` order.
        pixel_std (`tuple[float, float, float]`, *optional*, defaults to `(1.0, 1.0, 1.0)`):
            Per-channel divisor applied after the mean.
        max_image_pixels (`int`, *optional*, defaults to 178956970):
            Images with more pixels are refused before decoding (decompression-bomb guard).
        rpn_pre_nms_topk (`int`, *optional*, defaults to 6000):
            Anchors kept, by objectness, before the proposal NMS.
        rpn_post_nms_topk (`int`, *optional*, defaults to 300):
            Proposals kept after the proposal NMS; each one runs through the res5 head, so this drives the cost.
        rpn_nms_threshold (`float`, *optional*, defaults to 0.7):
            IoU threshold of the proposal NMS.
        rpn_min_box_size (`float`, *optional*, defaults to 16.0):
            Smallest proposal side kept. With `procedure="caffe"` it is in original-image pixels (multiplied by
            the resize factor) and a side counts "+1" (`x2 - x1 + 1 >= 16 * scale`), as Caffe's proposal layer
            does; with `"detectron2"` it is in resized pixels and sides must be larger than it (0: non-empty).
        score_threshold (`float`, *optional*, defaults to 0.2):
            Regions scoring below this are dropped, except that the best are always kept up to `min_boxes`. With
            `min_boxes == max_boxes` (all presets) every image therefore gets a fixed number of regions whenever
            that many proposals exist, exactly like the original extractions; set `min_boxes=0` to apply the
            threshold strictly. With `"caffe"` the score is the region's best class score that survived the
            per-class NMS; with `"detectron2"`, its best class score.
        nms_thresholds (`tuple[float, ...]`, *optional*, defaults to `(0.3,)`):
            With `procedure="caffe"`: one IoU, of the per-class NMS. With `"detectron2"`: class-agnostic NMS IoU
            thresholds tried in order; the first that leaves at least `min_boxes` boxes is used, otherwise the
            last one.
        min_boxes (`int`, *optional*, defaults to 36):
            Number of regions kept regardless of `score_threshold` when there are that many.
        max_boxes (`int`, *optional*, defaults to 36):
            Most regions returned per image. Images may get fewer (tiny images, strict thresholds); see `padding`
            in [`RegionFeatureExtractor.forward`] for a fixed count with a mask.
        roi_chunk_size (`int`, *optional*, defaults to 600):
            Most regions run through the res5 head at once; bounds memory for large batches.
        precision (`str`, *optional*, defaults to `"float32"`):
            Arithmetic of the backbone and of res5 on the regions, which hold nearly all of the detector's work:
            `"bfloat16"` or `"float16"` run them under `torch.autocast` on the extractor's device: faster on GPUs
            with tensor cores, and `"bfloat16"` on CPUs with bf16 instructions (1.6x on one, 2.9x with
            `channels_last`); `"float16"` is refused on the CPU, where it is ~1000x slower. The RPN head, the
            proposals, NMS, the scores and the box selection stay in float32, and features are returned in
            float32. A region's bf16 feature has a cosine similarity of about 0.9995 with its float32 one; the
            rounding can also swap a region whose score is nearly tied with another's. `benchmarks/extract.py`
            measures the speed and agreement of each option.
        channels_last (`bool`, *optional*, defaults to `False`):
            Lay the convolution weights and the images out channels-last (`torch.channels_last`), which GPU
            convolution kernels, bf16 and fp16 ones above all, run faster; the features are the same up to float
            rounding.
        num_classes (`int`, *optional*, defaults to 1600):
            Visual Genome object classes (the background is an extra, last, logit).
        num_attributes (`int`, *optional*, defaults to 400):
            Visual Genome attribute classes (the "no attribute" logit comes last).
        anchor_sizes (`tuple[int, ...]`, *optional*, defaults to `(64, 128, 256, 512)`):
            Anchor side lengths in resized-image pixels.
        anchor_aspect_ratios (`tuple[float, ...]`, *optional*, defaults to `(0.5, 1.0, 2.0)`):
            Anchor height / width ratios.
        stage_blocks (`tuple[int, int, int, int]`, *optional*, defaults to `(3, 4, 23, 3)`):
            Bottleneck blocks in res2, res3, res4 (the backbone) and res5 (run on each region): ResNet-101. Only the
            published weights' values load them; smaller values make small random detectors (tests, examples).
        stem_channels (`int`, *optional*, defaults to 64):
            Output channels of the 7x7 stem convolution.
        res2_channels (`int`, *optional*, defaults to 256):
            Output channels of res2 (a multiple of 4: bottlenecks are a quarter wide). Each later stage doubles
            them, so res4 (`backbone_channels`, 1024) feeds the RPN and RoI pooling and res5 gives the region
            features (`feature_dim`, 2048).
        rpn_channels (`int`, *optional*, defaults to 512):
            Channels of the RPN's shared 3x3 convolution.
        class_embedding_dim (`int`, *optional*, defaults to 256):
            Size of the predicted-class embedding that conditions the attribute branch.
        attribute_hidden_dim (`int`, *optional*, defaults to 512):
            Hidden size of the attribute branch.

    Example:
        ```python
        >>> from lxmert_hf import RegionFeatureExtractorConfig
        >>> config = RegionFeatureExtractorConfig.from_preset("transformers-demo", max_boxes=10, min_boxes=10)
        >>> config.min_size, config.nms_thresholds, config.max_boxes
        (800, (0.5, 0.6, 0.7), 10)
        ```
    """

    preset: str = "lxmert"
    procedure: str = "caffe"
    min_size: int = 600
    max_size: int = 1000
    resize_backend: str = "opencv"
    input_format: str = "BGR"
    pixel_mean: tuple[float, ...] = (102.9801, 115.9465, 122.7717)
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    max_image_pixels: int = 178_956_970
    rpn_pre_nms_topk: int = 6000
    rpn_post_nms_topk: int = 300
    rpn_nms_threshold: float = 0.7
    rpn_min_box_size: float = CAFFE_RPN_MIN_SIZE
    score_threshold: float = 0.2
    nms_thresholds: tuple[float, ...] = field(default=(CAFFE_NMS_THRESHOLD,))
    min_boxes: int = 36
    max_boxes: int = 36
    roi_chunk_size: int = 600
    precision: str = "float32"
    channels_last: bool = False
    num_classes: int = 1600
    num_attributes: int = 400
    anchor_sizes: tuple[int, ...] = (64, 128, 256, 512)
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    stage_blocks: tuple[int, ...] = RESNET101_STAGE_BLOCKS
    stem_channels: int = 64
    res2_channels: int = 256
    rpn_channels: int = 512
    class_embedding_dim: int = 256
    attribute_hidden_dim: int = 512

    def __post_init__(self) -> None:
        sequences = (
            "pixel_mean",
            "pixel_std",
            "nms_thresholds",
            "anchor_sizes",
            "anchor_aspect_ratios",
            "stage_blocks",
        )
        for name in sequences:
            value = getattr(self, name)
            if isinstance(value, str) or not hasattr(value, "__iter__"):
                raise ValueError(f"`{name}` must be a sequence of numbers, got {value!r}.")
            setattr(self, name, tuple(value))
        self._validate_preprocessing()
        self._validate_selection()
        self._validate_arithmetic()
        self._validate_architecture()

    def _validate_preprocessing(self) -> None:
        if self.procedure not in PROCEDURES:
            raise ValueError(f"`procedure` must be one of {PROCEDURES}, got {self.procedure!r}.")
        _check_positive_int("min_size", self.min_size)
        _check_positive_int("max_size", self.max_size)
        if self.max_size < self.min_size:
            raise ValueError(f"`max_size` ({self.max_size}) must be >= `min_size` ({self.min_size}).")
        if self.resize_backend not in RESIZE_BACKENDS:
            raise ValueError(f"`resize_backend` must be one of {RESIZE_BACKENDS}, got {self.resize_backend!r}.")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"`input_format` must be one of {INPUT_FORMATS}, got {self.input_format!r}.")
        for name in ("pixel_mean", "pixel_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"`{name}` must hold 3 values (one per channel), got {getattr(self, name)!r}.")
        if any(std <= 0 for std in self.pixel_std):
            raise ValueError(f"`pixel_std` values must be > 0, got {self.pixel_std!r}.")
        _check_positive_int("max_image_pixels", self.max_image_pixels)

    def _validate_selection(self) -> None:
        for name in ("rpn_pre_nms_topk", "rpn_post_nms_topk", "max_boxes", "roi_chunk_size"):
            _check_positive_int(name, getattr(self, name))
        if not isinstance(self.min_boxes, int) or not 0 <= self.min_boxes <= self.max_boxes:
            raise ValueError(
                f"`min_boxes` must be an int in [0, max_boxes={self.max_boxes}], got {self.min_boxes!r}; "
                "when lowering `max_boxes`, lower `min_boxes` too (equal values give a fixed count)."
            )
        for name in ("rpn_nms_threshold", "score_threshold"):
            _check_fraction(name, getattr(self, name))
        if not self.nms_thresholds:
            raise ValueError("`nms_thresholds` must hold at least one IoU threshold, e.g. (0.5, 0.6, 0.7).")
        for threshold in self.nms_thresholds:
            _check_fraction("nms_thresholds", threshold)
        if self.rpn_min_box_size < 0:
            raise ValueError(f"`rpn_min_box_size` must be >= 0, got {self.rpn_min_box_size!r}.")
        if self.procedure == "caffe" and len(self.nms_thresholds) != 1:
            raise ValueError(
                f"with `procedure='caffe'`, `nms_thresholds` holds the one IoU of the per-class NMS, e.g. (0.3,); "
                f"got {self.nms_thresholds!r} (trying several thresholds is the detectron2 procedure)."
            )

    def _validate_arithmetic(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}, got {self.precision!r}.")
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"`channels_last` must be True or False, got {self.channels_last!r}.")

    def _validate_architecture(self) -> None:
        _check_positive_int("num_classes", self.num_classes)
        _check_positive_int("num_attributes", self.num_attributes)
        if not self.anchor_sizes or any(size <= 0 for size in self.anchor_sizes):
            raise ValueError(f"`anchor_sizes` must be positive numbers, got {self.anchor_sizes!r}.")
        if not self.anchor_aspect_ratios or any(ratio <= 0 for ratio in self.anchor_aspect_ratios):
            raise ValueError(f"`anchor_aspect_ratios` must be positive numbers, got {self.anchor_aspect_ratios!r}.")
        if len(self.stage_blocks) != 4:
            raise ValueError(
                f"`stage_blocks` must hold 4 block counts (res2, res3, res4, res5), got {self.stage_blocks!r}; "
                f"ResNet-101 is {RESNET101_STAGE_BLOCKS}."
            )
        for count in self.stage_blocks:
            _check_positive_int("stage_blocks", count)
        for name in ("stem_channels", "res2_channels", "rpn_channels", "class_embedding_dim", "attribute_hidden_dim"):
            _check_positive_int(name, getattr(self, name))
        if self.res2_channels % 4:
            raise ValueError(
                f"`res2_channels` must be a multiple of 4 (bottlenecks are a quarter wide), got {self.res2_channels}."
            )

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location."""
        return len(self.anchor_sizes) * len(self.anchor_aspect_ratios)

    @property
    def backbone_channels(self) -> int:
        """Channels of the backbone's output (res4), which the RPN and RoI pooling read: 1024 for ResNet-101."""
        return 4 * self.res2_channels

    @property
    def feature_dim(self) -> int:
        """Size of a region feature (`visual_feats`, res5's output): 2048 for ResNet-101."""
        return 8 * self.res2_channels

    @classmethod
    def from_preset(cls, preset: str = "lxmert", **overrides: Any) -> RegionFeatureExtractorConfig:
        """Return the settings of a named preset (`"lxmert"`, `"lxmert-detectron2"` or `"transformers-demo"`) with
        `overrides` applied."""
        if preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}.")
        return cls.from_dict({**PRESETS[preset], **overrides, "preset": preset})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RegionFeatureExtractorConfig:
        """Build a config from a dict such as the one [`~RegionFeatureExtractorConfig.to_dict`] returns."""
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown detector setting(s) {unknown}; valid names are {sorted(names)}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serializable dict (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }

    def replace(self, **overrides: Any) -> RegionFeatureExtractorConfig:
        """Return a copy with `overrides` applied and validated."""
        return self.from_dict({**self.to_dict(), **overrides})


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
