"""Pool.map and Pool.as_completed: streams of results built on handle callbacks."""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from hydrapool._handle import FAILED, SUCCEEDED, TaskHandle

if TYPE_CHECKING:
    from hydrapool.pool import Pool

T = TypeVar("T")


class _Signal:
    """Wake one waiting consumer; set() before wait() is remembered."""

    __slots__ = ("_fut", "_set")

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None
        self._set = False

    def set(self, _: object = None) -> None:
        self._set = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self) -> None:
        if not self._set:
            self._fut = asyncio.get_running_loop().create_future()
            try:
                await self._fut
            finally:
                self._fut = None
        self._set = False


class _Source:
    """One item at a time from a sync or async iterable; ``END`` when exhausted."""

    END = object()

    def __init__(self, iterable: Iterable[Any] | AsyncIterable[Any]) -> None:
        if isinstance(iterable, AsyncIterable):
            self._ait: AsyncIterator[Any] | None = aiter(iterable)
            self._it = None
        elif isinstance(iterable, Iterable):
            self._it = iter(iterable)
            self._ait = None
        else:
            raise TypeError(f"map needs an iterable or async iterable, got {iterable!r}")

    async def next(self) -> Any:
        if self._it is not None:
            return next(self._it, self.END)
        assert self._ait is not None
        try:
            return await anext(self._ait)
        except StopAsyncIteration:
            return self.END


def _outcome(handle: TaskHandle[Any], return_exceptions: bool) -> Any:
    if handle._state is SUCCEEDED:
        return handle._outcome
    if return_exceptions:
        return handle._outcome if handle._state is FAILED else asyncio.CancelledError()
    return handle.result()  # raises the failure (or CancelledError)


class PoolMap(Generic[T]):
    """The result of ``pool.map()``: async-iterate it, or await it for a list."""

    def __init__(
        self,
        pool: Pool,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        ordered: bool,
        priority: float,
        window: int,
        return_exceptions: bool,
    ) -> None:
        self._pool = pool
        self._fn = fn
        self._source = _Source(iterable)
        self._ordered = ordered
        self._priority = priority
        self._window = window
        self._return_exceptions = return_exceptions
        self._started = False
        self._exhausted = False
        # Refill in batches: one call per quarter window, not one per item.
        self._batch = max(1, window // 4)

    def __aiter__(self) -> AsyncIterator[T]:
        if self._started:
            raise RuntimeError("a pool.map() result can be iterated only once")
        self._started = True
        return self._run_ordered() if self._ordered else self._run_unordered()

    def __await__(self) -> Generator[Any, None, list[T]]:
        return self._collect().__await__()

    async def _collect(self) -> list[T]:
        return [result async for result in self]

    async def _submit(self) -> TaskHandle[Any] | None:
        item = await self._source.next()
        if item is _Source.END:
            return None
        return await self._pool.put(self._fn, item, priority=self._priority)

    async def _refill(self, count: int, keep: Callable[[TaskHandle[Any]], None]) -> int:
        """Add up to ``count`` items, handing each handle to ``keep`` as soon as it exists.

        Returns how many were added (fewer: the iterable is exhausted). Each
        handle is kept at once, so if the source raises or we are cancelled
        part-way, the tasks already added are still cancelled with the map.
        """
        added = 0
        it = self._source._it
        if it is not None and self._pool._max_pending is None:
            # The common case needs no coroutine per item.
            add, fn, priority = self._pool.add, self._fn, self._priority
            for item in itertools.islice(it, count):
                keep(add(fn, item, priority=priority))
                added += 1
            return added
        while added < count:
            handle = await self._submit()
            if handle is None:
                break
            keep(handle)
            added += 1
        return added

    async def _top_up(self, in_flight: int, keep: Callable[[TaskHandle[Any]], None]) -> None:
        """Bring the tasks in flight back up to ``window``."""
        want = self._window - in_flight
        if self._exhausted or (want < self._batch and in_flight):
            return
        self._exhausted = await self._refill(want, keep) < want

    async def _run_ordered(self) -> AsyncIterator[T]:
        inflight: deque[TaskHandle[Any]] = deque()
        try:
            while True:
                await self._top_up(len(inflight), inflight.append)
                if not inflight:
                    return
                head = inflight[0]
                if not head.done():
                    await _ended(head)
                inflight.popleft()
                yield _outcome(head, self._return_exceptions)
        finally:
            for handle in inflight:
                handle.cancel()

    async def _run_unordered(self) -> AsyncIterator[T]:
        finished: deque[TaskHandle[Any]] = deque()
        signal = _Signal()

        def on_end(handle: TaskHandle[Any]) -> None:
            finished.append(handle)
            signal.set()

        inflight: set[TaskHandle[Any]] = set()

        def keep(handle: TaskHandle[Any]) -> None:
            inflight.add(handle)
            handle._add_callback(on_end)

        try:
            while True:
                await self._top_up(len(inflight), keep)
                if not inflight:
                    return
                while not finished:
                    await signal.wait()
                done = finished.popleft()
                inflight.discard(done)
                yield _outcome(done, self._return_exceptions)
        finally:
            for handle in inflight:
                handle.cancel()


async def _ended(handle: TaskHandle[Any]) -> None:
    """Wait for ``handle`` to end without raising its outcome.

    Waiting on a private future means a CancelledError here is always ours
    (the consumer was cancelled), never the task's.
    """
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(_: TaskHandle[Any]) -> None:
        if not fut.done():
            fut.set_result(None)

    handle._add_callback(wake)
    await fut


class CompletedStream:
    """Handles as they end: the given ones, or every one of the pool until it is idle.

    Registration happens when the stream is created (not when iteration
    starts), so no task that ends in between is missed.
    """

    def __init__(self, pool: Pool, handles: Iterable[TaskHandle[Any]] | None) -> None:
        self._finished: deque[TaskHandle[Any] | None] = deque()
        self._signal = _Signal()
        self._left: int | None = None  # handles still expected; None: until the pool is idle
        if handles is not None:
            unique = list(dict.fromkeys(handles))  # keeps the caller's order
            self._left = len(unique)
            for handle in unique:
                handle._add_callback(self._on_end)
        elif pool._unfinished:
            pool._listeners.append(weakref.WeakMethod(self._on_end))
        else:
            self._left = 0

    def _on_end(self, handle: TaskHandle[Any] | None) -> None:
        self._finished.append(handle)
        self._signal.set()

    def __aiter__(self) -> CompletedStream:
        return self

    async def __anext__(self) -> TaskHandle[Any]:
        if self._left == 0:
            raise StopAsyncIteration
        while not self._finished:
            await self._signal.wait()
        handle = self._finished.popleft()
        if handle is None:  # the pool went idle
            self._left = 0
            raise StopAsyncIteration
        if self._left is not None:
            self._left -= 1
        return handle
