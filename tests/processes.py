"""Test helper: run a command in a real subprocess and SIGKILL it part way through its work."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def kill_after_results(argv: list[str], folder: Path, pattern: str, *, at_least: int = 2,
                       timeout: float = 180.0, poll: float = 0.01) -> int:
    """Run ``argv`` until ``at_least`` files match ``pattern`` in ``folder``, then SIGKILL it.

    Fails the test when the process ends on its own first or writes too few
    results within ``timeout`` seconds. Returns the process's return code.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.monotonic() + timeout
        while len(list(folder.glob(pattern))) < at_least:
            if proc.poll() is not None:
                pytest.fail(f"{argv[3]} ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{argv[3]} wrote fewer than {at_least} results in {timeout:.0f} s")
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return proc.returncode
