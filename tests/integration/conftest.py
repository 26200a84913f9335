"""Helpers shared by the integration tests (real processes)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Sequence

import pytest

Stop = Callable[[Sequence[subprocess.Popen[bytes]]], None]


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running, wait up to 15 s each, then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def stop_processes() -> Stop:
    """Stop processes gracefully (a stuck one is killed)."""
    return _stop
