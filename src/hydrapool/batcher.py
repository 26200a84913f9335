"""Batcher: collect pushed items and hand them over in batches.

A batch is handed to ``handle_batch(items)`` when it holds ``limit`` items or
``timeout`` seconds after its first item arrived, whichever comes first, or
when ``flush()`` asks. Batches are handled one at a time, in the order they
were cut, so items keep their order across batches::

    async with hp.Batcher(write_rows, limit=500, timeout=2.0) as batcher:
        for row in rows:
            batcher.push(row)
    # leaving the block flushed and handled everything

A failing batch is retried per ``retry``; once it has no attempt left it goes
to ``on_error(error, items)`` or, without that hook, to ``batcher.failed``.
No item is ever dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from hydrapool._callables import call_maybe_async
from hydrapool.exceptions import Closed
from hydrapool.retry import Retry

__all__ = ["Batcher", "BatcherStatistics", "FailedBatch"]

T = TypeVar("T")
logger = logging.getLogger("hydrapool.batcher")


@dataclass(frozen=True, slots=True)
class FailedBatch(Generic[T]):
    """A batch whose every attempt failed, kept when there is no ``on_error`` hook."""

    items: list[T]
    error: BaseException


@dataclass(frozen=True, slots=True)
class BatcherStatistics:
    """A snapshot of a Batcher's counters."""

    pending_items: int  # pushed, not yet handed to handle_batch
    batches: int  # handled successfully
    items: int  # in those batches
    failed_batches: int
    retries: int


