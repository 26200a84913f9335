"""Claim order, limits, leases and the coordinator, straight against each backend.

These are HydraMQ's dequeue cases (order across channels and priorities,
max_concurrency 1 blocks the second message, lock/back-off arithmetic,
policy set/clear) plus the invariants of DESIGN.md this issue covers.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

import hydrapool as hp
from hydrapool.backends.base import ClaimParams, Finish


async def claim(queue: hp.Queue, limit: int = 1, lease: float = 30.0) -> list[str]:
    """Claim and return the claimed jobs' first argument (their label)."""
    params = ClaimParams(queue.name, "tester", limit, lease)
    claims = await queue.backend.job_claim(params)
    labels = []
    for c in claims:
        job = queue._job(c.job)
        labels.append(job.args[0])
    return labels


async def enqueue(
    queue: hp.Queue, label: str, channel: str = "default", priority: int = 0
) -> hp.Job:
    """Enqueue a job of the (unregistered) task "job" labelled ``label``."""
    return await queue._task_of("job").options(channel=channel, priority=priority).enqueue(label)


async def test_in_a_channel_higher_priority_first_then_fifo(queue: hp.Queue) -> None:
    for label, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 9)]:
        await enqueue(queue, label, priority=priority)
    order = [label for _ in range(6) for label in await claim(queue)]
    assert order == ["f", "b", "d", "a", "c", "e"]


async def test_channels_take_turns_at_equal_priority(queue: hp.Queue) -> None:
    for label in ("a1", "a2", "a3"):
        await enqueue(queue, label, channel="A")
    for label in ("b1", "b2", "b3"):
        await enqueue(queue, label, channel="B")
    await enqueue(queue, "c1", channel="C")
    order = [label for _ in range(7) for label in await claim(queue)]
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3", "b3"]


async def test_one_claim_of_many_interleaves_channels(queue: hp.Queue) -> None:
    for i in range(3):
        await enqueue(queue, f"a{i}", channel="A")
        await enqueue(queue, f"b{i}", channel="B")
    assert await claim(queue, limit=4) == ["a0", "b0", "a1", "b1"]


async def test_a_new_channel_gets_a_turn_without_starving_busy_ones(queue: hp.Queue) -> None:
    for i in range(4):
        await enqueue(queue, f"a{i}", channel="A")
        await enqueue(queue, f"b{i}", channel="B")
    assert [label for _ in range(4) for label in await claim(queue)] == ["a0", "b0", "a1", "b1"]
    for i in range(4):
        await enqueue(queue, f"n{i}", channel="N")
    order = [label for _ in range(6) for label in await claim(queue)]
    assert order == ["n0", "a2", "b2", "n1", "a3", "b3"]


async def test_priority_overrides_round_robin_across_channels(queue: hp.Queue) -> None:
    await enqueue(queue, "a1", channel="A")
    await enqueue(queue, "a2", channel="A")
    await enqueue(queue, "urgent", channel="B", priority=10)
    assert await claim(queue, limit=3) == ["urgent", "a1", "a2"]


async def test_max_concurrency_one_blocks_the_second_message(queue: hp.Queue) -> None:
    await queue.channel("solo").set_policy(max_concurrency=1)
    await enqueue(queue, "s1", channel="solo")
    await enqueue(queue, "s2", channel="solo")
    await enqueue(queue, "x1", channel="other")
    assert sorted(await claim(queue, limit=10)) == ["s1", "x1"]
    assert await claim(queue, limit=10) == []
    await queue.channel("solo").clear_policy()
    assert await claim(queue, limit=10) == ["s2"]


async def test_queue_max_concurrency_caps_every_claim(queue: hp.Queue) -> None:
    await queue.set_limits(max_concurrency=2)
    for i in range(5):
        await enqueue(queue, f"j{i}", channel=f"c{i}")
    assert len(await claim(queue, limit=10)) == 2
    assert await claim(queue, limit=10) == []
    await queue.set_limits(max_concurrency=None)
    assert len(await claim(queue, limit=10)) == 3
    snap = await queue.show_pool()
    assert snap.max_concurrency is None


async def test_max_size_drops_and_records_the_job(queue: hp.Queue) -> None:
    await queue.channel("small").set_policy(max_size=2)
    kept = [await enqueue(queue, f"k{i}", channel="small") for i in range(2)]
    dropped = await enqueue(queue, "k2", channel="small")
    assert [j.state for j in kept] == [hp.JobState.QUEUED] * 2
    assert dropped.state is hp.JobState.DROPPED
    stored = await queue.get_job(dropped.id)
    assert stored is not None
    assert stored.state is hp.JobState.DROPPED, "recorded, never silently vanished"
    with pytest.raises(hp.JobFailed, match="dropped"):
        await dropped.result(timeout=1)
    await queue.channel("small").clear_policy()
    assert (await enqueue(queue, "k3", channel="small")).state is hp.JobState.QUEUED
    snap = await queue.show_pool()
    assert snap.channels["small"] == {"queued": 3, "dropped": 1}


