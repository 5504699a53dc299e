"""`python -m lxmert_hf_cli`: the `lxmert-hf` command line (also what `accelerate launch -m lxmert_hf_cli` and
`torchrun -m lxmert_hf_cli` run on every rank)."""

import sys

from lxmert_hf_cli import main

# Guarded: a process started with the "spawn" method (`lxmert-hf extract --num-processes N`) imports this module
# again, and must not run the command line a second time.
if __name__ == "__main__":
    sys.exit(main())
