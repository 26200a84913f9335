"""hp.Pool: adding tasks, handles, limits, order, sync callables, contexts, bad input."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

import hydrapool as hp


class Tracker:
    """Counts tasks running at once; each task waits on ``release`` if given."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.order: list[object] = []

    async def task(self, name: object, release: asyncio.Event | None = None) -> object:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.order.append(name)
        try:
            if release is not None:
                await release.wait()
            await asyncio.sleep(0)
            return name
        finally:
            self.running -= 1


async def test_add_returns_awaitable_handle_with_result() -> None:
    async def double(x: int) -> int:
        return 2 * x

    async with hp.Pool(2) as pool:
        handle = pool.add(double, 21)
        assert isinstance(handle, hp.TaskHandle)
        assert await handle == 42
        assert handle.done()
        assert handle.result() == 42
        assert handle.exception() is None
        assert handle.state is hp.TaskState.SUCCEEDED
        assert handle.attempts == 1


async def test_concurrency_limit_holds_and_is_used() -> None:
    tracker = Tracker()
    async with hp.Pool(concurrency=3) as pool:
        handles = [pool.add(tracker.task, i) for i in range(20)]
        assert pool.statistics().running == 3
        assert pool.statistics().pending == 17
    assert tracker.peak == 3
    assert [h.result() for h in handles] == list(range(20))


async def test_priority_first_then_fifo() -> None:
    tracker = Tracker()
    release = asyncio.Event()
    async with hp.Pool(1) as pool:
        pool.add(tracker.task, "blocker", release)
        for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 9)]:
            pool.add(tracker.task, name, priority=priority)
        release.set()
    assert tracker.order == ["blocker", "f", "b", "d", "a", "c", "e"]


async def test_float_priorities_and_bad_priorities() -> None:
    async def noop() -> None:
        return None

    async with hp.Pool(1) as pool:
        pool.add(noop, priority=0.5)
        with pytest.raises(ValueError, match="inf"):
            pool.add(noop, priority=float("inf"))
        with pytest.raises(TypeError, match="'high'"):
            pool.add(noop, priority="high")  # type: ignore[arg-type]
        assert pool.statistics().running + pool.statistics().pending == 1


async def test_kwargs_reach_the_function() -> None:
    async def greet(name: str, *, punctuation: str = ".") -> str:
        return f"hi {name}{punctuation}"

    async with hp.Pool() as pool:
        assert await pool.add(greet, "ada", punctuation="!") == "hi ada!"


async def test_sync_callables_run_in_threads_and_count_against_the_limit() -> None:
    loop_thread = threading.get_ident()
    barrier = threading.Barrier(2, timeout=10)
    lock = threading.Lock()
    state = {"running": 0, "peak": 0}

    def blocking(i: int) -> int:
        with lock:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
        if i < 2:
            barrier.wait()  # proves the first two run at the same time, each in a thread
        with lock:
            state["running"] -= 1
        assert threading.get_ident() != loop_thread
        return i * i

    async with hp.Pool(2) as pool:
        handles = [pool.add(blocking, i) for i in range(8)]
    assert [h.result() for h in handles] == [i * i for i in range(8)]
    assert state["peak"] == 2


async def test_lambda_returning_coroutine_is_awaited() -> None:
    async def value() -> str:
        return "ok"

    async with hp.Pool() as pool:
        assert await pool.add(lambda: value()) == "ok"


async def test_async_callable_object_is_awaited_on_the_loop() -> None:
    loop_thread = threading.get_ident()

    class Job:
        async def __call__(self, x: int) -> int:
            assert threading.get_ident() == loop_thread
            return x + 1

    async with hp.Pool() as pool:
        assert await pool.add(Job(), 1) == 2


async def test_synchronous_raise_lands_in_the_handle() -> None:
    def explode() -> None:
        raise KeyError("sync")

    async def wrong_arity() -> None:
        return None

    async with hp.Pool() as pool:
        h1 = pool.add(explode)
        h2 = pool.add(wrong_arity, 1, 2)  # TypeError when called, not when added
        with pytest.raises(KeyError):
            await h1
        with pytest.raises(TypeError):
            await h2
    assert len(pool.errors) == 2


async def test_non_callable_is_refused_and_nothing_is_added() -> None:
    async with hp.Pool() as pool:
        for bad in (None, 420, "task", ValueError("x")):
            with pytest.raises(TypeError, match="callable"):
                pool.add(bad)  # type: ignore[call-overload]
        assert pool.statistics().running == pool.statistics().pending == 0


async def test_coroutine_object_gets_a_helpful_error() -> None:
    async def fetch(url: str) -> str:
        return url

    async with hp.Pool() as pool:
        with pytest.raises(TypeError, match=r"pool.add\(fetch, url\)"):
            pool.add(fetch("x"))  # type: ignore[call-overload]


def test_add_outside_a_running_loop_is_a_clear_error() -> None:
    async def noop() -> None:
        return None

    with pytest.raises(RuntimeError, match="running event loop"):
        hp.Pool().add(noop)


