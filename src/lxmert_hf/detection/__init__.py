"""Visual Genome Faster R-CNN: from images to LXMERT region features, and drawing its detections."""

from lxmert_hf.detection.config import PRESETS, RegionFeatureExtractorConfig
from lxmert_hf.detection.drawing import draw_regions
from lxmert_hf.detection.extraction import ExtractionReport, extract_to_store, list_images
from lxmert_hf.detection.model import DEFAULT_CHECKPOINT, RegionFeatureExtractor, pad_regions
from lxmert_hf.detection.parallel import extract_rank, rank_from_environment
from lxmert_hf.detection.preprocessing import ImageLoadError, load_image, prepare_image
from lxmert_hf.detection.vocab import VG_ATTRIBUTES_URL, VG_OBJECTS_URL, load_vocab

__all__ = [
    "DEFAULT_CHECKPOINT",
    "PRESETS",
    "VG_ATTRIBUTES_URL",
    "VG_OBJECTS_URL",
    "ExtractionReport",
    "ImageLoadError",
    "RegionFeatureExtractor",
    "RegionFeatureExtractorConfig",
    "draw_regions",
    "extract_rank",
    "extract_to_store",
    "list_images",
    "load_image",
    "load_vocab",
    "pad_regions",
    "prepare_image",
    "rank_from_environment",
]
