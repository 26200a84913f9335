"""WorkerGroup: a fixed set of stateful workers, each with its own mailbox.

Each worker is an object made by ``worker_cls_or_factory()`` with:

- ``init(self) -> state`` (optional, sync or async): the worker's state;
- ``handle(self, msg, state) -> reply`` (required, sync or async);
- ``on_error(self, msg, attempt, error, state) -> decision`` (optional):
  ``hp.Decision.retry(state=...)``, ``hp.Decision.backoff(seconds)`` or
  ``hp.Decision.halt()``; returning None follows the group's ``retry`` policy
  (its ``backoff`` and ``retry_on``);
- ``terminate(self, state)`` (optional): called when the worker stops.

Messages are dispatched by ``mode``: ``round_robin``, ``random``,
``monotonic`` (the monotonic clock modulo the size, as Poolder does),
``key_hash`` (``key(msg)`` picks the worker, so one key is always handled by
one worker, in order) or ``broadcast`` (every worker gets every message).

    class Counter:
        def init(self):
            return {"n": 0}

        async def handle(self, msg, state):
            state["n"] += msg
            return state["n"]

    async with hp.WorkerGroup(Counter, size=4, mode="key_hash", key=lambda m: m) as group:
        await group.cast(1)
        total = await group.call(2, timeout=5)

A worker stops itself with ``hp.StopWorker`` and the group with
``hp.StopGroup`` (raised or returned by ``handle``). A worker that crashes
outside handled errors (``on_error`` raising) is restarted with fresh state
(``terminate`` is called on the old object first); restarts are counted in
``statistics()``. ``on_error`` decisions apply while the group's ``retry``
allows another attempt: its default of one try means no retry, so pass
``retry=hp.Retry(attempts=n)`` to let ``on_error`` retry up to n tries in all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal

from hydrapool._callables import call_maybe_async, is_async_callable
from hydrapool.exceptions import Closed, HydrapoolError
from hydrapool.retry import Retry

__all__ = [
    "Decision",
    "GroupStatistics",
    "Reply",
    "StopGroup",
    "StopWorker",
    "WorkerGroup",
]

logger = logging.getLogger("hydrapool.workers")

Mode = Literal["round_robin", "random", "monotonic", "key_hash", "broadcast"]
MODES: tuple[str, ...] = ("round_robin", "random", "monotonic", "key_hash", "broadcast")
_NOTHING: Any = object()


class StopWorker(HydrapoolError):
    """Returned (or raised) by ``handle``: this worker stops after this message.

    ``reply`` is what a ``call`` gets back. Messages still in the worker's
    mailbox go to the other workers; none is dropped.
    """

    def __init__(self, reply: object = None) -> None:
        self.reply = reply
        super().__init__("worker stopped itself")


class StopGroup(HydrapoolError):
    """Returned (or raised) by ``handle``: the group closes (queued messages still run)."""

    def __init__(self, reply: object = None) -> None:
        self.reply = reply
        super().__init__("worker stopped the group")


@dataclass(frozen=True, slots=True)
class Reply:
    """Returned by ``handle`` to reply ``value`` and replace the worker's state."""

    value: Any
    state: Any


_SPECIAL = (StopWorker, StopGroup, Reply, type)  # replies that need more than delivering


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``on_error`` wants done with a failed message."""

    action: Literal["retry", "backoff", "halt"]
    seconds: float = 0.0
    state: Any = _NOTHING

    @classmethod
    def retry(cls, state: Any = _NOTHING) -> Decision:
        """Try again now, with ``state`` as the new state if given."""
        return cls("retry", 0.0, state)

    @classmethod
    def backoff(cls, seconds: float) -> Decision:
        """Try again after ``seconds`` (the worker takes other messages meanwhile)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"Decision.backoff seconds must be a number, got {seconds!r}")
        if not 0 <= seconds < math.inf:
            raise ValueError(f"Decision.backoff seconds must be finite and >= 0, got {seconds!r}")
        return cls("backoff", float(seconds))

    @classmethod
    def halt(cls) -> Decision:
        """Give up on the message: a ``call`` gets the error."""
        return cls("halt")


@dataclass(frozen=True, slots=True)
class GroupStatistics:
    """A snapshot of a WorkerGroup's counters."""

    size: int
    alive: int
    queued: int
    handled: int
    failed: int
    retried: int
    restarts: int


