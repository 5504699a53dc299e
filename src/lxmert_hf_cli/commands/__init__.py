"""Subcommands of the ``lxmert-hf`` command line: one module each, each with ``register(subparsers)`` and a
``run(args)`` that imports the library (torch, transformers, datasets) only when the command runs."""
