"""memory:// — a backend in this process's memory, for tests and single-process use.

Every method runs without awaiting in between, so each is atomic on the event
loop; the semantics are the reference the other backends are tested against.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from hydrapool.backends import _limits
from hydrapool.backends._deps import Parents, initial_state, parents_of, with_aliases
from hydrapool.backends._fair import Candidates, pick
from hydrapool.backends.base import (
    CancelResult,
    Change,
    ChannelPolicy,
    Claim,
    ClaimParams,
    Emit,
    Finish,
    FinishResult,
    Heartbeat,
    JobRecord,
    LimitSpec,
    LimitStats,
    LimitTurn,
    NewJob,
    PoolSnapshot,
    ScheduleRecord,
    stamp,
)
from hydrapool.queue.events import Event

WAITING_STATES = ("waiting", "queued", "retrying")  # not running, not ended
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "dropped")
T = TypeVar("T")
MAX_EVENTS = 100_000  # per queue: the oldest go first when no coordinator trims them


# Limiter state is shared by every memory:// backend of this process with the same
# URL (so several Limiter objects on "memory://" limit together); queues are not.
_LIMITS: dict[str, dict[tuple[str, str], _limits.KeyState]] = {}
_WATCHERS: dict[str, dict[str, asyncio.Event]] = {}


def _room(data: _QueueData, channel: str | None, rate: tuple[int, float] | None, now: float) -> int:
    """Starts a rate still allows now (pruning its log); a large number without a rate."""
    if rate is None:
        return 1 << 62
    log = data.starts.setdefault(channel, deque())
    while log and log[0] <= now - rate[1]:
        log.popleft()
    return rate[0] - len(log)


def _pause(data: _QueueData, channel: str, until: float) -> None:
    """Pause a channel until ``until`` (a longer pause already set stays)."""
    if until > data.paused.get(channel, 0.0) and until > time.time():
        data.paused[channel] = until


def _change(job: JobRecord, new: str, **more: str | None) -> Change:
    return Change(job.id, job.channel, job.task, job.attempts, job.state, new, **more)


@dataclass(slots=True)
class _QueueData:
    jobs: dict[str, JobRecord]
    order: dict[str, int]  # job id -> arrival number (FIFO)
    policies: dict[str, ChannelPolicy]
    last_served: dict[str, int]
    counter: int = 0
    max_concurrency: int | None = None
    schedules: dict[tuple[str, str], ScheduleRecord] = field(default_factory=dict)
    parents_left: dict[str, int] = field(default_factory=dict)  # job -> parents not yet done
    children: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)  # (child, cascade)
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    event_seq: int = 0
    rate: tuple[int, float] | None = None
    starts: dict[str | None, deque[float]] = field(default_factory=dict)  # None: the queue's
    paused: dict[str, float] = field(default_factory=dict)  # channel -> until


class MemoryBackend:
    """All queues of this backend live in one process; ``memory://`` URLs share nothing."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._queues: dict[str, _QueueData] = {}
        self._arrivals = itertools.count()
        self._leaders: dict[tuple[str, str], tuple[str, float]] = {}
        self._wakers: dict[str, asyncio.Event] = {}
        self._event_wakers: dict[str, asyncio.Event] = {}

    def _q(self, queue: str) -> _QueueData:
        data = self._queues.get(queue)
        if data is None:
            data = self._queues[queue] = _QueueData({}, {}, {}, {})
        return data

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release."""

    async def migrate(self) -> list[str]:
        """No schema."""
        return []

    async def now(self) -> float:
        """``time.time()``."""
        return time.time()

    # ── jobs ───────────────────────────────────────────────────────────────
    async def job_insert_many(
        self, queue: str, jobs: Sequence[NewJob], *, emit: Emit[list[JobRecord]] | None = None
    ) -> list[JobRecord]:
        """Insert all; a job into a full channel is stored ``dropped``."""
        records = self._insert(queue, jobs)
        self._emit(queue, emit, records)
        return records

    def _insert(self, queue: str, jobs: Sequence[NewJob]) -> list[JobRecord]:
        data = self._q(queue)
        now = time.time()
        sizes: dict[str, int] = {}
        records = []
        pending: dict[tuple[str, str], JobRecord] = {}  # dedup keys inserted by this call
        alias: dict[str, str] = {}  # a new id that was deduplicated -> its twin's id
        waits: dict[str, tuple[str, ...]] = {}  # new id -> parents it waits for
        for new in jobs:
            if new.id in data.jobs:
                raise ValueError(f"job id {new.id!r} already exists in queue {queue!r}")
            new = with_aliases(new, alias)
            twin = self._dedup_twin(data, pending, new)
            if twin is not None:
                alias[new.id] = twin.id
                records.append(replace(twin, deduplicated=True))
                continue
            parents = self._parents(data, queue, new, records)
            size = sizes.get(new.channel)
            if size is None:
                size = self._channel_size(data, new.channel)
            policy = data.policies.get(new.channel)
            full = policy is not None and policy.max_size is not None and size >= policy.max_size
            run_at = new.run_at if new.run_at is not None else now + new.delay
            state = initial_state(full, run_at, now, parents)
            sizes[new.channel] = size if state in ("dropped", "failed") else size + 1
            record = JobRecord.new(queue, new, state, now, run_at, parents.doomed)
            if state not in ("dropped", "failed") and parents.waiting_for:
                waits[new.id] = parents.waiting_for
            records.append(record)
            if new.dedup_key is not None and state != "dropped":
                pending[(new.channel, new.dedup_key)] = record
        self._store(data, records, jobs, waits)
        return records

    @staticmethod
    def _channel_size(data: _QueueData, channel: str) -> int:
        return sum(
            1 for j in data.jobs.values() if j.channel == channel and j.state in WAITING_STATES
        )

    def _store(
        self,
        data: _QueueData,
        records: list[JobRecord],
        jobs: Sequence[NewJob],
        waits: dict[str, tuple[str, ...]],
    ) -> None:
        """Make a validated batch visible (nothing before: the batch is all or nothing)."""
        for record, new in zip(records, jobs, strict=True):
            if record.deduplicated:
                continue
            data.jobs[record.id] = record
            data.order[record.id] = next(self._arrivals)
            for parent in waits.get(record.id, ()):
                data.children.setdefault(parent, []).append((record.id, new.cascade))
            if record.id in waits:
                data.parents_left[record.id] = len(waits[record.id])

    @staticmethod
    def _parents(data: _QueueData, queue: str, new: NewJob, earlier: list[JobRecord]) -> Parents:
        batch = {r.id: r for r in earlier if not r.deduplicated}
        states: dict[str, tuple[str, float | None] | None] = {}
        for parent in new.depends_on:
            job = data.jobs.get(parent) or batch.get(parent)
            states[parent] = None if job is None else (job.state, job.started_at)
        return parents_of(queue, new, states)

    @staticmethod
    def _resolve(data: _QueueData, ended: list[tuple[str, str]], now: float) -> list[Change]:
        """Tell the children of jobs that just ended: release them, or fail them in cascade."""
        changes: list[Change] = []
        pending = list(ended)
        while pending:
            parent, state = pending.pop()
            for child, cascade in data.children.pop(parent, []):
                job = data.jobs.get(child)
                if job is None or job.state not in ("waiting", "queued"):
                    continue
                told = {"parent": parent, "parent_state": state}
                if state == "succeeded" or not cascade:
                    left = data.parents_left.get(child, 1) - 1
                    if left > 0:
                        data.parents_left[child] = left
                        changes.append(_change(job, job.state, **told))
                        continue
                    data.parents_left.pop(child, None)
                    new = "queued" if job.state == "waiting" and job.run_at <= now else job.state
                    data.jobs[child] = replace(job, state=new)
                    changes.append(_change(job, new, **told))
                    continue
                data.parents_left.pop(child, None)
                error = f"dependency {parent} ended {state}"
                data.jobs[child] = replace(job, state="failed", finished_at=now, error=error)
                changes.append(_change(job, "failed", error=error, **told))
                pending.append((child, "failed"))
        return changes

    @staticmethod
    def _dedup_twin(
        data: _QueueData, pending: dict[tuple[str, str], JobRecord], new: NewJob
    ) -> JobRecord | None:
        """A not-yet-started job of the same channel and dedup key, if any."""
        if new.dedup_key is None:
            return None
        twin = pending.get((new.channel, new.dedup_key))
        if twin is not None:
            return twin
        for job in data.jobs.values():
            if (
                job.dedup_key == new.dedup_key
                and job.channel == new.channel
                and job.started_at is None
                and job.state in ("waiting", "queued")
            ):
                return job
        return None

    def _candidates(self, data: _QueueData, params: ClaimParams, now: float) -> list[Candidates]:
        running: dict[str, int] = {}
        due: dict[str, list[tuple[int, int, str]]] = {}
        for job in data.jobs.values():
            if job.state == "running":
                running[job.channel] = running.get(job.channel, 0) + 1
            elif (
                job.state in WAITING_STATES
                and job.run_at <= now
                and not data.parents_left.get(job.id)
                and (params.channels is None or job.channel in params.channels)
            ):
                due.setdefault(job.channel, []).append((-job.priority, data.order[job.id], job.id))
        out = []
        for channel, jobs in due.items():
            if data.paused.get(channel, 0.0) > now:
                continue
            jobs.sort()
            policy = data.policies.get(channel)
            limit = policy.max_concurrency if policy else None
            capacity = None if limit is None else limit - running.get(channel, 0)
            if policy is not None and policy.rate is not None:
                room = _room(data, channel, policy.rate, now)
                capacity = room if capacity is None else min(capacity, room)
            out.append(
                Candidates(
                    channel,
                    data.last_served.get(channel, 0),
                    capacity,
                    [(-p, job_id) for p, _, job_id in jobs],
                )
            )
        return out

    async def job_claim(
        self, params: ClaimParams, *, emit: Emit[list[Claim]] | None = None
    ) -> list[Claim]:
        """Claim due jobs within the channel and queue limits."""
        claims = self._claim(params)
        self._emit(params.queue, emit, claims)
        return claims

    def _claim(self, params: ClaimParams) -> list[Claim]:
        data = self._q(params.queue)
        now = time.time()
        slots = params.limit
        if data.max_concurrency is not None:
            running = sum(1 for j in data.jobs.values() if j.state == "running")
            slots = min(slots, data.max_concurrency - running)
        slots = min(slots, _room(data, None, data.rate, now))
        if slots <= 0:
            return []
        chosen, served, data.counter = pick(
            self._candidates(data, params, now), slots, data.counter
        )
        data.last_served.update(served)
        for channel, _ in chosen:
            policy = data.policies.get(channel)
            for which, rate in ((channel, policy.rate if policy else None), (None, data.rate)):
                if rate is not None:
                    data.starts.setdefault(which, deque()).append(now)
        claims = []
        expires = now + params.lease
        for _, job_id in chosen:
            token = uuid.uuid4().hex
            was = data.jobs[job_id].state
            job = replace(
                data.jobs[job_id],
                state="running",
                attempts=data.jobs[job_id].attempts + 1,
                started_at=now,
                lease=token,
                lease_expires_at=expires,
                worker=params.worker,
            )
            data.jobs[job_id] = job
            claims.append(Claim(job, token, expires, was))
        return claims

    async def job_heartbeat_many(
        self, queue: str, leases: Mapping[str, str], lease: float
    ) -> Heartbeat:
        """Extend the leases that are still ours and unexpired."""
        data = self._q(queue)
        now = time.time()
        kept, cancel = set(), set()
        for job_id, token in leases.items():
            job = data.jobs.get(job_id)
            if job is None or job.state != "running" or job.lease != token:
                continue
            if job.lease_expires_at is not None and job.lease_expires_at < now:
                continue
            data.jobs[job_id] = replace(job, lease_expires_at=now + lease)
            kept.add(job_id)
            if job.cancel_requested:
                cancel.add(job_id)
        return Heartbeat(frozenset(kept), frozenset(cancel))

    async def job_finish_many(
        self, queue: str, finishes: Sequence[Finish], *, emit: Emit[FinishResult] | None = None
    ) -> FinishResult:
        """Apply each decision if its lease still matches (and is valid, or expired for rescue)."""
        data = self._q(queue)
        now = time.time()
        followed: list[Change] = []
        states = [self._finish_one(data, f, now, followed) for f in finishes]
        result = FinishResult(states, followed)
        self._emit(queue, emit, result)
        return result

    def _finish_one(
        self, data: _QueueData, finish: Finish, now: float, followed: list[Change]
    ) -> str | None:
        job = data.jobs.get(finish.job_id)
        if job is None or job.state != "running" or job.lease != finish.lease:
            return None
        expired = job.lease_expires_at is not None and job.lease_expires_at < now
        if expired != finish.expired:
            return None
        state = finish.state
        if job.cancel_requested and state in ("retrying", "queued"):
            state = "cancelled"  # a job someone asked to cancel is not tried again
        # The worker stays recorded: who ran the last attempt.
        changes: dict[str, object] = {"state": state, "lease": None}
        if state == "cancelled" and finish.state != "cancelled":
            changes["finished_at"] = now
        if state in TERMINAL_STATES and state == finish.state:
            # A success keeps the last failure's text: how the job got there stays visible.
            error = finish.error if finish.error is not None else job.error
            changes.update(finished_at=now, result=finish.result, error=error)
        elif finish.state == "retrying":
            changes.update(run_at=now + finish.delay, error=finish.error)
        elif finish.state == "queued":  # handed back: the attempt is refunded
            changes.update(attempts=job.attempts - 1, run_at=now, started_at=None)
            _pause(data, job.channel, now + finish.pause)
            if job.dedup_key is not None and any(  # a twin took the key while it ran
                t.dedup_key == job.dedup_key
                and t.channel == job.channel
                and t.started_at is None
                and t.state in ("waiting", "queued")
                for t in data.jobs.values()
            ):
                changes["dedup_key"] = None
        data.jobs[job.id] = replace(job, lease_expires_at=None, **changes)  # type: ignore[arg-type]
        if state in TERMINAL_STATES:
            followed += self._resolve(data, [(job.id, state)], now)
        return state

    async def job_cancel(
        self, queue: str, job_id: str, *, emit: Emit[CancelResult] | None = None
    ) -> CancelResult:
        """Cancel a waiting job; flag a running one for its worker."""
        result = self._cancel(queue, job_id)
        self._emit(queue, emit, result)
        return result

    def _cancel(self, queue: str, job_id: str) -> CancelResult:
        data = self._q(queue)
        job = data.jobs.get(job_id)
        if job is None:
            return CancelResult(None)
        if job.state in WAITING_STATES:
            job = replace(job, state="cancelled", finished_at=time.time())
            data.jobs[job_id] = job
            data.parents_left.pop(job_id, None)
            return CancelResult(
                job, True, self._resolve(data, [(job_id, "cancelled")], time.time())
            )
        if job.state == "running":
            job = replace(job, cancel_requested=True)
            data.jobs[job_id] = job
        return CancelResult(job)

    async def job_get(self, queue: str, job_id: str) -> JobRecord | None:
        """One job, or None."""
        return self._q(queue).jobs.get(job_id)

    async def job_list(
        self, queue: str, *, state: str | None, channel: str | None, limit: int
    ) -> list[JobRecord]:
        """Newest first."""
        data = self._q(queue)
        jobs = [
            j
            for j in data.jobs.values()
            if (state is None or j.state == state) and (channel is None or j.channel == channel)
        ]
        jobs.sort(key=lambda j: data.order[j.id], reverse=True)
        return jobs[:limit]

    async def job_expired(self, queue: str, limit: int) -> list[JobRecord]:
        """Running jobs past their lease or their max_processing."""
        now = time.time()
        out = []
        for job in self._q(queue).jobs.values():
            if job.state != "running":
                continue
            lease_over = job.lease_expires_at is not None and job.lease_expires_at < now
            too_long = (
                job.max_processing is not None
                and job.started_at is not None
                and job.started_at + job.max_processing < now
            )
            if lease_over or too_long:
                if too_long and not lease_over:  # expire the lease so the rescue fences it
                    job = replace(job, lease_expires_at=now - 1e-6)
                    self._q(queue).jobs[job.id] = job
                out.append(job)
            if len(out) >= limit:
                break
        return out

    async def job_release_due(
        self, queue: str, *, emit: Emit[list[Change]] | None = None
    ) -> list[Change]:
        """waiting/retrying -> queued once due (and no parent is left to wait for)."""
        data = self._q(queue)
        now = time.time()
        moved = []
        for job in list(data.jobs.values()):
            if (
                job.state in ("waiting", "retrying")
                and job.run_at <= now
                and not data.parents_left.get(job.id)
            ):
                data.jobs[job.id] = replace(job, state="queued")
                moved.append(_change(job, "queued"))
        self._emit(queue, emit, moved)
        return moved

    async def job_delete_finished(
        self,
        queue: str,
        older_than: float,
        *,
        state: str | None = None,
        emit: Emit[list[Change]] | None = None,
    ) -> list[Change]:
        """Delete jobs that ended long enough ago (of one state, if given)."""
        data = self._q(queue)
        cutoff = time.time() - older_than
        old = [
            j
            for j in data.jobs.values()
            if j.finished_at is not None
            and j.finished_at < cutoff
            and (state is None or j.state == state)
        ]
        for job in old:
            del data.jobs[job.id]
            del data.order[job.id]
        deleted = [_change(job, "deleted") for job in old]
        self._emit(queue, emit, deleted)
        return deleted

    async def pool_stats(self, queue: str) -> PoolSnapshot:
        """Counts by state and channel, running jobs, limits."""
        data = self._q(queue)
        counts: dict[str, int] = {}
        channels: dict[str, dict[str, int]] = {}
        running = []
        for job in data.jobs.values():
            counts[job.state] = counts.get(job.state, 0) + 1
            per = channels.setdefault(job.channel, {})
            per[job.state] = per.get(job.state, 0) + 1
            if job.state == "running":
                running.append(job)
        paused = {c: until for c, until in data.paused.items() if until > time.time()}
        return PoolSnapshot(
            counts, channels, running, data.max_concurrency, dict(data.policies), data.rate, paused
        )

    async def channel_policy_set(self, queue: str, channel: str, policy: ChannelPolicy) -> None:
        """Set a channel's limits."""
        self._q(queue).policies[channel] = policy

    async def channel_policy_clear(self, queue: str, channel: str) -> None:
        """Remove a channel's limits."""
        self._q(queue).policies.pop(channel, None)

    async def queue_limits_set(
        self, queue: str, max_concurrency: int | None, rate: tuple[int, float] | None = None
    ) -> None:
        """Cap the queue."""
        self._q(queue).max_concurrency = max_concurrency
        self._q(queue).rate = rate

    # ── schedules ──────────────────────────────────────────────────────────
    async def schedule_upsert(self, record: ScheduleRecord) -> None:
        """Create or replace a schedule."""
        key = (record.channel, record.name)
        old = self._q(record.queue).schedules.get(key)
        created = old.created_at if old is not None else time.time()
        # Declaring the same schedule again (every start of an app) keeps its next tick.
        due = old.next_run if old is not None and old.spec == record.spec else record.next_run
        self._q(record.queue).schedules[key] = replace(record, created_at=created, next_run=due)

    async def schedule_delete(self, queue: str, channel: str, name: str) -> bool:
        """Remove a schedule."""
        return self._q(queue).schedules.pop((channel, name), None) is not None

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Every schedule of the queue."""
        return [r for _, r in sorted(self._q(queue).schedules.items())]

    async def schedule_due(self, queue: str, limit: int) -> list[ScheduleRecord]:
        """Schedules whose next run has come."""
        now = time.time()
        due = [r for r in self._q(queue).schedules.values() if r.next_run <= now]
        return sorted(due, key=lambda r: r.next_run)[:limit]

    async def schedule_fire(
        self,
        record: ScheduleRecord,
        next_run: float,
        job: NewJob,
        *,
        emit: Emit[JobRecord | None] | None = None,
    ) -> JobRecord | None:
        """Advance the schedule (compare-and-set on next_run) and insert its job."""
        schedules = self._q(record.queue).schedules
        current = schedules.get((record.channel, record.name))
        if current is None or current.next_run != record.next_run:
            return None
        schedules[(record.channel, record.name)] = replace(current, next_run=next_run)
        inserted = self._insert(record.queue, [job])[0]
        self._emit(record.queue, emit, inserted)
        return inserted

    async def leader_try(self, queue: str, name: str, owner: str, ttl: float) -> bool:
        """Take or renew a named lease."""
        now = time.time()
        holder = self._leaders.get((queue, name))
        if holder is None or holder[0] == owner or holder[1] < now:
            self._leaders[(queue, name)] = (owner, now + ttl)
            return True
        return False

    # ── events ─────────────────────────────────────────────────────────────
    def _emit(self, queue: str, emit: Emit[T] | None, result: T) -> None:
        """Number, date and keep the core's events for a step (the oldest go beyond
        MAX_EVENTS per queue)."""
        if emit is None:
            return
        events = emit.make(result)
        if not events:
            return
        data = self._q(queue)
        out = stamp(events, data.event_seq + 1, time.time())
        data.event_seq += len(out)
        data.events.extend(out)
        emit.stored = out
        waker = self._event_wakers.get(queue)
        if waker is not None:
            waker.set()

    async def event_read(self, queue: str, after: int, limit: int) -> list[Event]:
        """Events after ``after``, oldest first."""
        events = self._q(queue).events
        if not events or events[-1].seq <= after:
            return []
        start = max(0, len(events) - (events[-1].seq - after))  # seqs are consecutive
        return list(itertools.islice(events, start, start + limit))

    async def event_last(self, queue: str) -> int:
        """The newest event's number."""
        return self._q(queue).event_seq

    async def event_since(self, queue: str, time: float) -> int:
        """The newest event's number stored before ``time`` (0 if none)."""
        for event in reversed(self._q(queue).events):
            if event.time < time:
                return event.seq
        return 0

    async def event_wait(self, queue: str, after: int, timeout: float) -> None:
        """Wait for an event after ``after`` (or the timeout)."""
        events = self._q(queue).events
        if events and events[-1].seq > after:
            return
        waker = self._event_wakers.setdefault(queue, asyncio.Event())
        waker.clear()
        try:
            await asyncio.wait_for(waker.wait(), timeout)
        except TimeoutError:
            pass

    async def event_trim(self, queue: str, older_than: float) -> int:
        """Forget events older than ``older_than`` seconds."""
        events = self._q(queue).events
        cutoff = time.time() - older_than
        trimmed = 0
        while len(events) > 1 and events[0].time < cutoff:  # the newest stays, like SQLite's
            events.popleft()
            trimmed += 1
        return trimmed

    async def work_wait(self, queue: str, timeout: float) -> None:
        """Wait for a local enqueue (or the timeout)."""
        event = self._wakers.setdefault(queue, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        event.clear()

    def work_notify(self, queue: str) -> None:
        """Wake this process's waiters."""
        event = self._wakers.get(queue)
        if event is not None:
            event.set()

    # ── the Limiter (one process: the steps of backends/_limits.py, no awaits) ──
    limiter_poll = 1.0

    def _limit_key(self, spec: LimitSpec) -> _limits.KeyState:
        keys = _LIMITS.setdefault(self.url, {})
        state = keys.get((spec.name, spec.key))
        if state is None:
            state = keys[(spec.name, spec.key)] = _limits.KeyState()
        return state

    async def limiter_acquire(
        self, spec: LimitSpec, ticket: str, weight: int, wait: bool
    ) -> LimitTurn:
        """One step on the key's state."""
        return _limits.acquire(self._limit_key(spec), spec, ticket, weight, wait, time.time())

    async def limiter_renew(self, spec: LimitSpec, tokens: Sequence[int]) -> list[bool]:
        """Extend live grants."""
        return _limits.renew(self._limit_key(spec), spec, tokens, time.time())

    async def limiter_release(self, spec: LimitSpec, token: int) -> tuple[bool, tuple[str, ...]]:
        """End a live grant (fenced)."""
        done, woken = _limits.release(self._limit_key(spec), spec, token, time.time())
        return done, tuple(woken)

    async def limiter_cancel(self, spec: LimitSpec, ticket: str) -> tuple[str, ...]:
        """Leave the line (or give back a grant that came meanwhile)."""
        return tuple(_limits.cancel(self._limit_key(spec), spec, ticket, time.time()))

    async def limiter_stats(self, spec: LimitSpec) -> LimitStats:
        """Counts now."""
        return _limits.stats(self._limit_key(spec), spec, time.time())

    def limiter_watch(self, ticket: str) -> asyncio.Event:
        """The ticket's wake-up event."""
        return _WATCHERS.setdefault(self.url, {}).setdefault(ticket, asyncio.Event())

    def limiter_unwatch(self, ticket: str) -> None:
        """Forget the ticket's event."""
        _WATCHERS.get(self.url, {}).pop(ticket, None)

    def limiter_woken(self, spec: LimitSpec, tickets: Sequence[str]) -> None:
        """Set the events of ``tickets`` (all waiters are in this process)."""
        watchers = _WATCHERS.get(self.url, {})
        for ticket in tickets:
            event = watchers.get(ticket)
            if event is not None:
                event.set()
