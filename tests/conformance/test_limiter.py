"""hp.Limiter on every backend: limits, rates, fairness, leases, fencing, errors.

Several Limiter objects on one URL and name stand for several processes (on
memory:// they share the limits within this process); tests/integration/
test_limiter_processes.py runs real processes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

import hydrapool as hp
from hydrapool.backends.base import LimitSpec


def name() -> str:
    return f"lim{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def limiters(url: str) -> AsyncIterator[list[hp.Limiter]]:
    """Three limiters on one name: limit 3, lease 5 s."""
    shared = name()
    group = [hp.Limiter(url, shared, limit=3, lease=5.0) for _ in range(3)]
    try:
        yield group
    finally:
        for limiter in group:
            await limiter.close()


async def wait_for_waiters(limiter: hp.Limiter, count: int, key: str | None = None) -> None:
    async with asyncio.timeout(10):
        while True:
            if (await limiter.statistics(key)).waiters == count:
                return
            await asyncio.sleep(0.005)


async def test_holders_never_exceed_the_limit(limiters: list[hp.Limiter]) -> None:
    inside = 0
    most = 0
    full = asyncio.Event()

    async def hold(limiter: hp.Limiter) -> None:
        nonlocal inside, most
        async with limiter.acquire(timeout=30):
            inside += 1
            most = max(most, inside)
            if inside == 3:
                full.set()
            # The first holders stay until the limit is reached once (on a slow machine a
            # 2 ms hold may end before the next grant arrives), then holds are short.
            await asyncio.wait_for(full.wait(), 10)
            await asyncio.sleep(0.002)
            inside -= 1

    await asyncio.gather(*(hold(limiters[i % 3]) for i in range(60)))
    assert most == 3  # reached, never exceeded
    stats = await limiters[0].statistics()
    assert (stats.holders, stats.held, stats.waiters) == (0, 0, 0)


async def test_waiters_are_served_first_come_first_served(limiters: list[hp.Limiter]) -> None:
    first = await limiters[0].try_acquire(weight=3)
    assert first is not None
    order: list[int] = []

    async def wait(i: int) -> None:
        # Each needs the whole limit: grants come one at a time, so the order they are
        # seen in is the order they were made in.
        async with limiters[i % 3].acquire(timeout=30, weight=3):
            order.append(i)
            await asyncio.sleep(0.001)

    tasks = []
    for i in range(8):
        tasks.append(asyncio.ensure_future(wait(i)))
        await wait_for_waiters(limiters[0], i + 1)
    assert await first.release()
    await asyncio.gather(*tasks)
    assert order == list(range(8))


async def test_a_newcomer_never_overtakes_a_waiter(limiters: list[hp.Limiter]) -> None:
    held = await limiters[0].acquire(weight=2)
    waiter = asyncio.ensure_future(limiters[1].acquire(weight=2))
    await wait_for_waiters(limiters[0], 1)
    # One place is free, but the waiter before us needs two: nobody gets ahead of it.
    assert await limiters[2].try_acquire() is None
    assert await held.release()
    permit = await asyncio.wait_for(waiter, 10)
    assert permit.weight == 2
    assert (await limiters[2].try_acquire()) is not None
    assert (await limiters[2].statistics()).held == 3


async def test_weights_count_against_the_limit(limiters: list[hp.Limiter]) -> None:
    a = await limiters[0].try_acquire(weight=2)
    assert a is not None
    assert await limiters[1].try_acquire(weight=2) is None
    b = await limiters[1].try_acquire(weight=1)
    assert b is not None
    stats = await limiters[2].statistics()
    assert (stats.holders, stats.held) == (2, 3)


async def test_keys_are_limited_separately(limiters: list[hp.Limiter]) -> None:
    full = [await limiters[0].try_acquire("tenant-1") for _ in range(3)]
    assert all(p is not None for p in full)
    assert await limiters[1].try_acquire("tenant-1") is None
    assert await limiters[1].try_acquire("tenant-2") is not None
    assert await limiters[1].try_acquire(42) is not None
    assert (await limiters[2].statistics("tenant-1")).holders == 3
    assert (await limiters[2].statistics(42)).holders == 1


async def test_a_release_hands_the_place_to_the_next_waiter(limiters: list[hp.Limiter]) -> None:
    held = await limiters[0].acquire(weight=3)
    waiter = asyncio.ensure_future(limiters[1].acquire())
    await wait_for_waiters(limiters[0], 1)
    assert await held.release()
    # Pushed (or, on SQLite, a short poll): well within the 1 s re-check of the first waiter.
    permit = await asyncio.wait_for(waiter, 10)
    assert await permit.release()


async def test_a_timeout_raises_and_leaves_the_line(limiters: list[hp.Limiter]) -> None:
    held = await limiters[0].acquire(weight=3)
    with pytest.raises(TimeoutError, match=r"no place within 0\.2 s"):
        await limiters[1].acquire(timeout=0.2)
    assert (await limiters[0].statistics()).waiters == 0
    assert await held.release()
    assert (await limiters[1].try_acquire()) is not None


async def test_a_waiter_cancelled_as_it_is_granted_keeps_no_place(
    limiters: list[hp.Limiter],
) -> None:
    cancelled = 0
    for i in range(8):
        held = await limiters[0].acquire(weight=3)
        waiter = asyncio.ensure_future(limiters[1].acquire(weight=3))
        await wait_for_waiters(limiters[0], 1)
        release = asyncio.ensure_future(held.release())
        for _ in range(i):  # the cancel lands at a different point of the hand-off each time
            await asyncio.sleep(0)
        waiter.cancel()
        await release
        try:
            won = await waiter  # the cancel came too late: the grant is the caller's
        except asyncio.CancelledError:
            cancelled += 1
        else:
            assert await won.release()
        async with asyncio.timeout(10):
            # The cancelled waiter's place, granted or not, comes back.
            permit = await limiters[2].acquire(weight=3)
        assert await permit.release()
    assert cancelled > 0
    stats = await limiters[0].statistics()
    assert (stats.holders, stats.waiters) == (0, 0)


async def test_a_release_after_the_lease_ended_is_refused(url: str) -> None:
    shared = name()
    late = hp.Limiter(url, shared, limit=1, lease=0.2)
    other = hp.Limiter(url, shared, limit=1, lease=5.0)
    try:
        permit = await late.acquire()
        time.sleep(0.3)  # noqa: ASYNC251 (a blocked event loop: the lease is not renewed and ends)
        mine = await other.acquire(timeout=10)
        assert not await permit.release()  # fenced: it must not free `mine`
        assert permit.lost
        stats = await other.statistics()
        assert (stats.holders, stats.held) == (1, 1)
        assert await other.try_acquire() is None
        assert await mine.release()
    finally:
        await late.close()
        await other.close()


async def test_an_async_with_whose_lease_ended_raises_lease_expired(url: str) -> None:
    limiter = hp.Limiter(url, name(), limit=1, lease=0.2)
    try:
        with pytest.raises(hp.LeaseExpired, match="ended before its release"):
            async with limiter.acquire():
                time.sleep(0.3)  # noqa: ASYNC251 (a blocked event loop)
                await limiter.statistics()  # someone else's step drops the ended lease
    finally:
        await limiter.close()


async def test_leases_are_renewed_while_held(url: str) -> None:
    limiter = hp.Limiter(url, name(), limit=1, lease=0.3)
    try:
        async with limiter.acquire() as permit:
            await asyncio.sleep(1.0)  # more than three leases
            assert not permit.lost
            assert (await limiter.statistics()).holders == 1
        assert (await limiter.statistics()).holders == 0
    finally:
        await limiter.close()


async def test_a_place_whose_holder_stopped_renewing_frees_after_the_lease(url: str) -> None:
    shared = name()
    dead = hp.Limiter(url, shared, limit=1, lease=0.5)
    alive = hp.Limiter(url, shared, limit=1, lease=5.0)
    try:
        await dead.acquire()
        assert dead._renewer is not None
        dead._renewer.cancel()  # as if its process died: no renewal, no release
        started = time.monotonic()
        permit = await alive.acquire(timeout=10)
        waited = time.monotonic() - started
        assert 0.2 < waited < 5.0
        assert await permit.release()
    finally:
        await alive.close()
        dead._held.clear()
        await dead.close()


async def test_the_rate_is_never_exceeded_in_any_window(url: str) -> None:
    shared = name()
    group = [hp.Limiter(url, shared, rate=hp.RateLimit(4, per=0.5)) for _ in range(2)]
    times: list[float] = []

    async def take(limiter: hp.Limiter) -> None:
        permit = await limiter.acquire(timeout=30)
        times.append(time.monotonic())
        await permit.release()

    try:
        start = time.monotonic()
        await asyncio.gather(*(take(group[i % 2]) for i in range(12)))
        times.sort()
        # Observed a little after each grant: allow for that in the window.
        for i, t in enumerate(times):
            assert sum(1 for u in times[i:] if u < t + 0.45) <= 4, times
        assert times[-1] - start >= 0.95  # three windows of four
        stats = await group[0].statistics()
        assert stats.recent is not None
        assert stats.recent <= 4
    finally:
        for limiter in group:
            await limiter.close()


async def test_a_rate_waiter_sleeps_exactly_until_the_window_frees(url: str) -> None:
    limiter = hp.Limiter(url, name(), rate=hp.RateLimit(2, per=0.6))
    try:
        for _ in range(2):
            await (await limiter.acquire()).release()
        started = time.monotonic()
        permit = await limiter.acquire(timeout=10)
        waited = time.monotonic() - started
        assert 0.3 < waited < 0.9  # not a poll of the first waiter's 1 s
        await permit.release()
    finally:
        await limiter.close()


async def test_limit_and_rate_together(url: str) -> None:
    limiter = hp.Limiter(url, name(), limit=1, rate=hp.RateLimit(2, per=10))
    try:
        async with limiter.acquire():
            assert await limiter.try_acquire() is None  # the limit
        async with limiter.acquire():
            pass
        assert await limiter.try_acquire() is None  # the rate: two in ten seconds
        stats = await limiter.statistics()
        assert (stats.holders, stats.recent) == (0, 2)
    finally:
        await limiter.close()


async def test_the_decorator_limits_each_call_by_its_key(url: str) -> None:
    limiter = hp.Limiter(url, name(), limit=1)
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}

    @limiter.limit(key=lambda tenant, n: tenant, timeout=30)
    async def call(tenant: str, n: int) -> int:
        inside[tenant] += 1
        most[tenant] = max(most[tenant], inside[tenant], 0)
        await asyncio.sleep(0.002)
        inside[tenant] -= 1
        return n

    try:
        results = await asyncio.gather(*(call("ab"[i % 2], i) for i in range(10)))
        assert results == list(range(10))
        assert most == {"a": 1, "b": 1}
    finally:
        await limiter.close()


async def test_statistics_count_holders_waiters_and_rate(url: str) -> None:
    limiter = hp.Limiter(url, name(), limit=2, rate=hp.RateLimit(100, per=60))
    try:
        a = await limiter.acquire(weight=2)
        waiter = asyncio.ensure_future(limiter.acquire())
        await wait_for_waiters(limiter, 1)
        assert await limiter.statistics() == hp.LimiterStatistics(1, 2, 1, 2)
        await a.release()
        await (await asyncio.wait_for(waiter, 10)).release()
        assert await limiter.statistics() == hp.LimiterStatistics(0, 0, 0, 3)
    finally:
        await limiter.close()


async def test_a_released_permit_cannot_be_released_twice(url: str) -> None:
    limiter = hp.Limiter(url, name(), limit=1)
    try:
        permit = await limiter.acquire()
        assert await permit.release()
        assert not await permit.release()
        async with limiter.acquire() as inner:
            assert await inner.release()  # released inside the block: the exit is quiet
        assert (await limiter.statistics()).holders == 0
    finally:
        await limiter.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "needs limit=, rate= or both"),
        ({"limit": 0}, ValueError, "limit must be >= 1"),
        ({"limit": 2.5}, TypeError, "limit must be an int"),
        ({"limit": True}, TypeError, "limit must be an int"),
        ({"rate": 5}, TypeError, "rate must be a hp.RateLimit"),
        ({"limit": 1, "lease": 0}, ValueError, "lease must be a finite number of seconds >= 0.1"),
        ({"limit": 1, "lease": "30"}, TypeError, "lease must be a number"),
    ],
)
def test_bad_settings_are_refused(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        hp.Limiter("memory://", "x", **kwargs)  # type: ignore[arg-type]


def test_a_bad_name_is_refused() -> None:
    with pytest.raises(ValueError, match="limiter name 'a b' is invalid"):
        hp.Limiter("memory://", "a b", limit=1)


async def test_bad_acquire_arguments_are_refused_before_anything_is_stored(url: str) -> None:
    limiter = hp.Limiter(url, name(), limit=2, rate=hp.RateLimit(3, per=1))
    try:
        with pytest.raises(ValueError, match="weight 3 is more than the limiter's limit"):
            limiter.acquire(weight=3)
        with pytest.raises(ValueError, match="weight must be >= 1"):
            await limiter.try_acquire(weight=0)
        with pytest.raises(TypeError, match="weight must be an int"):
            limiter.acquire(weight=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="limiter key '' is invalid"):
            limiter.acquire("")
        with pytest.raises(TypeError, match="limiter key must be a str"):
            limiter.acquire(1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout must be a finite number >= 0"):
            limiter.acquire(timeout=-1)
        with pytest.raises(TypeError, match="decorates an async def"):
            limiter.limit()(lambda: None)  # type: ignore[arg-type]
        assert await limiter.statistics() == hp.LimiterStatistics(0, 0, 0, 0)
    finally:
        await limiter.close()


async def test_a_rate_weight_above_the_rate_is_refused(url: str) -> None:
    limiter = hp.Limiter(url, name(), rate=hp.RateLimit(3, per=1))
    with pytest.raises(ValueError, match="weight 4 is more than the limiter's rate"):
        limiter.acquire(weight=4)
    await limiter.close()


async def test_a_release_wakes_the_next_waiter_not_every_waiter(url: str) -> None:
    """The backend step names whom to wake: the waiter it promoted and the new first in
    line (which may have a rate wait to time), never the whole line."""
    backend = hp.Limiter(url, name(), limit=1).backend  # the step level, below the Limiter
    spec = LimitSpec(name(), "k", 1, None, 30.0)
    await backend.open()
    try:
        tickets = [uuid.uuid4().hex for _ in range(6)]
        first = await backend.limiter_acquire(spec, tickets[0], 1, True)
        assert first.token is not None
        for i, ticket in enumerate(tickets[1:]):
            turn = await backend.limiter_acquire(spec, ticket, 1, True)
            assert (turn.token, turn.ahead) == (None, i)
        done, woken = await backend.limiter_release(spec, first.token)
        assert done
        assert set(woken) == {tickets[1], tickets[2]}
        second = await backend.limiter_acquire(spec, tickets[1], 1, True)
        assert second.token is not None
        assert second.token > first.token  # fencing tokens rise
        assert (await backend.limiter_acquire(spec, tickets[3], 1, True)).ahead == 1
        assert await backend.limiter_release(spec, first.token) == (False, ())  # fenced
    finally:
        await backend.close()
