"""Subcommands of the ``lxmert-hf`` command line: one module each, each with ``register(subparsers)``."""
