"""hp.Pool.map and hp.Pool.as_completed."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import pytest

import hydrapool as hp


async def jittery(x: int) -> int:
    for _ in range(random.Random(x).randrange(4)):
        await asyncio.sleep(0)
    return x * 10


async def test_await_map_returns_results_in_input_order() -> None:
    async with hp.Pool(4) as pool:
        assert await pool.map(jittery, range(20)) == [x * 10 for x in range(20)]


async def test_unordered_map_yields_everything_as_it_finishes() -> None:
    async with hp.Pool(4) as pool:
        results = [r async for r in pool.map(jittery, range(30), ordered=False)]
    assert sorted(results) == [x * 10 for x in range(30)]


async def test_map_consumes_the_iterable_lazily() -> None:
    pulled = 0

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield i

    async with hp.Pool(3) as pool:
        seen = 0
        async for _ in pool.map(jittery, items(), window=6):
            seen += 1
            assert pulled <= seen + 6, "never more than `window` items ahead of the consumer"
            if seen == 50:
                break
    assert pulled < 100


async def test_map_over_an_async_iterable() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(10):
            await asyncio.sleep(0)
            yield i

    async with hp.Pool(2) as pool:
        assert await pool.map(jittery, numbers()) == [i * 10 for i in range(10)]


async def test_map_raises_the_failure_in_place_and_cancels_the_rest() -> None:
    started: list[int] = []

    async def work(x: int) -> int:
        started.append(x)
        if x == 3:
            raise ValueError("three")
        await asyncio.sleep(0.001 if x < 3 else 10)
        return x

    async with hp.Pool(4) as pool:
        got: list[int] = []
        with pytest.raises(ValueError, match="three"):
            async for r in pool.map(work, range(100)):
                got.append(r)
        assert got == [0, 1, 2]
    assert pool.statistics().cancelled >= 1
    assert max(started) < 100


async def test_map_return_exceptions() -> None:
    async def work(x: int) -> int:
        if x % 2:
            raise KeyError(x)
        return x

    async with hp.Pool(2) as pool:
        results = await pool.map(work, range(4), return_exceptions=True)
    assert results[0] == 0
    assert isinstance(results[1], KeyError)
    assert results[2] == 2


async def test_map_priority_and_bad_arguments() -> None:
    async with hp.Pool(2) as pool:
        with pytest.raises(TypeError, match="callable"):
            pool.map(42, range(3))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="window"):
            pool.map(jittery, range(3), window=0)
        with pytest.raises(TypeError, match="iterable"):
            pool.map(jittery, 5)  # type: ignore[arg-type]
        mapped = pool.map(jittery, range(3), priority=3)
        assert await mapped == [0, 10, 20]
        with pytest.raises(RuntimeError, match="once"):
            await mapped


async def test_map_respects_max_pending_by_waiting() -> None:
    async with hp.Pool(2, max_pending=1) as pool:
        assert await pool.map(jittery, range(20), window=10) == [i * 10 for i in range(20)]


async def test_as_completed_yields_in_finishing_order() -> None:
    gates = [asyncio.Event() for _ in range(3)]

    async def wait_for(i: int) -> int:
        await gates[i].wait()
        return i

    async with hp.Pool(3) as pool:
        handles = [pool.add(wait_for, i) for i in range(3)]
        order = []
        stream = pool.as_completed(handles)
        for i in (2, 0, 1):
            gates[i].set()
            order.append((await anext(stream)).result())
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    assert order == [2, 0, 1]


async def test_as_completed_for_the_whole_pool_includes_tasks_added_meanwhile() -> None:
    async with hp.Pool(2) as pool:
        for i in range(5):
            pool.add(jittery, i)
        results = []
        async for handle in pool.as_completed():
            results.append(handle.result())
            if len(results) == 2:
                pool.add(jittery, 100)
        assert sorted(results) == [0, 10, 20, 30, 40, 1000]


async def test_as_completed_on_an_idle_pool_is_empty() -> None:
    pool = hp.Pool()
    assert [h async for h in pool.as_completed()] == []


async def test_as_completed_handles_that_already_ended() -> None:
    async with hp.Pool() as pool:
        handle = pool.add(jittery, 1)
        await handle
        assert [h async for h in pool.as_completed([handle])] == [handle]
