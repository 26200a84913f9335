"""Pool: a concurrency-limited asyncio task pool.

At most ``concurrency`` tasks run at once; the rest wait in a backlog ordered
by priority, then arrival. A waiting task is a small handle object, not an
asyncio Task: the Task is created only when a slot is free, so a million
waiting tasks cost a few hundred bytes each. Everything is driven by events:
a finishing task starts the next one itself, timers wake the pool for
back-off, rate limits and ``RetryAfter`` pauses, and nothing ever polls.

    async with hp.Pool(concurrency=10) as pool:
        handles = [pool.add(fetch, url) for url in urls]
        pages = [await h for h in handles]
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import math
import time
import types
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from hydrapool._callables import is_async_callable
from hydrapool._handle import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    WAITING,
    TaskHandle,
    TaskState,
)
from hydrapool._mapping import CompletedStream, PoolMap
from hydrapool._pending import Backlog
from hydrapool.exceptions import PoolClosed, PoolFull, RetryAfter
from hydrapool.ratelimit import RateLimit, SlidingWindow
from hydrapool.retry import Retry

__all__ = ["DrainResult", "Pool", "PoolStatistics"]

T = TypeVar("T")
logger = logging.getLogger("hydrapool.pool")

_CO_COROUTINE = inspect.CO_COROUTINE
_FunctionType = types.FunctionType
_copy_context = contextvars.copy_context
_get_running_loop = asyncio.get_running_loop


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a Pool's counters (``pool.statistics()``).

    ``completed``, ``failed`` and ``cancelled`` count tasks that ended that
    way; ``retried`` counts retries scheduled after a failed try and
    ``throttled`` counts reruns asked for with ``RetryAfter``.
    """

    concurrency: int
    running: int
    pending: int
    waiting: int
    completed: int
    failed: int
    cancelled: int
    retried: int
    throttled: int
    paused: bool
    closed: bool


@dataclass(frozen=True, slots=True)
class DrainResult:
    """What ``drain()`` returns: counts at the moment it returned.

    ``superseded`` is True when a later ``drain()`` call took over the wait
    (the pool may still be busy); False when the pool was idle.
    """

    completed: int
    failed: int
    cancelled: int
    running: int
    pending: int
    waiting: int
    superseded: bool


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop closed while the thread was still busy
        pass


def _cancelled_from_outside(exc: BaseException, handle: TaskHandle[Any]) -> bool:
    """Was the pool's own task cancelled by someone other than the handle?

    A task may raise CancelledError itself (say, by awaiting a cancelled
    future); only a cancellation aimed at the pool's task counts.
    """
    if not isinstance(exc, asyncio.CancelledError) or handle._cancel_requested:
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _check_callable(fn: object) -> None:
    if callable(fn):
        return
    if inspect.iscoroutine(fn):
        fn.close()  # it can never run now; closing it spares the "never awaited" warning
        raise TypeError(
            f"Pool takes a function and its arguments, got a coroutine object {fn!r}: "
            "write pool.add(fetch, url), not pool.add(fetch(url))"
        )
    raise TypeError(f"task must be callable, got {fn!r} of type {type(fn).__name__}")


def _check_priority(priority: object) -> float:
    if type(priority) is int:
        return priority
    if isinstance(priority, bool) or not isinstance(priority, (int, float)):
        raise TypeError(f"priority must be a number, got {priority!r}")
    if not math.isfinite(priority):
        raise ValueError(f"priority must be a finite number, got {priority!r}")
    return priority


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


