"""Claim marks: a wait for work returns at once when work was announced after the
waiter's last claim (shared by the backends that push wake-ups: PostgreSQL, Redis).

A worker claims in its own task, then waits in a child task (``asyncio.ensure_future``),
so the marks cannot be kept per task: they live in a context variable holding (the
claiming task, its marks). A claim made in a task owns marks of its own; a wait in a
task started from it reads the same marks, as the child's context is a copy.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any


class ClaimMarks:
    """Which announcements of work each claimer had seen when it last claimed."""

    def __init__(self, name: str) -> None:
        self._var: contextvars.ContextVar[tuple[Any, dict[str, int]] | None] = (
            contextvars.ContextVar(f"hydrapool-claim-marks-{name}", default=None)
        )

    def claimed(self, queue: str, seen: int) -> None:
        """The current task claims from ``queue`` having seen ``seen`` announcements."""
        task = asyncio.current_task()
        entry = self._var.get()
        if entry is None or entry[0] is not task:
            entry = (task, {})
            self._var.set(entry)
        entry[1][queue] = seen

    def news(self, queue: str, seen: int) -> bool:
        """True (once) when announcements came after this context's last claim."""
        entry = self._var.get()
        if entry is None:
            return False
        marks = entry[1]
        if marks.get(queue, 0) != seen:
            marks[queue] = seen
            return True
        return False
