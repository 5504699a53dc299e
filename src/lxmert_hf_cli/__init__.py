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
import errno
import importlib
import pkgutil
import sys

from lxmert_hf_cli import commands
from lxmert_hf_cli._interrupt import report_interrupted, signals_as_interrupt

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
    """Run the command line with ``argv`` (defaults to ``sys.argv[1:]``) and return the exit code: 0, 2 for an
    error of the input or of the machine (a bad argument or file, a read-only or full output folder, a device this
    machine lacks), said in one line, or 128 + N when signal N (SIGINT: 130, SIGTERM: 143) stopped the command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with signals_as_interrupt():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as error:
        return report_interrupted(args.command, error)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"lxmert-hf {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A read-only folder, a full disk: the machine's error, said as ours, or, if it is none of those, raised.
        explained = _machine_error(error, getattr(args, "output", None))
        if explained is None:
            raise
        print(f"lxmert-hf {args.command}: error: {explained}", file=sys.stderr)
        return 2


def _machine_error(error: OSError, output: str | None) -> str | None:
    """One line for a read-only, protected or full output (`output` when the error names no file), or `None`."""
    from lxmert_hf.files import WriteError, write_error

    if error.errno in (errno.EACCES, errno.EPERM) and error.filename and not isinstance(error, WriteError):
        # Reading a protected input fails so too: not necessarily a write.
        return f"permission denied: {error.filename}; change its permissions or choose another path."
    explained = write_error(error, output if error.filename is None else None)
    return None if explained is None else str(explained)
