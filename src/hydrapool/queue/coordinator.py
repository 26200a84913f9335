"""Coordinator: the queue's maintenance, done in one place at a time.

Every worker runs one by default; a backend lease (``leader_try``) makes sure
only one acts at a time, whatever the number of workers and machines. Duties:

- rescue: a running job whose lease expired (its worker died or hung) or
  that ran past ``max_processing`` is retried if attempts remain, else failed;
- release: waiting and retrying jobs whose time has come become ``queued``
  (claims take due jobs anyway; this keeps states honest for observers);
- retention: ended jobs older than the queue's ``retention`` are deleted,
  and events older than its ``event_retention``.

Each duty emits the events of what it moved (lease_expired, released,
unlocked, a tick's enqueued, deleted).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hydrapool.backends.base import Change, Emit, Finish, JobRecord
from hydrapool.queue import events as ev
from hydrapool.queue._reports import Stored, store_finishes
from hydrapool.queue.queue import retry_from_json
from hydrapool.queue.schedules import next_run, tick_job

if TYPE_CHECKING:
    from hydrapool.queue.queue import Queue

__all__ = ["Coordinator", "CoordinatorReport"]

logger = logging.getLogger("hydrapool.coordinator")


@dataclass(frozen=True, slots=True)
class CoordinatorReport:
    """What one pass did (all zero when another coordinator holds the lease)."""

    leader: bool
    rescued: int = 0  # expired jobs sent back to retry
    failed: int = 0  # expired jobs with no attempt left
    released: int = 0
    deleted: int = 0
    fired: int = 0  # schedule ticks that enqueued a job
    events_deleted: int = 0


def rescue_decision(record: JobRecord) -> Finish:
    """Retry an expired job if attempts remain (with its back-off), else fail it."""
    why = "lease expired: its worker stopped heartbeating (crashed, killed or hung)"
    if record.max_processing is not None and record.started_at is not None:
        why = f"{why}, or it ran past max_processing={record.max_processing:g}s"
    assert record.lease is not None
    if record.attempts < record.max_attempts:
        retry = retry_from_json(json.loads(record.payload).get("retry"))
        delay = retry.delay(record.attempts) if retry is not None else 0.0
        return Finish(record.id, record.lease, "retrying", error=why, delay=delay, expired=True)
    return Finish(record.id, record.lease, "failed", error=why, expired=True)


def _tick_events(job: JobRecord | None, detail: str) -> list[ev.Event]:
    return [] if job is None else ev.for_inserts([job], detail=detail)


class Coordinator:
    """Maintenance for one queue; ``run()`` loops, ``run_once()`` does one pass."""

    def __init__(self, queue: Queue, *, interval: float = 1.0, owner: str | None = None) -> None:
        if not 0 < interval < 86400:
            raise ValueError(
                f"Coordinator interval must be between 0 and 86400 seconds, got {interval!r}"
            )
        self.queue = queue
        self.interval = interval
        self.owner = owner or f"coordinator-{uuid.uuid4().hex[:12]}"
        self._passes = 0

    async def run_once(self) -> CoordinatorReport:
        """One pass of every duty, if this coordinator holds the lease."""
        backend = await self.queue._backend_ready()
        name = self.queue.name
        if not await backend.leader_try(name, "coordinator", self.owner, self.interval * 3):
            return CoordinatorReport(leader=False)
        expired = await backend.job_expired(name, 500)
        decisions = [rescue_decision(r) for r in expired]
        stored = await self._apply(decisions, expired)
        self.queue._published(stored.events)
        applied = stored.applied
        rescued = sum(
            1 for d, ok in zip(decisions, applied, strict=True) if ok and d.state != "failed"
        )
        failed = sum(
            1 for d, ok in zip(decisions, applied, strict=True) if ok and d.state == "failed"
        )
        for decision, ok in zip(decisions, applied, strict=True):
            if ok:
                logger.warning("job %s: %s -> %s", decision.job_id, decision.error, decision.state)
                if decision.state == "failed":
                    self.queue._job_ended(decision.job_id)
        emit: Emit[list[Change]] = Emit(functools.partial(ev.for_changes, name))
        released = await backend.job_release_due(name, emit=emit)
        self.queue._published(emit.stored)
        fired = await self._fire_schedules()
        deleted: list[Change] = []
        trimmed = 0
        self._passes += 1
        if self._passes % 60 == 1:
            emit = Emit(functools.partial(ev.for_changes, name))
            deleted = await backend.job_delete_finished(name, self.queue.retention, emit=emit)
            self.queue._published(emit.stored)
            trimmed = await backend.event_trim(name, self.queue.event_retention)
        if rescued or failed or released or fired:
            self.queue._notify()
        return CoordinatorReport(True, rescued, failed, len(released), len(deleted), fired, trimmed)

    async def _fire_schedules(self) -> int:
        """Enqueue one job for every due schedule; missed ticks fire once."""
        backend = self.queue.backend
        fired = 0
        for record in await backend.schedule_due(self.queue.name, 100):
            after = max(record.next_run, await backend.now())
            emit = Emit(functools.partial(_tick_events, detail=f"schedule {record.name}"))
            try:
                job = await backend.schedule_fire(
                    record, next_run(record.spec, after), tick_job(record), emit=emit
                )
            except Exception:
                logger.exception("schedule %r could not fire", record.name)
                continue
            if job is not None:
                fired += 1
                self.queue._published(emit.stored)
        return fired

    async def _apply(self, decisions: list[Finish], jobs: list[JobRecord]) -> Stored:
        """Store rescue decisions; one bad decision must not block the others."""
        if not decisions:
            return Stored([])
        return await store_finishes(self.queue.backend, self.queue.name, decisions, jobs, None)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run passes every ``interval`` seconds until ``stop`` is set (or forever)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # a failed pass is retried on the next one
                logger.exception("coordinator pass failed")
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass
