"""Stopping a command on Ctrl-C (SIGINT) or SIGTERM (`kill`, job schedulers, a container being stopped): the
signal becomes an exception, so that the writers' `with` blocks close what they hold (a feature store keeps every
finished image and stays resumable), and the command ends with one line and the shell's exit code, 128 + the
signal's number (130 for SIGINT, 143 for SIGTERM)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Interrupted", "exit_code", "report_interrupted", "signals_as_interrupt", "store_kept"]

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """The command was stopped by the signal `signum`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(error: KeyboardInterrupt) -> int:
    """128 + the number of the signal that stopped the command, as a shell reports a process it ended."""
    return 128 + int(getattr(error, "signum", signal.SIGINT))


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Raise [`Interrupted`] in the main thread on SIGINT and SIGTERM while the block runs. A signal the parent
    process set to be ignored (`nohup`, background jobs of a script) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {}
    for signum in _SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def store_kept(store: str | Path) -> str:
    """What an interrupted writer left in the feature store at `store`, and how to continue."""
    from lxmert_hf.data.store.format import read_manifest

    try:
        manifest = read_manifest(store)
    except (OSError, ValueError):
        return f"nothing was kept in {store}"
    state = "complete" if manifest["complete"] else "marked incomplete"
    return f"{manifest['num_images']} images kept in {store} ({state}); rerun the same command to continue"


def report_interrupted(command: str, error: KeyboardInterrupt, kept: str | None = None) -> int:
    """Print one line saying what stopped `command` and what it `kept`; return the exit code."""
    name = signal.Signals(exit_code(error) - 128).name
    print(f"lxmert-hf {command}: interrupted by {name}" + (f"; {kept}." if kept else "."), file=sys.stderr)
    return exit_code(error)
