"""Jobs a worker gets without a claim trip of its own: enqueued while it idles (on Redis
they are handed straight to its inbox), or held ahead (``prefetch``). Its concurrency,
the channel limits and the priority order hold as for a claim, a stopped worker takes
nothing new and hands back what it held, and a held job can be cancelled."""

from __future__ import annotations

import asyncio
import logging
import time
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


def gated(queue: hp.Queue) -> tuple[Gate, Any]:
    """A Gate, and a task ``held`` on ``queue`` whose jobs hold until the gate opens."""
    gate = Gate()

    @queue.task
    async def held() -> None:
        await gate.hold()

    return gate, held


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
    gate, held = gated(queue)

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
    gate, held = gated(queue)

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


async def until(check: Any, what: str) -> None:
    """Wait (10 s at most) until ``check()`` holds: state kept by the worker's own loop."""
    try:
        async with asyncio.timeout(10):
            while True:
                if check():
                    return
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not within 10 s: {what}") from None


@pytest.mark.parametrize("prefetch", [-1, True, 1.5, "2"])
async def test_a_bad_prefetch_is_refused_naming_it(queue: hp.Queue, prefetch: Any) -> None:
    with pytest.raises(ValueError, match=f"prefetch must be an int >= 0, got {prefetch!r}"):
        hp.Worker(queue, prefetch=prefetch)


async def test_a_prefetching_worker_runs_only_its_concurrency_and_holds_the_rest(
    queue: hp.Queue,
) -> None:
    gate, held = gated(queue)

    jobs = await queue.enqueue_many([(held, ())] * 8)
    worker, task = start(queue, concurrency=2, prefetch=3)
    await gate.until_running(2)
    await until(lambda: worker.statistics().held == 3, "3 jobs held")
    states = [(await j.refresh()).state for j in jobs]
    assert states.count(hp.JobState.RUNNING) == 5  # held jobs are leased: they count
    assert states.count(hp.JobState.QUEUED) == 3
    assert (await queue.show_pool()).executing == 5
    gate.open.set()
    for job in jobs:
        await job.result(timeout=10)
    await stop(worker, task)
    assert gate.peak == 2
    assert worker.statistics().succeeded == 8


async def test_a_prefetching_idle_worker_keeps_its_concurrency_for_jobs_enqueued_one_by_one(
    queue: hp.Queue,
) -> None:
    gate, held = gated(queue)

    worker, task = start(queue, concurrency=2, prefetch=2)
    await warm_up(queue)
    jobs = [await held.enqueue() for _ in range(7)]
    await gate.until_running(2)
    await until(lambda: worker.statistics().held == 2, "2 jobs held")
    states = [(await j.refresh()).state for j in jobs]
    assert states.count(hp.JobState.RUNNING) == 4
    assert states.count(hp.JobState.QUEUED) == 3
    gate.open.set()
    for job in jobs:
        await job.result(timeout=10)
    await stop(worker, task)
    assert gate.peak == 2


async def test_a_stopping_worker_hands_back_its_held_jobs_at_once_with_attempts_refunded(
    queue: hp.Queue,
) -> None:
    gate, held = gated(queue)

    first = await held.enqueue()
    rest = await queue.enqueue_many([(held, ())] * 2)
    worker, task = start(queue, concurrency=1, prefetch=2)
    await gate.until_running(1)
    await until(lambda: worker.statistics().held == 2, "2 jobs held")
    worker.stop()
    # The running job still holds: the held ones are back in the queue before it ends.
    async with asyncio.timeout(10):
        while True:
            if [(await j.refresh()).state for j in rest] == [hp.JobState.QUEUED] * 2:
                break
            await asyncio.sleep(0.01)
    assert [(await j.refresh()).attempts for j in rest] == [0, 0]
    assert gate.running == 1
    gate.open.set()
    await asyncio.wait_for(task, 10)
    assert (await first.refresh()).state is hp.JobState.SUCCEEDED
    assert gate.peak == 1
    assert worker.statistics().handed_back == 2
    worker, task = start(queue, concurrency=2)  # they run later, as any queued job
    for job in rest:
        await job.result(timeout=10)
    await stop(worker, task)


async def one_running_one_held(queue: hp.Queue) -> tuple[Gate, list[str], hp.Job, hp.Job]:
    """Two jobs for a worker with one slot and one held place: the first holds until the
    gate opens, the second (held) records that it ran."""
    gate, held = gated(queue)
    ran: list[str] = []

    @queue.task
    async def record(label: str) -> None:
        ran.append(label)

    return gate, ran, await held.enqueue(), await record.enqueue("second")


async def test_a_cancelled_held_job_ends_cancelled_without_running(queue: hp.Queue) -> None:
    gate, ran, first, second = await one_running_one_held(queue)
    worker, task = start(queue, concurrency=1, prefetch=1)
    await gate.until_running(1)
    await until(lambda: worker.statistics().held == 1, "1 job held")
    assert (await second.refresh()).state is hp.JobState.RUNNING
    await queue.cancel(second.id)
    async with asyncio.timeout(10):
        while True:
            if (await second.refresh()).state is hp.JobState.CANCELLED:
                break
            await asyncio.sleep(0.01)
    assert worker.statistics().held == 0
    gate.open.set()
    await first.result(timeout=10)
    await stop(worker, task)
    assert ran == []
    assert worker.statistics().cancelled == 1


