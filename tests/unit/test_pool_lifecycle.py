"""hp.Pool: join, the smart drain, done/close, the context manager, fail_fast."""

from __future__ import annotations

import asyncio

import pytest

import hydrapool as hp


async def test_join_waits_only_for_tasks_added_before_it() -> None:
    first = asyncio.Event()
    later = asyncio.Event()
    async with hp.Pool(4) as pool:
        early = pool.add(first.wait)
        joiner = asyncio.ensure_future(pool.join())
        await asyncio.sleep(0)
        late = pool.add(later.wait)
        first.set()
        await joiner
        assert early.done()
        assert not late.done()
        later.set()


async def test_join_on_an_idle_pool_returns_at_once() -> None:
    pool = hp.Pool()
    await pool.join()
    assert (await pool.drain()).superseded is False


async def test_smart_drain_only_the_last_caller_waits() -> None:
    """The seed's case: 10 tasks of 10 ms, 5 slots, two drains."""
    calls: list[int] = []

    async def work(i: int) -> int:
        calls.append(i)
        await asyncio.sleep(0.01)
        return i

    pool = hp.Pool(5)
    handles = [pool.add(work, i) for i in range(10)]
    first = asyncio.ensure_future(pool.drain())
    second = asyncio.ensure_future(pool.drain())
    early = await first
    # The first drain came back as soon as the second began, before any task ended.
    assert early.superseded is True
    assert (early.completed, early.running, early.pending) == (0, 5, 5)
    assert pool.statistics().completed < 10
    assert not second.done()
    final = await second
    assert final.superseded is False
    assert (final.completed, final.running, final.pending) == (10, 0, 0)
    assert sorted(calls) == list(range(10)), "every task ran exactly once"
    assert [h.result() for h in handles] == list(range(10))
    third = await pool.drain()
    assert third.superseded is False
    stats = await pool.done()
    assert stats.completed == 10


async def test_drain_waits_for_tasks_added_during_the_drain_and_pool_is_reusable() -> None:
    gate = asyncio.Event()
    ran: list[str] = []

    async def step(name: str) -> None:
        await gate.wait()
        ran.append(name)

    async with hp.Pool(2) as pool:
        pool.add(step, "a")
        drain = asyncio.ensure_future(pool.drain())
        await asyncio.sleep(0)
        pool.add(step, "b")  # safe during a drain (the seed corrupted its state here)
        gate.set()
        result = await drain
        assert sorted(ran) == ["a", "b"]
        assert result.completed == 2
        # After a drain the pool takes new work.
        gate.clear()
        pool.add(step, "c")
        gate.set()
        await pool.drain()
    assert ran[-1] == "c"


async def test_many_drains_in_a_row_each_superseded_but_the_last() -> None:
    gate = asyncio.Event()
    async with hp.Pool(1) as pool:
        pool.add(gate.wait)
        drains = [asyncio.ensure_future(pool.drain()) for _ in range(5)]
        results_early = await asyncio.gather(*drains[:4])
        assert all(r.superseded for r in results_early)
        gate.set()
        assert (await drains[4]).superseded is False


async def test_done_closes_and_add_then_raises_pool_closed() -> None:
    pool = hp.Pool()
    pool.add(asyncio.sleep, 0)
    stats = await pool.done()
    assert stats.completed == 1
    assert pool.closed
    with pytest.raises(hp.PoolClosed, match="closed"):
        pool.add(asyncio.sleep, 0)
    await pool.done()  # a second done() is harmless


async def test_close_lets_queued_tasks_finish() -> None:
    ran: list[int] = []

    async def record(i: int) -> None:
        await asyncio.sleep(0)
        ran.append(i)

    pool = hp.Pool(1)
    for i in range(5):
        pool.add(record, i)
    pool.close()
    with pytest.raises(hp.PoolClosed):
        pool.add(record, 99)
    await pool.join()
    assert ran == [0, 1, 2, 3, 4]


