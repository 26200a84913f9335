"""Regression tests for defects found in the independent review (each failed before its fix)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import hydrapool as hp


async def _cancelled_future() -> None:
    fut = asyncio.get_running_loop().create_future()
    fut.cancel()
    await fut


# ── Pool ─────────────────────────────────────────────────────────────────────
async def test_a_task_raising_cancelled_error_itself_does_not_stall_the_pool() -> None:
    async with hp.Pool(1) as pool:
        first = pool.add(_cancelled_future)
        second = pool.add(asyncio.sleep, 0, "next")
        await asyncio.wait_for(pool.join(), 5)
    assert first.cancelled()
    assert second.result() == "next"


async def test_map_cancels_tasks_already_added_when_the_source_raises() -> None:
    finished: list[int] = []

    async def work(i: int) -> None:
        await asyncio.sleep(0.05)
        finished.append(i)

    def items() -> Iterator[int]:
        yield from range(3)
        raise ValueError("source broke")

    async def aitems() -> AsyncIterator[int]:
        for i in range(3):
            yield i
        raise ValueError("source broke")

    for source in (items(), aitems()):
        async with hp.Pool(4) as pool:
            with pytest.raises(ValueError, match="source broke"):
                await pool.map(work, source)
        assert finished == []
        assert pool.statistics().cancelled == 3


async def test_map_cancels_tasks_added_before_its_consumer_was_cancelled() -> None:
    finished: list[int] = []

    async def work(i: int) -> None:
        await asyncio.sleep(0.05)
        finished.append(i)

    pool = hp.Pool(1, max_pending=1)
    consumer = asyncio.ensure_future(pool.map(work, range(10), window=8))
    await asyncio.sleep(0.01)  # two tasks added, the third put() waits for room
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await pool.join()
    assert finished == []


async def test_ordered_map_never_swallows_the_consumers_cancellation() -> None:
    consumer: asyncio.Task[list[int]]

    async def work(i: int) -> int:
        await asyncio.sleep(0.01)
        if i == 0:
            consumer.cancel()  # lands in the same loop turn the task ends
        return i

    async def consume(pool: hp.Pool) -> list[int]:
        return [r async for r in pool.map(work, range(5))]

    pool = hp.Pool(1)
    consumer = asyncio.ensure_future(consume(pool))
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await pool.drain()


async def test_cancelled_backlog_entries_are_dropped() -> None:
    class Arg:
        pass

    pool = hp.Pool(1)
    pool.pause()
    refs = []
    for _ in range(1000):
        arg = Arg()
        refs.append(weakref.ref(arg))
        pool.add(asyncio.sleep, 0, arg).cancel()
    del arg
    gc.collect()
    assert sum(r() is not None for r in refs) <= 65, "at most one compaction batch lingers"
    pool.resume()
    await pool.done()


async def test_an_abandoned_as_completed_stream_is_not_kept_alive() -> None:
    release = asyncio.Event()
    async with hp.Pool(2) as pool:
        pool.add(release.wait)
        stream = pool.as_completed()
        ref = weakref.ref(stream)
        del stream
        gc.collect()
        assert ref() is None
        pool.add(asyncio.sleep, 0)
        release.set()


async def test_cancelling_the_pool_block_during_exit_cancels_its_tasks() -> None:
    pool = hp.Pool(2)

    async def body() -> None:
        async with pool:
            pool.add(asyncio.sleep, 10)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(body(), 0.05)
    stats = pool.statistics()
    assert (stats.running, stats.cancelled) == (0, 1)


# ── WorkerGroup ──────────────────────────────────────────────────────────────
async def test_close_waits_for_a_message_put_in_the_same_turn_the_mailbox_drained() -> None:
    gate = asyncio.Event()
    done: list[str] = []

    class W:
        async def handle(self, msg: str, state: None) -> str:
            if msg == "m0":
                await gate.wait()
            elif msg == "m2":
                await asyncio.sleep(0.01)
            done.append(msg)
            return msg

    group = hp.WorkerGroup(W, size=1, mailbox_size=1)
    await group.start()
    await group.cast("m0")
    await asyncio.sleep(0)
    await group.cast("m1")
    call = asyncio.ensure_future(group.call("m2"))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(group.close())
    await asyncio.sleep(0)
    gate.set()
    await closing
    assert done == ["m0", "m1", "m2"]
    assert await asyncio.wait_for(call, 1) == "m2"


async def test_a_handler_raising_cancelled_error_does_not_kill_its_worker() -> None:
    class W:
        async def handle(self, msg: str, state: None) -> str:
            if msg == "boom":
                await _cancelled_future()
            return msg

    async with hp.WorkerGroup(W, size=1) as group:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(group.call("boom"), 5)
        assert await asyncio.wait_for(group.call("next"), 5) == "next"
    assert group.statistics().failed == 1


async def test_a_call_blocked_on_a_stopping_workers_mailbox_is_rerouted() -> None:
    class W:
        async def handle(self, msg: str, state: None) -> Any:
            await asyncio.sleep(0.02)
            return hp.StopWorker() if msg == "stop" else f"handled {msg}"

    group = hp.WorkerGroup(W, size=2, mode="key_hash", key=lambda m: 0, mailbox_size=1)
    await group.start()
    await group.cast("stop")
    await asyncio.sleep(0)
    await group.cast("b")
    assert await asyncio.wait_for(group.call("c"), 2) == "handled c"
    await asyncio.wait_for(group.close(), 2)


async def test_key_order_survives_a_worker_stopping() -> None:
    log: list[int] = []

    class W:
        async def handle(self, msg: tuple[int, Any], state: None) -> Any:
            _, seq = msg
            if seq == "stop":
                await asyncio.sleep(0.01)
                return hp.StopWorker()
            await asyncio.sleep(0.02 if seq < 3 else 0.001)
            log.append(seq)
            return None

    group = hp.WorkerGroup(W, size=3, mode="key_hash", key=lambda m: m[0])
    await group.start()
    await group.cast((0, "stop"))
    for seq in range(3):
        await group.cast((0, seq))
    await asyncio.sleep(0.02)
    for seq in range(3, 6):
        await group.cast((0, seq))
    await group.close()
    assert log == [0, 1, 2, 3, 4, 5]


async def test_a_failed_start_terminates_the_workers_that_did_boot() -> None:
    made = 0
    terminated: list[int] = []

    class W:
        def __init__(self) -> None:
            nonlocal made
            made += 1
            self.n = made

        def init(self) -> None:
            if self.n >= 2:  # every object after the first fails to start
                raise RuntimeError("cannot start")

        def handle(self, msg: Any, state: None) -> None:
            return None

        def terminate(self, state: None) -> None:
            terminated.append(self.n)

    group = hp.WorkerGroup(W, size=2)
    with pytest.raises(RuntimeError, match="failed to start"):
        await group.start()
    assert terminated == [1]
    assert group.statistics().alive == 0


def test_decision_backoff_must_be_finite() -> None:
    for bad in (float("inf"), float("nan"), -1):
        with pytest.raises(ValueError, match="finite"):
            hp.Decision.backoff(bad)


# ── Batcher ──────────────────────────────────────────────────────────────────
async def test_close_refuses_items_pushed_while_it_flushes_instead_of_dropping_them() -> None:
    handled: list[list[str]] = []
    gate = asyncio.Event()

    async def slow(items: list[str]) -> None:
        await gate.wait()
        handled.append(items)

    batcher = hp.Batcher(slow, limit=10)
    batcher.push("a")
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0)
    with pytest.raises(hp.Closed):
        batcher.push("b")
    gate.set()
    await closing
    assert handled == [["a"]]
    assert batcher.statistics().pending_items == 0


async def test_a_batch_raising_cancelled_error_is_a_failed_batch_and_the_rest_goes_on() -> None:
    handled: list[list[int]] = []

    async def handle(items: list[int]) -> None:
        if items == [0, 1]:
            await _cancelled_future()
        handled.append(items)

    async with hp.Batcher(handle, limit=2) as batcher:
        batcher.push_many(range(4))
    assert handled == [[2, 3]]
    assert [f.items for f in batcher.failed] == [[0, 1]]


async def test_push_many_with_a_breaking_iterable_adds_nothing() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        yield 3
        raise ValueError("broken source")

    handled: list[list[int]] = []

    async def handle(batch: list[int]) -> None:
        handled.append(batch)

    async with hp.Batcher(handle, limit=2) as batcher:
        with pytest.raises(ValueError, match="broken source"):
            batcher.push_many(items())
        assert batcher.statistics().pending_items == 0
        batcher.push_many([7, 8, 9])
    assert handled == [[7, 8], [9]]


# ── Scheduler ────────────────────────────────────────────────────────────────
START = datetime(2026, 1, 1, tzinfo=UTC)


async def test_stop_waits_for_the_run_of_a_removed_job() -> None:
    clock = hp.ManualClock(START)
    log: list[str] = []
    gate = asyncio.Event()

    async def job() -> None:
        log.append("start")
        await gate.wait()
        log.append("end")

    scheduler = hp.Scheduler(clock=clock)
    scheduler.add("job", job, every=1)
    await scheduler.start()
    await clock.advance(1)
    scheduler.remove("job")
    stopping = asyncio.ensure_future(scheduler.stop())
    await asyncio.sleep(0)
    assert not stopping.done()
    gate.set()
    await stopping
    assert log == ["start", "end"]


async def test_stop_scheduler_from_a_job_cancels_runs_in_back_off() -> None:
    clock = hp.ManualClock(START)
    failures: list[str] = []

    async def flaky() -> None:
        raise RuntimeError("down")

    async def stopper() -> hp.StopScheduler:
        return hp.StopScheduler()

    scheduler = hp.Scheduler(
        clock=clock,
        retry=hp.Retry(attempts=3, backoff=3600),
        on_error=lambda name, exc: failures.append(name),
    )
    scheduler.add("flaky", flaky, every=1)
    scheduler.add("stop", stopper, every=2)
    runner = asyncio.ensure_future(scheduler.run())
    await clock.advance(2)
    await asyncio.wait_for(runner, 1)
    assert failures == [], "a run cut short by a stop is not a failure"


async def test_bad_reschedules_are_refused_where_they_are_made() -> None:
    with pytest.raises(ValueError, match="invalid"):
        hp.Reschedule(cron="61 * * * *")
    with pytest.raises(ValueError, match="every"):
        hp.Reschedule(every=0)
    scheduler = hp.Scheduler(clock=hp.ManualClock(START))
    scheduler.add("job", lambda: None, cron="0 9 * * *")
    with pytest.raises(ValueError, match="Mars/Olympus"):
        scheduler.reschedule("job", cron="0 10 * * *", tz="Mars/Olympus")
    scheduler.reschedule("job", cron="0 10 * * *")  # the bad zone was not kept
    with pytest.raises(ValueError, match="Mars/Olympus"):
        scheduler.add("other", lambda: None, every=5, tz="Mars/Olympus")
    with pytest.raises(ValueError, match="jitter"):
        scheduler.add("other", lambda: None, every=5, jitter=float("inf"))


async def test_manual_clock_never_goes_back() -> None:
    clock = hp.ManualClock(START)
    with pytest.raises(ValueError, match="-3600"):
        await clock.advance(-3600)
    assert clock.now() == START
