"""Clocks for schedules: the system clock, and a manual one for tests.

A clock gives the wall-clock time (``now()``, an aware datetime) and sleeps
(``sleep(seconds)``). ``ManualClock`` only moves when told to, so a test can
run a day of schedules in milliseconds::

    clock = hp.ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc))
    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("tick", tick, every=5)
        await clock.advance(60)        # tick ran 12 times
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """What a Scheduler needs from a clock."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock: UTC wall time, asyncio sleeps."""

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only on ``advance()``; sleepers wake in deadline order."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError(f"ManualClock start must be timezone-aware, got {start!r}")
        self._now = start.astimezone(UTC)  # UTC arithmetic: wall-clock zones jump at DST
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until ``advance()`` has moved the clock ``seconds`` past now."""
        deadline = self._now + timedelta(seconds=max(0.0, seconds))
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its deadline and letting its work run."""
        if not seconds >= 0:
            raise ValueError(f"ManualClock.advance seconds must be >= 0, got {seconds!r}")
        target = self._now + timedelta(seconds=seconds)
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not fut.done():
                fut.set_result(None)
            await settle()
        self._now = target
        await settle()


async def settle(max_rounds: int = 1000) -> None:
    """Let the event loop run every callback that is ready, without letting time pass."""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    for _ in range(max_rounds):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            return
