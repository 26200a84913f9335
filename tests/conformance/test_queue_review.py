"""Regression tests for defects found while documenting the queue (each failed before its fix)."""

from __future__ import annotations

import asyncio

import pytest

import hydrapool as hp


async def test_stop_before_run_makes_run_return(queue: hp.Queue) -> None:
    worker = hp.Worker(queue, handle_signals=False)
    worker.stop()
    await asyncio.wait_for(worker.run(), 5)


async def test_a_cancel_requested_elsewhere_wins_over_a_retry(queue: hp.Queue) -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    tries = 0

    @queue.task(retry=hp.Retry(attempts=3))
    async def fails_after_release() -> None:
        nonlocal tries
        tries += 1
        started.set()
        await release.wait()
        raise ConnectionError("boom")

    job = await fails_after_release.enqueue()
    other = hp.Queue(queue.url, name=queue.name, backend=queue.backend)  # another process, say
    worker = hp.Worker(queue, handle_signals=False)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    await other.cancel(job.id)  # only sets the flag: `other` runs no worker
    release.set()
    with pytest.raises(hp.JobFailed, match="cancelled"):
        await job.result(timeout=10)
    worker.stop()
    await task
    assert tries == 1


async def test_task_options_are_validated(queue: hp.Queue) -> None:
    with pytest.raises(TypeError, match="priority must be an int, got 'high'"):
        queue.task(name="p", priority="high")(lambda: None)
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0, got 0"):
        queue.task(name="t", timeout=0)(lambda: None)

    @queue.task(retry=hp.Retry(attempts=2, retry_on=ConnectionError))
    async def picky() -> None:
        return None

    with pytest.raises(ValueError, match="retry_on belongs to the task"):
        picky.options(retry=hp.Retry(attempts=5, retry_on=KeyError))
    picky.options(retry=hp.Retry(attempts=5, retry_on=ConnectionError))  # fine
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        picky.options(timeout=0)
    assert await queue.jobs() == []


async def test_queue_options_for_a_task_this_process_does_not_run(queue: hp.Queue) -> None:
    job = await queue.options("elsewhere", retry=hp.Retry(attempts=4), channel="c").enqueue(1)
    assert (job.task, job.channel, job.max_attempts) == ("elsewhere", "c", 4)


async def test_refused_reports_are_not_counted_as_successes(queue: hp.Queue) -> None:
    from hydrapool.backends.base import ClaimParams

    @queue.task
    async def quick() -> str:
        return "ok"

    job = await quick.enqueue()
    worker = hp.Worker(queue, handle_signals=False, coordinator=False)
    [claim] = await queue.backend.job_claim(ClaimParams(queue.name, worker.id, 1, lease=0.01))
    await asyncio.sleep(0.05)
    stream = queue.events(types="report_refused")
    late = hp.backends.base.Finish(job.id, claim.lease, "succeeded", result='"ok"')
    worker._report(claim.job, late)
    await worker._flush()
    stats = worker.statistics()
    assert (stats.succeeded, stats.refused) == (0, 1)
    refused = await anext(stream)
    assert (refused.job_id, refused.worker_id) == (job.id, worker.id)
    assert "succeeded report refused" in (refused.error or "")
