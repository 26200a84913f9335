"""The Backend protocol: the only thing ``hydrapool.queue`` knows about storage.

A backend stores jobs and makes each transition atomic; it holds no policy.
The core decides *what* happens (is there an attempt left? when is the next
try?) and passes the decision in; the backend applies it in one atomic step
and refuses anything whose lease token no longer matches. Limits (channel and
queue ``max_concurrency``, channel ``max_size``) are enforced inside the
backend's claim and insert steps, never by counting in Python outside them.

Method names put the noun first; each takes plain values or one params
dataclass. Times are epoch seconds of the *backend's* clock, so many machines
agree on leases; durations (delays, leases) are passed as seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

from hydrapool.queue.events import Event

__all__ = [
    "Backend",
    "CancelResult",
    "Change",
    "ChannelPolicy",
    "Claim",
    "ClaimParams",
    "Emit",
    "Finish",
    "FinishResult",
    "Hands",
    "Heartbeat",
    "JobRecord",
    "NewJob",
    "PoolSnapshot",
    "ScheduleRecord",
    "stamp",
]


T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Emit(Generic[T]):
    """The core's events for one backend step, stored in that step's own transaction.

    The backend calls ``make(result)`` once it knows the step's result, stores
    what it returns in the same transaction (so a transition and its events
    commit together, and cost no extra write), then sets ``stored``: the
    events numbered and dated, for the core to hand to this process's
    subscribers. The core decides what the events are; the backend stores.
    ``wanted``, when given, says whether this process has a subscriber for
    ``stored`` right now: a backend whose store makes the events itself (Redis's
    scripts) skips making the copies nobody would take.
    """

    make: Callable[[T], Sequence[Event]]
    stored: list[Event] = field(default_factory=list)
    wanted: Callable[[], bool] | None = None


def stamp(events: Sequence[Event], first: int, now: float) -> list[Event]:
    """Number events from ``first`` and date them ``now``, in place.

    Only for events the core just made for one step and nobody has seen yet:
    setting two fields costs a fifth of building each event again.
    """
    seq = first
    for event in events:
        object.__setattr__(event, "seq", seq)
        object.__setattr__(event, "time", now)
        seq += 1
    return list(events)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to insert. ``payload`` is JSON text made by the core."""

    id: str
    task: str
    channel: str
    payload: str
    priority: int = 0
    max_attempts: int = 1
    delay: float = 0.0  # seconds from the backend's now
    run_at: float | None = None  # absolute epoch seconds; wins over delay
    max_processing: float | None = None  # cap on one run, heartbeats or not
    dedup_key: str | None = None  # at most one not-yet-started job per key per channel
    depends_on: tuple[str, ...] = ()  # parents that must succeed first (not started yet)
    cascade: bool = True  # a parent that fails fails this job too (else it runs anyway)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored. ``state`` is a ``JobState`` value (text)."""

    id: str
    queue: str
    task: str
    channel: str
    state: str
    priority: int
    attempts: int
    max_attempts: int
    payload: str
    created_at: float
    run_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: str | None = None  # JSON text
    error: str | None = None
    lease: str | None = None
    lease_expires_at: float | None = None
    worker: str | None = None
    max_processing: float | None = None
    cancel_requested: bool = False
    dedup_key: str | None = None
    deduplicated: bool = False  # returned by an insert that found this job already waiting

    @classmethod
    def new(
        cls,
        queue: str,
        job: NewJob,
        state: str,
        now: float,
        run_at: float,
        doomed: tuple[str, str] | None = None,
    ) -> JobRecord:
        """The record a backend stores for ``job``.

        ``dropped`` jobs (channel full) and ``failed`` ones (``doomed``: a
        parent that already ended without success) end at once.
        """
        ended = state in ("dropped", "failed")
        error = "channel full" if state == "dropped" else None
        if state == "failed" and doomed is not None:
            error = f"dependency {doomed[0]} ended {doomed[1]}"
        return cls(
            id=job.id,
            queue=queue,
            task=job.task,
            channel=job.channel,
            state=state,
            priority=job.priority,
            attempts=0,
            max_attempts=job.max_attempts,
            payload=job.payload,
            created_at=now,
            run_at=run_at,
            finished_at=now if ended else None,
            error=error,
            max_processing=job.max_processing,
            dedup_key=job.dedup_key,
        )


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A named recurring enqueue. ``spec`` (JSON text) is read by the core only."""

    queue: str
    channel: str
    name: str
    spec: str
    task: str
    payload: str
    priority: int
    max_attempts: int
    max_processing: float | None
    next_run: float
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ClaimParams:
    """Claim up to ``limit`` due jobs for ``worker`` under a lease of ``lease`` seconds.

    ``hold``: how many of ``limit`` are places where a prefetching worker holds jobs
    until a slot frees; a backend that hands jobs to idle workers (``Hands``) offers
    only the rest, the free slots, to hand-offs."""

    queue: str
    worker: str
    limit: int
    lease: float
    channels: tuple[str, ...] | None = None  # None: every channel
    hold: int = 0


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed job and the lease that fences every later report about it."""

    job: JobRecord
    lease: str
    lease_expires_at: float
    was: str = "queued"  # the state it was claimed from (waiting, queued or retrying)


