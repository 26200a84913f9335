"""Dependency rules shared by the backends that check them in Python (memory, SQLite)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hydrapool.backends.base import NewJob
from hydrapool.exceptions import DependencyError

_NOT_STARTED = ("waiting", "queued")
_ENDED_UNSTARTED = ("dropped", "cancelled", "failed")


@dataclass(frozen=True, slots=True)
class Parents:
    """The parents a new job must wait for, and the first one that already failed it."""

    waiting_for: tuple[str, ...]
    doomed: tuple[str, str] | None  # (parent, how it ended) when the job can never run


def parents_of(
    queue: str, new: NewJob, states: dict[str, tuple[str, float | None] | None]
) -> Parents:
    """Sort a new job's parents by their (state, started_at); refuse unknown or started ones.

    A parent that ended without ever starting (dropped, cancelled, failed in a
    cascade) is already decided: with ``cascade`` the child is doomed at once,
    without it the child simply does not wait for that parent.
    """
    waiting: list[str] = []
    doomed: tuple[str, str] | None = None
    for parent in dict.fromkeys(new.depends_on):
        found = states.get(parent)
        if found is None:
            raise DependencyError(
                f"job {new.id}: parent {parent!r} does not exist in queue {queue!r}"
            )
        state, started_at = found
        if started_at is not None or state not in _NOT_STARTED + _ENDED_UNSTARTED:
            raise DependencyError(
                f"job {new.id}: parent {parent!r} already started ({state}); "
                "a job can only depend on jobs that have not started"
            )
        if state in _NOT_STARTED:
            waiting.append(parent)
        elif new.cascade and doomed is None:
            doomed = (parent, state)
    return Parents(tuple(waiting), doomed)


def with_aliases(new: NewJob, alias: dict[str, str]) -> NewJob:
    """Point parents that were deduplicated in this batch at the jobs they became."""
    if not new.depends_on or not alias:
        return new
    return replace(new, depends_on=tuple(alias.get(p, p) for p in new.depends_on))


def initial_state(full: bool, run_at: float, now: float, parents: Parents) -> str:
    """A new job's state: dropped (channel full), failed (a parent already failed it),
    waiting (not due yet, or parents to wait for) or queued."""
    if full:
        return "dropped"
    if parents.doomed is not None:
        return "failed"
    return "waiting" if run_at > now or parents.waiting_for else "queued"
