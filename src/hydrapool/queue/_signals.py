"""One SIGTERM/SIGINT handler per process that stops every running Worker.

``loop.add_signal_handler`` keeps one handler per signal, so each Worker
installing its own would stop only the last one started, and the first to
exit would restore the default handler under the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from typing import Protocol


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_workers: set[_Stoppable] = set()
_installed: list[signal.Signals] = []


def _stop_all() -> None:
    for worker in list(_workers):
        worker.stop()


def register(worker: _Stoppable, handle_signals: bool) -> None:
    """Let SIGTERM/SIGINT stop ``worker`` (installs the handler for the first one)."""
    if not handle_signals or threading.current_thread() is not threading.main_thread():
        return
    _workers.add(worker)
    if _installed:
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _stop_all)
            _installed.append(sig)


def unregister(worker: _Stoppable) -> None:
    """Forget ``worker``; the last one out restores the default handlers."""
    _workers.discard(worker)
    if _workers or not _installed:
        return
    loop = asyncio.get_running_loop()
    for sig in _installed:
        with contextlib.suppress(RuntimeError):
            loop.remove_signal_handler(sig)
    _installed.clear()