@dataclass(frozen=True, slots=True)
class Finish:
    """The core's decision about a running job, applied only if ``lease`` is still its lease.

    ``state``: ``succeeded`` | ``retrying`` (due again after ``delay``) |
    ``failed`` | ``cancelled`` | ``queued`` (handed back: the attempt is
    refunded; with ``pause`` > 0 — a task's ``hp.RetryAfter`` — its channel
    also pauses, for every worker, until ``pause`` seconds from now, or later
    if it was paused longer already). ``expired`` is True when the coordinator
    ends a job whose lease ran out (then the lease must have expired); False for
    a worker's own report (then the lease must still be valid: a late report is
    refused).
    """

    job_id: str
    lease: str
    state: str
    result: str | None = None
    error: str | None = None
    delay: float = 0.0
    expired: bool = False
    pause: float = 0.0  # > 0 with ``queued``: the job's channel claims nothing for this long


@dataclass(frozen=True, slots=True)
class Change:
    """A job the backend moved as a consequence of another step, for the core's events.

    ``parent`` is set when a parent ending moved (or merely told) this child:
    ``parent_state`` is how it ended. ``new`` is ``"deleted"`` for deletions.
    """

    job_id: str
    channel: str
    task: str
    attempts: int
    old: str
    new: str
    parent: str | None = None
    parent_state: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FinishResult:
    """Per finish, the state the job ended up in (None: refused), and what followed."""

    states: list[str | None]
    changes: list[Change] = field(default_factory=list)

    @property
    def applied(self) -> list[bool]:
        """True where the decision was applied."""
        return [s is not None for s in self.states]


