"""Regression tests for the second queue review (each failed before its fix)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

import hydrapool as hp
from hydrapool.backends.base import ClaimParams
from hydrapool.queue import _signals


async def run_until(queue: hp.Queue, job: hp.Job, **kwargs: Any) -> hp.Worker:
    kwargs.setdefault("handle_signals", False)
    worker = hp.Worker(queue, **kwargs)
    task = asyncio.create_task(worker.run())
    try:
        await job.result(timeout=10)
    except hp.JobFailed:
        pass
    worker.stop()
    await task
    return worker


async def test_error_text_with_lone_surrogates_is_stored_and_readable(queue: hp.Queue) -> None:
    name = os.fsdecode(b"r-\xff.csv")

    @queue.task(retry=hp.Retry(attempts=2))
    async def open_file() -> None:
        raise FileNotFoundError(name)

    job = await open_file.enqueue()
    await run_until(queue, job)
    final = await job.refresh()
    assert final.state is hp.JobState.FAILED
    assert final.error is not None
    assert "r-" in final.error
    assert await queue.jobs()  # listing still works


async def test_concurrent_first_use_opens_the_store_once(url: str) -> None:
    queue = hp.Queue(url, name="fresh")
    jobs = await asyncio.gather(*(queue.enqueue("t", i) for i in range(50)))
    assert len({j.id for j in jobs}) == 50
    await queue.close()


async def test_a_task_raising_cancelled_error_itself_fails_the_try(queue: hp.Queue) -> None:
    @queue.task
    async def awaits_a_cancelled_future() -> None:
        fut = asyncio.get_running_loop().create_future()
        fut.cancel()
        await fut

    job = await awaits_a_cancelled_future.enqueue()
    await run_until(queue, job, lease=30)
    final = await job.refresh()
    assert final.state is hp.JobState.FAILED
    assert final.error == "CancelledError"


async def test_a_job_claimed_again_while_an_old_run_hangs_runs_once_here(queue: hp.Queue) -> None:
    started = 0
    active = 0
    second_start = asyncio.Event()
    release = asyncio.Event()

    @queue.task(max_processing=0.1, retry=hp.Retry(attempts=5))
    async def hangs() -> None:
        nonlocal started, active
        started += 1
        active += 1
        if started == 2:
            second_start.set()
        try:
            await release.wait()
        finally:
            active -= 1

    job = await hangs.enqueue()
    worker = hp.Worker(
        queue, concurrency=2, lease=5, handle_signals=False, coordinator_interval=0.05
    )
    task = asyncio.create_task(worker.run())
    # Rescued after max_processing, then claimed again by the same worker.
    await asyncio.wait_for(second_start.wait(), 10)
    for _ in range(5):
        await asyncio.sleep(0)
    assert active == 1, "the old run was abandoned, not left running beside the new one"
    assert job.id in worker._running
    release.set()
    await job.result(timeout=10)
    worker.stop()
    await task
    assert worker.statistics().running == 0


class FlakyClaims:
    """Wraps a backend whose first claims fail, like a locked SQLite file."""

    def __init__(self, backend: Any, failures: int) -> None:
        self._backend = backend
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def job_claim(self, params: ClaimParams, **kw: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is locked")
        return await self._backend.job_claim(params, **kw)


async def test_a_failing_claim_does_not_kill_the_worker(url: str) -> None:
    base = hp.Queue(url, name="flaky")
    queue = hp.Queue(url, name="flaky", backend=FlakyClaims(base.backend, 2))  # type: ignore[arg-type]

    @queue.task
    async def ok() -> str:
        return "ok"

    job = await ok.enqueue()
    worker = await run_until(queue, job)
    assert (await job.refresh()).state is hp.JobState.SUCCEEDED
    assert worker.statistics().succeeded == 1
    await queue.close()


async def test_statistics_are_final_when_run_returns(queue: hp.Queue) -> None:
    @queue.task
    async def quick() -> None:
        return None

    jobs = await queue.enqueue_many([(quick, ()) for _ in range(20)])
    worker = await run_until(queue, jobs[-1])
    for job in jobs:
        await job.result(timeout=10)
    assert worker.statistics().succeeded == 20


def test_huge_back_off_numbers_stay_finite() -> None:
    assert hp.Backoff.exponential(0, factor=10.0).delay(400) == 0
    assert hp.Backoff.exponential(1, factor=10.0).delay(400) == 365 * 86400
    assert hp.Retry(attempts=500, backoff=hp.Backoff.exponential(1, factor=2.0)).delay(400) > 0


async def test_worker_channels_must_name_something(queue: hp.Queue) -> None:
    with pytest.raises(ValueError, match="serve nothing"):
        hp.Worker(queue, channels=[])


async def test_names_with_a_trailing_newline_are_refused(queue: hp.Queue) -> None:
    with pytest.raises(ValueError, match="channel name"):
        queue.channel("tenant\n")
    with pytest.raises(ValueError, match="priority must fit in 64 bits"):
        queue.options("t", priority=2**63)


async def test_sigterm_stops_every_worker_in_the_process(queue: hp.Queue) -> None:
    first = hp.Worker(queue, coordinator=False)
    second = hp.Worker(queue, coordinator=False)
    runs = [asyncio.create_task(w.run()) for w in (first, second)]
    for _ in range(500):  # both workers have started and registered
        if {first, second} <= _signals._workers:
            break
        await asyncio.sleep(0.01)
    if not _signals._installed or not {first, second} <= _signals._workers:
        for w in (first, second):
            w.stop()
        await asyncio.gather(*runs)
        pytest.skip("signal handlers cannot be installed here (not the main thread)")
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*runs), 10)
    assert not _signals._installed, "the last worker out restored the default handlers"
