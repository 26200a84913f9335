"""hp.Limiter's hand-off within a process, on every backend: a released place goes
straight to the next waiter of the same Limiter object (same token, no trip through
the store) at most ``handoff`` times in a row, never past a waiter of this process
that came first, never with a rate, never once its lease may have lapsed.

The bound across processes is tested with a real second process in
tests/integration/test_limiter_processes.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

import hydrapool as hp


def name() -> str:
    return f"ho{uuid.uuid4().hex[:8]}"


async def wait_for_waiters(limiter: hp.Limiter, count: int) -> None:
    async with asyncio.timeout(10):
        while True:
            if (await limiter.statistics()).waiters == count:
                return
            await asyncio.sleep(0.005)


async def test_a_released_place_passes_to_the_next_waiter_with_its_token(url: str) -> None:
    async with hp.Limiter(url, name(), limit=1, handoff=2) as limiter:
        held = await limiter.acquire()
        first = asyncio.ensure_future(limiter.acquire())
        await wait_for_waiters(limiter, 1)
        second = asyncio.ensure_future(limiter.acquire())
        await wait_for_waiters(limiter, 2)
        third = asyncio.ensure_future(limiter.acquire())
        await wait_for_waiters(limiter, 3)
        assert await held.release()
        a = await asyncio.wait_for(first, 10)
        assert a.token == held.token  # passed on, not granted anew
        assert await a.release()
        b = await asyncio.wait_for(second, 10)
        assert b.token == held.token
        assert await b.release()  # the second hand-off in a row: back through the store
        c = await asyncio.wait_for(third, 10)
        assert c.token > held.token
        stats = await limiter.statistics()
        assert (stats.holders, stats.held) == (1, 1)
        assert await c.release()
        await wait_for_waiters(limiter, 0)  # the places of the served left the line
        stats = await limiter.statistics()
        assert (stats.holders, stats.held, stats.waiters) == (0, 0, 0)


async def test_handoff_zero_sends_every_place_through_the_store(url: str) -> None:
    async with hp.Limiter(url, name(), limit=1, handoff=0) as limiter:
        held = await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await wait_for_waiters(limiter, 1)
        assert await held.release()
        permit = await asyncio.wait_for(waiter, 10)
        assert permit.token > held.token
        assert await permit.release()


async def test_a_limiter_with_a_rate_never_passes_a_place(url: str) -> None:
    rate = hp.RateLimit(100, per=60)
    async with hp.Limiter(url, name(), limit=1, rate=rate, handoff=8) as limiter:
        assert limiter.handoff == 0  # each grant must be counted against the rate
        held = await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await wait_for_waiters(limiter, 1)
        assert await held.release()
        permit = await asyncio.wait_for(waiter, 10)
        assert permit.token > held.token
        assert (await limiter.statistics()).recent == 2
        assert await permit.release()


async def test_a_waiter_of_this_process_that_came_first_is_never_overtaken(url: str) -> None:
    shared = name()
    async with (
        hp.Limiter(url, shared, limit=1) as one,
        hp.Limiter(url, shared, limit=1) as other,
    ):
        held = await one.acquire()
        order: list[str] = []

        async def wait(limiter: hp.Limiter, label: str) -> None:
            async with limiter.acquire(timeout=10):
                order.append(label)

        # `other`'s waiter came first: `one` may not pass its place to its own waiter.
        tasks = [asyncio.ensure_future(wait(other, "other"))]
        await wait_for_waiters(one, 1)
        tasks.append(asyncio.ensure_future(wait(one, "one")))
        await wait_for_waiters(one, 2)
        assert await held.release()
        await asyncio.gather(*tasks)
        assert order == ["other", "one"]


async def test_a_waiter_cancelled_as_a_place_is_passed_to_it_passes_it_on(url: str) -> None:
    async with hp.Limiter(url, name(), limit=1) as limiter:
        held = await limiter.acquire()
        first = asyncio.ensure_future(limiter.acquire())
        await wait_for_waiters(limiter, 1)
        second = asyncio.ensure_future(limiter.acquire())
        await wait_for_waiters(limiter, 2)
        releasing = asyncio.ensure_future(held.release())
        await asyncio.sleep(0)  # the release has passed the place to `first` ...
        first.cancel()  # ... which has not run yet
        assert await releasing
        permit = await asyncio.wait_for(second, 10)
        assert first.cancelled()
        stats = await limiter.statistics()
        assert (stats.holders, stats.held) == (1, 1)  # one place, held once
        assert await permit.release()
        await wait_for_waiters(limiter, 0)
        assert (await limiter.statistics()).holders == 0


async def test_a_place_whose_lease_may_have_lapsed_is_not_passed(url: str) -> None:
    async with hp.Limiter(url, name(), limit=1, lease=0.3) as limiter:
        held = await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire(timeout=10))
        await wait_for_waiters(limiter, 1)
        time.sleep(0.4)  # noqa: ASYNC251 (a blocked event loop: no renewal, the lease lapses)
        assert not await held.release()  # refused by the store, not passed on
        permit = await asyncio.wait_for(waiter, 10)
        assert permit.token > held.token
        assert await permit.release()


@pytest.mark.parametrize(
    ("handoff", "error", "match"),
    [
        (-1, ValueError, r"handoff must be >= 0 .* got -1"),
        (True, TypeError, r"handoff must be an int, got True"),
        ("2", TypeError, r"handoff must be an int, got '2'"),
    ],
)
def test_a_bad_handoff_is_refused(handoff: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        hp.Limiter("memory://", "h", limit=1, handoff=handoff)  # type: ignore[arg-type]


async def test_a_burst_of_hand_offs_leaves_no_ticket_behind_and_never_exceeds_the_limit(
    url: str,
) -> None:
    # Many waiters served by hand-off give up their own places in the line at about the
    # same time (on PostgreSQL, together in one step): none may stay behind.
    inside = peak = 0
    async with hp.Limiter(url, name(), limit=3, handoff=50) as limiter:

        async def one() -> None:
            nonlocal inside, peak
            async with limiter.acquire():
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.001)
                inside -= 1

        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(60))), 30)
        await wait_for_waiters(limiter, 0)
        stats = await limiter.statistics()
    assert (stats.holders, stats.held, stats.waiters) == (0, 0, 0)
    assert peak == 3