@dataclass(frozen=True, slots=True)
class CancelResult:
    """The job after a cancel (None: unknown), whether this call ended it, and what followed."""

    job: JobRecord | None
    ended: bool = False
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a heartbeat learnt: leases still held, and jobs someone asked to cancel."""

    kept: frozenset[str]
    cancel_requested: frozenset[str]


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    """Limits of one channel; None means unlimited. ``rate``: at most ``rate[0]`` job
    starts (claims) in any window of ``rate[1]`` seconds."""

    max_concurrency: int | None = None
    max_size: int | None = None
    rate: tuple[int, float] | None = None


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """Counts by state, the same per channel, the running jobs, and the limits."""

    counts: Mapping[str, int]
    channels: Mapping[str, Mapping[str, int]]
    running: Sequence[JobRecord]
    max_concurrency: int | None = None
    policies: Mapping[str, ChannelPolicy] = field(default_factory=dict)
    rate: tuple[int, float] | None = None  # the queue's
    paused: Mapping[str, float] = field(default_factory=dict)  # channel -> paused until


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """What a Limiter enforces on one key, sent with every call (nothing is stored).

    ``limit``: at most this much weight held at once; ``rate``: at most ``rate[0]``
    weight granted in any window of ``rate[1]`` seconds; ``lease``: seconds a grant
    (and a waiter's place) lasts unless renewed.
    """

    name: str
    key: str
    limit: int | None
    rate: tuple[int, float] | None
    lease: float


@dataclass(frozen=True, slots=True)
class LimitTurn:
    """What one ``limiter_acquire`` step found for a ticket.

    ``token`` (a fencing number, rising per limiter key) and ``expires_at`` when the
    ticket holds a grant. Otherwise ``ahead`` waiters come first and, when the
    first waiter is held back only by the rate, ``retry_after`` says in how many
    seconds it fits (None: it waits for a release). ``woken``: other tickets to
    wake (promoted by this step, or now first in line).
    """

    token: int | None
    expires_at: float | None
    ahead: int
    retry_after: float | None
    woken: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitStats:
    """One limiter key now: holders (count and weight), waiters, weight granted in the
    current rate window (None without a rate)."""

    holders: int
    held: int
    waiters: int
    recent: int | None


class Backend(Protocol):
    """Storage for durable queues. ``queue`` arguments namespace everything."""

    url: str

    async def open(self) -> None:
        """Connect (and create the schema when the backend does so on first use)."""

    async def close(self) -> None:
        """Release connections."""

    async def migrate(self) -> list[str]:
        """Apply pending schema migrations; returns the names applied."""

    async def now(self) -> float:
        """The backend's clock, epoch seconds."""

    async def job_insert_many(
        self, queue: str, jobs: Sequence[NewJob], *, emit: Emit[list[JobRecord]] | None = None
    ) -> list[JobRecord]:
        """Insert atomically (all or none); a job into a full channel is stored ``dropped``.

        A job whose ``dedup_key`` matches a not-yet-started job of the same
        channel is not inserted: that job is returned with ``deduplicated``.
        """

    async def job_claim(
        self, params: ClaimParams, *, emit: Emit[list[Claim]] | None = None
    ) -> list[Claim]:
        """Claim due jobs: priority first, then round-robin over channels, within limits.

        Limits: the channel's and the queue's ``max_concurrency`` (jobs running),
        their ``rate`` (claims in the last ``rate[1]`` seconds, counted from a log
        of claim times the step keeps and prunes), and channel pauses.
        """

    async def job_heartbeat_many(
        self, queue: str, leases: Mapping[str, str], lease: float
    ) -> Heartbeat:
        """Extend the given ``{job_id: lease}`` by ``lease`` seconds where still ours."""

    async def job_finish_many(
        self, queue: str, finishes: Sequence[Finish], *, emit: Emit[FinishResult] | None = None
    ) -> FinishResult:
        """Apply each decision if its lease still matches; children of ended jobs follow."""

    async def job_cancel(
        self, queue: str, job_id: str, *, emit: Emit[CancelResult] | None = None
    ) -> CancelResult:
        """Cancel a job not yet running; flag a running one."""

    async def job_get(self, queue: str, job_id: str) -> JobRecord | None:
        """One job, or None."""

    async def job_list(
        self, queue: str, *, state: str | None, channel: str | None, limit: int
    ) -> list[JobRecord]:
        """Jobs, newest first, optionally of one state and/or channel."""

    async def job_expired(self, queue: str, limit: int) -> list[JobRecord]:
        """Running jobs whose lease (or max_processing) ran out."""

    async def job_release_due(
        self, queue: str, *, emit: Emit[list[Change]] | None = None
    ) -> list[Change]:
        """Move due ``waiting``/``retrying`` jobs (with no parent left) to ``queued``."""

    async def job_delete_finished(
        self,
        queue: str,
        older_than: float,
        *,
        state: str | None = None,
        emit: Emit[list[Change]] | None = None,
    ) -> list[Change]:
        """Delete jobs that ended more than ``older_than`` seconds ago (of ``state`` only)."""

    async def pool_stats(self, queue: str) -> PoolSnapshot:
        """Counts by state and channel, running jobs, limits."""

    async def channel_policy_set(self, queue: str, channel: str, policy: ChannelPolicy) -> None:
        """Set a channel's limits."""

    async def channel_policy_clear(self, queue: str, channel: str) -> None:
        """Remove a channel's limits."""

    async def queue_limits_set(
        self, queue: str, max_concurrency: int | None, rate: tuple[int, float] | None = None
    ) -> None:
        """Cap how many jobs of the queue run at once, and how many start per window
        (``rate``: (n, seconds)); None: no cap."""

    async def schedule_upsert(self, record: ScheduleRecord) -> None:
        """Create or replace a schedule (by queue, channel and name)."""

    async def schedule_delete(self, queue: str, channel: str, name: str) -> bool:
        """Remove a schedule; False if there was none."""

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Every schedule of the queue."""

    async def schedule_due(self, queue: str, limit: int) -> list[ScheduleRecord]:
        """Schedules whose next run has come."""

    async def schedule_fire(
        self,
        record: ScheduleRecord,
        next_run: float,
        job: NewJob,
        *,
        emit: Emit[JobRecord | None] | None = None,
    ) -> JobRecord | None:
        """Atomically move the schedule from ``record.next_run`` to ``next_run`` and
        insert ``job``; None (nothing inserted) if another coordinator fired it first."""

    async def leader_try(self, queue: str, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the named lease for ``owner``; True if ``owner`` holds it now."""

    async def event_read(self, queue: str, after: int, limit: int) -> list[Event]:
        """Events with ``seq`` above ``after``, oldest first."""

    async def event_last(self, queue: str) -> int:
        """The newest event's ``seq`` (0 when there is none)."""

    async def event_since(self, queue: str, time: float) -> int:
        """A cursor for the events stored from ``time`` on: the newest ``seq`` before it."""

    async def event_wait(self, queue: str, after: int, timeout: float) -> None:
        """Return when an event newer than ``after`` may exist, or after ``timeout``."""

    async def event_trim(self, queue: str, older_than: float) -> int:
        """Delete events older than ``older_than`` seconds, except the newest; returns how many."""

    async def work_wait(self, queue: str, timeout: float) -> None:
        """Return when new work may be due, or after ``timeout`` seconds."""

    def work_notify(self, queue: str) -> None:
        """Wake this process's ``work_wait`` callers (after a local enqueue)."""

    # ── the distributed Limiter (see queue/limiter.py) ─────────────────────
    # Each step is atomic and first *settles* the key: it drops holders and waiters
    # whose lease ended (the backend's clock) and the rate log older than the window,
    # then promotes waiters to holders from the front, first come first served, while
    # the first one fits under ``limit`` and ``rate`` (a waiter that does not fit stops
    # the promotion: nobody overtakes it). A step returns the tickets to wake: those
    # it promoted, and the new first waiter when the front changed (it may have a
    # rate wait to time).

    async def limiter_acquire(
        self, spec: LimitSpec, ticket: str, weight: int, wait: bool
    ) -> LimitTurn:
        """Settle; a new ``ticket`` joins the back of the line (and leaves it again at
        once when ``wait`` is False and it was not granted); a waiting one has its place
        renewed for ``spec.lease``. Returns the ticket's turn."""

    async def limiter_renew(self, spec: LimitSpec, tokens: Sequence[int]) -> list[bool]:
        """Extend the grants ``tokens`` by ``spec.lease``; False for a grant that ended
        (expired, or released)."""

    async def limiter_release(self, spec: LimitSpec, token: int) -> tuple[bool, tuple[str, ...]]:
        """End the grant ``token`` (refused, False, when it already ended: fenced), settle,
        and return the tickets to wake."""

    async def limiter_cancel(self, spec: LimitSpec, ticket: str) -> tuple[str, ...]:
        """The ticket's owner gave up: leave the line, or end its grant if it was promoted
        meanwhile; settle and return the tickets to wake."""

    async def limiter_stats(self, spec: LimitSpec) -> LimitStats:
        """Count holders, waiters and the rate window, leaving out what has ended
        (no promotion)."""

    def limiter_watch(self, ticket: str) -> asyncio.Event:
        """An event set whenever ``ticket`` may have been promoted or become first in
        line (by any process, pushed where the backend can), until ``limiter_unwatch``."""

    def limiter_unwatch(self, ticket: str) -> None:
        """Stop watching ``ticket``."""

    def limiter_woken(self, spec: LimitSpec, tickets: Sequence[str]) -> None:
        """Tickets a step of this process returned: wake the watchers here, and tell
        other processes where the step itself did not."""

    limiter_poll: float
    """Seconds a waiter first in line waits at most between checks (holders that died
    send nothing; a backend that cannot push also relies on it)."""


@runtime_checkable
class Hands(Protocol):
    """A backend that can hand new jobs straight to idle workers (Redis).

    ``job_inbox_open`` gives the worker an inbox: from then on, the worker's
    claims also register it as idle with the slots they left free (for
    ``idle_for`` seconds), and a step that makes jobs ready claims them for it,
    within every limit, and pushes them to the inbox; ``deliver`` gets them.
    A hand-off counts against the worker's claims until a later claim of the
    worker acknowledges it, so the worker is never given more than its free
    slots (should one arrive without a free slot anyway, after a failed claim,
    the worker hands it back). ``job_inbox_close`` unregisters the worker and
    returns once the jobs already pushed to it were delivered.
    """

    async def job_inbox_open(
        self, queue: str, worker: str, deliver: Callable[[list[Claim]], None], idle_for: float
    ) -> None:
        """Start taking ``worker``'s hand-offs and give each batch to ``deliver``."""

    async def job_inbox_close(self, queue: str, worker: str) -> None:
        """Stop registering ``worker`` as idle; deliver what was pushed to it; stop."""
