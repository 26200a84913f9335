"""Enqueue, run, results, payload rules and bad input, on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import hydrapool as hp


@asynccontextmanager
async def running(queue: hp.Queue, **kwargs: Any) -> AsyncIterator[hp.Worker]:
    kwargs.setdefault("concurrency", 5)
    kwargs.setdefault("handle_signals", False)
    kwargs.setdefault("coordinator_interval", 0.05)
    worker = hp.Worker(queue, **kwargs)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_enqueue_run_and_result(queue: hp.Queue) -> None:
    @queue.task
    async def add(a: int, b: int) -> int:
        return a + b

    job = await add.enqueue(2, 3)
    assert job.state is hp.JobState.QUEUED
    assert (job.task, job.args, job.channel) == ("add", (2, 3), "default")
    async with running(queue):
        assert await job.result(timeout=10) == 5
    done = await queue.get_job(job.id)
    assert done is not None
    assert done.state is hp.JobState.SUCCEEDED
    assert done.attempts == 1
    assert done.return_value == 5


async def test_sync_tasks_run_in_threads_and_kwargs_travel(queue: hp.Queue) -> None:
    import threading

    main = threading.get_ident()

    @queue.task(name="where")
    def where(*, label: str) -> dict[str, Any]:
        return {"label": label, "thread": threading.get_ident() != main}

    job = await where.enqueue(label="x")
    async with running(queue):
        assert await job.result(timeout=10) == {"label": "x", "thread": True}


async def test_enqueue_many_is_one_transaction(queue: hp.Queue) -> None:
    @queue.task
    async def echo(x: Any) -> Any:
        return x

    jobs = await queue.enqueue_many([(echo, (i,)) for i in range(50)] + [("echo", (), {"x": 1})])
    assert len(jobs) == 51
    with pytest.raises(hp.PayloadError, match="argument 0"):
        await queue.enqueue_many([(echo, (1,)), (echo, (object(),))])
    assert len(await queue.jobs(limit=1000)) == 51, "the failed batch stored nothing"


async def test_payload_must_be_json_and_nothing_is_stored(queue: hp.Queue) -> None:
    @queue.task
    async def take(a: Any, *, b: Any = None) -> None:
        return None

    with pytest.raises(hp.PayloadError, match=r"task 'take': argument 0 is not JSON \(set"):
        await take.enqueue({1, 2})
    with pytest.raises(hp.PayloadError, match="keyword argument 'b'"):
        await take.enqueue(1, b=float("nan"))
    assert await queue.jobs() == []


async def test_result_that_is_not_json_fails_the_job(queue: hp.Queue) -> None:
    @queue.task
    async def bad() -> object:
        return object()

    job = await bad.enqueue()
    async with running(queue):
        with pytest.raises(hp.JobFailed, match="not JSON"):
            await job.result(timeout=10)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda t: t.options(delay=-1), ValueError, "delay must be a finite number >= 0, got -1"),
        (lambda t: t.options(channel="bad channel"), ValueError, "channel name 'bad channel'"),
        (lambda t: t.options(channel=""), ValueError, "channel name ''"),
        (lambda t: t.options(priority=1.5), TypeError, "priority must be an int, got 1.5"),
        (lambda t: t.options(retry=3), TypeError, "hp.Retry"),
        (lambda t: t.options(delay=1, run_at=5.0), ValueError, "not both"),
        (lambda t: t.options(timeout=float("inf")), ValueError, "timeout"),
    ],
)
async def test_bad_options_are_refused(queue: hp.Queue, call: Any, error: Any, words: str) -> None:
    @queue.task
    async def noop() -> None:
        return None

    with pytest.raises(error, match=words):
        call(noop)
    assert await queue.jobs() == []


async def test_bad_names_and_policies(queue: hp.Queue) -> None:
    with pytest.raises(ValueError, match="task name 'has space'"):
        await queue.enqueue("has space")
    with pytest.raises(ValueError, match="queue name"):
        hp.Queue("memory://", name="no/slash")
    with pytest.raises(TypeError, match="max_cuncurrency"):
        await queue.channel("c").set_policy(max_cuncurrency=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="max_concurrency must be >= 1, got 0"):
        await queue.channel("c").set_policy(max_concurrency=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        await queue.set_limits(max_concurrency=-2)
    with pytest.raises(ValueError, match="unknown queue URL scheme"):
        hp.Queue("ftp://x")
    assert await queue.jobs() == []


async def test_delay_and_run_at_hold_a_job_back(queue: hp.Queue) -> None:
    @queue.task
    async def noop() -> None:
        return None

    later = await noop.options(delay=30).enqueue()
    future = await noop.options(run_at=datetime.now(UTC) + timedelta(hours=1)).enqueue()
    now = await noop.enqueue()
    assert later.state is hp.JobState.WAITING
    assert future.state is hp.JobState.WAITING
    async with running(queue):
        await now.result(timeout=10)
    for job in (later, future):
        fresh = await job.refresh()
        assert fresh.state is hp.JobState.WAITING, "not due yet: never claimed"


async def test_unknown_task_fails_clearly_and_the_worker_carries_on(queue: hp.Queue) -> None:
    @queue.task
    async def known() -> str:
        return "fine"

    ghost = await queue.enqueue("not_registered_anywhere")
    job = await known.enqueue()
    async with running(queue):
        with pytest.raises(hp.JobFailed, match="no task named 'not_registered_anywhere'"):
            await ghost.result(timeout=10)
        assert await job.result(timeout=10) == "fine"


async def test_queue_names_isolate_queues_in_one_store(url: str) -> None:
    a = hp.Queue(url, name="alpha")
    b = hp.Queue(url, name="beta", backend=a.backend)

    @a.task
    async def noop() -> None:
        return None

    async with a:
        await noop.enqueue()
        assert len(await a.jobs()) == 1
        assert await b.jobs() == []
        assert (await b.show_pool()).counts == {}


async def test_show_pool_counts_by_state_and_channel(queue: hp.Queue) -> None:
    @queue.task
    async def noop() -> None:
        return None

    await noop.options(channel="a").enqueue()
    await noop.options(channel="a").enqueue()
    await noop.options(channel="b", delay=60).enqueue()
    snap = await queue.show_pool()
    assert snap.counts == {"queued": 2, "waiting": 1}
    assert snap.channels == {"a": {"queued": 2}, "b": {"waiting": 1}}
    assert snap.running == []
