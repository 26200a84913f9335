"""Queue, tasks and channels: what an application uses to enqueue durable jobs.

    queue = hp.Queue("sqlite:///hydrapool.db")

    @queue.task(retry=hp.Retry(attempts=5, backoff=hp.Backoff.exponential(5)))
    async def send_email(to: str, body: str) -> dict: ...

    job = await send_email.enqueue("a@b.c", "hi")
    job = await send_email.options(channel="tenant-42", delay=30).enqueue("a@b.c", "hi")
    print(await job.result(timeout=30))

The queue decides policy (payload encoding, retry timing, names); the
backend stores and transitions atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import math
import os
import re
import socket
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from hydrapool._callables import is_async_callable
from hydrapool.backends import backend_from_url
from hydrapool.backends.base import (
    Backend,
    CancelResult,
    Change,
    ChannelPolicy,
    Emit,
    JobRecord,
    NewJob,
    ScheduleRecord,
)
from hydrapool.exceptions import JobFailed, PayloadError
from hydrapool.queue import events as ev
from hydrapool.queue._stream import EventStream, dispatch
from hydrapool.queue.job import ACTIVE, TERMINAL, Job, JobState
from hydrapool.queue.schedules import Schedule, next_run, spec_json
from hydrapool.queue.schedules import snapshot as schedule_snapshot
from hydrapool.ratelimit import RateLimit
from hydrapool.retry import Backoff, Retry

if TYPE_CHECKING:
    from hydrapool.queue.external import Lease
    from hydrapool.queue.worker import Worker

__all__ = ["Channel", "Queue", "QueueSnapshot", "Task", "TaskCall"]

P = ParamSpec("P")
R = TypeVar("R")
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}")
DEFAULT_CHANNEL = "default"
# The task name of ``queue.add_job()`` jobs: payload-only jobs for an external claimer
# (``queue.claim()``). No task may be registered or enqueued under it.
EXTERNAL_TASK = "hydrapool.external"
CLOSE_GRACE = 5.0  # seconds on_event subscribers get at close() to deliver stored events


def check_name(kind: str, name: object) -> str:
    """Queue, task and channel names: 1-200 of letters, digits and ``_ . : -``."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} is invalid: use 1-200 characters of letters, digits "
            "and _ . : - (not starting with . : or -)"
        )
    return name


def _rate(rate: object) -> tuple[int, float] | None:
    """A RateLimit as the backends store it: (starts, per seconds)."""
    if rate is None:
        return None
    if not isinstance(rate, RateLimit):
        raise TypeError(f"rate must be a hp.RateLimit or None, got {rate!r}")
    return (rate.limit, float(rate.per))


def _number(name: str, value: object, *, minimum: float = 0.0, allow_none: bool = True) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return value


def _positive(name: str, value: object) -> float | None:
    """Seconds that must be > 0 (a timeout of 0 would fail every try at once)."""
    if value is None:
        return None
    _number(name, value)
    if not value > 0:  # type: ignore[operator]  # a number, checked just above
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _dedup_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"dedup_key must be a string, got {value!r}")
    if not 1 <= len(value) <= 500:
        raise ValueError(f"dedup_key must be 1-500 characters long, got {len(value)}: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"dedup_key must be valid UTF-8 text, got {value!r}") from None
    return value


INT64 = range(-(2**63), 2**63)  # what every backend can store


def _parents(value: Iterable[str | int | Job] | None) -> tuple[str | int, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, int, Job)):
        value = [value]
    ids: list[str | int] = []
    for item in value:
        job_id = item.id if isinstance(item, Job) else item
        if isinstance(job_id, bool) or not isinstance(job_id, (str, int)) or job_id == "":
            raise TypeError(
                f"depends_on takes jobs, job ids, or (in enqueue_many) the index of an "
                f"earlier item; got {item!r}"
            )
        ids.append(job_id)
    return tuple(dict.fromkeys(ids))


def _resolve_ref(ref: str | int, batch: list[NewJob] | None) -> str:
    """A parent id; an int names an earlier item of the same enqueue_many."""
    if isinstance(ref, str):
        return ref
    if batch is None:
        raise ValueError(
            f"depends_on={ref!r}: an index refers to an earlier item of enqueue_many, "
            "and this is a single enqueue"
        )
    if not 0 <= ref < len(batch):
        raise ValueError(
            f"depends_on={ref!r}: no earlier item {ref} in this enqueue_many "
            f"(items 0..{len(batch) - 1} come before)"
        )
    return batch[ref].id


def _priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"priority must be an int, got {value!r}")
    if value not in INT64:
        raise ValueError(f"priority must fit in 64 bits, got {value!r}")
    return value


