"""The `lxmert-hf` command line, importable from the library: it lives in [`lxmert_hf_cli`], whose `--help` needs
no torch (importing this module does, through `lxmert_hf/__init__.py`)."""

import sys

from lxmert_hf_cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
