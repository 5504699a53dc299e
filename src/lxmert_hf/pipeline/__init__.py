"""The library's `transformers.Pipeline`s: [`VQAPipeline`] (visual question answering, VQA and GQA checkpoints),
registered as the `"lxmert-vqa"` task, and [`NLVR2Pipeline`] (is a sentence true of a pair of images), registered as
`"lxmert-nlvr2"`.

Importing this package registers the tasks with `transformers.pipeline` and [`LxmertForVQA`] with the Auto classes
that fit, so that `transformers.pipeline("lxmert-vqa", model="folder or Hub id")`,
`transformers.pipeline("lxmert-nlvr2", model=...)` and `AutoModelForVisualQuestionAnswering.from_pretrained(folder)`
give this library's classes (see [`register`]).
"""

from transformers import AutoConfig, AutoModel, AutoModelForVisualQuestionAnswering, LxmertConfig
from transformers.pipelines import PIPELINE_REGISTRY

from lxmert_hf.configuration import LEGACY_MODEL_TYPE, LegacyLxmertVQAConfig, LxmertVQAConfig
from lxmert_hf.modeling import LxmertForVQA
from lxmert_hf.modeling_nlvr2 import LxmertForNLVR2
from lxmert_hf.pipeline.core import TASK, VQAPipeline, region_payload
from lxmert_hf.pipeline.nlvr2 import NLVR2_TASK, NLVR2Pipeline
from lxmert_hf.pipeline.translation import Translator
from lxmert_hf.pipeline.visualize import draw_answer, region_names

__all__ = [
    "NLVR2_TASK",
    "TASK",
    "NLVR2Pipeline",
    "Translator",
    "VQAPipeline",
    "draw_answer",
    "region_names",
    "region_payload",
    "register",
]


def register() -> None:
    """Register this library's classes with transformers (idempotent):

    - the `"lxmert-vqa"` pipeline task ([`VQAPipeline`] over [`LxmertForVQA`]) and the `"lxmert-nlvr2"` task
      ([`NLVR2Pipeline`] over [`LxmertForNLVR2`]);
    - `AutoModelForVisualQuestionAnswering`: [`LxmertForVQA`] for transformers' `LxmertConfig` (what `AutoConfig`
      reads from a checkpoint saved by this library, model type `lxmert`) and for [`LxmertVQAConfig`];
    - `AutoConfig` / `AutoModel` / `AutoModelForVisualQuestionAnswering` for the model type `lxmert_vqa` of
      checkpoints saved by earlier versions.

    `AutoModelForQuestionAnswering` keeps transformers' `LxmertForQuestionAnswering`, which loads the same folders.
    """
    AutoConfig.register(LEGACY_MODEL_TYPE, LegacyLxmertVQAConfig, exist_ok=True)
    AutoModelForVisualQuestionAnswering.register(LxmertVQAConfig, LxmertForVQA, exist_ok=True)
    AutoModel.register(LxmertVQAConfig, LxmertForVQA, exist_ok=True)
    # `_BaseAutoModelClass.register` accepts only the model's own `config_class`, because an Auto class hands the
    # config it read straight to the model's `from_pretrained`. `LxmertForVQA` converts any LxmertConfig it is given
    # (`lxmert_hf.checkpoints.as_vqa_config`), so the Auto classes' mappings take these config classes directly.
    AutoModelForVisualQuestionAnswering._model_mapping.register(LxmertConfig, LxmertForVQA, exist_ok=True)
    for auto_class in (AutoModel, AutoModelForVisualQuestionAnswering):
        auto_class._model_mapping.register(LegacyLxmertVQAConfig, LxmertForVQA, exist_ok=True)
    if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is not VQAPipeline:
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=VQAPipeline, pt_model=LxmertForVQA, type="multimodal")
    if PIPELINE_REGISTRY.supported_tasks.get(NLVR2_TASK, {}).get("impl") is not NLVR2Pipeline:
        PIPELINE_REGISTRY.register_pipeline(
            NLVR2_TASK, pipeline_class=NLVR2Pipeline, pt_model=LxmertForNLVR2, type="multimodal"
        )


register()