def _count(name: str, value: object, *, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if value not in INT64:
        raise ValueError(f"{name} must fit in 64 bits, got {value!r}")
    return value


# One encoder for payloads and results: json.dumps with an option builds a new one per call.
_encode = json.JSONEncoder(allow_nan=False).encode


def encode_payload(
    task: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], meta: Mapping[str, Any]
) -> str:
    """JSON text of a job's arguments; ``hp.PayloadError`` naming the bad argument."""
    try:
        return _encode({"args": list(args), "kwargs": dict(kwargs), **meta})
    except (TypeError, ValueError):
        pass
    for index, value in enumerate(args):
        _check_json(f"task {task!r}: argument {index}", value)
    for key, value in kwargs.items():
        _check_json(f"task {task!r}: keyword argument {key!r}", value)
    raise PayloadError(f"task {task!r}: the arguments cannot be encoded as JSON")


def _check_json(where: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{where} is not JSON ({type(value).__name__}: {exc})") from None


def retry_to_json(retry: Retry | None) -> dict[str, Any] | None:
    """A Retry as stored in a job's payload (retry_on is not stored: see Task)."""
    if retry is None:
        return None
    backoff = retry.backoff
    assert isinstance(backoff, Backoff)
    return {
        "attempts": retry.attempts,
        "kind": backoff.kind,
        "base": backoff.base,
        "factor": backoff.factor,
        "cap": backoff.cap,
        "jitter": retry.jitter,
    }


def retry_from_json(data: Mapping[str, Any] | None) -> Retry | None:
    """The inverse of ``retry_to_json``."""
    if not data:
        return None
    backoff = Backoff(data["kind"], data["base"], data["factor"], data["cap"])
    return Retry(attempts=data["attempts"], backoff=backoff, jitter=data["jitter"])


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """``queue.show_pool()``: counts by state, per channel, the running jobs and the limits.

    ``pending``, ``executing`` and ``finished`` are Hydra's three counts.
    """

    counts: Mapping[str, int]
    channels: Mapping[str, Mapping[str, int]]
    running: list[Job]
    max_concurrency: int | None
    policies: Mapping[str, ChannelPolicy]  # a policy's rate is (starts, per seconds)
    rate: RateLimit | None = None  # the queue's
    paused: Mapping[str, float] = field(default_factory=dict)  # channel -> until (epoch s)

    @property
    def pending(self) -> int:
        """Jobs not started or waiting for another try (waiting, queued, retrying)."""
        return sum(self.counts.get(s, 0) for s in ACTIVE if s is not JobState.RUNNING)

    @property
    def executing(self) -> int:
        """Jobs running now (claimed under a lease)."""
        return self.counts.get(JobState.RUNNING, 0)

    @property
    def finished(self) -> int:
        """Jobs that ended (succeeded, failed, cancelled, dropped) and are still kept."""
        return sum(self.counts.get(s, 0) for s in TERMINAL)


@dataclass(frozen=True, slots=True)
class TaskCall(Generic[P, R]):
    """A task with enqueue options bound: ``task.options(...)``."""

    task: Task[P, R]
    channel: str
    priority: int
    delay: float
    run_at: float | None
    retry: Retry | None
    timeout: float | None
    max_processing: float | None
    dedup_key: str | None = None
    depends_on: tuple[str | int, ...] = ()  # ints: earlier items of one enqueue_many
    cascade: bool = True

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Store one job of this task with these options."""
        jobs = await self.task.queue._insert([self._new_job(args, kwargs)])
        return jobs[0]

    def _new_job(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], batch: list[NewJob] | None = None
    ) -> NewJob:
        meta = {"retry": retry_to_json(self.retry), "timeout": self.timeout}
        payload = encode_payload(self.task.name, args, kwargs, meta)
        attempts = self.retry.attempts if self.retry is not None else 1
        return NewJob(
            id=uuid.uuid4().hex,
            task=self.task.name,
            channel=self.channel,
            payload=payload,
            priority=self.priority,
            max_attempts=attempts,
            delay=self.delay,
            run_at=self.run_at,
            max_processing=self.max_processing,
            dedup_key=self.dedup_key,
            depends_on=tuple(_resolve_ref(ref, batch) for ref in self.depends_on),
            cascade=self.cascade,
        )


@dataclass(eq=False)
class Task(Generic[P, R]):
    """A function registered on a queue: ``await task.enqueue(...)`` stores a job for it.

    Calling the task calls the function directly (tests, scripts).
    """

    queue: Queue
    name: str
    fn: Callable[P, Any]
    retry: Retry | None = None
    timeout: float | None = None
    channel: str = DEFAULT_CHANNEL
    priority: int = 0
    max_processing: float | None = None
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        self.is_async = is_async_callable(self.fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def options(
        self,
        *,
        channel: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: datetime | float | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        max_processing: float | None = None,
        dedup_key: str | None = None,
        depends_on: Iterable[str | int | Job] | None = None,
        cascade: bool = True,
    ) -> TaskCall[P, R]:
        """Bind enqueue options; ``.enqueue(...)`` on the result stores the job.

        ``dedup_key``: while a job of this channel with the same key has not
        started, enqueueing another returns that job (``job.deduplicated``).
        ``depends_on``: jobs (or ids) that must all succeed before this one
        runs; if one fails, is cancelled or dropped, this job fails without
        running (and so do its own dependents), unless ``cascade=False``,
        where it runs anyway. Parents must exist and not have started.
        """
        if delay is not None and run_at is not None:
            raise ValueError("give delay= or run_at=, not both")
        if dedup_key is not None and depends_on:
            raise ValueError(
                "dedup_key and depends_on do not mix: a deduplicated enqueue returns a job "
                "that may wait for other parents"
            )
        if priority is not None:
            _priority(priority)
        if retry is not None:
            self._check_retry(retry)
        when = run_at.timestamp() if isinstance(run_at, datetime) else run_at
        return TaskCall(
            task=self,
            channel=check_name("channel", channel) if channel is not None else self.channel,
            priority=self.priority if priority is None else priority,
            delay=_number("delay", delay) or 0.0,
            run_at=_number("run_at", when),
            retry=retry if retry is not None else self.retry,
            timeout=_positive("timeout", timeout) if timeout is not None else self.timeout,
            max_processing=(
                _positive("max_processing", max_processing)
                if max_processing is not None
                else self.max_processing
            ),
            dedup_key=_dedup_key(dedup_key),
            depends_on=_parents(depends_on),
            cascade=bool(cascade),
        )

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Store one job of this task with the task's default options."""
        return await self.options().enqueue(*args, **kwargs)

    def _check_retry(self, retry: object) -> None:
        if not isinstance(retry, Retry):
            raise TypeError(f"retry must be an hp.Retry, got {retry!r}")
        if retry.retry_on != self.retry_on:
            raise ValueError(
                f"task {self.name!r}: retry_on belongs to the task (set it in "
                "@queue.task(retry=...)); options(retry=...) may change attempts, "
                "backoff and jitter only"
            )


class Channel:
    """A named sub-queue: ``queue.channel("tenant-42")``, served round-robin with the others."""

    def __init__(self, queue: Queue, name: str) -> None:
        self.queue = queue
        self.name = check_name("channel", name)

    async def set_policy(
        self,
        *,
        max_concurrency: int | None = None,
        max_size: int | None = None,
        rate: RateLimit | None = None,
    ) -> None:
        """Limit the channel: jobs running at once, jobs waiting (beyond: ``dropped``), and
        job starts per window (``rate=hp.RateLimit(5, per=1.0)``), for every worker."""
        policy = ChannelPolicy(
            _count("max_concurrency", max_concurrency),
            _count("max_size", max_size, minimum=0),
            _rate(rate),
        )
        await (await self.queue._backend_ready()).channel_policy_set(
            self.queue.name, self.name, policy
        )
        self.queue._notify()

    async def clear_policy(self) -> None:
        """Remove the channel's limits."""
        await (await self.queue._backend_ready()).channel_policy_clear(self.queue.name, self.name)
        self.queue._notify()

    async def enqueue(self, task: str | Task[Any, Any], *args: Any, **kwargs: Any) -> Job:
        """Enqueue ``task`` (a name or a Task) into this channel."""
        return await self.queue._task_of(task).options(channel=self.name).enqueue(*args, **kwargs)


class Queue:
    """A durable job queue on the backend named by ``url``.

    ``name`` namespaces everything this queue stores, so many queues share one
    SQLite file, PostgreSQL database or Redis. ``retention`` is how long
    ended jobs (and their results) are kept, in seconds; ``event_retention``
    the same for events. The coordinator deletes what is older. ``migrate``:
    apply pending schema migrations when the queue opens (PostgreSQL, under
    an advisory lock); with False, opening only checks that none is pending.
    """

    def __init__(
        self,
        url: str = "sqlite:///hydrapool.db",
        name: str = "default",
        *,
        retention: float = 86400.0,
        event_retention: float = 3600.0,
        backend: Backend | None = None,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self.name = check_name("queue", name)
        self.retention = _number("retention", retention)
        self.event_retention = _number("event_retention", event_retention)
        self.backend: Backend = (
            backend if backend is not None else backend_from_url(url, migrate=migrate)
        )
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._opened = False
        self._opening = asyncio.Lock()
        self._local_workers: set[Worker] = set()
        self._ended: dict[str, asyncio.Event] = {}
        self._streams: weakref.WeakSet[EventStream] = weakref.WeakSet()  # not yet reading
        self._subscribers: set[asyncio.Task[None]] = set()
        self._epoch = 0  # + 1 at each close: streams of an earlier opening end
        self._closing = asyncio.Event()
        # Jobs this queue claimed with claim(), by id: the lease and the job as claimed.
        self._leases: dict[str, tuple[Lease, JobRecord]] = {}
        self._claimer = f"{socket.gethostname()}:{os.getpid()}:claim-{uuid.uuid4().hex[:8]}"

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} on {self.url}>"

    # ── tasks ──────────────────────────────────────────────────────────────
    def task(
        self,
        fn: Callable[P, Any] | None = None,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        channel: str = DEFAULT_CHANNEL,
        priority: int = 0,
        max_processing: float | None = None,
    ) -> Any:
        """Register a task (use as ``@queue.task`` or ``@queue.task(...)``)."""

        def register(func: Callable[P, Any]) -> Task[P, Any]:
            if not callable(func):
                raise TypeError(f"a task must be callable, got {func!r}")
            task_name = _not_reserved(check_name("task", name or getattr(func, "__name__", "")))
            if task_name in self.tasks and self.tasks[task_name].fn is not func:
                raise ValueError(f"a different function is already registered as {task_name!r}")
            if retry is not None and not isinstance(retry, Retry):
                raise TypeError(f"retry must be an hp.Retry, got {retry!r}")
            retry_on = retry.retry_on if retry is not None else (Exception,)
            task: Task[P, Any] = Task(
                self,
                task_name,
                func,
                retry,
                _positive("timeout", timeout),
                check_name("channel", channel),
                _priority(priority),
                _positive("max_processing", max_processing),
                retry_on,  # type: ignore[arg-type]  # normalised to a tuple by Retry
            )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def _task_of(self, task: str | Task[Any, Any]) -> Task[Any, Any]:
        if isinstance(task, Task):
            return task
        _not_reserved(check_name("task", task))
        found = self.tasks.get(task)
        if found is None:
            # Enqueueing a task this process does not run is fine (another service may).
            return Task(self, task, _not_here(task))
        return found

    def options(self, task: str | Task[Any, Any], **options: Any) -> TaskCall[Any, Any]:
        """Enqueue options for ``task`` (a name, even one this process does not register).

        ``await queue.options("send_email", retry=hp.Retry(attempts=5)).enqueue(...)``
        """
        return self._task_of(task).options(**options)

    def channel(self, name: str) -> Channel:
        """The channel ``name`` of this queue."""
        return Channel(self, name)

    # ── enqueueing ─────────────────────────────────────────────────────────
    async def enqueue(self, task: str | Task[Any, Any], *args: Any, **kwargs: Any) -> Job:
        """Enqueue ``task`` (a registered name, any name, or a Task) with its defaults."""
        return await self._task_of(task).enqueue(*args, **kwargs)

    async def enqueue_many(
        self, calls: Iterable[TaskCall[Any, Any] | tuple[Any, ...]]
    ) -> list[Job]:
        """Enqueue many jobs in one transaction: all are stored or none.

        Each item is ``(task, args)``, ``(task, args, kwargs)`` (task: a name
        or a Task) or ``(task.options(...), args[, kwargs])``. A whole DAG
        fits in one call: ``depends_on=[0, 2]`` names earlier items by index.
        """
        new_jobs: list[NewJob] = []
        defaults: dict[Any, TaskCall[Any, Any]] = {}  # a task's default options, made once
        for item in calls:
            if not isinstance(item, tuple) or not 2 <= len(item) <= 3:
                raise TypeError(
                    f"enqueue_many items are (task, args) or (task, args, kwargs), got {item!r}"
                )
            target, args = item[0], tuple(item[1])
            kwargs = item[2] if len(item) == 3 else {}
            if isinstance(target, TaskCall):
                call = target
            elif isinstance(target, (str, Task)) and target in defaults:
                call = defaults[target]
            else:
                call = self._task_of(target).options()
                defaults[target] = call
            new_jobs.append(call._new_job(args, kwargs, new_jobs))
        return await self._insert(new_jobs)

    async def _insert(self, new_jobs: list[NewJob]) -> list[Job]:
        backend = await self._backend_ready()
        tx = _open_transaction(self)
        if tx is not None:
            insert = getattr(backend, "job_insert_in_transaction", None)
            if insert is None:
                raise TypeError(f"the {self.url.split(':')[0]} backend has no caller transactions")
            # The events are part of the caller's transaction: stored only if it commits.
            records = insert(tx.connection, self.name, new_jobs, emit=Emit(ev.for_inserts))
            if inspect.isawaitable(records):  # PostgreSQL: the caller's connection may be async
                records = await records
        else:
            # (the backend stores the events; copies are made only for a stream here)
            emit: Emit[list[JobRecord]] = Emit(ev.for_inserts, wanted=self._listened)
            records = await backend.job_insert_many(self.name, new_jobs, emit=emit)
            self._published(emit.stored)
            self._notify()
        return [self._job(r) for r in records]

    @contextlib.asynccontextmanager
    async def transaction(self, connection: Any) -> AsyncIterator[None]:
        """Enqueue inside the caller's own database transaction.

        ``async with queue.transaction(conn): await task.enqueue(...)``: the
        jobs are written with ``conn`` (for SQLite, a ``sqlite3.Connection`` to
        the queue's own file) and exist only if the caller commits; a rollback
        leaves none. The caller begins, commits or rolls back as usual.
        """
        await self._backend_ready()  # the schema must exist before the caller's writes
        tx = _Transaction(self, connection)
        token = _transaction.set((*_transaction.get(()), tx))
        try:
            yield
        finally:
            tx.open = False  # tasks started inside copied the context: they must not use it
            _transaction.reset(token)
            self._notify()  # after a commit, local workers look at once

    def _notify(self) -> None:
        self.backend.work_notify(self.name)

    # ── events ─────────────────────────────────────────────────────────────
    def _listened(self) -> bool:
        """Whether a stream of this process takes pushed events now (see _published)."""
        return bool(self._streams)

    def _published(self, events: list[ev.Event]) -> None:
        """Events this process just stored: to its streams that have not read yet."""
        if events:
            for stream in list(self._streams):
                stream._pushed(events)

    def events(
        self,
        types: Iterable[ev.EventType | str] | str | None = None,
        channel: str | None = None,
        *,
        after: int | None = None,
    ) -> EventStream:
        """Follow the queue's job events, in every process, oldest first.

        ``types`` keeps some event types (``{"failed", "finalized"}``),
        ``channel`` one channel. Without ``after`` the stream starts at this
        call: events stored later are delivered, from this process at once,
        from others as soon as the backend tells (SQLite: a few ms). With
        ``after=seq`` it resumes after a known event, as long as retention
        kept it. The iteration ends when the queue is closed; ``async with
        queue.events() as stream:`` fixes the start before the body runs.
        """
        wanted = ev.event_types(types)
        if channel is not None:
            check_name("channel", channel)
        if after is not None:
            after = _count("after", after, minimum=0)
        return EventStream(self, wanted, channel, after)

    def on_event(
        self,
        callback: Callable[[ev.Event], Any],
        *,
        types: Iterable[ev.EventType | str] | str | None = None,
        channel: str | None = None,
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns ``unsubscribe()``.

        The callback runs on the event loop, one event at a time in order (an
        ``async def`` one is awaited); what it raises is logged and skipped.
        Needs a running event loop; ``close()`` ends every subscription.
        """
        if not callable(callback):
            raise TypeError(f"on_event takes a callable, got {callback!r}")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("queue.on_event() needs a running event loop") from None
        stream = self.events(types, channel)
        task = loop.create_task(dispatch(stream, callback))
        self._subscribers.add(task)
        task.add_done_callback(self._subscribers.discard)

        def unsubscribe() -> None:
            task.cancel()
            stream._closed = True

        return unsubscribe

    async def purge_events(self, *, older_than: float = 0.0) -> int:
        """Delete events stored more than ``older_than`` seconds ago; returns how many."""
        age = _number("older_than", older_than)
        return await (await self._backend_ready()).event_trim(self.name, age)

    # ── reading ────────────────────────────────────────────────────────────
    def _job(self, record: JobRecord) -> Job:
        payload = json.loads(record.payload)
        value = json.loads(record.result) if record.result is not None else None
        return Job(
            id=record.id,
            queue=record.queue,
            task=record.task,
            channel=record.channel,
            state=JobState(record.state),
            priority=record.priority,
            attempts=record.attempts,
            max_attempts=record.max_attempts,
            args=tuple(payload.get("args", ())),
            kwargs=dict(payload.get("kwargs", {})),
            created_at=record.created_at,
            run_at=record.run_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            error=record.error,
            return_value=value,
            dedup_key=record.dedup_key,
            deduplicated=record.deduplicated,
            payload=payload.get("payload") if record.task == EXTERNAL_TASK else None,
            queue_ref=self,
        )

    async def get_job(self, job_id: str) -> Job | None:
        """The job's current snapshot, or None if unknown (or deleted by retention)."""
        record = await (await self._backend_ready()).job_get(self.name, job_id)
        return None if record is None else self._job(record)

    async def jobs(
        self, *, state: JobState | str | None = None, channel: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Jobs, newest first, optionally of one state and/or channel."""
        if state is not None:
            state = JobState(state)
        if channel is not None:
            check_name("channel", channel)
        count = _count("limit", limit)
        records = await (await self._backend_ready()).job_list(
            self.name,
            state=None if state is None else str(state),
            channel=channel,
            limit=count or 100,
        )
        return [self._job(r) for r in records]

    async def show_pool(self) -> QueueSnapshot:
        """Counts by state and channel, running jobs and limits (Hydra's showPool)."""
        snap = await (await self._backend_ready()).pool_stats(self.name)
        return QueueSnapshot(
            dict(snap.counts),
            {k: dict(v) for k, v in snap.channels.items()},
            [self._job(r) for r in snap.running],
            snap.max_concurrency,
            dict(snap.policies),
            None if snap.rate is None else RateLimit(snap.rate[0], per=snap.rate[1]),
            dict(snap.paused),
        )

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait until the job ends; its return value, or ``hp.JobFailed``."""
        async with asyncio.timeout(timeout):
            job = await self._wait_end(job_id)
        if job.state is JobState.SUCCEEDED:
            return job.return_value
        raise JobFailed(job.id, str(job.state), job.error)

    async def _wait_end(self, job_id: str) -> Job:
        delay = 0.005
        while True:
            job = await self.get_job(job_id)
            if job is None:
                raise LookupError(f"no job {job_id!r} in queue {self.name!r}")
            if job.state in TERMINAL:
                return job
            event = self._ended.setdefault(job_id, asyncio.Event())
            try:  # a local worker wakes us at once; other processes are polled
                await asyncio.wait_for(event.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 0.5)
            finally:
                # Never left behind (a waiter that times out must not leak its event);
                # another waiter on the same job still polls, so it only wakes later.
                if self._ended.get(job_id) is event:
                    del self._ended[job_id]

    def _job_ended(self, job_id: str) -> None:
        event = self._ended.get(job_id)
        if event is not None:
            event.set()

    # ── control ────────────────────────────────────────────────────────────
    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a waiting one never runs; a running one is cancelled in its worker."""
        emit = Emit(self._cancel_events)
        outcome = await (await self._backend_ready()).job_cancel(self.name, job_id, emit=emit)
        self._published(emit.stored)
        record = outcome.job
        if record is None:
            return None
        for worker in list(self._local_workers):
            worker._cancel_local(job_id)
        if record.state == "cancelled":
            self._job_ended(job_id)
        return self._job(record)

    async def purge(self, *, state: JobState | str | None = None, older_than: float = 0.0) -> int:
        """Delete ended jobs (and their results) now; returns how many.

        ``state`` picks one ending (``succeeded``, ``failed``, ``cancelled`` or
        ``dropped``); ``older_than`` keeps jobs that ended more recently (seconds).
        Jobs that have not ended are never purged: cancel them first.
        """
        ending = None if state is None else JobState(state)
        if ending is not None and ending not in TERMINAL:
            raise ValueError(
                f"purge deletes ended jobs only; {str(ending)!r} jobs have not ended "
                "(cancel them first)"
            )
        age = _number("older_than", older_than)
        backend = await self._backend_ready()
        emit: Emit[list[Change]] = Emit(functools.partial(ev.for_changes, self.name))
        deleted = await backend.job_delete_finished(
            self.name, age, state=None if ending is None else str(ending), emit=emit
        )
        self._published(emit.stored)
        return len(deleted)

    def _cancel_events(self, outcome: CancelResult) -> list[ev.Event]:
        if not outcome.ended or outcome.job is None:
            return []
        return ev.for_cancel(outcome.job) + ev.for_changes(self.name, outcome.changes)

    # ── Hydra-style external jobs (the work is in queue/external.py) ───────
    async def add_job(
        self,
        payload: Any,
        *,
        channel: str = DEFAULT_CHANNEL,
        priority: int = 0,
        delay: float | None = None,
        run_at: datetime | float | None = None,
        dedup_key: str | None = None,
        depends_on: Iterable[str | Job] | None = None,
        max_attempts: int = 1,
        backoff: Backoff | float = 0.0,
        max_processing: float | None = None,
    ) -> str:
        """Store a payload-only job for an external claimer; returns its id (Hydra's addJob).

        ``payload`` is any JSON value. The job goes through the same insert as a
        task's job, so channel limits, dedup keys, dependencies and events
        apply. Any process claims it with ``queue.claim()`` and reports with
        ``finish_job`` or ``fail_job``; ``fail_job`` retries it while attempts
        remain (``max_attempts`` counts every try), after ``backoff`` (an
        ``hp.Backoff``, or fixed seconds: at once by default). Its task name
        is ``"hydrapool.external"``: an ``hp.Worker`` that claims one cannot
        run it and fails that try, so keep such jobs in channels no Worker serves.
        """
        attempts = _count("max_attempts", max_attempts)
        retry = Retry(attempts=attempts or 1, backoff=backoff)
        call: TaskCall[..., Any] = Task(self, EXTERNAL_TASK, _not_here(EXTERNAL_TASK)).options(
            channel=channel,
            priority=priority,
            delay=delay,
            run_at=run_at,
            retry=retry,
            max_processing=max_processing,
            dedup_key=dedup_key,
            depends_on=depends_on,
        )
        new = replace(call._new_job((), {}), payload=encode_job_payload(payload, retry))
        return (await self._insert([new]))[0].id

    async def claim(
        self,
        channel: str | Iterable[str] | None = None,
        *,
        lease: float = 30.0,
        wait: float = 0.0,
    ) -> Lease | None:
        """Claim one due job for this process, within every limit; None if none is ready.

        ``channel``: one channel, several, or None for any. The claim holds
        for ``lease`` seconds (renew it with ``extend_lease``); report with
        ``finish_job`` or ``fail_job``. ``wait``: seconds to wait for a job
        when none is ready (woken by enqueues and by reports of this process).
        Returns an ``hp.Lease``; the queue also remembers it by job id.
        """
        from hydrapool.queue import external  # it imports this module

        return await external.claim(self, channel, lease, wait)

    async def extend_lease(
        self, job: str | Lease, lease: float = 30.0, *, token: str | None = None
    ) -> Lease:
        """Renew a claim for ``lease`` more seconds (a heartbeat for a long job).

        ``job`` is a job id this queue claimed, or an ``hp.Lease``; another
        process that got the lease token passes ``token=``. Returns the renewed
        ``hp.Lease`` (``cancel_requested`` tells that ``queue.cancel()`` asked
        the job to stop); raises ``hp.ReportRefused`` if the lease is gone.
        """
        from hydrapool.queue import external

        return await external.extend(self, job, lease, token)

    async def finish_job(
        self, job: str | Lease, result: Any = None, *, token: str | None = None
    ) -> JobState:
        """Record that a claimed job succeeded with ``result`` (JSON); Hydra's finishJob.

        Applied only under the job's current lease (this queue's claim, an
        ``hp.Lease``, or ``token=``); otherwise ``hp.ReportRefused`` says why,
        and the job is left as it was. Returns the state the job ended in.
        """
        from hydrapool.queue import external

        return await external.finish(self, job, result, token)

    async def fail_job(
        self,
        job: str | Lease,
        error: str | BaseException,
        *,
        retry: bool = True,
        delay: float | None = None,
        token: str | None = None,
    ) -> JobState:
        """Record that a claimed job's try failed with ``error``.

        With ``retry`` and attempts left, the job goes to ``retrying`` and is
        due again after ``delay`` seconds (default: its ``add_job`` back-off);
        otherwise it ends ``failed``. Fenced by the lease like ``finish_job``.
        Returns the new state (``retrying``, ``failed``, or ``cancelled`` when
        a cancel was requested).
        """
        from hydrapool.queue import external

        return await external.fail(self, job, error, retry, delay, token)

    # ── schedules ──────────────────────────────────────────────────────────
    async def schedule(
        self,
        name: str,
        *,
        task: str | Task[Any, Any],
        cron: str | None = None,
        every: float | timedelta | None = None,
        tz: str | None = None,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        channel: str | None = None,
        **options: Any,
    ) -> Schedule:
        """Enqueue ``task(*args, **kwargs)`` on every tick of ``cron`` (or ``every`` seconds).

        ``name`` is scoped to the channel; scheduling an existing name
        replaces it. Each tick enqueues exactly once, however many
        coordinators run; ticks missed while nothing ran fire once, not N
        times. ``options`` are the task's enqueue options (priority, retry, ...).
        """
        check_name("schedule", name)
        refused = sorted({"delay", "run_at", "dedup_key", "depends_on"} & set(options))
        if refused:
            raise ValueError(
                f"schedule() takes no {', '.join(refused)}: each tick enqueues at its own time"
            )
        spec = spec_json(cron, every, tz)
        call = self._task_of(task).options(channel=channel, **options)
        new = call._new_job(tuple(args), dict(kwargs or {}))
        backend = await self._backend_ready()
        record = ScheduleRecord(
            queue=self.name,
            channel=call.channel,
            name=name,
            spec=spec,
            task=call.task.name,
            payload=new.payload,
            priority=new.priority,
            max_attempts=new.max_attempts,
            max_processing=new.max_processing,
            next_run=next_run(spec, await backend.now()),
        )
        await backend.schedule_upsert(record)
        stored = [
            r
            for r in await backend.schedule_list(self.name)
            if (r.channel, r.name) == (record.channel, name)
        ]
        return schedule_snapshot(stored[0] if stored else record)

    async def unschedule(self, name: str, *, channel: str | None = None) -> bool:
        """Remove a schedule; False if there was none.

        Without ``channel``, the schedule of that name in whatever channel it
        lives (an error if several channels have one).
        """
        check_name("schedule", name)
        backend = await self._backend_ready()
        if channel is None:
            found = [r.channel for r in await backend.schedule_list(self.name) if r.name == name]
            if not found:
                return False
            if len(found) > 1:
                raise ValueError(
                    f"schedules named {name!r} exist in channels {', '.join(found)}: say channel="
                )
            channel = found[0]
        return await backend.schedule_delete(self.name, check_name("channel", channel), name)

    async def schedules(self) -> list[Schedule]:
        """Every schedule of this queue."""
        backend = await self._backend_ready()
        return [schedule_snapshot(r) for r in await backend.schedule_list(self.name)]

    async def set_limits(
        self, *, max_concurrency: int | None = None, rate: RateLimit | None = None
    ) -> None:
        """Cap how many of this queue's jobs run at once, and how many start per window
        (``rate=hp.RateLimit(100, per=60)``), across every worker."""
        await (await self._backend_ready()).queue_limits_set(
            self.name, _count("max_concurrency", max_concurrency), _rate(rate)
        )
        self._notify()

    async def migrate(self) -> list[str]:
        """Apply pending schema migrations; returns their names."""
        return await (await self._backend_ready()).migrate()

    async def _backend_ready(self) -> Backend:
        if not self._opened:
            async with self._opening:  # many first uses at once open the store once
                if not self._opened:
                    await self.backend.open()
                    self._opened = True
        return self.backend

    async def close(self) -> None:
        """Let event streams and subscriptions read what was stored, end them, and close
        the backend's connections."""
        if self._opened:
            # Streams read what was stored before they end; subscribers get CLOSE_GRACE
            # seconds to deliver it, then are cancelled.
            self._closing.set()
            if self._subscribers:
                await asyncio.wait(set(self._subscribers), timeout=CLOSE_GRACE)
            self._epoch += 1
            self._closing = asyncio.Event()
            for task in list(self._subscribers):
                task.cancel()
            await asyncio.gather(*self._subscribers, return_exceptions=True)
            self._opened = False
            await self.backend.close()

    async def __aenter__(self) -> Queue:
        await self._backend_ready()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


@dataclass(eq=False)
class _Transaction:
    queue: Queue
    connection: Any
    open: bool = True


# The caller transactions around this code, innermost last (one per queue may nest).
_transaction: contextvars.ContextVar[tuple[_Transaction, ...]] = contextvars.ContextVar(
    "hydrapool_transaction"
)


def _open_transaction(queue: Queue) -> _Transaction | None:
    for tx in reversed(_transaction.get(())):
        if tx.open and tx.queue is queue:
            return tx
    return None


def _not_reserved(name: str) -> str:
    if name == EXTERNAL_TASK:
        raise ValueError(
            f"task name {name!r} is reserved for queue.add_job() jobs (claimed with "
            "queue.claim()): choose another name"
        )
    return name


def encode_job_payload(payload: Any, retry: Retry | None) -> str:
    """The stored JSON of an ``add_job`` payload; ``hp.PayloadError`` if it is not JSON."""
    try:
        return json.dumps({"payload": payload, "retry": retry_to_json(retry)}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"add_job: the payload is not JSON ({type(payload).__name__}: {exc})"
        ) from None


def _not_here(name: str) -> Callable[..., Any]:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise LookupError(f"task {name!r} is not registered in this process")

    return missing


def job_with_state(job: Job, state: JobState) -> Job:
    """A copy of ``job`` in another state (for local bookkeeping)."""
    return replace(job, state=state)