def _positive(name: str, value: object, *, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


class Batcher(Generic[T]):
    """Hand pushed items to ``handle_batch`` in batches of up to ``limit``.

    Args:
        handle_batch: ``async def`` or plain function taking a list of items
            (a plain one runs in a thread).
        limit: the batch size that triggers a hand-over (>= 1).
        timeout: seconds after a batch's first item when it is handed over
            even if not full; None waits for ``limit`` or ``flush()``.
        reverse: hand each batch over newest item first (LIFO).
        retry: an ``hp.Retry`` for failing batches (default: one try).
        on_error: ``on_error(error, items)`` for a batch that failed for good.
        idle_after, on_idle: call ``on_idle()`` once nothing was pushed for
            ``idle_after`` seconds and no item is waiting or being handled
            (a partial batch with no ``timeout`` waits for ``flush()``, so it
            keeps the batcher from being idle).
        name: register the batcher so ``Batcher.named(name)`` finds it.
    """

    _registry: ClassVar[weakref.WeakValueDictionary[str, Batcher[Any]]] = (
        weakref.WeakValueDictionary()
    )

    def __init__(
        self,
        handle_batch: Callable[[list[T]], Any],
        *,
        limit: int = 100,
        timeout: float | None = None,
        reverse: bool = False,
        retry: Retry | None = None,
        on_error: Callable[[BaseException, list[T]], Any] | None = None,
        idle_after: float | None = None,
        on_idle: Callable[[], Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(handle_batch):
            raise TypeError(f"handle_batch must be callable, got {handle_batch!r}")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"Batcher limit must be an int, got {limit!r}")
        if limit < 1:
            raise ValueError(f"Batcher limit must be >= 1, got {limit!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be an hp.Retry or None, got {retry!r}")
        for hook_name, hook in (("on_error", on_error), ("on_idle", on_idle)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{hook_name} must be callable, got {hook!r}")
        self._handle_batch = handle_batch
        self.limit = limit
        self.timeout = _positive("Batcher timeout", timeout, allow_none=True)
        self.idle_after = _positive("Batcher idle_after", idle_after, allow_none=True)
        self.reverse = bool(reverse)
        self._retry = retry
        self._on_error = on_error
        self._on_idle = on_idle
        self.name = name
        self._open: list[T] = []
        self._ready: deque[tuple[int, list[T]]] = deque()
        self._cut = 0  # batches cut so far
        self._handled = 0  # batches handled (or given up) so far
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_deadline = 0.0
        self._closed = False
        self.failed: list[FailedBatch[T]] = []
        self._stats = {"batches": 0, "items": 0, "failed": 0, "retries": 0}
        if name is not None:
            if name in Batcher._registry:
                raise ValueError(f"a Batcher named {name!r} already exists")
            Batcher._registry[name] = self

    @classmethod
    def named(cls, name: str) -> Batcher[Any]:
        """The live Batcher registered under ``name``."""
        try:
            return cls._registry[name]
        except KeyError:
            raise KeyError(f"no Batcher named {name!r}") from None

    # ── pushing ────────────────────────────────────────────────────────────
    def push(self, item: T) -> None:
        """Add one item; a full batch is handed over at once (in the background)."""
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        batch = self._open
        batch.append(item)
        if len(batch) >= self.limit:
            self._open = []
            self._cut_batch(batch)
        elif len(batch) == 1 and self.timeout is not None:
            self._timer = loop.call_later(self.timeout, self._on_timeout)
        if self.idle_after is not None:
            self._restart_idle_timer(loop)

    def push_many(self, items: Iterable[T]) -> None:
        """Add items in order; every full batch among them is handed over."""
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        items = list(items)  # an iterable that raises part-way adds nothing
        was_empty = not self._open
        self._open.extend(items)
        while len(self._open) >= self.limit:
            batch, self._open = self._open[: self.limit], self._open[self.limit :]
            self._cut_batch(batch)
        if self._open and (was_empty or self._timer is None) and self.timeout is not None:
            self._timer = loop.call_later(self.timeout, self._on_timeout)
        self._restart_idle_timer(loop)

    def _closed_error(self) -> Closed:
        label = f" {self.name!r}" if self.name else ""
        return Closed(f"Batcher{label} is closed: push() takes no item")

    def _cut_batch(self, batch: list[T]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._cut += 1
        self._ready.append((self._cut, batch))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def _on_timeout(self) -> None:
        self._timer = None
        if self._open:
            batch, self._open = self._open, []
            self._cut_batch(batch)

    # ── handling ───────────────────────────────────────────────────────────
    async def _work(self) -> None:
        while self._ready:
            seq, batch = self._ready.popleft()
            try:
                await self._handle(batch[::-1] if self.reverse else batch)
            finally:
                self._handled = seq
                self._wake_flushes()
        self._restart_idle_timer(asyncio.get_running_loop())

    async def _handle(self, items: list[T]) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await call_maybe_async(self._handle_batch, items)
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
                    raise  # the loop is shutting down, not a failed batch
                if self._retry is not None and self._retry.should_retry(exc, attempt):
                    self._stats["retries"] += 1
                    await asyncio.sleep(self._retry.delay(attempt))
                    continue
                await self._give_up(items, exc)
                return
            self._stats["batches"] += 1
            self._stats["items"] += len(items)
            return

    async def _give_up(self, items: list[T], exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            exc = RuntimeError("handle_batch raised CancelledError")
        self._stats["failed"] += 1
        if self._on_error is None:
            logger.error("batch of %d items failed for good", len(items), exc_info=exc)
            self.failed.append(FailedBatch(items, exc))
            return
        try:
            await call_maybe_async(self._on_error, exc, items, in_thread=False)
        except Exception:
            logger.exception("on_error hook raised; the batch is kept in Batcher.failed")
            self.failed.append(FailedBatch(items, exc))

    def _wake_flushes(self) -> None:
        waiting = []
        for target, fut in self._flushes:
            if self._handled >= target:
                if not fut.done():
                    fut.set_result(None)
            else:
                waiting.append((target, fut))
        self._flushes = waiting

    # ── idleness ───────────────────────────────────────────────────────────
    def _restart_idle_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.idle_after is None or self._on_idle is None:
            return
        # Re-arming a timer on every push is costly: move the deadline lazily instead.
        self._idle_deadline = loop.time() + self.idle_after
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(self._idle_deadline, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        self._idle_timer = None
        loop = asyncio.get_running_loop()
        if loop.time() < self._idle_deadline:  # pushed since: wait out the rest
            self._idle_timer = loop.call_at(self._idle_deadline, self._on_idle_timer)
            return
        if self._open or self._ready or (self._worker is not None and not self._worker.done()):
            return  # not idle: the next push or finished batch restarts the timer
        assert self._on_idle is not None
        task = asyncio.ensure_future(call_maybe_async(self._on_idle, in_thread=False))
        task.add_done_callback(_log_hook_failure)

    # ── flushing and closing ───────────────────────────────────────────────
    async def flush(self) -> None:
        """Hand over the open batch and return once every batch so far was handled."""
        if self._open:
            batch, self._open = self._open, []
            self._cut_batch(batch)
        if self._handled >= self._cut:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append((self._cut, fut))
        await fut

    async def close(self) -> None:
        """Take no more items (``push`` raises ``hp.Closed``), then flush."""
        self._closed = True  # first: an item pushed while we flush would be stranded
        await self.flush()
        for timer in (self._timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._idle_timer = None
        if self.name is not None and Batcher._registry.get(self.name) is self:
            del Batcher._registry[self.name]

    async def __aenter__(self) -> Batcher[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def statistics(self) -> BatcherStatistics:
        """A frozen snapshot of the counters."""
        pending = len(self._open) + sum(len(b) for _, b in self._ready)
        return BatcherStatistics(
            pending_items=pending,
            batches=self._stats["batches"],
            items=self._stats["items"],
            failed_batches=self._stats["failed"],
            retries=self._stats["retries"],
        )

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<Batcher{label} limit={self.limit} pending={len(self._open)}>"


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _log_hook_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("on_idle hook raised", exc_info=task.exception())