async def test_each_task_runs_in_a_copy_of_the_adders_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def read_and_write(tag: str) -> None:
        seen.append(var.get())
        var.set(f"changed-by-{tag}")

    release = asyncio.Event()
    async with hp.Pool(1) as pool:
        pool.add(release.wait)
        token = var.set("first")
        pool.add(read_and_write, "a")
        var.reset(token)
        token = var.set("second")
        pool.add(read_and_write, "b")
        var.reset(token)
        release.set()
    assert seen == ["first", "second"]
    assert var.get() == "unset"


async def test_handle_cancel_pending_and_running() -> None:
    started = asyncio.Event()
    ran: list[str] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def record(name: str) -> None:
        ran.append(name)

    async with hp.Pool(1) as pool:
        running = pool.add(forever)
        pending = pool.add(record, "never")
        after = pool.add(record, "after")
        await started.wait()
        assert pending.cancel() is True
        assert pending.cancelled()
        assert running.cancel() is True
        with pytest.raises(asyncio.CancelledError):
            await running
        assert running.cancelled()
    assert ran == ["after"]
    assert after.cancel() is False
    assert pool.statistics().cancelled == 2
    with pytest.raises(asyncio.CancelledError):
        pending.result()


async def test_result_before_the_end_is_an_invalid_state() -> None:
    release = asyncio.Event()
    async with hp.Pool(1) as pool:
        handle = pool.add(release.wait)
        with pytest.raises(asyncio.InvalidStateError, match="running"):
            handle.result()
        with pytest.raises(asyncio.InvalidStateError):
            handle.exception()
        release.set()


async def test_many_awaiters_each_get_the_outcome() -> None:
    release = asyncio.Event()

    async def answer() -> int:
        await release.wait()
        return 7

    async with hp.Pool(1) as pool:
        handle = pool.add(answer)
        waiters = [asyncio.ensure_future(_await(handle)) for _ in range(5)]
        await asyncio.sleep(0)
        waiters[0].cancel()  # one impatient awaiter must not cancel the task for the others
        release.set()
        results = await asyncio.gather(*waiters[1:])
    assert results == [7, 7, 7, 7]
    assert handle.result() == 7


async def _await(handle: hp.TaskHandle[int]) -> int:
    return await handle


def test_pool_created_outside_a_loop_works_in_successive_loops() -> None:
    pool = hp.Pool(2)

    async def square(x: int) -> int:
        await asyncio.sleep(0)
        return x * x

    async def use() -> list[int]:
        handles = [pool.add(square, i) for i in range(5)]
        await pool.drain()
        return [h.result() for h in handles]

    assert asyncio.run(use()) == [0, 1, 4, 9, 16]
    assert asyncio.run(use()) == [0, 1, 4, 9, 16]  # idle pool moves to the new loop


def test_a_busy_pool_refuses_another_loop() -> None:
    pool = hp.Pool(1)
    holder: dict[str, object] = {}

    async def start() -> None:
        holder["h"] = pool.add(asyncio.Event().wait)
        await asyncio.sleep(0)

    async def other() -> None:
        with pytest.raises(RuntimeError, match="another event loop"):
            pool.add(asyncio.sleep, 0)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(start())
        asyncio.run(other())
        pool.cancel_all()
        loop.run_until_complete(pool.drain())
    finally:
        loop.close()


async def test_resize_at_run_time() -> None:
    tracker = Tracker()
    release = asyncio.Event()
    async with hp.Pool(1) as pool:
        for i in range(6):
            pool.add(tracker.task, i, release)
        await asyncio.sleep(0)
        assert tracker.running == 1
        pool.concurrency = 4
        await asyncio.sleep(0)
        assert tracker.running == 4
        release.set()
    assert tracker.peak == 4
    with pytest.raises(ValueError, match="concurrency"):
        pool.concurrency = 0


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"concurrency": 0}, ValueError, "concurrency must be >= 1, got 0"),
        ({"concurrency": 2.5}, TypeError, "2.5"),
        ({"concurrency": True}, TypeError, "True"),
        ({"max_pending": -1}, ValueError, "max_pending"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "'1'"),
        ({"retry": 3}, TypeError, "hp.Retry"),
        ({"rate": 10}, TypeError, "hp.RateLimit"),
        ({"on_error": "log"}, TypeError, "on_error"),
    ],
)
def test_bad_pool_arguments(kwargs, error, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=words):
        hp.Pool(**kwargs)


async def test_statistics_is_a_frozen_snapshot() -> None:
    async def fail() -> None:
        raise ValueError("x")

    async with hp.Pool(2) as pool:
        pool.add(asyncio.sleep, 0)
        pool.add(fail)
    stats = pool.statistics()
    assert (stats.completed, stats.failed, stats.running, stats.pending) == (1, 1, 0, 0)
    assert stats.closed
    with pytest.raises(AttributeError):
        stats.completed = 5  # type: ignore[misc]
    assert "completed=1" in repr(pool)