async def test_failed_tasks_do_not_fail_done() -> None:
    async def ok() -> int:
        return 420

    async def bad() -> None:
        raise ValueError("an error")

    async with hp.Pool() as pool:
        good = pool.add(ok)
        failing = pool.add(bad)
    assert good.result() == 420
    assert isinstance(failing.exception(), ValueError)
    assert [type(e) for e in pool.errors] == [ValueError]


async def test_on_error_hook_gets_every_failure_and_a_broken_hook_is_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, object]] = []

    def hook(exc: BaseException, handle: hp.TaskHandle[object]) -> None:
        seen.append((str(exc), handle.args))
        raise RuntimeError("the hook itself is broken")

    async def bad(i: int) -> None:
        raise ValueError(f"bad {i}")

    async with hp.Pool(2, on_error=hook) as pool:
        for i in range(3):
            pool.add(bad, i)
        pool.add(asyncio.sleep, 0)
    assert sorted(seen) == [("bad 0", (0,)), ("bad 1", (1,)), ("bad 2", (2,))]
    assert pool.statistics().completed == 1
    assert "on_error hook raised" in caplog.text


async def test_async_on_error_hook_runs() -> None:
    seen = asyncio.Event()

    async def hook(exc: BaseException, handle: hp.TaskHandle[object]) -> None:
        seen.set()

    async def bad() -> None:
        raise ValueError

    async with hp.Pool(on_error=hook) as pool:
        pool.add(bad)
    await asyncio.wait_for(seen.wait(), 5)


async def test_fail_fast_cancels_the_rest_and_raises() -> None:
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()

    async def bad() -> None:
        await started.wait()
        raise ValueError("first failure")

    pool = hp.Pool(2, fail_fast=True)
    slow_handle = pool.add(slow)
    bad_handle = pool.add(bad)
    queued = pool.add(slow)
    with pytest.raises(ValueError, match="first failure"):
        await pool.join()
    assert slow_handle.cancelled()
    assert queued.cancelled()
    assert isinstance(bad_handle.exception(), ValueError)
    with pytest.raises(hp.PoolClosed) as info:
        pool.add(slow)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(ValueError, match="first failure"):
        await pool.done()


async def test_fail_fast_raises_from_the_context_manager() -> None:
    async def bad() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        async with hp.Pool(fail_fast=True) as pool:
            pool.add(bad)
            pool.add(asyncio.sleep, 10)


async def test_error_in_the_block_cancels_the_pool_tasks() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    with pytest.raises(ZeroDivisionError):
        async with hp.Pool(1) as pool:
            running = pool.add(forever)
            pending = pool.add(forever)
            await started.wait()
            1 / 0  # noqa: B018
    assert running.cancelled()
    assert pending.cancelled()
    assert pool.closed


async def test_cancel_all_counts_and_empties_the_pool() -> None:
    async with hp.Pool(2) as pool:
        for _ in range(5):
            pool.add(asyncio.sleep, 10)
        await asyncio.sleep(0)
        assert pool.cancel_all() == 5
    assert pool.statistics().cancelled == 5


async def test_waiting_is_event_driven_with_no_timers_left_behind() -> None:
    """join/drain/done create no polling timers: an idle pool leaves the loop empty."""
    loop = asyncio.get_running_loop()
    async with hp.Pool(3) as pool:
        for _ in range(10):
            pool.add(asyncio.sleep, 0)
        await pool.drain()
    assert not [t for t in loop._scheduled if not t.cancelled()]  # type: ignore[attr-defined]


async def test_clear_errors_returns_and_forgets_failures() -> None:
    async def bad(i: int) -> None:
        raise ValueError(i)

    async with hp.Pool() as pool:
        pool.add(bad, 1)
        pool.add(bad, 2)
    assert sorted(e.args[0] for e in pool.clear_errors()) == [1, 2]
    assert pool.errors == []
    assert pool.statistics().failed == 2
