"""Durable schedules: named recurring enqueues, fired by the coordinator.

The core owns the policy (the cron arithmetic, skipping missed ticks); the
backend advances a schedule with a compare-and-set on its ``next_run`` and
inserts the tick's job in the same atomic step, so a tick enqueues exactly
once however many coordinators run.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from hydrapool.backends.base import NewJob, ScheduleRecord
from hydrapool.cron import Cron, zone_of

__all__ = ["Schedule", "next_run", "spec_json", "tick_job"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """A snapshot of one durable schedule (``queue.schedules()``)."""

    name: str
    channel: str
    task: str
    cron: str | None
    every: float | None
    tz: str | None
    next_run: datetime
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def spec_json(cron: str | None, every: float | timedelta | None, tz: str | tzinfo | None) -> str:
    """Validate a schedule's timing and encode it (exactly one of cron/every)."""
    if (cron is None) == (every is None):
        raise ValueError(
            f"give exactly one of every= or cron=, got every={every!r} and cron={cron!r}"
        )
    if cron is not None:
        zone = zone_of(tz)
        Cron(cron, tz=zone)  # refuses a bad or impossible expression now
        key = getattr(zone, "key", None) if zone is not None else None
        if zone is not None and key is None:
            raise ValueError(f"a durable schedule needs a zone name for tz=, got {tz!r}")
        return json.dumps({"cron": cron, "tz": key})
    assert every is not None
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"every must be seconds (a number or timedelta), got {every!r}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"every must be a finite number of seconds > 0, got {every!r}")
    return json.dumps({"every": float(seconds)})


def next_run(spec: str, now: float) -> float:
    """The first tick strictly after ``now`` (missed ticks are skipped, not replayed)."""
    data = json.loads(spec)
    if data.get("every") is not None:
        return now + float(data["every"])
    cron = Cron(data["cron"], tz=data.get("tz") or "UTC")
    return cron.next_after(datetime.fromtimestamp(now, UTC)).timestamp()


def tick_job(record: ScheduleRecord) -> NewJob:
    """The job one tick of ``record`` enqueues."""
    return NewJob(
        id=uuid.uuid4().hex,
        task=record.task,
        channel=record.channel,
        payload=record.payload,
        priority=record.priority,
        max_attempts=record.max_attempts,
        max_processing=record.max_processing,
    )


def snapshot(record: ScheduleRecord) -> Schedule:
    """The public view of a stored schedule."""
    spec = json.loads(record.spec)
    payload = json.loads(record.payload)
    return Schedule(
        name=record.name,
        channel=record.channel,
        task=record.task,
        cron=spec.get("cron"),
        every=spec.get("every"),
        tz=spec.get("tz"),
        next_run=datetime.fromtimestamp(record.next_run, UTC),
        args=tuple(payload.get("args", ())),
        kwargs=dict(payload.get("kwargs", {})),
    )
