"""Following a queue's events: ``queue.events()`` and ``queue.on_event()``.

The backend stores each step's events in the step's own transaction (see
``backends.base.Emit``); the core then pushes them at once to this process's
streams, and other processes read them from the backend.

A stream follows the backend's log with a cursor (``seq``). One created
without ``after=`` starts from the moment it was created: its first read
fixes the cursor at the last event stored before that moment, so an enqueue
(or another process's commit) made right after ``queue.events()`` is never
missed, whatever the order in which tasks run. Until then it also keeps the
events this process pushed, in case the backend's clock is behind ours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from hydrapool._callables import call_maybe_async
from hydrapool.queue.events import Event, EventType

if TYPE_CHECKING:
    from hydrapool.queue.queue import Queue

logger = logging.getLogger("hydrapool.events")

READ_BATCH = 500
IDLE_WAIT = 1.0  # seconds between re-checks when nothing wakes a waiting stream
EARLY_LIMIT = 10_000  # events kept for a stream that has not read yet
OUTAGE_PAUSE_MAX = 2.0  # seconds between reads at most while the store is unreachable


class EventStream:
    """An async iterator over a queue's events, oldest first (see ``Queue.events``)."""

    def __init__(
        self,
        queue: Queue,
        types: frozenset[EventType],
        channel: str | None,
        after: int | None,
    ) -> None:
        self.queue = queue
        self.types = types
        self.channel = channel
        self._cursor = after
        self._ready: list[Event] = []
        self._early: list[Event] | None = []  # pushed before the cursor was fixed
        self._closed = False
        self._failures = 0  # reads failed in a row (the store unreachable)
        self._wake = asyncio.Event()  # aclose() from another task
        self._epoch = queue._epoch
        self._closing = queue._closing  # this opening's: set once, never replaced
        self._since = time.time()
        if after is None:
            queue._streams.add(self)

    def _pushed(self, events: list[Event]) -> None:
        if self._cursor is None and self._early is not None:
            self._early += events
            if len(self._early) > EARLY_LIMIT:  # never read: stop keeping (time still counts)
                self._early = None
                self.queue._streams.discard(self)

    def _wants(self, event: Event) -> bool:
        return (not self.types or event.type in self.types) and (
            self.channel is None or event.channel == self.channel
        )

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            while self._ready:
                event = self._ready.pop(0)
                if self._wants(event):
                    return event
            # Never touch the backend of a closed queue (that would open it again).
            if self._closed or self.queue._epoch != self._epoch:
                raise StopAsyncIteration
            if not await self._fill():
                raise StopAsyncIteration

    def _start(self, last: int) -> None:
        self.queue._streams.discard(self)
        self._ready = sorted((e for e in self._early or () if e.seq <= last), key=_seq)
        self._early = None
        self._cursor = last

    async def _fill(self) -> bool:
        """Read more; False once the queue is closing and everything stored was read."""
        backend = await self.queue._backend_ready()
        if self._cursor is None:  # errors here reach the caller: the stream never started
            self._start(await backend.event_since(self.queue.name, self._since))
            return True
        # Noted before the read: a close() that comes during it may follow a step
        # stored after the read began, which the next read will see.
        closing = self._closing.is_set()
        try:
            batch = await backend.event_read(self.queue.name, self._cursor, READ_BATCH)
        except Exception as exc:  # the store is unreachable: ride the outage out
            return not closing and await self._outage(exc)
        if batch:
            self._failures = 0
            self._cursor = batch[-1].seq
            self._ready = batch
            return True
        if closing:
            return False  # the queue is closing and this stream has read everything
        waits = [
            asyncio.ensure_future(backend.event_wait(self.queue.name, self._cursor, IDLE_WAIT)),
            asyncio.ensure_future(self._closing.wait()),
            asyncio.ensure_future(self._wake.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if waits[0].done() and not waits[0].cancelled():
            if waits[0].exception() is not None:
                return await self._outage(waits[0].exception())
            self._failures = 0  # a whole read-and-wait went well
        return True

    async def _outage(self, exc: BaseException | None) -> bool:
        """Log a failed read and pause (longer each time, up to OUTAGE_PAUSE_MAX seconds,
        less if the queue closes or the stream is closed); True: read again."""
        self._failures += 1
        pause = min(0.05 * 2**self._failures, OUTAGE_PAUSE_MAX)
        if self._failures == 1:
            logger.warning("reading events failed (%s); retrying", exc)
        waits = [asyncio.ensure_future(e.wait()) for e in (self._closing, self._wake)]
        try:
            await asyncio.wait(waits, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return True

    @property
    def cursor(self) -> int | None:
        """The ``seq`` of the last event read (None before the first read)."""
        return self._cursor

    async def aclose(self) -> None:
        """Stop: the iteration ends (at once, also when another task is waiting in it)."""
        self._closed = True
        self._wake.set()
        self.queue._streams.discard(self)

    async def __aenter__(self) -> EventStream:
        if self._cursor is None and self.queue._epoch == self._epoch:
            # Exact: everything committed after this point is read, whatever its time.
            backend = await self.queue._backend_ready()
            self._start(await backend.event_last(self.queue.name))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def dispatch(stream: AsyncIterator[Event], callback: Callable[[Event], Any]) -> None:
    """Call ``callback`` for each event, in order, on the loop (a plain function is
    called directly, an async one awaited); its errors are logged, never fatal."""
    async for event in stream:
        try:
            await call_maybe_async(callback, event, in_thread=False)
        except Exception:
            logger.exception("event callback %r failed on %s", callback, event)


def _seq(event: Event) -> int:
    return event.seq
