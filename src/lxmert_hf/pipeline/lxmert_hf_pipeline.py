"""The pipeline of an lxmert_hf checkpoint, for `transformers.pipeline(model=..., trust_remote_code=True)`.

A checkpoint saved by `VQAPipeline.save_pretrained` or `push_to_hub` carries this file and names its `VQAPipeline` in
`config.json` (`custom_pipelines`). It holds no code of its own: it imports the installed lxmert_hf
(`pip install lxmert-hf`), whose import also maps the checkpoint's config to `LxmertForVQA` for
`AutoModelForVisualQuestionAnswering`. Without trusting remote code, `import lxmert_hf` and
`transformers.pipeline("lxmert-vqa", model=...)` give the same pipeline.
"""

from lxmert_hf import VQAPipeline

__all__ = ["VQAPipeline"]
