"""TaskHandle: one task of a Pool, from add() to its single ending."""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Callable, Generator
from contextvars import Context
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from hydrapool.pool import Pool

__all__ = ["TaskHandle", "TaskState"]

T = TypeVar("T")


class TaskState(enum.Enum):
    """Where a pool task is. ``ACTIVE`` and ``ENDED`` partition the members."""

    PENDING = "pending"  # in the backlog, waiting for a slot
    RUNNING = "running"  # holds a slot
    WAITING = "waiting"  # between tries: back-off after a failure
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    # Members are singletons: identity hashing is correct and far cheaper than
    # Enum's default (a Python-level hash of the name) on the hot path.
    __hash__ = object.__hash__


PENDING = TaskState.PENDING
RUNNING = TaskState.RUNNING
WAITING = TaskState.WAITING
SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
CANCELLED = TaskState.CANCELLED
ACTIVE = frozenset({PENDING, RUNNING, WAITING})
ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED})


def _describe_call(fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    shown = ", ".join(repr(a)[:40] for a in args[:3])
    return f"{name}({shown}{', ...' if len(args) > 3 else ''})"


class TaskHandle(Generic[T]):
    """The caller's side of one task: await it for the result.

    ``await handle`` returns the task's result or raises its exception (or
    ``asyncio.CancelledError`` if it was cancelled). ``done()``, ``result()``,
    ``exception()`` and ``cancel()`` mean what they mean on an asyncio Future.
    Any number of awaiters may wait on one handle; each gets the outcome.
    """

    __slots__ = (
        "_cancel_requested",
        "_ctx",
        "_free_tries",
        "_listeners",
        "_outcome",
        "_pool",
        "_runner",
        "_seq",
        "_state",
        "_sync",
        "args",
        "attempts",
        "finished_at",
        "fn",
        "kwargs",
        "priority",
        "started_at",
    )

    def __init__(
        self,
        pool: Pool,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        priority: float,
        seq: int,
        sync: bool,
        ctx: Context,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.priority = priority
        #: tries started so far (1 while the first try runs)
        self.attempts = 0
        #: loop.time() when the latest try started / when the task ended
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._pool = pool
        self._seq = seq
        self._sync = sync
        self._ctx: Context | None = ctx
        self._state = PENDING
        #: the return value once SUCCEEDED, the exception once FAILED
        self._outcome: Any = None
        #: the asyncio Task while RUNNING, the back-off timer while WAITING
        self._runner: asyncio.Task[None] | asyncio.TimerHandle | None = None
        #: futures of awaiters and internal end-callbacks (map, as_completed)
        self._listeners: list[asyncio.Future[None] | Callable[[TaskHandle[Any]], None]] | None = (
            None
        )
        self._cancel_requested = False
        self._free_tries = 0  # reruns asked for with RetryAfter: they spend no attempt

    def _spent(self) -> int:
        """Tries that count against the retry policy."""
        return self.attempts - self._free_tries

    @property
    def state(self) -> TaskState:
        """The task's current ``TaskState``."""
        return self._state

    def done(self) -> bool:
        """True once the task has ended: succeeded, failed or cancelled."""
        return self._state in ENDED

    def cancelled(self) -> bool:
        """True if the task ended by cancellation."""
        return self._state is CANCELLED

    def result(self) -> T:
        """The task's return value; raises its exception if it failed.

        Raises ``asyncio.InvalidStateError`` while the task has not ended and
        ``asyncio.CancelledError`` if it was cancelled.
        """
        state = self._state
        if state is SUCCEEDED:
            return self._outcome  # type: ignore[no-any-return]  # T is only known to the caller
        if state is FAILED:
            raise self._outcome
        if state is CANCELLED:
            raise asyncio.CancelledError()
        raise asyncio.InvalidStateError(
            f"task {self._describe()} has not ended: it is {state.value}"
        )

    def exception(self) -> BaseException | None:
        """The task's exception, or None if it succeeded.

        Raises like ``result()`` while the task has not ended or when it was cancelled.
        """
        if self._state is FAILED:
            return self._outcome  # type: ignore[no-any-return]  # an exception once FAILED
        if self._state is SUCCEEDED:
            return None
        self.result()  # raises the right error for the other states
        return None

    def cancel(self, msg: str | None = None) -> bool:
        """Cancel the task; False if it had already ended.

        A task that has not started (or is backing off) ends at once, and its
        backlog entry is dropped soon after; a running one gets
        ``CancelledError`` at its next ``await`` and is cancelled when it ends.
        """
        state = self._state
        if state is PENDING or state is WAITING:
            self._pool._cancel_idle_handle(self)
            return True
        if state is RUNNING:
            if not self._cancel_requested:
                self._cancel_requested = True
                task = self._runner
                assert isinstance(task, asyncio.Task)
                # A task cancelled before its first step would never enter the
                # pool's bookkeeping; the pool checks the flag when it starts.
                if inspect.getcoroutinestate(task.get_coro()) != inspect.CORO_CREATED:  # type: ignore[arg-type]
                    task.cancel(msg)
            return True
        return False

    def _listen(self, listener: asyncio.Future[None] | Callable[[TaskHandle[Any]], None]) -> None:
        if self._listeners is None:
            self._listeners = [listener]
        else:
            self._listeners.append(listener)

    def _add_callback(self, callback: Callable[[TaskHandle[Any]], None]) -> None:
        if self._state in ENDED:
            callback(self)
        else:
            self._listen(callback)

    def _wake(self) -> None:
        listeners, self._listeners = self._listeners, None
        for listener in listeners or ():
            if isinstance(listener, asyncio.Future):
                if not listener.done():
                    listener.set_result(None)
            else:
                listener(self)

    def __await__(self) -> Generator[Any, None, T]:
        if self._state not in ENDED:
            loop = self._pool._loop
            assert loop is not None
            fut: asyncio.Future[None] = loop.create_future()
            self._listen(fut)
            try:
                yield from fut
            finally:
                if fut.cancelled() and self._listeners is not None:
                    self._listeners.remove(fut)
        return self.result()

    def _describe(self) -> str:
        return _describe_call(self.fn, self.args)

    def __repr__(self) -> str:
        return f"<TaskHandle {self._describe()} {self._state.value}>"
