"""Jobs of the durable queue and their state machine: the one place transitions are defined.

    enqueue ─▶ waiting ──(due)──▶ queued ──(claim)──▶ running ──▶ succeeded
       │          │                 │  ▲                │
       │          │   (claim once due: waiting and      ├──▶ retrying ──(claim once due)──▶ running
       │          │    retrying jobs are claimable)     ├──▶ failed (no attempt left, hp.Fail)
       │          └──(cancel)──▶ cancelled ◀─(cancel)───┤    (queued and retrying: cancel too)
       └─(channel full)─▶ dropped           └─(hand back on a graceful stop)◀┘

docs/state-machine.md has the full table with the cause of each move.
Backends guard every update with the state (and, for running jobs, the lease)
they expect, so a move this table does not allow cannot happen; the unit
tests check the table itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ACTIVE", "TERMINAL", "TRANSITIONS", "Job", "JobState", "can_move"]


class JobState(enum.StrEnum):
    """Where a durable job is in its life."""

    WAITING = "waiting"  # stored, not yet due (delay / run_at in the future)
    QUEUED = "queued"  # due: a worker may claim it
    RUNNING = "running"  # claimed under a lease
    RETRYING = "retrying"  # a try failed; waiting out its back-off
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DROPPED = "dropped"  # refused at enqueue: its channel was full

    __hash__ = str.__hash__  # equal to its text, so it hashes like it: S.FAILED in {"failed"}

    def __str__(self) -> str:
        return self.value


TRANSITIONS: dict[JobState | None, frozenset[JobState]] = {
    None: frozenset({JobState.WAITING, JobState.QUEUED, JobState.DROPPED}),  # enqueue
    # waiting/queued -> failed: a parent failed, was cancelled or dropped (depends_on)
    JobState.WAITING: frozenset(
        {JobState.QUEUED, JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}
    ),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.RETRYING,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.QUEUED,  # handed back by a stopping worker, no attempt spent
        }
    ),
    JobState.RETRYING: frozenset({JobState.QUEUED, JobState.RUNNING, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.DROPPED: frozenset(),
}
TERMINAL: frozenset[JobState] = frozenset(s for s in JobState if not TRANSITIONS[s])
ACTIVE: frozenset[JobState] = frozenset(JobState) - TERMINAL
CLAIMABLE: frozenset[JobState] = frozenset(
    s
    for s in (JobState.WAITING, JobState.QUEUED, JobState.RETRYING)
    if JobState.RUNNING in TRANSITIONS[s]
)


def can_move(old: JobState | None, new: JobState) -> bool:
    """Does the state machine allow ``old`` -> ``new`` (``old`` None: a new job)?"""
    return new in TRANSITIONS[old]


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one durable job, as the backend stored it.

    Times are epoch seconds (floats) of the backend's clock. ``return_value``
    is the task's return value once it succeeded; ``error`` the last
    failure's text. ``await job.result(timeout=30)`` waits for the end and
    returns the value (or raises ``hp.JobFailed``).
    """

    id: str
    queue: str
    task: str
    channel: str
    state: JobState
    priority: int
    attempts: int  # tries started so far
    max_attempts: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    created_at: float
    run_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    return_value: Any = None
    dedup_key: str | None = None
    #: True when this enqueue found a not-yet-started job with the same dedup key
    #: and returned it instead of storing a new one
    deduplicated: bool = False
    #: what ``queue.add_job(payload)`` stored (None for a task's job)
    payload: Any = None
    queue_ref: Any = field(default=None, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """True once the job reached a terminal state."""
        return self.state in TERMINAL

    async def result(self, timeout: float | None = None) -> Any:
        """Wait until the job ends; its return value, or ``hp.JobFailed``."""
        if self.queue_ref is None:
            raise RuntimeError("this Job snapshot is not attached to a Queue")
        return await self.queue_ref.result(self.id, timeout=timeout)

    async def refresh(self) -> Job:
        """A fresh snapshot of this job."""
        if self.queue_ref is None:
            raise RuntimeError("this Job snapshot is not attached to a Queue")
        job = await self.queue_ref.get_job(self.id)
        if job is None:
            raise LookupError(f"job {self.id} no longer exists (retention deleted it)")
        return job  # type: ignore[no-any-return]
