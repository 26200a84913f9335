"""Storing job outcomes so that one bad report never blocks the others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hydrapool.backends.base import Backend, Change, Emit, Finish, FinishResult, JobRecord
from hydrapool.queue import events as ev

logger = logging.getLogger("hydrapool.worker")


@dataclass(slots=True)
class Stored:
    """Per finish, the state the job ended in (None: refused or lost), what followed,
    and the events stored with them."""

    states: list[str | None]
    changes: list[Change] = field(default_factory=list)
    events: list[ev.Event] = field(default_factory=list)

    @property
    def applied(self) -> list[bool]:
        """True where the decision was applied."""
        return [s is not None for s in self.states]


def finish_events(
    queue: str,
    finishes: Sequence[Finish],
    jobs: Sequence[JobRecord],
    worker: str | None,
    wanted: Callable[[], bool] | None = None,
) -> Emit[FinishResult]:
    """The events of these outcomes (``jobs``: each finish's job as claimed)."""

    def make(result: FinishResult) -> list[ev.Event]:
        out: list[ev.Event] = []
        for finish, job, state in zip(finishes, jobs, result.states, strict=True):
            out += ev.for_finish(finish, state, job, worker or job.worker)
        return out + ev.for_changes(queue, result.changes)

    return Emit(make, wanted=wanted)


async def store_finishes(
    backend: Backend,
    queue: str,
    finishes: Sequence[Finish],
    jobs: Sequence[JobRecord],
    worker: str | None,
    pauses: Sequence[float] = (0.0,),
    wanted: Callable[[], bool] | None = None,
) -> Stored:
    """Apply ``finishes`` (with their events) in one batch, retried after each pause;
    if that keeps failing, one by one, dropping (and logging) the ones that
    cannot be stored. ``jobs`` are the finishes' jobs as claimed; ``wanted``: see
    ``Emit``."""
    for pause in pauses:
        await asyncio.sleep(pause)
        emit = finish_events(queue, finishes, jobs, worker, wanted)
        try:
            result = await backend.job_finish_many(queue, finishes, emit=emit)
            return Stored(list(result.states), list(result.changes), emit.stored)
        except Exception:
            logger.exception("could not store %d job outcomes at once", len(finishes))
    stored = Stored([])
    for finish, job in zip(finishes, jobs, strict=True):
        emit = finish_events(queue, [finish], [job], worker, wanted)
        try:
            one = await backend.job_finish_many(queue, [finish], emit=emit)
        except Exception:
            logger.exception("dropping the outcome of job %s: it cannot be stored", finish.job_id)
            stored.states.append(None)
            continue
        stored.states += one.states
        stored.changes += one.changes
        stored.events += emit.stored
    return stored
