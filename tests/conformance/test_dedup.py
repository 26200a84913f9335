"""Dedup (issue 5): at most one not-yet-started job per dedup key per channel."""

from __future__ import annotations

import asyncio

import pytest

import hydrapool as hp
from hydrapool.backends.base import ClaimParams


async def test_second_enqueue_returns_the_waiting_job(queue: hp.Queue) -> None:
    first = await queue.options("welcome", dedup_key="welcome:42").enqueue(42)
    second = await queue.options("welcome", dedup_key="welcome:42").enqueue(42)
    assert not first.deduplicated
    assert second.deduplicated
    assert second.id == first.id
    assert second.dedup_key == "welcome:42"
    assert len(await queue.jobs()) == 1


async def test_the_key_is_free_again_once_the_job_started(queue: hp.Queue) -> None:
    first = await queue.options("welcome", dedup_key="k").enqueue()
    await queue.backend.job_claim(ClaimParams(queue.name, "w", 1, 30.0))
    again = await queue.options("welcome", dedup_key="k").enqueue()
    assert not again.deduplicated
    assert again.id != first.id


async def test_keys_are_scoped_per_channel(queue: hp.Queue) -> None:
    a = await queue.options("t", dedup_key="k", channel="a").enqueue()
    b = await queue.options("t", dedup_key="k", channel="b").enqueue()
    assert not b.deduplicated
    assert a.id != b.id


async def test_delayed_jobs_dedup_too_and_cancelled_ones_free_the_key(queue: hp.Queue) -> None:
    later = await queue.options("t", dedup_key="k", delay=60).enqueue()
    twin = await queue.options("t", dedup_key="k").enqueue()
    assert twin.id == later.id
    await queue.cancel(later.id)
    fresh = await queue.options("t", dedup_key="k").enqueue()
    assert not fresh.deduplicated


async def test_enqueue_many_dedups_within_the_batch(queue: hp.Queue) -> None:
    call = queue.options("t", dedup_key="same")
    jobs = await queue.enqueue_many([(call, (1,)), (call, (2,)), (queue.options("t"), (3,))])
    assert jobs[1].deduplicated
    assert jobs[1].id == jobs[0].id
    assert len(await queue.jobs()) == 2


async def test_dedup_key_must_be_a_non_empty_string(queue: hp.Queue) -> None:
    with pytest.raises(TypeError, match="dedup_key must be a string, got 42"):
        queue.options("t", dedup_key=42)
    with pytest.raises(ValueError, match="1-500 characters"):
        queue.options("t", dedup_key="")
    assert await queue.jobs() == []


async def test_a_deduplicated_job_runs_once(queue: hp.Queue) -> None:
    runs: list[int] = []

    @queue.task
    async def welcome(user: int) -> None:
        runs.append(user)

    for _ in range(5):
        await welcome.options(dedup_key="welcome:7").enqueue(7)
    worker = hp.Worker(queue, handle_signals=False)
    task = asyncio.create_task(worker.run())
    [job] = await queue.jobs()
    await job.result(timeout=10)
    worker.stop()
    await task
    assert runs == [7]


async def test_a_handed_back_job_keeps_its_dedup_key(queue: hp.Queue) -> None:
    from hydrapool.backends.base import Finish

    first = await queue.options("t", dedup_key="k").enqueue()
    [claim] = await queue.backend.job_claim(ClaimParams(queue.name, "w", 1, 30.0))
    await queue.backend.job_finish_many(queue.name, [Finish(first.id, claim.lease, "queued")])
    again = await queue.options("t", dedup_key="k").enqueue()
    assert again.deduplicated, "a hand-back refunds the start: the job waits again"
    assert again.id == first.id
