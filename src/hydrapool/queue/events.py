"""Job events: every transition of a durable job, as ``hp.Event`` records.

    async for event in queue.events(types={"failed"}, channel="emails"):
        print(event.type, event.job_id, event.error)

    stop = queue.on_event(lambda event: print(event))

The core makes events from what each backend step reports (the claims, the
state each finish ended in, the children a finish released or failed) and
hands them to the backend, which numbers them (``seq``), dates them with its
clock and keeps them for ``event_retention`` seconds. Subscribers follow that
log with a cursor, so every subscriber sees the same events in the same order,
in this process at once and in other processes as soon as the backend lets
them know (SQLite: a few milliseconds).

Names follow HydraMQ's list (``MESSAGE_LOCKED`` is ``retrying`` here and
``MESSAGE_PROCESSED_SUCCESS`` is ``succeeded``; ``EventType("locked")`` and the
``MESSAGE_*`` spellings are accepted). Leaf module: the backends import it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hydrapool.backends.base import Change, Claim, Finish, JobRecord

__all__ = ["Event", "EventType"]


class EventType(enum.StrEnum):
    """What happened to a job."""

    ENQUEUED = "enqueued"  # stored (by an enqueue or a schedule's tick)
    DROPPED = "dropped"  # refused at enqueue: its channel was at max_size
    RELEASED = "released"  # became runnable: its delay passed and its parents succeeded
    DEQUEUED = "dequeued"  # claimed by a worker (``attempt`` is the try it starts)
    SUCCEEDED = "succeeded"  # the try succeeded
    FAILED = "failed"  # the try failed (``error``); retrying or finalized follows
    RETRYING = "retrying"  # HydraMQ's "locked": backing off before the next try
    UNLOCKED = "unlocked"  # the back-off is over: runnable again
    REQUEUED = "requeued"  # handed back by a stopping worker, attempt refunded
    CANCELLED = "cancelled"  # cancelled before or while running
    LEASE_EXPIRED = "lease_expired"  # its worker stopped heartbeating; the coordinator took over
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # failed with no attempt left
    DEPENDENCY_RESOLVED = "dependency_resolved"  # one parent ended (``detail`` says which, how)
    DEPENDENCIES_UNMET = "dependencies_unmet"  # a parent ended without success: never runs
    FINALIZED = "finalized"  # reached its end state (``detail``); kept until retention
    DELETED = "deleted"  # removed by retention or purge
    REPORT_REFUSED = "report_refused"  # a worker reported on a lease it no longer held

    __hash__ = str.__hash__  # equal to its text, so it hashes like it: T.FAILED in {"failed"}

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> EventType | None:
        if not isinstance(value, str):
            return None
        name = value.lower().removeprefix("message_")
        name = _HYDRAMQ_NAMES.get(name, name)
        for member in cls:
            if member.value == name:
                return member
        return None


_HYDRAMQ_NAMES = {
    "locked": "retrying",
    "processed_success": "succeeded",
    "processed_fail": "failed",
    "dependency_resolgved": "dependency_resolved",  # sic, in HydraMQ's README
}


@dataclass(frozen=True, slots=True)
class Event:
    """One transition of one job.

    ``seq`` numbers the queue's events in the order they were stored (pass it
    as ``queue.events(after=seq)`` to resume); ``time`` is the backend's clock
    in epoch seconds; ``attempt`` is the job's tries so far; ``worker_id`` the
    worker involved, if any; ``error`` the failure text; ``detail`` a short
    note (the end state of ``finalized``, the parent of ``dependency_resolved``,
    the back-off of ``retrying``, the schedule of a tick's ``enqueued``).
    """

    type: EventType
    job_id: str
    queue: str
    channel: str
    task: str
    attempt: int = 0
    time: float = 0.0
    worker_id: str | None = None
    error: str | None = None
    detail: str | None = None
    seq: int = 0


def event_types(types: Iterable[EventType | str] | EventType | str | None) -> frozenset[EventType]:
    """Parse a ``types=`` filter, naming the bad value and the valid ones."""
    if types is None:
        return frozenset()
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, Iterable):
        raise TypeError(f"types must be an event type or a collection of them, got {types!r}")
    out = set()
    for value in types:
        try:
            out.add(EventType(value))
        except ValueError:
            valid = ", ".join(t.value for t in EventType)
            raise ValueError(f"unknown event type {value!r}: use one of {valid}") from None
    if not out:
        raise ValueError("types is empty, so nothing would match: pass None for every type")
    return frozenset(out)


# ── making events from what the backend reported ─────────────────────────────
def _make(
    kind: EventType,
    queue: str,
    job: Any,
    attempt: int,
    *,
    worker: str | None = None,
    error: str | None = None,
    detail: str | None = None,
) -> Event:
    return Event(kind, job.id, queue, job.channel, job.task, attempt, 0.0, worker, error, detail)


def for_inserts(records: Sequence[JobRecord], detail: str | None = None) -> list[Event]:
    """A new job was stored (or dropped, or failed at once by a parent that had ended)."""
    out: list[Event] = []
    for r in records:
        if r.deduplicated:
            continue
        if r.state == "dropped":
            out.append(_make(EventType.DROPPED, r.queue, r, 0, error=r.error, detail=detail))
        else:
            out.append(_make(EventType.ENQUEUED, r.queue, r, 0, detail=detail))
        if r.state == "failed":
            out.append(_make(EventType.DEPENDENCIES_UNMET, r.queue, r, 0, error=r.error))
        if r.state in ("dropped", "failed"):
            out.append(_make(EventType.FINALIZED, r.queue, r, 0, detail=r.state))
    return out


def for_claims(claims: Sequence[Claim], worker: str) -> list[Event]:
    """Claimed: runnable first (if the release pass had not got there), then dequeued."""
    out: list[Event] = []
    for c in claims:
        job = c.job
        if c.was in _RELEASED_BY:
            out.append(_make(_RELEASED_BY[c.was], job.queue, job, job.attempts - 1))
        out.append(_make(EventType.DEQUEUED, job.queue, job, job.attempts, worker=worker))
    return out


_RELEASED_BY = {"waiting": EventType.RELEASED, "retrying": EventType.UNLOCKED}


def for_finish(
    finish: Finish, state: str | None, job: JobRecord, worker: str | None
) -> list[Event]:
    """A worker's (or the coordinator's) decision about a running job, and where it ended."""
    # Handed back: the attempt is refunded, even when a cancel request ended it instead.
    n = job.attempts - 1 if finish.state == "queued" else job.attempts

    def make(kind: EventType, **kw: Any) -> Event:
        return _make(kind, job.queue, job, n, worker=worker, **kw)

    if state is None:
        return [make(EventType.REPORT_REFUSED, error=_refusal(finish))]
    out = [make(EventType.LEASE_EXPIRED, error=finish.error)] if finish.expired else []
    if finish.state in ("failed", "retrying"):
        out.append(make(EventType.FAILED, error=finish.error))
    if state == "retrying":
        out.append(make(EventType.RETRYING, error=finish.error, detail=f"{finish.delay:g}s"))
    elif state == "failed" and n >= job.max_attempts:
        out.append(make(EventType.ATTEMPTS_EXHAUSTED, error=finish.error))
    elif state in _ENDED_AS:
        out.append(make(_ENDED_AS[state]))
    if state in ("succeeded", "failed", "cancelled"):
        out.append(make(EventType.FINALIZED, detail=state))
    return out


_ENDED_AS = {
    "succeeded": EventType.SUCCEEDED,
    "queued": EventType.REQUEUED,
    "cancelled": EventType.CANCELLED,
}


def _refusal(finish: Finish) -> str:
    if finish.expired:
        return f"rescue ({finish.state}) refused: the job had moved on meanwhile"
    return f"{finish.state} report refused: the lease was no longer held"


def for_cancel(job: JobRecord) -> list[Event]:
    """A job that had not started was cancelled."""
    return [
        _make(EventType.CANCELLED, job.queue, job, job.attempts),
        _make(EventType.FINALIZED, job.queue, job, job.attempts, detail="cancelled"),
    ]


def for_changes(queue: str, changes: Sequence[Change]) -> list[Event]:
    """Moves the backend made on its own: dependency outcomes, releases, deletions."""
    out: list[Event] = []
    for c in changes:
        ref = _Ref(c.job_id, c.channel, c.task)
        if c.parent is not None:
            how = f"parent {c.parent} {c.parent_state}"
            out.append(_make(EventType.DEPENDENCY_RESOLVED, queue, ref, c.attempts, detail=how))
        if c.new == "deleted":
            out.append(_make(EventType.DELETED, queue, ref, c.attempts, detail=c.old))
        elif c.new == "failed" and c.old != "failed":
            out.append(_make(EventType.DEPENDENCIES_UNMET, queue, ref, c.attempts, error=c.error))
            out.append(_make(EventType.FINALIZED, queue, ref, c.attempts, detail="failed"))
        elif c.new == "queued" and c.old in _RELEASED_BY:
            out.append(_make(_RELEASED_BY[c.old], queue, ref, c.attempts))
    return out


@dataclass(frozen=True, slots=True)
class _Ref:
    id: str
    channel: str
    task: str
