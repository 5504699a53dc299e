"""The ``lxmert-hf`` command line.

Each module in :mod:`lxmert_hf_cli.commands` defines one subcommand through a ``register(subparsers)`` function
that adds its parser and sets ``func``. This module only discovers them, parses and dispatches.

The command line is a package of its own, beside :mod:`lxmert_hf`, because importing anything inside
:mod:`lxmert_hf` first runs its ``__init__``, which imports torch, transformers and datasets (seconds). Here,
building the parsers imports nothing heavy: each command imports the library inside the function that runs it,
so ``lxmert-hf --help`` and ``lxmert-hf COMMAND --help`` answer at once.

Example:
    ```bash
    lxmert-hf --help
    ```
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from lxmert_hf_cli import commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the ``lxmert-hf`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="lxmert-hf", description="LXMERT for visual question answering.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (defaults to ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"lxmert-hf {args.command}: error: {error}", file=sys.stderr)
        return 2
