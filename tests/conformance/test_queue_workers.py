"""Workers on every backend: cancel, hp.Fail, timeouts, graceful stop, limits, nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import hydrapool as hp


def start(queue: hp.Queue, **kwargs: Any) -> tuple[hp.Worker, asyncio.Task[None]]:
    kwargs.setdefault("handle_signals", False)
    kwargs.setdefault("coordinator_interval", 0.05)
    worker = hp.Worker(queue, **kwargs)
    return worker, asyncio.create_task(worker.run())


async def stop(worker: hp.Worker, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(task, 10)


async def test_cancel_a_queued_job_it_never_runs(queue: hp.Queue) -> None:
    ran: list[str] = []

    @queue.task
    async def record(label: str) -> None:
        ran.append(label)

    doomed = await record.enqueue("doomed")
    kept = await record.enqueue("kept")
    cancelled = await queue.cancel(doomed.id)
    assert cancelled is not None
    assert cancelled.state is hp.JobState.CANCELLED
    worker, task = start(queue)
    await kept.result(timeout=10)
    await stop(worker, task)
    assert ran == ["kept"]
    with pytest.raises(hp.JobFailed, match="cancelled"):
        await doomed.result(timeout=1)
    assert await queue.cancel("no-such-id") is None


async def test_cancel_a_running_job_ends_it_cancelled(queue: hp.Queue) -> None:
    started = asyncio.Event()

    @queue.task
    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    job = await forever.enqueue()
    worker, task = start(queue)
    await asyncio.wait_for(started.wait(), 10)
    await queue.cancel(job.id)
    with pytest.raises(hp.JobFailed, match="cancelled"):
        await job.result(timeout=10)
    await stop(worker, task)
    assert worker.statistics().cancelled == 1


async def test_fail_with_cancel_retries_ends_at_once(queue: hp.Queue) -> None:
    tries = 0

    @queue.task(retry=hp.Retry(attempts=5))
    async def declined() -> None:
        nonlocal tries
        tries += 1
        raise hp.Fail("card declined", cancel_retries=True)

    job = await declined.enqueue()
    worker, task = start(queue)
    with pytest.raises(hp.JobFailed, match="card declined"):
        await job.result(timeout=10)
    await stop(worker, task)
    assert tries == 1


async def test_timeout_cancels_the_task_and_counts_as_a_failed_try(queue: hp.Queue) -> None:
    tries = 0

    @queue.task(timeout=0.05, retry=hp.Retry(attempts=2))
    async def slow() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            await asyncio.sleep(10)
        return "second try"

    job = await slow.enqueue()
    worker, task = start(queue)
    assert await job.result(timeout=10) == "second try"
    await stop(worker, task)
    assert (await job.refresh()).attempts == 2


async def test_graceful_stop_hands_back_without_spending_an_attempt(queue: hp.Queue) -> None:
    started = asyncio.Event()

    @queue.task(retry=hp.Retry(attempts=1))
    async def long() -> None:
        started.set()
        await asyncio.sleep(60)

    job = await long.enqueue()
    worker, task = start(queue, grace=0.05)
    await asyncio.wait_for(started.wait(), 10)
    await stop(worker, task)
    back = await job.refresh()
    assert back.state is hp.JobState.QUEUED
    assert back.attempts == 0
    assert worker.statistics().handed_back == 1


async def test_graceful_stop_lets_short_jobs_finish(queue: hp.Queue) -> None:
    started = asyncio.Event()

    @queue.task
    async def short() -> str:
        started.set()
        await asyncio.sleep(0.05)
        return "done"

    job = await short.enqueue()
    worker, task = start(queue, grace=10)
    await asyncio.wait_for(started.wait(), 10)
    await stop(worker, task)
    assert (await job.refresh()).state is hp.JobState.SUCCEEDED


async def test_max_processing_caps_a_run_despite_heartbeats(queue: hp.Queue) -> None:
    @queue.task(max_processing=0.2)
    async def stuck() -> None:
        await asyncio.sleep(60)

    job = await stuck.enqueue()
    worker, task = start(queue, lease=0.3)
    with pytest.raises(hp.JobFailed, match="max_processing"):
        await job.result(timeout=10)
    await stop(worker, task)
    assert worker.statistics().lost == 1


async def test_limits_hold_with_several_workers(queue: hp.Queue) -> None:
    """Invariant 1: never more running than the channel's or the queue's max_concurrency."""
    await queue.set_limits(max_concurrency=5)
    await queue.channel("narrow").set_policy(max_concurrency=2)
    running = {"all": 0, "narrow": 0}
    peak = {"all": 0, "narrow": 0}

    @queue.task
    async def work(channel: str) -> None:
        running["all"] += 1
        running[channel] = running.get(channel, 0) + 1
        peak["all"] = max(peak["all"], running["all"])
        peak[channel] = max(peak.get(channel, 0), running[channel])
        await asyncio.sleep(0.005)
        running["all"] -= 1
        running[channel] -= 1

    jobs = [await work.options(channel="narrow").enqueue("narrow") for _ in range(20)]
    jobs += [await work.options(channel=f"c{i % 4}").enqueue(f"c{i % 4}") for i in range(40)]
    workers = [start(queue, concurrency=4) for _ in range(3)]
    for job in jobs:
        await job.result(timeout=30)
    for worker, task in workers:
        await stop(worker, task)
    assert peak["all"] <= 5
    assert peak["narrow"] <= 2
    assert peak["all"] == 5, "the limit was reached, so the test could have caught a breach"


async def test_nothing_is_lost(queue: hp.Queue) -> None:
    """Invariant 2: every committed enqueue reaches a terminal state."""
    calls = 0

    @queue.task(retry=hp.Retry(attempts=3))
    async def sometimes(i: int) -> int:
        nonlocal calls
        calls += 1
        if i % 7 == 0 and calls % 2:
            raise ConnectionError
        return i

    jobs = await queue.enqueue_many([(sometimes, (i,)) for i in range(200)])
    workers = [start(queue, concurrency=8) for _ in range(2)]
    for job in jobs:
        try:
            await job.result(timeout=30)
        except hp.JobFailed:
            pass
    for worker, task in workers:
        await stop(worker, task)
    states = {j.id: j.state for j in await queue.jobs(limit=1000)}
    assert len(states) == 200
    assert all(s in (hp.JobState.SUCCEEDED, hp.JobState.FAILED) for s in states.values())
