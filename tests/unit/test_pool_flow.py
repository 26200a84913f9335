"""hp.Pool: retries, RetryAfter, pause/resume, rate limits, back-pressure, timeouts."""

from __future__ import annotations

import asyncio

import pytest

import hydrapool as hp


class Flaky:
    """Fails ``failures`` times, then returns ``"ok"``; remembers every try."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.tries: list[float] = []

    async def __call__(self) -> str:
        self.tries.append(asyncio.get_running_loop().time())
        if len(self.tries) <= self.failures:
            raise self.error(f"try {len(self.tries)}")
        return "ok"


async def test_retry_until_success_spends_attempts() -> None:
    flaky = Flaky(failures=2)
    async with hp.Pool(retry=hp.Retry(attempts=3)) as pool:
        handle = pool.add(flaky)
    assert handle.result() == "ok"
    assert handle.attempts == 3
    assert pool.statistics().retried == 2
    assert pool.errors == []


async def test_retry_gives_up_after_the_last_attempt() -> None:
    flaky = Flaky(failures=10)
    async with hp.Pool(retry=hp.Retry(attempts=3)) as pool:
        handle = pool.add(flaky)
    assert len(flaky.tries) == 3
    with pytest.raises(ConnectionError, match="try 3"):
        handle.result()
    assert pool.statistics().failed == 1


async def test_retry_on_filters_errors() -> None:
    flaky = Flaky(failures=1, error=ValueError)
    retry = hp.Retry(attempts=5, retry_on=ConnectionError)
    async with hp.Pool(retry=retry) as pool:
        handle = pool.add(flaky)
    assert len(flaky.tries) == 1
    assert isinstance(handle.exception(), ValueError)


async def test_backoff_waits_between_tries_without_holding_the_slot() -> None:
    flaky = Flaky(failures=2)
    other_ran = asyncio.Event()
    retry = hp.Retry(attempts=3, backoff=hp.Backoff.exponential(0.02, factor=2))
    async with hp.Pool(1, retry=retry) as pool:
        handle = pool.add(flaky)
        pool.add(other_ran.set)
        await other_ran.wait()
        assert handle.state in (hp.TaskState.WAITING, hp.TaskState.PENDING, hp.TaskState.RUNNING)
    gaps = [b - a for a, b in zip(flaky.tries, flaky.tries[1:], strict=False)]
    assert gaps[0] >= 0.02
    assert gaps[1] >= 0.04
    assert handle.result() == "ok"


async def test_cancel_during_backoff() -> None:
    flaky = Flaky(failures=5)
    tried = asyncio.Event()

    async def try_once() -> str:
        tried.set()
        return await flaky()

    retry = hp.Retry(attempts=5, backoff=hp.Backoff.fixed(30))
    async with hp.Pool(retry=retry) as pool:
        handle = pool.add(try_once)
        await tried.wait()  # the failed try was handled in the same step: now in back-off
        assert handle.state is hp.TaskState.WAITING
        assert pool.statistics().waiting == 1
        assert handle.cancel()
    assert handle.cancelled()
    assert len(flaky.tries) == 1


async def test_retry_after_pauses_new_starts_and_reruns_without_spending_an_attempt() -> None:
    loop = asyncio.get_running_loop()
    raised_at: list[float] = []
    starts: list[tuple[str, float]] = []

    async def limited() -> str:
        starts.append(("limited", loop.time()))
        if not raised_at:
            raised_at.append(loop.time())
            raise hp.RetryAfter(0.05)
        return "done"

    async def other(i: int) -> int:
        starts.append((f"other{i}", loop.time()))
        return i

    async with hp.Pool(1, retry=hp.Retry(attempts=1)) as pool:
        handle = pool.add(limited)
        others = [pool.add(other, i) for i in range(3)]
    assert handle.result() == "done"
    assert handle.attempts == 2  # two tries, yet Retry(attempts=1) did not fail it
    assert [h.result() for h in others] == [0, 1, 2]
    assert pool.statistics().throttled == 1
    after = [t for name, t in starts[1:]]
    assert all(t >= raised_at[0] + 0.05 for t in after), "nothing started during the pause"
    assert starts[1][0] == "limited", "the rerun goes first"


async def test_pause_and_resume() -> None:
    ran: list[int] = []

    async def record(i: int) -> None:
        ran.append(i)

    async with hp.Pool(2) as pool:
        pool.pause()
        assert pool.paused
        for i in range(4):
            pool.add(record, i)
        await asyncio.sleep(0.01)
        assert ran == []
        assert pool.statistics().pending == 4
        pool.resume()
    assert ran == [0, 1, 2, 3]


async def test_rate_limit_never_exceeds_n_in_any_window() -> None:
    rate = hp.RateLimit(3, per=0.05)
    async with hp.Pool(10, rate=rate) as pool:
        handles = [pool.add(asyncio.sleep, 0) for _ in range(10)]
    starts = sorted(h.started_at for h in handles if h.started_at is not None)
    assert len(starts) == 10
    for i in range(len(starts) - 3):
        assert starts[i + 3] - starts[i] >= 0.05 - 1e-9
    assert starts[-1] - starts[0] >= 0.15 - 1e-9  # 10 starts need at least 3 full windows


async def test_max_pending_raises_pool_full_and_put_waits() -> None:
    release = asyncio.Event()
    async with hp.Pool(1, max_pending=2) as pool:
        pool.add(release.wait)  # runs
        pool.add(release.wait)  # pending 1
        pool.add(release.wait)  # pending 2
        with pytest.raises(hp.PoolFull, match="max_pending=2"):
            pool.add(release.wait)
        assert pool.statistics().pending == 2
        putter = asyncio.ensure_future(pool.put(asyncio.sleep, 0))
        await asyncio.sleep(0.01)
        assert not putter.done(), "put waits while the backlog is full"
        release.set()
        handle = await putter
        await handle


async def test_put_waiters_are_served_first_come_first_served() -> None:
    order: list[int] = []
    release = asyncio.Event()

    async def record(i: int) -> None:
        order.append(i)

    async with hp.Pool(1, max_pending=0) as pool:
        pool.add(release.wait)
        putters = [asyncio.ensure_future(pool.put(record, i)) for i in range(5)]
        await asyncio.sleep(0)
        with pytest.raises(hp.PoolFull):
            pool.add(record, 99)  # waiters are ahead of it
        release.set()
        await asyncio.gather(*putters)
    assert order == [0, 1, 2, 3, 4]


async def test_cancelled_put_passes_its_turn_on() -> None:
    release = asyncio.Event()
    async with hp.Pool(1, max_pending=0) as pool:
        pool.add(release.wait)
        first = asyncio.ensure_future(pool.put(asyncio.sleep, 0))
        second = asyncio.ensure_future(pool.put(asyncio.sleep, 0))
        await asyncio.sleep(0)
        first.cancel()
        release.set()
        handle = await second
        await handle
        assert first.cancelled()


async def test_put_on_a_closed_pool_raises() -> None:
    release = asyncio.Event()
    pool = hp.Pool(1, max_pending=0)
    pool.add(release.wait)
    waiting = asyncio.ensure_future(pool.put(asyncio.sleep, 0))
    await asyncio.sleep(0)
    pool.close()
    with pytest.raises(hp.PoolClosed):
        await waiting
    release.set()
    await pool.done()


async def test_async_pool_style_blocking_add_with_results_to_each_caller() -> None:
    """async_pool's case: max_workers=4, five 100 ms tasks; the fifth add waits for a slot."""
    running = 0
    peak = 0

    async def work(x: int) -> tuple[str, int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return ("ok", x)

    async with hp.Pool(4, max_pending=0) as pool:
        handles = []
        for i in range(1, 6):
            handles.append(await pool.put(work, i))
        assert any(h.done() for h in handles[:4]), "the fifth put returned only after a slot freed"
        results = [await h for h in handles]
    assert results == [("ok", i) for i in range(1, 6)]
    assert peak == 4


async def test_many_producers_each_get_their_own_answers() -> None:
    """async_pool's GenServer case: 100 items through 10 workers, every answer to its asker."""

    async def work(n: int) -> int:
        await asyncio.sleep(0.001)
        return n

    async with hp.Pool(10) as pool:

        async def producer(items: range) -> set[int]:
            handles = [pool.add(work, n) for n in items]
            return {await h for h in handles}

        a, b = await asyncio.gather(producer(range(1, 51)), producer(range(51, 101)))
    assert a == set(range(1, 51))
    assert b == set(range(51, 101))


async def test_timeout_fails_a_slow_try_and_retry_applies() -> None:
    tries = 0

    async def slow_then_fast() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            await asyncio.sleep(10)
        return "fast"

    async with hp.Pool(timeout=0.05, retry=hp.Retry(attempts=2)) as pool:
        handle = pool.add(slow_then_fast)
        hopeless = pool.add(asyncio.sleep, 10)
    assert handle.result() == "fast"
    assert isinstance(hopeless.exception(), TimeoutError)


async def test_cancel_before_the_first_step_is_clean() -> None:
    async with hp.Pool(2) as pool:
        handle = pool.add(asyncio.sleep, 1)
        assert handle.state is hp.TaskState.RUNNING
        assert handle.cancel()
    assert handle.cancelled()
    assert pool.statistics().cancelled == 1


def test_tasks_stranded_by_a_closed_loop_do_not_block_the_next_loop() -> None:
    pool = hp.Pool(1)

    async def leave_work_behind() -> None:
        pool.add(asyncio.sleep, 10)
        pool.add(asyncio.sleep, 10)

    asyncio.run(leave_work_behind())

    async def again() -> int:
        return await pool.add(asyncio.sleep, 0, 5)

    assert asyncio.run(again()) == 5
