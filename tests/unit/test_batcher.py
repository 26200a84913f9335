"""hp.Batcher: size and time flushes, order, reverse, retries, hooks, closing."""

from __future__ import annotations

import asyncio
import threading

import pytest

import hydrapool as hp


class Sink:
    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[object]] = []
        self.calls = 0
        self.fail_times = fail_times
        self.got = asyncio.Event()

    async def __call__(self, items: list[object]) -> None:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise ConnectionError(f"call {self.calls}")
        self.batches.append(list(items))
        self.got.set()


async def test_two_hundred_pushes_with_limit_100_make_two_batches() -> None:
    sink = Sink()
    async with hp.Batcher(sink, limit=100) as batcher:
        for i in range(200):
            batcher.push(i)
    assert sink.batches == [list(range(100)), list(range(100, 200))]
    assert batcher.statistics().batches == 2
    assert batcher.statistics().items == 200


async def test_flush_hands_over_a_partial_batch_and_waits_for_it() -> None:
    sink = Sink()
    batcher = hp.Batcher(sink, limit=100)
    batcher.push("yellow")
    batcher.push_many([5, "Amsterdam", ["orange", "apple"]])
    await batcher.flush()
    assert sink.batches == [["yellow", 5, "Amsterdam", ["orange", "apple"]]]
    await batcher.flush()  # two flushes in a row are safe (a seed crash)
    await batcher.flush()
    assert len(sink.batches) == 1
    await batcher.close()


async def test_push_and_flush_by_name_and_by_instance() -> None:
    sink = Sink()
    batcher = hp.Batcher(sink, limit=10, name="mybatcher")
    hp.Batcher.named("mybatcher").push(1)
    batcher.push(2)
    await hp.Batcher.named("mybatcher").flush()
    assert sink.batches == [[1, 2]]
    with pytest.raises(ValueError, match="mybatcher"):
        hp.Batcher(sink, name="mybatcher")
    await batcher.close()
    with pytest.raises(KeyError, match="mybatcher"):
        hp.Batcher.named("mybatcher")


async def test_timeout_flushes_after_the_first_item() -> None:
    sink = Sink()
    loop = asyncio.get_running_loop()
    async with hp.Batcher(sink, limit=100, timeout=0.05) as batcher:
        pushed_at = loop.time()
        batcher.push("a")
        batcher.push("b")
        await sink.got.wait()
        waited = loop.time() - pushed_at
        assert sink.batches == [["a", "b"]]
        assert waited >= 0.05
        sink.got.clear()
        batcher.push("c")  # a new batch starts its own timer
        await sink.got.wait()
    assert sink.batches == [["a", "b"], ["c"]]


async def test_reverse_hands_each_batch_over_lifo() -> None:
    sink = Sink()
    async with hp.Batcher(sink, limit=3, reverse=True) as batcher:
        batcher.push_many(range(5))
    assert sink.batches == [[2, 1, 0], [4, 3]]


async def test_failing_batch_is_retried_then_handled() -> None:
    sink = Sink(fail_times=2)
    retry = hp.Retry(attempts=3, backoff=hp.Backoff.fixed(0.001))
    async with hp.Batcher(sink, limit=2, retry=retry) as batcher:
        batcher.push_many([1, 2])
    assert sink.batches == [[1, 2]]
    assert batcher.statistics().retries == 2
    assert batcher.failed == []


async def test_batch_that_keeps_failing_reaches_on_error_with_its_items() -> None:
    sink = Sink(fail_times=99)
    failures: list[tuple[str, list[object]]] = []

    def on_error(error: BaseException, items: list[object]) -> None:
        failures.append((str(error), items))

    async with hp.Batcher(sink, limit=2, retry=hp.Retry(attempts=2), on_error=on_error) as b:
        b.push_many([1, 2, 3])
    assert failures == [("call 2", [1, 2]), ("call 4", [3])]
    assert b.statistics().failed_batches == 2


async def test_without_on_error_failed_batches_are_kept() -> None:
    sink = Sink(fail_times=99)
    async with hp.Batcher(sink, limit=2) as batcher:
        batcher.push_many(["x", "y"])
    assert [f.items for f in batcher.failed] == [["x", "y"]]
    assert isinstance(batcher.failed[0].error, ConnectionError)


async def test_batches_are_handled_one_at_a_time_in_order() -> None:
    active = 0
    peak = 0
    seen: list[int] = []

    async def slow(items: list[int]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        seen.extend(items)
        active -= 1

    async with hp.Batcher(slow, limit=3) as batcher:
        for i in range(20):
            batcher.push(i)
            if i % 4 == 0:
                await asyncio.sleep(0)
    assert seen == list(range(20))
    assert peak == 1


async def test_sync_handler_runs_in_a_thread() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def handle(items: list[int]) -> None:
        threads.append(threading.get_ident())

    async with hp.Batcher(handle, limit=2) as batcher:
        batcher.push_many([1, 2])
    assert threads
    assert threads[0] != loop_thread


async def test_on_idle_fires_after_quiet_time() -> None:
    idle = asyncio.Event()
    sink = Sink()
    async with hp.Batcher(sink, limit=10, idle_after=0.02, on_idle=idle.set) as batcher:
        batcher.push(1)
        await batcher.flush()
        await idle.wait()
    assert sink.batches == [[1]]


async def test_closed_batcher_refuses_items_and_bad_arguments_are_named() -> None:
    batcher = hp.Batcher(Sink())
    await batcher.close()
    with pytest.raises(hp.Closed):
        batcher.push(1)
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        hp.Batcher(Sink(), limit=0)
    with pytest.raises(ValueError, match="timeout"):
        hp.Batcher(Sink(), timeout=0)
    with pytest.raises(TypeError, match="callable"):
        hp.Batcher(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"hp\.Retry"):
        hp.Batcher(Sink(), retry=3)  # type: ignore[arg-type]
