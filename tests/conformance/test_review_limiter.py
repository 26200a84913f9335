"""Regression tests from a review of hp.Limiter, the worker's RetryAfter pauses and
event streams riding out outages. Each test failed on every backend before its fix.

A backend step is slowed by wrapping the backend object's method: the await points
stand for a request in flight (a pool connection awaited, a reply on its way).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest

import hydrapool as hp


def name() -> str:
    return f"rv{uuid.uuid4().hex[:8]}"


async def holders(url: str, limiter_name: str) -> int:
    observer = hp.Limiter(url, limiter_name, limit=1, lease=5.0)
    try:
        return (await observer.statistics()).holders
    finally:
        await observer.close()


async def cancelled(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ── passes today: the cancellation handling of acquire ────────────────────────
async def test_acquire_cancelled_while_its_grant_is_on_the_way_keeps_no_permit(url: str) -> None:
    shared = name()
    limiter = hp.Limiter(url, shared, limit=1, lease=5.0)
    try:
        await limiter.statistics()  # opened
        step = limiter.backend.limiter_acquire

        async def reply_in_flight(*args: Any) -> Any:
            turn = await step(*args)  # granted on the server...
            await asyncio.sleep(0.5)  # ...and the reply is on its way
            return turn

        limiter.backend.limiter_acquire = reply_in_flight  # type: ignore[method-assign,assignment]
        task = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0.2)
        await cancelled(task)
        limiter.backend.limiter_acquire = step  # type: ignore[method-assign]
        assert await holders(url, shared) == 0
    finally:
        await limiter.close()


# ── defects ───────────────────────────────────────────────────────────────────
async def test_try_acquire_cancelled_while_its_grant_is_on_the_way_keeps_no_permit(
    url: str,
) -> None:
    shared = name()
    limiter = hp.Limiter(url, shared, limit=1, lease=5.0)
    try:
        await limiter.statistics()
        step = limiter.backend.limiter_acquire

        async def reply_in_flight(*args: Any) -> Any:
            turn = await step(*args)
            await asyncio.sleep(0.5)
            return turn

        limiter.backend.limiter_acquire = reply_in_flight  # type: ignore[method-assign,assignment]
        task = asyncio.ensure_future(limiter.try_acquire())
        await asyncio.sleep(0.2)
        await cancelled(task)
        limiter.backend.limiter_acquire = step  # type: ignore[method-assign]
    finally:
        await limiter.close()
    assert await holders(url, shared) == 0


async def test_a_release_cancelled_on_its_way_still_frees_the_place(url: str) -> None:
    shared = name()
    limiter = hp.Limiter(url, shared, limit=1, lease=5.0)
    try:
        permit = await limiter.acquire()
        step = limiter.backend.limiter_release

        async def request_in_flight(*args: Any) -> Any:
            await asyncio.sleep(0.5)  # e.g. waiting for a pool connection
            return await step(*args)

        limiter.backend.limiter_release = request_in_flight  # type: ignore[method-assign,assignment]
        task = asyncio.ensure_future(permit.release())
        await asyncio.sleep(0.1)
        await cancelled(task)
        limiter.backend.limiter_release = step  # type: ignore[method-assign]
    finally:
        await limiter.close()  # "releases what this object holds"
    assert await holders(url, shared) == 0


async def test_one_acquire_object_entered_by_two_tasks(url: str) -> None:
    shared = name()
    limiter = hp.Limiter(url, shared, limit=2, lease=5.0)
    try:
        guard = limiter.acquire()  # kept and shared like an asyncio.Semaphore
        go = asyncio.Event()

        async def user() -> None:
            async with guard:
                await go.wait()

        users = [asyncio.ensure_future(user()) for _ in range(2)]
        await asyncio.sleep(0.2)
        go.set()
        outcomes = await asyncio.gather(*users, return_exceptions=True)
        # Either both hold a place of their own, or a second entry is refused clearly.
        assert not any(isinstance(o, AssertionError) for o in outcomes), outcomes
        assert await holders(url, shared) == 0  # nothing held once both blocks ended
    finally:
        await limiter.close()


async def test_close_ends_the_acquires_in_flight(url: str) -> None:
    shared = name()
    limiter = hp.Limiter(url, shared, limit=1, lease=5.0)
    waiting: asyncio.Future[hp.Permit] | None = None
    try:
        await limiter.acquire()
        waiting = asyncio.ensure_future(limiter.acquire(timeout=5))
        await asyncio.sleep(0.2)  # in line behind the permit close() gives back
        await limiter.close()
        with pytest.raises(BaseException):  # noqa: B017, PT011 (the fix chooses)
            permit = await asyncio.wait_for(waiting, 3)
            await permit.release()
    finally:
        if waiting is not None and not waiting.done():
            waiting.cancel()
        await limiter.close()


async def test_bare_limit_decorator_works_or_is_refused_clearly(url: str) -> None:
    limiter = hp.Limiter(url, name(), limit=1, lease=5.0)
    try:

        async def double(x: int) -> int:
            return 2 * x

        try:
            limited: Any = limiter.limit(double)  # type: ignore[arg-type]
        except TypeError as exc:
            refused: str | None = str(exc)
        else:
            refused = None
        if refused is not None:
            assert "limit()" in refused or "parenthes" in refused
        else:
            assert await limited(2) == 4
    finally:
        await limiter.close()


async def test_cancelling_a_worker_while_it_stores_a_pause_loses_no_report(
    queue: hp.Queue,
) -> None:
    calls = 0

    @queue.task
    async def call_api() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise hp.RetryAfter(0.2)
        return "ok"

    job = await call_api.enqueue()
    worker = hp.Worker(
        queue, concurrency=1, handle_signals=False, idle_wait=0.05, coordinator_interval=0.05
    )
    record = worker._record
    storing = asyncio.Event()

    async def slow_store(*args: Any) -> Any:
        storing.set()
        await asyncio.sleep(0.5)  # a slow store
        return await record(*args)

    worker._record = slow_store  # type: ignore[method-assign,assignment]
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(storing.wait(), 10)
    await asyncio.sleep(0.1)  # the loop now waits for that flush before claiming again
    await cancelled(run)
    assert (await job.refresh()).state == hp.JobState.QUEUED  # handed back, not lost


async def test_a_failing_event_wait_backs_off_and_logs_once(
    queue: hp.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await queue._backend_ready()

    async def broken_wait(*_: Any) -> None:
        raise ConnectionError("no notifications")

    backend.event_wait = broken_wait  # type: ignore[method-assign,assignment]
    stream = queue.events()

    async def follow() -> None:
        async for _ in stream:
            pass

    with caplog.at_level(logging.WARNING, logger="hydrapool.events"):
        task = asyncio.ensure_future(follow())
        await asyncio.sleep(1.5)
        await stream.aclose()
        await asyncio.wait_for(task, 5)
    warnings = [r for r in caplog.records if "reading events failed" in r.getMessage()]
    assert len(warnings) <= 2, len(warnings)
