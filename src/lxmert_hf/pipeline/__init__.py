"""Visual question answering as a `transformers.Pipeline`: [`VQAPipeline`], registered as the `"lxmert-vqa"` task.

Importing this package registers the task with `transformers.pipeline` and the `lxmert_vqa` model type with
`AutoConfig` / `AutoModel`, so that `transformers.pipeline("lxmert-vqa", model="folder or Hub id")` works.
"""

from transformers import AutoConfig, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from lxmert_hf.configuration import LxmertVQAConfig
from lxmert_hf.modeling import LxmertForVQA
from lxmert_hf.pipeline.core import TASK, VQAPipeline, region_payload
from lxmert_hf.pipeline.translation import Translator
from lxmert_hf.pipeline.visualize import draw_answer, region_names

__all__ = ["TASK", "Translator", "VQAPipeline", "draw_answer", "region_names", "region_payload", "register"]


def register() -> None:
    """Register the `"lxmert-vqa"` pipeline task and the `lxmert_vqa` model type with transformers (idempotent)."""
    AutoConfig.register(LxmertVQAConfig.model_type, LxmertVQAConfig, exist_ok=True)
    AutoModel.register(LxmertVQAConfig, LxmertForVQA, exist_ok=True)
    if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is not VQAPipeline:
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=VQAPipeline, pt_model=LxmertForVQA, type="multimodal")


register()
