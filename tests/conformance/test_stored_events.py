"""What this process's subscribers see is what the backend stored (the PostgreSQL claim
function builds a claim's events itself, by the core's rule: this keeps the two equal)."""

from __future__ import annotations

import asyncio
import functools

import hydrapool as hp
from hydrapool.backends.base import Claim, ClaimParams, Emit, Finish
from hydrapool.queue import events as ev


def summary(events: list[hp.Event]) -> list[tuple[object, ...]]:
    return [
        (e.seq, str(e.type), e.job_id, e.channel, e.task, e.attempt, e.worker_id) for e in events
    ]


async def test_claim_events_published_here_equal_the_stored_ones(queue: hp.Queue) -> None:
    backend = queue.backend
    first = await backend.event_last(queue.name)
    waiting = await queue.options("t", channel="a", delay=0.05).enqueue()
    await queue.options("t", channel="b").enqueue()
    await asyncio.sleep(0.1)  # the delayed job is due, still ``waiting``: no release pass ran
    emit: Emit[list[Claim]] = Emit(functools.partial(ev.for_claims, worker="w1"))
    claims = await backend.job_claim(ClaimParams(queue.name, "w1", 10, 30.0), emit=emit)
    assert len(claims) == 2
    retry = Finish(waiting.id, claims[0].lease, "retrying", error="again", delay=0.0)
    if claims[0].job.id != waiting.id:
        retry = Finish(waiting.id, claims[1].lease, "retrying", error="again", delay=0.0)
    await backend.job_finish_many(queue.name, [retry])  # no events: only the claims'
    again: Emit[list[Claim]] = Emit(functools.partial(ev.for_claims, worker="w2"))
    reclaimed = await backend.job_claim(ClaimParams(queue.name, "w2", 10, 30.0), emit=again)
    assert [c.job.id for c in reclaimed] == [waiting.id]
    local = list(emit.stored) + list(again.stored)
    stored = await backend.event_read(queue.name, first, 100)
    stored = [e for e in stored if e.type is not hp.EventType.ENQUEUED]
    assert summary(local) == summary(stored)
    assert [str(e.type) for e in local if e.job_id == waiting.id] == [
        "released",
        "dequeued",
        "unlocked",
        "dequeued",
    ]
