"""The test suite's only wall-clock bound: a guard against hangs, never a speed limit.

Tests judge what they run by its results (steps done, accuracy reached, files written), never by its speed: on a
loaded machine everything may run ten or twenty times slower than on an idle one. A child process that deadlocks (a
stuck collective in a two-process run, a process that never opens its pipe) must still not hold CI forever, so every
wait on a child ends after `HANG_GUARD_S` seconds: an hour, far above the longest run (the toy recipe, about two
minutes on an idle 2-core machine) at any load a CI machine sees.
"""

from __future__ import annotations

import subprocess

HANG_GUARD_S = 3600


def communicate(process: subprocess.Popen) -> tuple[bytes | str, bytes | str]:
    """Wait for `process` and return its `(stdout, stderr)`; kill it if it hangs past the guard."""
    try:
        return process.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
