"""Rates inside the queue, on every backend: a channel's and the queue's job starts per
window, enforced in the claim step across workers; hp.RetryAfter puts a job back
without spending an attempt and pauses its channel for every worker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import hydrapool as hp

WINDOW_SLACK = 0.05  # starts are recorded a little after their claim


def start(queue: hp.Queue, **kwargs: Any) -> tuple[hp.Worker, asyncio.Task[None]]:
    kwargs.setdefault("handle_signals", False)
    kwargs.setdefault("coordinator_interval", 0.05)
    kwargs.setdefault("idle_wait", 0.05)
    worker = hp.Worker(queue, **kwargs)
    return worker, asyncio.create_task(worker.run())


async def stop(*running: tuple[hp.Worker, asyncio.Task[None]]) -> None:
    for worker, _ in running:
        worker.stop()
    await asyncio.wait_for(asyncio.gather(*(t for _, t in running)), 10)


def most_in_a_window(times: list[float], per: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + per - WINDOW_SLACK) for i, t in enumerate(times))


async def test_a_channel_rate_caps_starts_across_workers(queue: hp.Queue) -> None:
    starts: dict[str, list[float]] = {"slow": [], "free": []}

    @queue.task
    async def record(channel: str) -> None:
        starts[channel].append(time.monotonic())

    await queue.channel("slow").set_policy(rate=hp.RateLimit(3, per=0.5))
    jobs = [await record.options(channel="slow").enqueue("slow") for _ in range(9)]
    jobs += [await record.options(channel="free").enqueue("free") for _ in range(9)]
    workers = [start(queue, concurrency=5) for _ in range(2)]
    began = time.monotonic()
    for job in jobs:
        await job.result(timeout=30)
    await stop(*workers)
    assert most_in_a_window(starts["slow"], 0.5) == 3
    assert max(starts["slow"]) - began >= 1.0 - WINDOW_SLACK  # three windows of three
    assert max(starts["free"]) < max(starts["slow"])  # the other channel is not held back
    snapshot = await queue.show_pool()
    assert snapshot.policies["slow"].rate == (3, 0.5)


async def test_a_queue_rate_caps_starts_over_every_channel(queue: hp.Queue) -> None:
    starts: list[float] = []

    @queue.task
    async def record() -> None:
        starts.append(time.monotonic())

    await queue.set_limits(rate=hp.RateLimit(2, per=0.4))
    jobs = [await record.options(channel=f"c{i % 3}").enqueue() for i in range(6)]
    workers = [start(queue, concurrency=4) for _ in range(2)]
    for job in jobs:
        await job.result(timeout=30)
    await stop(*workers)
    assert most_in_a_window(starts, 0.4) == 2
    assert (await queue.show_pool()).rate == hp.RateLimit(2, per=0.4)


async def test_retry_after_puts_the_job_back_and_pauses_its_channel(queue: hp.Queue) -> None:
    runs: list[tuple[str, float]] = []
    ran = asyncio.Event()

    @queue.task
    async def call_api(label: str) -> str:
        runs.append((label, time.monotonic()))
        ran.set()
        if label == "limited" and sum(1 for r in runs if r[0] == "limited") == 1:
            raise hp.RetryAfter(0.6)
        return label

    limited = await call_api.options(channel="api", retry=None).enqueue("limited")
    worker = start(queue, concurrency=1)
    await asyncio.wait_for(ran.wait(), 10)
    # Both come while the channel is paused: "other" may run at once, "same" may not.
    same = await call_api.options(channel="api").enqueue("same")
    other = await call_api.options(channel="elsewhere").enqueue("other")
    assert await other.result(timeout=10) == "other"
    assert await limited.result(timeout=10) == "limited"
    assert await same.result(timeout=10) == "same"
    await stop(worker)
    first = runs[0][1]
    again = [t for label, t in runs if label in ("limited", "same")][1:]
    assert all(t >= first + 0.6 - WINDOW_SLACK for t in again)
    assert next(t for label, t in runs if label == "other") < first + 0.6
    job = await queue.get_job(limited.id)
    assert job is not None
    assert job.attempts == 1  # the RetryAfter try was not spent: max_attempts is 1


async def test_retry_after_pauses_the_channel_for_every_worker(queue: hp.Queue) -> None:
    runs: list[float] = []
    ran = asyncio.Event()

    @queue.task
    async def call_api(fail: bool) -> None:
        runs.append(time.monotonic())
        ran.set()
        if fail and len(runs) == 1:
            raise hp.RetryAfter(0.5)

    first_job = await call_api.options(channel="api", retry=None).enqueue(True)
    first = start(queue, concurrency=1)
    await asyncio.wait_for(ran.wait(), 10)
    async with asyncio.timeout(10):  # the hand-back is stored (reports go in batches)
        while True:
            if (await queue.show_pool()).paused.get("api"):
                break
            await asyncio.sleep(0.01)
    second = start(queue, concurrency=3)  # a fresh worker honours the pause too
    later = [await call_api.options(channel="api").enqueue(False) for _ in range(3)]
    for job in [first_job, *later]:
        await job.result(timeout=10)
    await stop(first, second)
    assert len(runs) == 5
    assert min(runs[1:]) >= runs[0] + 0.5 - WINDOW_SLACK


async def test_a_bad_rate_is_refused_and_the_policy_kept(queue: hp.Queue) -> None:
    await queue.channel("c").set_policy(max_concurrency=2)
    with pytest.raises(TypeError, match=r"rate must be a hp\.RateLimit"):
        await queue.channel("c").set_policy(rate=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"rate must be a hp\.RateLimit"):
        await queue.set_limits(rate=(5, 1.0))  # type: ignore[arg-type]
    assert (await queue.show_pool()).policies["c"].max_concurrency == 2
