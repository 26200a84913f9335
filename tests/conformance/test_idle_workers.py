"""Jobs enqueued while a worker idles (on Redis they are handed straight to its inbox):
its concurrency, the channel limits and the priority order hold as for a claim, and a
stopped worker takes nothing new."""

from __future__ import annotations

import asyncio
from typing import Any

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
    await gate.until_running(2)
    states = [(await j.refresh()).state for j in jobs]
    assert states.count(hp.JobState.RUNNING) == 2
    assert states.count(hp.JobState.QUEUED) == 10
    gate.open.set()
    for job in jobs:
        await job.result(timeout=10)
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
    await gate.until_running(1)
    states = [(await j.refresh()).state for j in jobs]
    assert states.count(hp.JobState.RUNNING) == 1
    assert states.count(hp.JobState.QUEUED) == 3
    gate.open.set()
    for job in jobs:
        await job.result(timeout=10)
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