class Pool:
    """Run async (or blocking) callables with at most ``concurrency`` at a time.

    Args:
        concurrency: how many tasks may run at once (>= 1).
        retry: an ``hp.Retry`` applied to every task (default: one try).
        rate: an ``hp.RateLimit``: at most n task starts in any window of ``per`` seconds.
        max_pending: how many tasks may wait for a slot; beyond it ``add``
            raises ``hp.PoolFull`` and ``await put()`` waits. None: no bound.
        timeout: seconds one try may take before it fails with ``TimeoutError``.
        on_error: called as ``on_error(exc, handle)`` when a task has failed for good.
        fail_fast: on the first failure cancel every other task, close the
            pool, and raise that failure from ``join``/``drain``/``done``.

    The pool binds to the event loop that first uses it; it may be created
    outside any loop (a module-level singleton), and moves to another loop
    only while idle.

    A blocking callable that timed out or was cancelled cannot be stopped:
    its slot is freed at once, while its thread runs on until the call
    returns (the pool adds a thread so such calls never starve new ones).
    ``pool.errors`` keeps every failure until you clear it (``errors`` is a
    copy; use ``pool.clear_errors()``).
    """

    def __init__(
        self,
        concurrency: int = 4,
        *,
        retry: Retry | None = None,
        rate: RateLimit | None = None,
        max_pending: int | None = None,
        timeout: float | None = None,
        on_error: Callable[[BaseException, TaskHandle[Any]], object] | None = None,
        fail_fast: bool = False,
    ) -> None:
        self._concurrency = _check_count("concurrency", concurrency, 1)
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be an hp.Retry or None, got {retry!r}")
        if rate is not None and not isinstance(rate, RateLimit):
            raise TypeError(f"rate must be an hp.RateLimit or None, got {rate!r}")
        if max_pending is not None:
            _check_count("max_pending", max_pending, 0)
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be callable, got {on_error!r}")
        self._retry = retry
        self._rate = rate
        self._window = None if rate is None else SlidingWindow(rate)
        self._max_pending = max_pending
        self._timeout = _check_timeout(timeout)
        self._on_error = on_error
        self._fail_fast = bool(fail_fast)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog = Backlog()
        self._npending = 0  # live entries of the backlog
        self._dead = 0  # cancelled entries still in the backlog (dropped lazily)
        self._running = 0
        self._unfinished = 0  # added and not yet ended: pending + running + waiting
        self._active: set[TaskHandle[Any]] = set()  # running or waiting (strong refs)
        self._seq = 0
        self._closed = False
        self._paused = False
        self._hold_until = 0.0  # no start before this loop time (RetryAfter)
        self._gated = self._window is not None  # any reason a free slot may stay idle
        self._wake_timer: asyncio.TimerHandle | None = None
        self._fatal: BaseException | None = None
        self._errors: list[BaseException] = []
        self._succeeded = 0
        self._failed = 0
        self._cancelled = 0
        self._retried = 0
        self._throttled = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._joins: list[_Join] = []
        self._drain_fut: asyncio.Future[DrainResult] | None = None
        # as_completed() streams, held weakly so an abandoned stream is not kept alive
        self._listeners: list[weakref.WeakMethod[Callable[[TaskHandle[Any] | None], None]]] = []
        self._put_waiters: deque[asyncio.Future[None]] = deque()
        self._reserved = 0  # backlog places promised to woken put() callers
        self._executor: ThreadPoolExecutor | None = None
        self._executor_size = 0
        self._zombies = 0  # threads still busy with calls the pool gave up on
        self._hook_tasks: set[asyncio.Future[Any]] = set()  # async on_error calls in flight

    # ── configuration and state ────────────────────────────────────────────
    @property
    def concurrency(self) -> int:
        """How many tasks may run at once; assign to resize a live pool."""
        return self._concurrency

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        self._concurrency = _check_count("concurrency", value, 1)
        if self._loop is not None:
            self._fill()

    @property
    def closed(self) -> bool:
        """True once ``close()``/``done()`` ran: ``add`` raises ``hp.PoolClosed``."""
        return self._closed

    @property
    def paused(self) -> bool:
        """True between ``pause()`` and ``resume()``."""
        return self._paused

    @property
    def errors(self) -> list[BaseException]:
        """Every task failure so far, oldest first (a copy)."""
        return list(self._errors)

    def clear_errors(self) -> list[BaseException]:
        """Forget the recorded failures (a long-lived pool's memory); returns them."""
        errors, self._errors = self._errors, []
        return errors

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the counters."""
        waiting = self._unfinished - self._npending - self._running
        return PoolStatistics(
            concurrency=self._concurrency,
            running=self._running,
            pending=self._npending,
            waiting=waiting,
            completed=self._succeeded,
            failed=self._failed,
            cancelled=self._cancelled,
            retried=self._retried,
            throttled=self._throttled,
            paused=self._paused,
            closed=self._closed,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<Pool concurrency={s.concurrency} running={s.running} pending={s.pending}"
            f" completed={s.completed} failed={s.failed}{' closed' if s.closed else ''}>"
        )

    # ── adding tasks ───────────────────────────────────────────────────────
    @overload
    def add(
        self,
        fn: Callable[..., Coroutine[Any, Any, T]],
        /,
        *args: Any,
        priority: float = 0,
        **kwargs: Any,
    ) -> TaskHandle[T]: ...

    @overload
    def add(
        self, fn: Callable[..., T], /, *args: Any, priority: float = 0, **kwargs: Any
    ) -> TaskHandle[T]: ...

    def add(
        self, fn: Callable[..., Any], /, *args: Any, priority: float = 0, **kwargs: Any
    ) -> TaskHandle[Any]:
        """Add ``fn(*args, **kwargs)`` and return its handle at once.

        The task starts now if a slot is free, else waits in the backlog
        (higher ``priority`` first, then in order of adding). ``fn`` may be an
        ``async def`` function or a plain callable, which runs in a thread and
        holds a slot like any task. Anything the call raises, even at once,
        lands in the handle, never here. Raises ``hp.PoolClosed`` after
        ``close()``, ``hp.PoolFull`` when the backlog is at ``max_pending``,
        ``TypeError`` if ``fn`` is not callable (nothing is added then).
        """
        if self._closed:
            raise self._closed_error()
        if self._max_pending is not None and (self._put_waiters or not self._room()):
            raise PoolFull(
                f"the backlog holds max_pending={self._max_pending} tasks; "
                "await pool.put(...) to wait for room"
            )
        return self._add(fn, args, kwargs, priority)

    async def put(
        self, fn: Callable[..., Any], /, *args: Any, priority: float = 0, **kwargs: Any
    ) -> TaskHandle[Any]:
        """Like ``add``, but waits (first come, first served) while the backlog is full."""
        if self._closed:
            raise self._closed_error()
        if self._max_pending is not None and (self._put_waiters or not self._room()):
            await self._wait_for_room()
        return self._add(fn, args, kwargs, priority)

    def _add(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], priority: float
    ) -> TaskHandle[Any]:
        loop = self._loop
        try:
            running = _get_running_loop()
        except RuntimeError:
            raise RuntimeError("Pool.add() must be called from a running event loop") from None
        if running is not loop:
            self._bind(running)
        if not callable(fn):
            _check_callable(fn)
        if type(priority) is not int:
            priority = _check_priority(priority)
        self._seq += 1
        if type(fn) is _FunctionType and fn.__code__.co_flags & _CO_COROUTINE:
            sync = False
        else:
            sync = not is_async_callable(fn)
        handle: TaskHandle[Any] = TaskHandle(
            self, fn, args, kwargs or None, priority, self._seq, sync, _copy_context()
        )
        self._unfinished += 1
        if self._npending or self._gated or self._running >= self._concurrency:
            self._backlog.push(handle)
            self._npending += 1
            if self._gated:
                self._fill()
        else:
            self._start(handle)
        return handle

    def _room(self) -> bool:
        """May one more task be admitted without exceeding max_pending?

        Room = the backlog's free places plus the tasks that could start at
        once (free slots, as far as pause, RetryAfter and the rate let them).
        """
        assert self._max_pending is not None
        queued = self._npending + self._reserved
        if queued < self._max_pending:
            return True
        return queued < self._max_pending + self._startable_now()

    def _startable_now(self) -> int:
        free = self._concurrency - self._running
        if free <= 0 or not self._gated:
            return max(free, 0)
        loop = self._loop
        now = loop.time() if loop is not None else time.monotonic()
        delay = self._gate_delay(now)
        if delay > 0:
            if delay != math.inf and loop is not None and self._put_waiters:
                self._wake_at(now + delay)  # putters re-check when the gate opens
            return 0
        return free if self._window is None else min(free, self._window.available(now))

    async def _wait_for_room(self) -> None:
        loop = self._bind_current()
        first = True
        while not self._closed and ((first and bool(self._put_waiters)) or not self._room()):
            fut: asyncio.Future[None] = loop.create_future()
            if first:
                self._put_waiters.append(fut)
            else:
                self._put_waiters.appendleft(fut)  # woken once already: keep our turn
            first = False
            self._startable_now()  # a closed time gate schedules the wake-up
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._reserved -= 1
                    self._wake_putters()
                elif fut in self._put_waiters:
                    self._put_waiters.remove(fut)
                raise
            self._reserved -= 1
        if self._closed:
            raise self._closed_error()

    def _wake_putters(self) -> None:
        waiters = self._put_waiters
        while waiters and (self._closed or self._room()):
            fut = waiters.popleft()
            if not fut.done():
                self._reserved += 1
                fut.set_result(None)

    def _closed_error(self) -> PoolClosed:
        if self._fatal is not None:
            error = PoolClosed("the pool stopped after a task failed (fail_fast=True)")
            error.__cause__ = self._fatal
            return error
        return PoolClosed("the pool is closed: done() or close() was called; add() takes no task")

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None and self._unfinished:
            if not self._loop.is_closed():
                raise RuntimeError(
                    "this Pool has unfinished tasks on another event loop; "
                    "a pool moves to a new loop only while idle"
                )
            self._abandon()
        self._loop = loop
        self._wake_timer = None
        self._idle_waiters = []
        self._drain_fut = None
        self._put_waiters.clear()
        self._reserved = 0

    def _abandon(self) -> None:
        """Forget tasks stranded on a closed loop: they are cancelled, nobody can wake."""
        stranded = [h for h in self._backlog if h._state is PENDING] + list(self._active)
        for handle in stranded:
            handle._state = CANCELLED
            handle._listeners = None
        self._cancelled += len(stranded)
        self._backlog.clear()
        self._active.clear()
        self._npending = self._running = self._unfinished = 0
        self._joins.clear()
        self._listeners.clear()

    def _bind_current(self) -> asyncio.AbstractEventLoop:
        loop = _get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        return loop

    # ── running tasks ──────────────────────────────────────────────────────
    def _start(self, handle: TaskHandle[Any]) -> None:
        loop = self._loop
        assert loop is not None
        handle._state = RUNNING
        handle.attempts += 1
        handle.started_at = loop.time()
        self._running += 1
        self._active.add(handle)
        handle._runner = loop.create_task(self._run(handle), context=handle._ctx)

    def _thread_executor(self) -> ThreadPoolExecutor:
        """An executor with a thread for every slot, plus one per abandoned call.

        A blocking call that timed out or was cancelled keeps its thread until
        it returns; counting those threads keeps them from starving new calls.
        """
        needed = self._concurrency + self._zombies
        if self._executor is None or self._executor_size < needed:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            self._executor = ThreadPoolExecutor(needed, thread_name_prefix="hydrapool-pool")
            self._executor_size = needed
        return self._executor

    async def _call_in_thread(self, handle: TaskHandle[Any]) -> Any:
        ctx = _copy_context()
        future = self._thread_executor().submit(
            ctx.run, handle.fn, *handle.args, **(handle.kwargs or {})
        )
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():  # already running: its thread is busy until it returns
                self._zombies += 1
                loop = self._loop
                assert loop is not None
                future.add_done_callback(
                    lambda _: _call_soon_threadsafe(loop, self._zombie_returned)
                )
            raise
        if inspect.isawaitable(result):  # e.g. a lambda that returns a coroutine
            result = await result
        return result

    def _zombie_returned(self) -> None:
        self._zombies -= 1

    async def _run(self, handle: TaskHandle[Any]) -> None:
        try:
            if handle._cancel_requested:
                raise asyncio.CancelledError()
            if handle._sync:
                call = self._call_in_thread(handle)
            elif handle.kwargs is None:
                call = handle.fn(*handle.args)
            else:
                call = handle.fn(*handle.args, **handle.kwargs)
            if self._timeout is None:
                result = await call
            else:
                async with asyncio.timeout(self._timeout):
                    result = await call
        except BaseException as exc:  # everything lands in the handle
            self._running -= 1
            self._active.discard(handle)
            handle._runner = None
            external = _cancelled_from_outside(exc, handle)
            self._after_failure(handle, exc)
            # Cancelled from outside (the loop shutting down, most likely): start
            # nothing new on it; the next add() or ending task refills the slots.
            if not external:
                self._fill()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            self._running -= 1
            self._active.discard(handle)
            handle._runner = None
            handle._outcome = result
            self._succeeded += 1
            self._finish(handle, SUCCEEDED)
            if self._npending:
                self._fill()

    def _after_failure(self, handle: TaskHandle[Any], exc: BaseException) -> None:
        if handle._cancel_requested or isinstance(exc, asyncio.CancelledError):
            self._cancelled += 1
            self._finish(handle, CANCELLED)
        elif self._fatal is not None:
            self._fail(handle, exc)
        elif isinstance(exc, RetryAfter):
            self._throttle(handle, exc.seconds)
        elif self._retry is not None and self._retry.should_retry(exc, handle._spent()):
            self._schedule_retry(handle, self._retry.delay(handle._spent()))
        else:
            self._fail(handle, exc)

    def _throttle(self, handle: TaskHandle[Any], seconds: float) -> None:
        assert self._loop is not None
        self._throttled += 1
        handle._free_tries += 1
        until = self._loop.time() + seconds
        if until > self._hold_until:
            self._hold_until = until
            self._gated = True
        self._requeue(handle)

    def _schedule_retry(self, handle: TaskHandle[Any], delay: float) -> None:
        self._retried += 1
        if delay <= 0:
            self._requeue(handle)
            return
        assert self._loop is not None
        handle._state = WAITING
        self._active.add(handle)
        handle._runner = self._loop.call_later(delay, self._end_wait, handle)

    def _end_wait(self, handle: TaskHandle[Any]) -> None:
        handle._runner = None
        self._active.discard(handle)
        self._requeue(handle)
        self._fill()

    def _requeue(self, handle: TaskHandle[Any]) -> None:
        handle._state = PENDING
        self._backlog.push_front(handle)
        self._npending += 1

    def _fail(self, handle: TaskHandle[Any], exc: BaseException) -> None:
        handle._outcome = exc
        self._errors.append(exc)
        self._failed += 1
        self._finish(handle, FAILED)
        if self._on_error is not None:
            self._call_on_error(exc, handle)
        if self._fail_fast and self._fatal is None:
            self._fatal = exc
            self.close()
            self.cancel_all()

    def _call_on_error(self, exc: BaseException, handle: TaskHandle[Any]) -> None:
        assert self._on_error is not None
        try:
            outcome = self._on_error(exc, handle)
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                self._hook_tasks.add(task)
                task.add_done_callback(self._callback_done)
        except Exception:  # a broken hook must not take the pool down
            logger.exception("on_error hook raised for %r", handle)

    def _callback_done(self, task: asyncio.Future[Any]) -> None:
        self._hook_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("on_error hook raised", exc_info=task.exception())

    def _finish(self, handle: TaskHandle[Any], state: TaskState) -> None:
        """End a task: the one place a handle reaches SUCCEEDED, FAILED or CANCELLED."""
        assert self._loop is not None
        handle._state = state
        handle.finished_at = self._loop.time()
        handle._ctx = None
        self._unfinished -= 1
        if handle._listeners:
            handle._wake()
        if self._listeners:
            self._notify_listeners(handle)
        if self._joins:
            self._update_joins(handle)
        if self._put_waiters:
            self._wake_putters()
        if not self._unfinished:
            self._became_idle()

    def _notify_listeners(self, handle: TaskHandle[Any] | None) -> None:
        alive = []
        for ref in self._listeners:
            listener = ref()
            if listener is not None:
                listener(handle)
                alive.append(ref)
        self._listeners = alive

    def _update_joins(self, handle: TaskHandle[Any]) -> None:
        for join in self._joins:
            if handle._seq <= join.mark:
                join.remaining -= 1
                if join.remaining == 0 and not join.fut.done():
                    join.fut.set_result(None)

    def _became_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        drain = self._drain_fut
        if drain is not None and not drain.done():
            drain.set_result(self._snapshot(superseded=False))
        self._drain_fut = None
        if self._listeners:
            self._notify_listeners(None)  # streams over the whole pool end when it is idle
            self._listeners = []

    # ── the gate: pause, RetryAfter, rate limit ────────────────────────────
    def _fill(self) -> None:
        """Start waiting tasks while slots are free and the gate is open."""
        backlog = self._backlog
        while self._npending and self._running < self._concurrency:
            if self._gated and not self._gate_open():
                return
            handle = backlog.pop()
            assert handle is not None
            self._npending -= 1
            self._start(handle)
        if self._put_waiters:
            self._wake_putters()

    def _gate_delay(self, now: float) -> float:
        """Seconds until the gate lets a task start (0: now; inf: paused)."""
        if self._paused:
            return math.inf
        if self._hold_until:
            if now < self._hold_until:
                return self._hold_until - now
            self._hold_until = 0.0
            self._gated = self._window is not None
        return 0.0 if self._window is None else self._window.wait(now)

    def _gate_open(self) -> bool:
        """May a task start now? If not, make sure a timer wakes the pool when it may."""
        assert self._loop is not None
        now = self._loop.time()
        delay = self._gate_delay(now)
        if delay > 0:
            if delay != math.inf:
                self._wake_at(now + delay)
            return False
        if self._window is not None:
            self._window.take(now)
        return True

    def _wake_at(self, when: float) -> None:
        timer = self._wake_timer
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        assert self._loop is not None
        self._wake_timer = self._loop.call_at(when, self._on_wake)

    def _on_wake(self) -> None:
        self._wake_timer = None
        self._fill()

    def pause(self) -> None:
        """Start no new task until ``resume()``; running tasks go on."""
        self._paused = True
        self._gated = True

    def resume(self) -> None:
        """Undo ``pause()``: start waiting tasks again."""
        self._paused = False
        self._gated = self._window is not None or self._hold_until > 0
        if self._loop is not None:
            self._fill()

    # ── cancelling and closing ─────────────────────────────────────────────
    def _cancel_idle_handle(self, handle: TaskHandle[Any]) -> None:
        if handle._state is PENDING:
            self._npending -= 1
            self._dead += 1
            if self._dead > 64 and self._dead > self._npending:
                self._backlog.compact()
                self._dead = 0
        else:
            assert handle._runner is not None
            handle._runner.cancel()
            handle._runner = None
            self._active.discard(handle)
        self._cancelled += 1
        self._finish(handle, CANCELLED)

    def cancel_all(self) -> int:
        """Cancel every task that has not ended; returns how many were cancelled."""
        count = 0
        for handle in self._backlog:
            if handle._state is PENDING:
                handle.cancel()
                count += 1
        self._backlog.clear()
        self._dead = 0
        for handle in list(self._active):
            count += handle.cancel()
        return count

    def close(self) -> None:
        """Take no new tasks (``add`` raises ``hp.PoolClosed``); queued ones still run."""
        self._closed = True
        if self._put_waiters:
            self._wake_putters()

    # ── waiting ────────────────────────────────────────────────────────────
    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    async def _wait_idle(self) -> None:
        if self._unfinished:
            fut: asyncio.Future[None] = self._bind_current().create_future()
            self._idle_waiters.append(fut)
            await fut

    async def join(self) -> None:
        """Wait until every task added so far has ended (later ones are not waited for)."""
        if self._unfinished:
            fut: asyncio.Future[None] = self._bind_current().create_future()
            join = _Join(self._seq, self._unfinished, fut)
            self._joins.append(join)
            try:
                await fut
            finally:
                self._joins.remove(join)
        self._raise_fatal()

    async def drain(self) -> DrainResult:
        """Wait until the pool is idle, unless a later ``drain()`` takes over.

        Only the last caller waits for the end: an earlier drain returns as
        soon as a later one begins, with a snapshot (``superseded=True``).
        Tasks added during a drain are waited for too. The pool stays open.
        """
        previous = self._drain_fut
        if previous is not None and not previous.done():
            previous.set_result(self._snapshot(superseded=True))
        if self._unfinished:
            fut: asyncio.Future[DrainResult] = self._bind_current().create_future()
            self._drain_fut = fut
            try:
                result = await fut
            finally:
                if self._drain_fut is fut:
                    self._drain_fut = None
        else:
            result = self._snapshot(superseded=False)
        if not result.superseded:
            self._raise_fatal()
        return result

    async def done(self) -> PoolStatistics:
        """Close the pool and wait for every task (and on_error hook); returns the statistics."""
        self.close()
        await self._settle()
        self._raise_fatal()
        return self.statistics()

    async def _settle(self) -> None:
        await self._wait_idle()
        while self._hook_tasks:
            await asyncio.gather(*self._hook_tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _snapshot(self, *, superseded: bool) -> DrainResult:
        return DrainResult(
            completed=self._succeeded,
            failed=self._failed,
            cancelled=self._cancelled,
            running=self._running,
            pending=self._npending,
            waiting=self._unfinished - self._running - self._npending,
            superseded=superseded,
        )

    async def __aenter__(self) -> Pool:
        self._bind_current()
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                await self.done()
            except asyncio.CancelledError:
                # Cancelled while waiting (a timeout around the block, say):
                # like asyncio.TaskGroup, take the pool's tasks down with us.
                self.cancel_all()
                await self._wait_idle()
                raise
            return
        # The block failed: like asyncio.TaskGroup, cancel what is left, wait, re-raise.
        self.close()
        self.cancel_all()
        await self._settle()

    # ── streams of results ─────────────────────────────────────────────────
    def map(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        *,
        ordered: bool = True,
        priority: float = 0,
        window: int | None = None,
        return_exceptions: bool = False,
    ) -> PoolMap[Any]:
        """Run ``fn(item)`` for each item; iterate the results or await the list.

        ``async for result in pool.map(fn, items)`` yields results in input
        order (``ordered=False``: as they finish). The iterable, sync or async,
        is consumed lazily: at most ``window`` items (default 2 x concurrency)
        are in flight, so a generator of millions of items runs in constant
        memory. ``await pool.map(...)`` collects the list. A failure is raised
        at its place (``return_exceptions=True``: returned as a value), and
        the map's remaining tasks are cancelled.
        """
        _check_callable(fn)
        priority = _check_priority(priority)
        size = 2 * self._concurrency if window is None else _check_count("window", window, 1)
        return PoolMap(self, fn, iterable, ordered, priority, size, return_exceptions)

    def as_completed(
        self, handles: Iterable[TaskHandle[Any]] | None = None
    ) -> AsyncIterator[TaskHandle[Any]]:
        """Yield handles as their tasks end.

        With ``handles``: exactly those. Without: every task of the pool that
        ends from now on, including tasks added meanwhile, until the pool is idle.
        """
        return CompletedStream(self, handles)


@dataclass(slots=True)
class _Join:
    mark: int  # the last sequence number this join waits for
    remaining: int
    fut: asyncio.Future[None]
