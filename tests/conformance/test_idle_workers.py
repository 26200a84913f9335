"""Jobs enqueued while a worker idles (on Redis they are handed straight to its inbox):
its concurrency, the channel limits and the priority order hold as for a claim, and a
stopped worker takes nothing new."""

from __future__ import annotations

import asyncio
import logging
import uuid
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


class Gate:
    """Tasks that hold until opened, counting how many run at once."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.running = self.peak = 0
        self.changed = asyncio.Event()

    async def hold(self) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.changed.set()
        try:
            await self.open.wait()
        finally:
            self.running -= 1

    async def until_running(self, n: int) -> None:
        async with asyncio.timeout(10):
            while self.running < n:
                self.changed.clear()
                await self.changed.wait()


async def check_then_open(gate: Gate, jobs: list[hp.Job], running: int) -> None:
    """Once ``running`` jobs run: exactly those run and the rest wait; then let all end."""
    await gate.until_running(running)
    states = [(await j.refresh()).state for j in jobs]
    assert states.count(hp.JobState.RUNNING) == running
    assert states.count(hp.JobState.QUEUED) == len(jobs) - running
    gate.open.set()
    for job in jobs:
        await job.result(timeout=10)


async def warm_up(queue: hp.Queue) -> None:
    """Run one job, so the worker has claimed and gone idle."""

    @queue.task(name="warm")
    async def warm() -> None:
        return None

    await (await warm.enqueue()).result(timeout=10)


async def test_jobs_enqueued_one_by_one_to_an_idle_worker_stay_within_its_concurrency(
    queue: hp.Queue,
) -> None:
    gate = Gate()

    @queue.task
    async def held() -> None:
        await gate.hold()

    worker, task = start(queue, concurrency=2)
    await warm_up(queue)
    jobs = [await held.enqueue() for _ in range(12)]
    await check_then_open(gate, jobs, 2)
    await stop(worker, task)
    assert gate.peak == 2
    assert worker.statistics().succeeded == 13


async def test_a_batch_enqueued_to_an_idle_worker_keeps_the_channel_limit(
    queue: hp.Queue,
) -> None:
    gate = Gate()

    @queue.task
    async def held() -> None:
        await gate.hold()

    await queue.channel("narrow").set_policy(max_concurrency=1)
    worker, task = start(queue, concurrency=5)
    await warm_up(queue)
    jobs = await queue.enqueue_many([(held.options(channel="narrow"), ())] * 4)
    await check_then_open(gate, jobs, 1)
    await stop(worker, task)
    assert gate.peak == 1


async def test_an_idle_worker_starts_the_highest_priority_of_a_batch_first(
    queue: hp.Queue,
) -> None:
    ran: list[str] = []

    @queue.task
    async def record(label: str) -> None:
        ran.append(label)

    worker, task = start(queue, concurrency=1)
    await warm_up(queue)
    jobs = await queue.enqueue_many(
        [
            (record.options(priority=1), ("low",)),
            (record.options(priority=9), ("high",)),
            (record.options(priority=5), ("middle",)),
        ]
    )
    for job in jobs:
        await job.result(timeout=10)
    await stop(worker, task)
    assert ran == ["high", "middle", "low"]


async def test_a_stopped_worker_takes_no_new_job(queue: hp.Queue) -> None:
    ran: list[str] = []

    @queue.task
    async def record(label: str) -> None:
        ran.append(label)

    worker, task = start(queue, concurrency=3)
    await warm_up(queue)
    await stop(worker, task)
    job = await record.enqueue("after")
    assert (await job.refresh()).state is hp.JobState.QUEUED
    worker, task = start(queue, concurrency=3)  # the same queue, a new worker: it runs
    await job.result(timeout=10)
    await stop(worker, task)
    assert ran == ["after"]


async def test_a_worker_idle_past_the_socket_timeout_still_takes_hand_offs_at_once(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # redis-py's connections time out after 5 s: the inbox's blocking waits must end
    # before that, quietly, and the worker must keep taking hand-offs without delay.
    queue = hp.Queue(redis_url, name=f"t{uuid.uuid4().hex[:8]}")
    started = asyncio.Event()

    @queue.task
    async def mark() -> None:
        started.set()

    async with queue:
        worker, task = start(queue, concurrency=2, idle_wait=30.0)
        await warm_up(queue)
        await asyncio.sleep(6.0)  # idle, the subject of this test
        with caplog.at_level(logging.WARNING, logger="hydrapool"):
            await mark.enqueue()
            await asyncio.wait_for(started.wait(), 1.0)  # not after a back-off or poll
        await stop(worker, task)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