@dataclass(slots=True, eq=False)
class _Envelope:
    msg: Any
    reply: asyncio.Future[Any] | None
    attempt: int = 1


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Crash(Exception):
    """A worker's own code failed outside handle(): restart it."""


def _no_handle(msg: Any, state: Any) -> Any:
    raise RuntimeError("worker not booted")


class _Worker:
    """One worker: its object, state, mailbox and task."""

    def __init__(self, group: WorkerGroup, index: int, mailbox_size: int) -> None:
        self.group = group
        self.index = index
        self.mailbox: asyncio.Queue[_Envelope] = asyncio.Queue(mailbox_size)
        self.obj: Any = None
        self.state: Any = None
        self.task: asyncio.Task[None] | None = None
        self.alive = False
        self.busy = False  # between taking a message and task_done()
        self.handle: Callable[[Any, Any], Any] = _no_handle
        self.handle_is_async = False

    async def boot(self) -> None:
        self.obj = self.group._factory()
        handle = getattr(self.obj, "handle", None)
        if not callable(handle):
            raise TypeError(f"worker object {self.obj!r} has no handle(msg, state) method")
        self.handle = handle
        self.handle_is_async = is_async_callable(handle)
        init = getattr(self.obj, "init", None)
        self.state = None if init is None else await call_maybe_async(init, in_thread=False)
        self.alive = True
        self.group._refresh_live()

    async def call_handle(self, msg: Any) -> Any:
        if self.handle_is_async:
            return await self.handle(msg, self.state)
        return await call_maybe_async(self.handle, msg, self.state)

    async def run(self) -> None:
        """Handle messages until StopWorker or cancellation (by close())."""
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise  # close() cancels an idle worker and calls finish() itself
        except BaseException:
            # KeyboardInterrupt and the like: the worker is gone; its mail is not.
            self.alive = False
            self.group._refresh_live()
            self.group._worker_ended(self)
            raise

    async def _loop(self) -> None:
        stop = False
        while not stop:
            envelope = await self.mailbox.get()
            self.busy = True
            try:
                if envelope.reply is None or not envelope.reply.done():
                    stop = await self.group._deliver(self, envelope)
            except _Crash:
                await self.group._restart(self)
                if not self.alive:  # the restart failed: this worker is gone
                    return
            finally:
                self.busy = False
                self.mailbox.task_done()
        await self.finish()

    async def finish(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.group._refresh_live()
        await self.terminate()
        self.group._worker_ended(self)

    async def terminate(self) -> None:
        """Call the object's terminate(state) hook, if any; its errors are logged."""
        terminate = getattr(self.obj, "terminate", None)
        if terminate is not None:
            try:
                await call_maybe_async(terminate, self.state, in_thread=False)
            except Exception:
                logger.exception("worker %d: terminate() raised", self.index)


class WorkerGroup:
    """A fixed pool of ``size`` stateful workers with a dispatch ``mode``.

    Args:
        worker_cls_or_factory: called with no arguments once per worker (and
            again on a restart) to make the worker object.
        size: how many workers (>= 1).
        mode: ``round_robin`` | ``random`` | ``monotonic`` | ``key_hash`` | ``broadcast``.
        key: for ``key_hash``: ``key(msg)`` -> a hashable key.
        retry: the default policy when ``on_error`` returns None (or is not
            defined): ``attempts`` counts every try, default 1.
        mailbox_size: messages one worker may hold before ``cast`` waits.
        on_ready: called (sync or async) with the group once every worker is up.
    """

    def __init__(
        self,
        worker_cls_or_factory: Callable[[], Any],
        size: int,
        mode: Mode = "round_robin",
        key: Callable[[Any], Hashable] | None = None,
        retry: Retry | None = None,
        *,
        mailbox_size: int = 100,
        on_ready: Callable[[WorkerGroup], Any] | None = None,
    ) -> None:
        if not callable(worker_cls_or_factory):
            raise TypeError(
                f"worker_cls_or_factory must be callable, got {worker_cls_or_factory!r}"
            )
        for name, value in (("size", size), ("mailbox_size", mailbox_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"WorkerGroup {name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"WorkerGroup {name} must be >= 1, got {value!r}")
        if mode not in MODES:
            raise ValueError(f"WorkerGroup mode must be one of {', '.join(MODES)}; got {mode!r}")
        if (mode == "key_hash") != (key is not None):
            raise ValueError("WorkerGroup key= is required with mode='key_hash' and only there")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be an hp.Retry or None, got {retry!r}")
        self._factory = worker_cls_or_factory
        self._size = size
        self.mode = mode
        self._key = key
        self._retry = retry if retry is not None else Retry()
        self._mailbox_size = mailbox_size
        self._on_ready = on_ready
        self._workers: list[_Worker] = []
        self._live: list[_Worker] = []  # the alive workers, kept current on start/stop
        self._next = -1
        self._started = False
        self._closed = False
        self._closing: asyncio.Task[None] | None = None
        self._later: set[asyncio.TimerHandle] = set()  # messages waiting out a back-off
        self._later_done = asyncio.Event()  # set whenever _later becomes empty
        self._sending = 0  # messages on their way into a mailbox (a put() waiting for room)
        self._sending_done = asyncio.Event()  # set whenever _sending drops to 0
        self._background: set[asyncio.Future[Any]] = set()
        self._stats = {"handled": 0, "failed": 0, "retried": 0, "restarts": 0}

    @property
    def size(self) -> int:
        """How many workers the group has."""
        return self._size

    # ── lifecycle ──────────────────────────────────────────────────────────
    async def start(self) -> None:
        """Make and start every worker, then fire ``on_ready``."""
        if self._started:
            return
        self._started = True
        self._workers = [_Worker(self, i, self._mailbox_size) for i in range(self._size)]
        booted = await asyncio.gather(
            *(self._boot(w) for w in self._workers), return_exceptions=True
        )
        failure = next((b for b in booted if isinstance(b, BaseException)), None)
        if failure is not None:
            for worker in self._workers:
                if worker.alive:
                    worker.alive = False
                    await worker.terminate()
            self._workers, self._started = [], False
            self._refresh_live()
            raise failure
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            worker.task = loop.create_task(worker.run())
        if self._on_ready is not None:
            await call_maybe_async(self._on_ready, self, in_thread=False)

    async def _boot(self, worker: _Worker, attempts: int = 5) -> None:
        for attempt in range(1, attempts + 1):
            try:
                await worker.boot()
                return
            except Exception:
                logger.exception("worker %d: init failed (try %d)", worker.index, attempt)
                await asyncio.sleep(min(1.0, 0.01 * 2**attempt))
        raise RuntimeError(f"worker {worker.index} failed to start {attempts} times")

    async def close(self) -> None:
        """Take no new messages, let every queued one run, then stop the workers."""
        self._closed = True
        if not self._started:
            return
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._shut_down())
        await asyncio.shield(self._closing)

    async def _shut_down(self) -> None:
        await self._quiesce()
        current = asyncio.current_task()
        for worker in self._workers:
            if worker.task is not None and worker.task is not current and not worker.task.done():
                worker.task.cancel()
        await asyncio.gather(
            *(w.task for w in self._workers if w.task is not None and w.task is not current),
            return_exceptions=True,
        )
        for worker in self._workers:
            await worker.finish()

    async def _quiesce(self) -> None:
        """Wait until no message is queued, being handled, backing off or on its way."""
        while True:  # each of these can hand work to another
            await asyncio.gather(*(w.mailbox.join() for w in self._live))
            if self._later:
                self._later_done.clear()
                await self._later_done.wait()
            elif self._sending:
                self._sending_done.clear()
                await self._sending_done.wait()
            elif not any(w.mailbox.qsize() or w.busy for w in self._live):
                # Queue.join() can return although a put in the same loop turn
                # refilled the mailbox, hence the double check.
                return

    async def __aenter__(self) -> WorkerGroup:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ── sending ────────────────────────────────────────────────────────────
    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the WorkerGroup is closed: it takes no new message")
        if not self._started:
            raise RuntimeError("start the WorkerGroup first (async with, or await group.start())")

    def _refresh_live(self) -> None:
        self._live = [w for w in self._workers if w.alive]

    def _alive(self) -> list[_Worker]:
        if not self._live:
            raise Closed("every worker of the group has stopped")
        return self._live

    def _pick(self, msg: Any) -> _Worker:
        alive = self._alive()
        if self.mode == "round_robin":
            self._next += 1
            return alive[self._next % len(alive)]
        if self.mode == "random":
            return random.choice(alive)
        if self.mode == "monotonic":
            return alive[time.monotonic_ns() % len(alive)]
        assert self._key is not None
        return alive[hash(self._key(msg)) % len(alive)]

    async def cast(self, msg: Any) -> None:
        """Send ``msg`` without waiting for the answer (waits only while the mailbox is full)."""
        self._check_open()
        targets = list(self._alive()) if self.mode == "broadcast" else [self._pick(msg)]
        for worker in targets:
            await self._send(worker, _Envelope(msg, None))

    async def cast_to(self, index: int, msg: Any) -> None:
        """Send ``msg`` to worker number ``index`` (0-based)."""
        self._check_open()
        await self._send(self._worker_at(index), _Envelope(msg, None))

    async def call(self, msg: Any, timeout: float | None = None) -> Any:
        """Send ``msg`` and return the reply; the handler's final error is raised here.

        With ``mode="broadcast"`` every live worker answers and the list of
        replies (by worker index) is returned. ``timeout`` raises
        ``TimeoutError``; a message that has not started by then is skipped.
        """
        self._check_open()
        if self.mode == "broadcast":
            calls = [self._ask(w, msg) for w in self._alive()]
            return await asyncio.wait_for(asyncio.gather(*calls), timeout)
        return await asyncio.wait_for(self._ask(self._pick(msg), msg), timeout)

    async def call_to(self, index: int, msg: Any, timeout: float | None = None) -> Any:
        """``call`` worker number ``index`` (0-based)."""
        self._check_open()
        return await asyncio.wait_for(self._ask(self._worker_at(index), msg), timeout)

    async def _ask(self, worker: _Worker, msg: Any) -> Any:
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._send(worker, _Envelope(msg, reply))
        return await reply

    def _worker_at(self, index: int) -> _Worker:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self._size:
            raise IndexError(f"worker index must be an int in 0..{self._size - 1}, got {index!r}")
        worker = self._workers[index]
        if not worker.alive:
            raise Closed(f"worker {index} has stopped")
        return worker

    async def _send(self, worker: _Worker, envelope: _Envelope, *, counted: bool = False) -> None:
        """Put into a mailbox, waiting for room; counted so close() waits for it."""
        if not counted:
            self._sending += 1
        try:
            await worker.mailbox.put(envelope)
        finally:
            self._sending -= 1
            if not self._sending:
                self._sending_done.set()
        if not worker.alive:  # it stopped while we waited for room: pass the mail on
            self._worker_ended(worker)

    def _post(self, worker: _Worker, envelope: _Envelope) -> None:
        """Queue without waiting (internal re-deliveries must never block a worker)."""
        if not worker.mailbox.full():
            worker.mailbox.put_nowait(envelope)
            return
        self._sending += 1  # now, not when the task starts: close() must see it
        task = asyncio.ensure_future(self._send(worker, envelope, counted=True))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ── handling ───────────────────────────────────────────────────────────
    async def _deliver(self, worker: _Worker, envelope: _Envelope) -> bool:
        """Handle one message (with immediate retries); True if the worker must stop."""
        while True:
            try:
                outcome = await worker.call_handle(envelope.msg)
            except (StopWorker, StopGroup) as signal:
                outcome = signal
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
                    raise  # close() or loop shutdown, not the handler's own doing
                again = await self._after_error(worker, envelope, exc)
                if again is None:
                    return False
                envelope = again
                continue
            self._stats["handled"] += 1
            return self._settle(worker, envelope, outcome)

    def _settle(self, worker: _Worker, envelope: _Envelope, outcome: Any) -> bool:
        if not isinstance(outcome, _SPECIAL):  # the usual case: a plain reply
            if envelope.reply is not None and not envelope.reply.done():
                envelope.reply.set_result(outcome)
            return False
        if isinstance(outcome, type) and issubclass(outcome, (StopWorker, StopGroup)):
            outcome = outcome()
        stop = False
        if isinstance(outcome, StopWorker):
            outcome, stop = outcome.reply, True
        elif isinstance(outcome, StopGroup):
            outcome = outcome.reply
            self._closed = True
            self._closing = asyncio.get_running_loop().create_task(self._shut_down())
        elif isinstance(outcome, Reply):
            worker.state, outcome = outcome.state, outcome.value
        if envelope.reply is not None and not envelope.reply.done():
            envelope.reply.set_result(outcome)
        return stop

    async def _after_error(
        self, worker: _Worker, envelope: _Envelope, exc: BaseException
    ) -> _Envelope | None:
        """Apply the error decision; returns the envelope to retry at once, if any."""
        decision = await self._decide(worker, envelope, exc)
        if decision.action == "halt" or envelope.attempt >= self._retry.attempts:
            self._give_up(worker, envelope, exc)
            return None
        self._stats["retried"] += 1
        if decision.state is not _NOTHING:
            worker.state = decision.state
        again = _Envelope(envelope.msg, envelope.reply, envelope.attempt + 1)
        if decision.action == "backoff" and decision.seconds > 0:
            self._redeliver_later(worker, again, decision.seconds)
            return None
        return again

    def _give_up(self, worker: _Worker, envelope: _Envelope, exc: BaseException) -> None:
        self._stats["failed"] += 1
        if envelope.reply is not None:
            if envelope.reply.done():
                return
            if isinstance(exc, asyncio.CancelledError):
                envelope.reply.cancel()  # the handler cancelled itself: so does the call
            else:
                envelope.reply.set_exception(exc)
            return
        logger.error(
            "worker %d: message %r failed for good", worker.index, envelope.msg, exc_info=exc
        )

    async def _decide(self, worker: _Worker, envelope: _Envelope, exc: BaseException) -> Decision:
        on_error = getattr(worker.obj, "on_error", None)
        if on_error is None:
            return self._default_decision(envelope.attempt, exc)
        try:
            decision = await call_maybe_async(
                on_error, envelope.msg, envelope.attempt, exc, worker.state, in_thread=False
            )
            return self._as_decision(decision, envelope.attempt, exc)
        except Exception as crash:
            self._give_up(worker, envelope, exc)
            raise _Crash() from crash

    def _as_decision(self, decision: object, attempt: int, exc: BaseException) -> Decision:
        if decision is None:
            return self._default_decision(attempt, exc)
        if decision == "retry" or decision == "halt":
            return Decision(decision)
        if not isinstance(decision, Decision):
            raise TypeError(
                f"on_error must return an hp.Decision, 'retry', 'halt' or None; got {decision!r}"
            )
        return decision

    def _default_decision(self, attempt: int, exc: BaseException) -> Decision:
        if not self._retry.should_retry(exc, attempt):
            return Decision.halt()
        delay = self._retry.delay(attempt)
        return Decision.backoff(delay) if delay > 0 else Decision.retry()

    def _redeliver_later(self, worker: _Worker, envelope: _Envelope, seconds: float) -> None:
        def redeliver() -> None:
            self._later.discard(timer)
            if not self._later:
                self._later_done.set()
            alive = [w for w in self._workers if w.alive]
            if worker.alive:
                self._post(worker, envelope)
            elif alive:
                self._post(alive[0], envelope)
            elif envelope.reply is not None and not envelope.reply.done():
                envelope.reply.set_exception(Closed("every worker of the group has stopped"))

        timer = asyncio.get_running_loop().call_later(seconds, redeliver)
        self._later.add(timer)

    async def _restart(self, worker: _Worker) -> None:
        self._stats["restarts"] += 1
        logger.error("worker %d crashed; restarting it with fresh state", worker.index)
        await worker.terminate()
        try:
            await worker.boot()
        except Exception:
            logger.exception("worker %d: restart failed; it stays down", worker.index)
            worker.alive = False
            self._refresh_live()
            self._worker_ended(worker)

    def _worker_ended(self, worker: _Worker) -> None:
        """Hand a stopped worker's queued messages to the others (or fail them if none is left)."""
        alive = self._live
        while not worker.mailbox.empty():
            envelope = worker.mailbox.get_nowait()
            worker.mailbox.task_done()
            if alive:
                # Same routing as a new message: one key keeps going to one worker.
                target = alive[0] if self.mode == "broadcast" else self._pick(envelope.msg)
                self._post(target, envelope)
            elif envelope.reply is not None and not envelope.reply.done():
                envelope.reply.set_exception(Closed("every worker of the group has stopped"))
            else:
                logger.error("worker group stopped with message %r unhandled", envelope.msg)
        if not alive:
            self._closed = True

    def statistics(self) -> GroupStatistics:
        """A frozen snapshot of the counters."""
        return GroupStatistics(
            size=self._size,
            alive=sum(w.alive for w in self._workers),
            queued=sum(w.mailbox.qsize() for w in self._workers),
            handled=self._stats["handled"],
            failed=self._stats["failed"],
            retried=self._stats["retried"],
            restarts=self._stats["restarts"],
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<WorkerGroup size={s.size} mode={self.mode} alive={s.alive} queued={s.queued}>"
