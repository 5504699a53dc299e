"""`python -m lxmert_hf_cli`: the `lxmert-hf` command line."""

import sys

from lxmert_hf_cli import main

sys.exit(main())
