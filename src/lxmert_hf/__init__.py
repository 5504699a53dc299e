"""lxmert_hf: fine-tune and serve LXMERT for visual question answering and visual reasoning (NLVR2) with the Hugging
Face stack."""

from lxmert_hf.answers import AnswerVocabulary, normalize_answer, soft_scores, vqa_soft_score
from lxmert_hf.attention import set_attention_backend
from lxmert_hf.checkpoints import transplant_answer_head
from lxmert_hf.configuration import LxmertVQAConfig
from lxmert_hf.configuration_nlvr2 import LxmertNLVR2Config
from lxmert_hf.data import FeatureStore, FeatureStoreWriter, load_features, load_prepared
from lxmert_hf.detection import RegionFeatureExtractor, RegionFeatureExtractorConfig, draw_regions
from lxmert_hf.metrics import gqa_accuracy, load_metric, nlvr2_accuracy, vqa_accuracy, vqa_compute_metrics, vqa_score
from lxmert_hf.modeling import LxmertForVQA, LxmertForVQAOutput
from lxmert_hf.modeling_nlvr2 import LxmertForNLVR2, LxmertForNLVR2Output
from lxmert_hf.modeling_pretraining import LxmertForPreTrainingOutputWithLosses, LxmertForPreTrainingWithLosses
from lxmert_hf.pipeline import NLVR2Pipeline, VQAPipeline, draw_answer
from lxmert_hf.predict import predict_answers, predict_nlvr2, predict_split, write_predictions
from lxmert_hf.submission import write_gqa_submission, write_nlvr2_submission, write_vqa_submission

__version__ = "0.1.0"

__all__ = [
    "AnswerVocabulary",
    "FeatureStore",
    "FeatureStoreWriter",
    "LxmertForNLVR2",
    "LxmertForNLVR2Output",
    "LxmertForPreTrainingOutputWithLosses",
    "LxmertForPreTrainingWithLosses",
    "LxmertForVQA",
    "LxmertForVQAOutput",
    "LxmertNLVR2Config",
    "LxmertVQAConfig",
    "NLVR2Pipeline",
    "RegionFeatureExtractor",
    "RegionFeatureExtractorConfig",
    "VQAPipeline",
    "draw_answer",
    "draw_regions",
    "gqa_accuracy",
    "load_features",
    "load_prepared",
    "load_metric",
    "nlvr2_accuracy",
    "normalize_answer",
    "predict_answers",
    "predict_nlvr2",
    "predict_split",
    "set_attention_backend",
    "soft_scores",
    "transplant_answer_head",
    "vqa_accuracy",
    "vqa_compute_metrics",
    "vqa_score",
    "vqa_soft_score",
    "write_gqa_submission",
    "write_nlvr2_submission",
    "write_predictions",
    "write_vqa_submission",
    "__version__",
]
