"""lxmert_hf: fine-tune and serve LXMERT for visual question answering with the Hugging Face stack."""

from lxmert_hf.configuration import LxmertVQAConfig

__version__ = "0.1.0"

__all__ = [
    "LxmertVQAConfig",
    "__version__",
]