async def test_a_prefetching_worker_hands_back_the_held_jobs_of_a_channel_that_pauses(
    queue: hp.Queue,
) -> None:
    runs: list[tuple[str, float]] = []

    @queue.task
    async def call_api(label: str) -> str:
        runs.append((label, time.monotonic()))
        if len(runs) == 1:
            raise hp.RetryAfter(0.6)
        return label

    api = call_api.options(channel="api", retry=None)
    jobs = await queue.enqueue_many([(api, ("limited",)), (api, ("a",)), (api, ("b",))])
    worker, task = start(queue, concurrency=1, prefetch=2)
    assert [await job.result(timeout=10) for job in jobs] == ["limited", "a", "b"]
    await stop(worker, task)
    # "a" and "b" were held when "limited" paused the channel: none ran during the pause.
    first = runs[0][1]
    assert [label for label, _ in runs] == ["limited", "limited", "a", "b"]
    assert all(t >= first + 0.6 - 0.05 for _, t in runs[1:])
    assert [(await job.refresh()).attempts for job in jobs] == [1, 1, 1]


async def test_a_held_job_keeps_its_lease_while_it_waits(queue: hp.Queue) -> None:
    gate, ran, first, second = await one_running_one_held(queue)
    worker, task = start(queue, concurrency=1, prefetch=1, lease=0.3)
    await gate.until_running(1)
    await until(lambda: worker.statistics().held == 1, "1 job held")
    await asyncio.sleep(1.0)  # three leases: only heartbeats keep the held claim alive
    waiting = await second.refresh()
    assert (waiting.state, waiting.attempts) == (hp.JobState.RUNNING, 1)
    gate.open.set()
    await first.result(timeout=10)
    await second.result(timeout=10)
    await stop(worker, task)
    done = await second.refresh()
    assert (done.attempts, done.error) == (1, None)
    assert ran == ["second"]
    assert (worker.statistics().lost, worker.statistics().refused) == (0, 0)


async def test_a_prefetching_worker_that_claims_its_own_rescued_job_again_cancels_the_stale_run(
    queue: hp.Queue,
) -> None:
    # The first try outlives max_processing: the coordinator expires its lease and the job
    # is due again at once. This worker's next claim takes it back (prefetch leaves room
    # though its only slot is busy): the stale run must stop, not hold the slot while the
    # new claim waits behind it.
    tries: list[str] = []

    @queue.task(retry=hp.Retry(attempts=3))
    async def slow() -> int:
        tries.append("start")
        try:
            if len(tries) == 1:
                await asyncio.sleep(5)
        except asyncio.CancelledError:
            tries.append("stale run cancelled")
            raise
        return len(tries)

    job = await slow.options(max_processing=0.3).enqueue()
    worker, task = start(queue, concurrency=1, prefetch=1)
    assert await job.result(timeout=4) >= 2
    await stop(worker, task)
    assert tries[:2] == ["start", "stale run cancelled"]
    assert worker.statistics().lost == 1
    assert (await job.refresh()).attempts == 2


async def test_a_hand_off_goes_to_a_free_slot_never_to_a_busy_workers_held_place(
    redis_url: str,
) -> None:
    # Worker A's only slot is busy and it could hold two more; worker B is idle. A new job
    # must start on B at once: only free slots are registered for hand-offs.
    import redis.asyncio

    from hydrapool.backends.redis.backend import key_base

    name = f"t{uuid.uuid4().hex[:8]}"
    gate, ran = Gate(), []
    queues = [hp.Queue(redis_url, name=name) for _ in range(2)]
    for label, q in zip("AB", queues, strict=True):

        @q.task(name="held")
        async def held() -> None:
            await gate.hold()

        @q.task(name="mark")
        async def mark(label: str = label) -> None:
            ran.append(label)

    a, b = queues
    async with a, b:
        base = key_base(a.backend.prefix, name)  # type: ignore[attr-defined]
        client = redis.asyncio.Redis.from_url(redis_url.split("?")[0], decode_responses=True)
        worker_a, task_a = start(a, concurrency=1, prefetch=2)
        first = await a.tasks["held"].enqueue()
        await gate.until_running(1)
        worker_b, task_b = start(b, concurrency=1)
        async with asyncio.timeout(10):
            while True:
                idle = await client.hkeys(f"{base}:idle")
                if worker_b.id in idle:
                    break
                await asyncio.sleep(0.01)
        assert worker_a.id not in idle
        job = await a.tasks["mark"].enqueue()
        await job.result(timeout=10)
        assert ran == ["B"]
        assert worker_a.statistics().held == 0
        gate.open.set()
        await first.result(timeout=10)
        await stop(worker_a, task_a)
        await stop(worker_b, task_b)
        await client.aclose()