async def test_late_report_from_an_expired_lease_is_refused(queue: hp.Queue) -> None:
    await enqueue(queue, "slow")
    params = ClaimParams(queue.name, "w1", 1, lease=0.05)
    [c] = await queue.backend.job_claim(params)
    await asyncio.sleep(0.1)
    ok = await queue.backend.job_finish_many(queue.name, [Finish(c.job.id, c.lease, "succeeded")])
    assert ok.applied == [False]
    assert ok.states == [None]
    beat = await queue.backend.job_heartbeat_many(queue.name, {c.job.id: c.lease}, 30)
    assert beat.kept == frozenset()


async def test_heartbeat_extends_the_lease(queue: hp.Queue) -> None:
    await enqueue(queue, "long")
    [c] = await queue.backend.job_claim(ClaimParams(queue.name, "w1", 1, lease=0.2))
    for _ in range(3):
        await asyncio.sleep(0.1)
        beat = await queue.backend.job_heartbeat_many(queue.name, {c.job.id: c.lease}, 0.2)
        assert beat.kept == {c.job.id}
    ok = await queue.backend.job_finish_many(
        queue.name, [Finish(c.job.id, c.lease, "succeeded", result="1")]
    )
    assert ok.states == ["succeeded"]


async def test_coordinator_retries_an_expired_job_then_fails_it(queue: hp.Queue) -> None:
    retry = hp.Retry(attempts=2, backoff=hp.Backoff.fixed(0))
    await queue._task_of("job").options(retry=retry).enqueue("x")
    coordinator = hp.Coordinator(queue, interval=0.05)
    for expected in ("retrying", "failed"):
        [c] = await queue.backend.job_claim(ClaimParams(queue.name, "dies", 1, lease=0.01))
        await asyncio.sleep(0.05)
        report = await coordinator.run_once()
        assert report.leader
        job = await queue.get_job(c.job.id)
        assert job is not None
        assert str(job.state) in (expected, "queued")
        assert job.error is not None
        assert "lease expired" in job.error
    assert (report.rescued, report.failed) == (0, 1)


async def test_only_one_coordinator_leads_at_a_time(queue: hp.Queue) -> None:
    first = hp.Coordinator(queue, interval=10)
    second = hp.Coordinator(queue, interval=10)
    assert (await first.run_once()).leader
    assert not (await second.run_once()).leader
    assert (await first.run_once()).leader


async def test_retry_back_off_arithmetic(queue: hp.Queue) -> None:
    """HydraMQ's lockSecs=0.2, lockSecsFactor=2 is Backoff.exponential(0.2, factor=2)."""
    retry = hp.Retry(attempts=3, backoff=hp.Backoff.exponential(0.2, factor=2))

    calls: list[float] = []

    @queue.task(retry=retry)
    async def flaky() -> None:
        calls.append(time.time())
        raise ConnectionError("down")

    job = await flaky.enqueue()
    worker = hp.Worker(queue, concurrency=1, handle_signals=False, coordinator_interval=0.02)
    task = asyncio.create_task(worker.run())
    with pytest.raises(hp.JobFailed, match="ConnectionError: down"):
        await job.result(timeout=10)
    worker.stop()
    await task
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) == 3
    assert gaps[0] >= 0.2
    assert gaps[1] >= 0.4
    final = await job.refresh()
    assert (final.state, final.attempts) == (hp.JobState.FAILED, 3)


async def test_release_due_moves_waiting_jobs_to_queued(queue: hp.Queue) -> None:
    job = await queue._task_of("job").options(delay=0.02).enqueue("x")
    assert job.state is hp.JobState.WAITING
    await asyncio.sleep(0.05)
    [moved] = await queue.backend.job_release_due(queue.name)
    assert (moved.job_id, moved.old, moved.new) == (job.id, "waiting", "queued")
    fresh = await job.refresh()
    assert fresh.state is hp.JobState.QUEUED


async def test_retention_deletes_old_ended_jobs(queue: hp.Queue) -> None:
    await queue.channel("tiny").set_policy(max_size=0)
    dropped = await enqueue(queue, "gone", channel="tiny")
    kept = await enqueue(queue, "kept")
    await asyncio.sleep(0.02)
    [gone] = await queue.backend.job_delete_finished(queue.name, 0.01)
    assert (gone.job_id, gone.old, gone.new) == (dropped.id, "dropped", "deleted")
    assert await queue.get_job(dropped.id) is None
    assert await queue.get_job(kept.id) is not None


async def test_purge_deletes_ended_jobs_on_demand(queue: hp.Queue) -> None:
    await queue.channel("full").set_policy(max_size=0)
    dropped = await enqueue(queue, "d", channel="full")
    waiting = await enqueue(queue, "w")
    cancelled = await enqueue(queue, "c")
    await queue.cancel(cancelled.id)
    with pytest.raises(ValueError, match="'queued' jobs have not ended"):
        await queue.purge(state="queued")
    with pytest.raises(ValueError, match="not a valid JobState"):
        await queue.purge(state="gone")
    assert await queue.purge(state="dropped") == 1
    assert await queue.get_job(dropped.id) is None
    assert await queue.purge(older_than=3600) == 0, "the cancelled job is too recent"
    assert await queue.purge() == 1
    assert [j.id for j in await queue.jobs()] == [waiting.id]
