"""lxmert_hf: fine-tune and serve LXMERT for visual question answering with the Hugging Face stack."""

from lxmert_hf.attention import set_attention_backend
from lxmert_hf.checkpoints import transplant_answer_head
from lxmert_hf.configuration import LxmertVQAConfig
from lxmert_hf.data import FeatureStoreWriter, load_features
from lxmert_hf.detection import RegionFeatureExtractor, RegionFeatureExtractorConfig, draw_regions
from lxmert_hf.modeling import LxmertForVQA, LxmertForVQAOutput

__version__ = "0.1.0"

__all__ = [
    "FeatureStoreWriter",
    "LxmertForVQA",
    "LxmertForVQAOutput",
    "LxmertVQAConfig",
    "RegionFeatureExtractor",
    "RegionFeatureExtractorConfig",
    "draw_regions",
    "load_features",
    "set_attention_backend",
    "transplant_answer_head",
    "__version__",
]
