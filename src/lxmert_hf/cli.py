"""The ``lxmert-hf`` command line.

Each module in :mod:`lxmert_hf.commands` defines one subcommand through a ``register(subparsers)`` function
that adds its parser and sets ``func``. This module only discovers them, parses and dispatches.

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

from lxmert_hf import commands


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


if __name__ == "__main__":
    sys.exit(main())
