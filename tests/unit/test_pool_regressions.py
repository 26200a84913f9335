"""Regression tests for defects found in review (each failed before its fix)."""

from __future__ import annotations

import asyncio
import threading

import pytest

import hydrapool as hp


async def test_retry_after_rerun_spends_no_attempt() -> None:
    tries = 0

    async def job() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise hp.RetryAfter(0.001)
        if tries == 2:
            raise ConnectionError("one real failure")
        return "ok"

    async with hp.Pool(1, retry=hp.Retry(attempts=2)) as pool:
        handle = pool.add(job)
    assert handle.result() == "ok"
    assert handle.attempts == 3
    stats = pool.statistics()
    assert (stats.throttled, stats.retried) == (1, 1)


async def test_no_backlog_with_a_rate_limit_still_admits_startable_tasks() -> None:
    async with hp.Pool(4, max_pending=0, rate=hp.RateLimit(2, per=0.05)) as pool:
        first = pool.add(asyncio.sleep, 0)  # idle pool, rate not used up: starts at once
        second = await pool.put(asyncio.sleep, 0)
        with pytest.raises(hp.PoolFull):
            pool.add(asyncio.sleep, 0)  # the rate is used up: it would have to wait
        third = await pool.put(asyncio.sleep, 0)  # waits for the window, then starts
        assert third.started_at is not None
        assert first.started_at is not None
        assert third.started_at - first.started_at >= 0.05 - 1e-9
        await asyncio.gather(first, second, third)


async def test_async_on_error_hook_finishes_before_done_returns() -> None:
    seen: list[str] = []

    async def hook(exc: BaseException, handle: hp.TaskHandle[object]) -> None:
        await asyncio.sleep(0.01)
        seen.append(str(exc))

    async def bad() -> None:
        raise ValueError("late hook")

    async with hp.Pool(on_error=hook) as pool:
        pool.add(bad)
    assert seen == ["late hook"]


async def test_an_abandoned_blocking_call_does_not_starve_the_next() -> None:
    release = threading.Event()

    def stuck() -> None:
        release.wait(10)

    def quick() -> str:
        return "ran"

    try:
        async with hp.Pool(1, timeout=0.05) as pool:
            slow = pool.add(stuck)
            fast = pool.add(quick)
        assert isinstance(slow.exception(), TimeoutError)
        assert fast.result() == "ran"
    finally:
        release.set()


async def test_as_completed_registers_when_called() -> None:
    async with hp.Pool(3) as pool:
        handles = [pool.add(asyncio.sleep, 0, i) for i in range(3)]
        stream = pool.as_completed()
        await pool.join()  # everything ends before iteration starts
        results = sorted([h.result() async for h in stream])
    assert results == [0, 1, 2]
    assert all(h.done() for h in handles)


async def test_as_completed_yields_finished_handles_in_the_given_order() -> None:
    async with hp.Pool(3) as pool:
        handles = [pool.add(asyncio.sleep, 0, i) for i in range(5)]
        await pool.join()
        given = handles[::-1]
        assert [h async for h in pool.as_completed(given)] == given


def test_loop_shutdown_with_queued_tasks_destroys_no_pending_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = hp.Pool(1)

    async def leave_work_behind() -> None:
        pool.add(asyncio.sleep, 10)
        pool.add(asyncio.sleep, 10)
        pool.add(asyncio.sleep, 10)
        await asyncio.sleep(0)

    asyncio.run(leave_work_behind())
    assert "Task was destroyed" not in caplog.text


async def test_drain_snapshot_counts_backing_off_tasks_as_waiting() -> None:
    gate = asyncio.Event()
    failed_once = asyncio.Event()

    async def flaky() -> None:
        if not failed_once.is_set():
            failed_once.set()
            raise ConnectionError
        await gate.wait()

    retry = hp.Retry(attempts=2, backoff=hp.Backoff.fixed(30))
    async with hp.Pool(2, retry=retry) as pool:
        backing_off = pool.add(flaky)
        pool.add(gate.wait)
        await failed_once.wait()
        first = asyncio.ensure_future(pool.drain())
        await asyncio.sleep(0)
        snapshot_task = asyncio.ensure_future(pool.drain())
        snapshot = await first
        assert (snapshot.running, snapshot.pending, snapshot.waiting) == (1, 0, 1)
        backing_off.cancel()
        gate.set()
        await snapshot_task
