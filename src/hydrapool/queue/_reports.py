"""Storing job outcomes so that one bad report never blocks the others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from hydrapool.backends.base import Backend, Change, Finish, JobRecord
from hydrapool.queue import events as ev

logger = logging.getLogger("hydrapool.worker")


@dataclass(slots=True)
class Stored:
    """Per finish, the state the job ended in (None: refused or lost), and what followed."""

    states: list[str | None]
    changes: list[Change] = field(default_factory=list)
    lost: set[int] = field(default_factory=set)  # outcomes that never reached the store

    @property
    def applied(self) -> list[bool]:
        """True where the decision was applied."""
        return [s is not None for s in self.states]

    def events(
        self, queue: str, finishes: Sequence[Finish], jobs: Sequence[JobRecord], worker: str | None
    ) -> list[ev.Event]:
        """The events of these outcomes (``jobs``: each finish's job as claimed)."""
        out: list[ev.Event] = []
        for i, (finish, job, state) in enumerate(zip(finishes, jobs, self.states, strict=True)):
            if i not in self.lost:
                out += ev.for_finish(finish, state, job, worker or job.worker)
        return out + ev.for_changes(queue, self.changes)


async def store_finishes(
    backend: Backend, queue: str, finishes: Sequence[Finish], pauses: Sequence[float] = (0.0,)
) -> Stored:
    """Apply ``finishes`` in one batch (retried after each pause); if that keeps
    failing, one by one, dropping (and logging) the ones that cannot be stored."""
    for pause in pauses:
        await asyncio.sleep(pause)
        try:
            result = await backend.job_finish_many(queue, finishes)
            return Stored(list(result.states), list(result.changes))
        except Exception:
            logger.exception("could not store %d job outcomes at once", len(finishes))
    stored = Stored([])
    for i, finish in enumerate(finishes):
        try:
            one = await backend.job_finish_many(queue, [finish])
        except Exception:
            logger.exception("dropping the outcome of job %s: it cannot be stored", finish.job_id)
            stored.states.append(None)
            stored.lost.add(i)
            continue
        stored.states += one.states
        stored.changes += one.changes
    return stored
