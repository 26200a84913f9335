"""The Promise Pool and Poolder Tasker test cases, ported behaviourally.

async_pool's two cases live in test_pool_flow.py
(test_async_pool_style_blocking_add_with_results_to_each_caller and
test_many_producers_each_get_their_own_answers); Promise Pool's "should await
only last task" drain case is test_pool_lifecycle.py::test_smart_drain_only_the_last_caller_waits.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

import hydrapool as hp


class Calls:
    """A callable that counts its calls, like jest.fn(() => Promise.resolve(value))."""

    def __init__(self, value: object = 420, delay: float = 0.0) -> None:
        self.value = value
        self.delay = delay
        self.count = 0

    async def __call__(self) -> object:
        self.count += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.value


async def test_can_run_a_single_task() -> None:
    task = Calls()
    pool = hp.Pool()
    handle = pool.add(task)
    await pool.done()
    assert task.count == 1
    assert handle.result() == 420


async def test_can_handle_failing_tasks() -> None:
    ok = Calls()

    async def rejecting() -> None:
        raise RuntimeError("an error")

    pool = hp.Pool()
    pool.add(ok)
    pool.add(rejecting)
    await pool.done()  # a failing task does not make done() fail
    assert ok.count == 1
    assert len(pool.errors) == 1


async def test_can_handle_calling_done_twice() -> None:
    pool = hp.Pool()
    pool.add(Calls())
    first, second = await asyncio.gather(pool.done(), pool.done())
    assert first == second
    assert first.completed == 1


async def test_runtime_is_recorded_per_task() -> None:
    """The seed's timestamp-callback tests: each task's start and end are measured."""
    async with hp.Pool() as pool:
        handle = pool.add(Calls(delay=0.01))
    assert handle.started_at is not None
    assert handle.finished_at is not None
    assert handle.finished_at - handle.started_at >= 0.01


async def test_can_complete_without_tasks_added() -> None:
    stats = await hp.Pool().done()
    assert stats.completed == 0


async def test_can_throw_error_on_adding_tasks_after_completion() -> None:
    pool = hp.Pool()
    await pool.done()
    with pytest.raises(hp.PoolClosed):
        pool.add(Calls())


async def test_can_handle_calling_add_multiple_times() -> None:
    pool = hp.Pool()  # default concurrency 4, as in the seed
    tasks = [Calls() for _ in range(10)]
    for task in tasks:
        pool.add(task)
    assert pool.statistics().running == 4
    assert pool.statistics().pending == 6
    await pool.done()
    assert [t.count for t in tasks] == [1] * 10


async def test_can_add_the_same_ten_tasks_twice() -> None:
    pool = hp.Pool()
    tasks = [Calls() for _ in range(10)]
    for task in tasks + tasks:
        pool.add(task)
    await pool.done()
    assert [t.count for t in tasks] == [2] * 10


async def test_plain_functions_are_valid_tasks() -> None:
    """The seed rejected non-async tasks at done(); here they run in a thread."""
    calls = Counter[str]()

    def returns_value() -> int:
        calls["value"] += 1
        return 420

    def returns_error_object() -> Exception:
        calls["error"] += 1
        return ValueError("an error")  # returned, not raised: it is a result

    pool = hp.Pool()
    a = pool.add(returns_value)
    b = pool.add(returns_error_object)
    await pool.done()
    assert calls == {"value": 1, "error": 1}
    assert a.result() == 420
    assert isinstance(b.result(), ValueError)


async def test_can_error_on_invalid_tasks_non_function() -> None:
    pool = hp.Pool()
    for bad in (None, 420, RuntimeError("an error")):
        with pytest.raises(TypeError, match="must be callable"):
            pool.add(bad)  # type: ignore[call-overload]
    stats = await pool.done()
    assert stats.completed == stats.failed == 0


async def test_can_run_multiple_tasks() -> None:
    pool = hp.Pool()
    tasks = [Calls(i) for i in range(10)]
    handles = [pool.add(t) for t in tasks]
    assert pool.statistics().running == 4
    await asyncio.sleep(0)
    assert tasks[0].count == 1
    await pool.done()
    assert tasks[9].count == 1
    assert [h.result() for h in handles] == list(range(10))


async def test_can_run_multiple_batches_of_tasks_singleton_mode() -> None:
    pool = hp.Pool(4)
    first = [Calls(delay=0.001) for _ in range(8)]
    for t in first:
        pool.add(t)
    assert pool.statistics().running == 4
    await pool.drain()
    assert pool.statistics().running == pool.statistics().pending == 0
    second = [Calls() for _ in range(10)]
    for t in second:
        pool.add(t)
    assert pool.statistics().running == 4
    await pool.drain()
    await pool.done()
    assert [t.count for t in first + second] == [1] * 18


async def test_multiple_tasks_and_multiple_drains() -> None:
    """5 workers; ten 2 ms tasks then ten 4 ms tasks; two drains, then more drains and done."""
    pool = hp.Pool(5)
    short = [Calls(delay=0.002) for _ in range(10)]
    long = [Calls(delay=0.004) for _ in range(10)]
    for t in short + long:
        pool.add(t)
    assert pool.statistics().running == 5
    p1 = asyncio.ensure_future(pool.drain())
    p2 = asyncio.ensure_future(pool.drain())
    early = await p1
    assert early.superseded
    assert early.completed < 20
    final = await p2
    assert not final.superseded
    assert final.completed == 20
    await pool.drain()
    await pool.done()
    assert [t.count for t in short + long] == [1] * 20


async def test_tasker_works_after_idling() -> None:
    """Poolder's Tasker crashed when woken from idle; a pool simply resumes."""
    async with hp.Pool(2) as pool:
        assert await pool.add(Calls(1)) == 1
        await asyncio.sleep(0.02)  # idle for a while
        results = await pool.map(lambda x: Calls(x)(), range(100))
    assert results == list(range(100))
