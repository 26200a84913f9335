"""What this process's subscribers see is what the backend stored (the PostgreSQL claim
function builds a claim's events itself, by the core's rule: this keeps the two equal)."""

from __future__ import annotations

import asyncio
import functools

import hydrapool as hp
from hydrapool.backends.base import Change, Claim, ClaimParams, Emit, Finish
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


def full(events: list[hp.Event]) -> list[tuple[object, ...]]:
    return [
        (e.seq, str(e.type), e.job_id, e.channel, e.task, e.attempt, e.worker_id, e.error, e.detail)
        for e in events
    ]


async def test_every_steps_events_published_here_equal_the_stored_ones(queue: hp.Queue) -> None:
    """Inserts (dropped, deduplicated, doomed), claims, every kind of finish (refused and
    rescued too), cancels with a cascade, releases, ticks and deletions: the events this
    process hands its subscribers are the ones the backend stored (Redis makes them all
    inside its scripts, by the core's rules)."""
    from hydrapool.backends.base import ChannelPolicy, JobRecord, NewJob, ScheduleRecord
    from hydrapool.queue._reports import finish_events
    from hydrapool.queue.coordinator import _tick_events

    backend, name = queue.backend, queue.name
    local: list[hp.Event] = []
    first = await backend.event_last(name)
    await backend.channel_policy_set(name, "full", ChannelPolicy(max_size=1))

    def new(job_id: str, channel: str = "c", **kw: object) -> NewJob:
        return NewJob(id=job_id, task="t", channel=channel, payload="{}", **kw)  # type: ignore[arg-type]

    async def insert(jobs: list[NewJob]) -> list[JobRecord]:
        emit: Emit[list[JobRecord]] = Emit(ev.for_inserts)
        records = await backend.job_insert_many(name, jobs, emit=emit)
        local.extend(emit.stored)
        return records

    await insert([new("p1"), new("k1", depends_on=("p1",)), new("k2", depends_on=("p1", "k1"))])
    await insert([new("d1", dedup_key="x"), new("d2", dedup_key="x"), new("f1", "full")])
    await insert([new("f2", "full"), new("late", delay=30.0), new("soon", run_at=0.0)])
    await insert([new("r1", max_attempts=3), new("h1"), new("x1"), new("gone")])

    async def claim(worker: str, limit: int = 20) -> list[Claim]:
        emit: Emit[list[Claim]] = Emit(functools.partial(ev.for_claims, worker=worker))
        claims = await backend.job_claim(ClaimParams(name, worker, limit, 30.0), emit=emit)
        local.extend(emit.stored)
        return claims

    claims = {c.job.id: c for c in await claim("w1")}
    assert {"p1", "d1", "f1", "soon", "r1", "h1", "x1", "gone"} <= set(claims)
    await queue.cancel("x1")  # flagged: running

    async def finish(finishes: list[Finish], worker: str | None = "w1") -> None:
        jobs = [claims[f.job_id].job for f in finishes]
        emit = finish_events(name, finishes, jobs, worker)
        await backend.job_finish_many(name, finishes, emit=emit)
        local.extend(emit.stored)

    def lease(job_id: str) -> str:
        return claims[job_id].lease

    await finish(
        [
            Finish("r1", lease("r1"), "retrying", error="boom", delay=0.0),
            Finish("h1", lease("h1"), "queued"),
            Finish("x1", lease("x1"), "retrying", error="stop", delay=1.5),
            Finish("d1", lease("d1"), "failed", error="no"),
            Finish("gone", "not-its-lease", "succeeded", result="1"),
            Finish("p1", lease("p1"), "succeeded", result="2"),
            Finish("soon", lease("soon"), "succeeded", result="3"),
            Finish("f1", lease("f1"), "succeeded", result="4"),
        ]
    )
    emit_c: Emit[object] = Emit(queue._cancel_events)  # type: ignore[arg-type]
    await backend.job_cancel(name, "late", emit=emit_c)  # type: ignore[arg-type]
    local.extend(emit_c.stored)
    emit_r: Emit[list[Change]] = Emit(functools.partial(ev.for_changes, name))
    await backend.job_release_due(name, emit=emit_r)
    local.extend(emit_r.stored)
    claims.update({c.job.id: c for c in await claim("w2")})
    assert {"k1", "r1", "h1"} <= set(claims)
    await finish([Finish("k1", lease("k1"), "failed", error="k1 broke")], None)
    await finish([Finish("r1", lease("r1"), "failed", error="again")])
    await finish([Finish("gone", lease("gone"), "succeeded")])
    record = ScheduleRecord(name, "c", "tick", '{"every": 1}', "t", "{}", 0, 1, None, 0.0)
    await backend.schedule_upsert(record)
    [due] = await backend.schedule_due(name, 10)
    emit_t: Emit[JobRecord | None] = Emit(functools.partial(_tick_events, detail="schedule tick"))
    assert await backend.schedule_fire(due, due.next_run + 3600, new("tick1"), emit=emit_t)
    local.extend(emit_t.stored)
    emit_d: Emit[list[Change]] = Emit(functools.partial(ev.for_changes, name))
    await asyncio.sleep(0.01)
    await backend.job_delete_finished(name, 0.0, state="succeeded", emit=emit_d)
    local.extend(emit_d.stored)

    stored = await backend.event_read(name, first, 1000)
    assert full(local) == full(stored)
    kinds = {str(e.type) for e in stored}
    assert {
        "dropped",
        "dependencies_unmet",
        "report_refused",
        "requeued",
        "cancelled",
        "attempts_exhausted",
        "dependency_resolved",
        "unlocked",
        "deleted",
    } <= kinds
    assert [e.seq for e in stored] == list(range(first + 1, first + 1 + len(stored)))
