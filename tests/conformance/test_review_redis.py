"""Regressions from the review of the Redis backend (issue 7).

Behaviour every backend must share runs on all of them, with the Redis run marked
``xfail`` (strict) until fixed (what is left: 64-bit priorities and max_attempts on
PostgreSQL); checks of Redis internals (pub/sub, key layout) run on a single server
and on a Redis Cluster (the ``redis_kind_url`` fixture).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import hydrapool as hp
from hydrapool.backends.base import ClaimParams, NewJob, ScheduleRecord


def redis_fails(reason: str, postgres: str | None = None) -> pytest.MarkDecorator:
    """Run on every backend; the Redis run (and the PostgreSQL one, when ``postgres``
    says why) is expected to fail (strict) until fixed."""

    def failing(kind: str, why: str) -> Any:
        return pytest.param(kind, marks=pytest.mark.xfail(strict=True, reason=why))

    return pytest.mark.parametrize(
        "backend_kind",
        [
            "memory",
            "sqlite",
            "postgres" if postgres is None else failing("postgres", postgres),
            "redis",  # fixed; ``reason`` says what went wrong
            "redis-cluster",
        ],
    )


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_kind_url(request: pytest.FixtureRequest) -> str:
    """A URL with a key prefix of this test's own, on a single server or naming a
    cluster's first node (where the backend's pub/sub listens)."""
    fixture = "redis_url" if request.param == "redis" else "redis_cluster_url"
    return str(request.getfixturevalue(fixture))


def new(job_id: str, channel: str = "c", **kw: Any) -> NewJob:
    return NewJob(id=job_id, task="t", channel=channel, payload="{}", **kw)


# ── 1. an idle Worker spins on claims ────────────────────────────────────────
@redis_fails(
    "backend.py work_wait: the 'claim mark' is kept per asyncio task, but Worker._wait "
    "runs work_wait in a fresh ensure_future task, so once any wake-up was seen every "
    "wait returns at once: an idle worker runs thousands of claim scripts a second (the "
    "same in postgres/backend.py; both fixed by backends/_wake.py)",
)
async def test_an_idle_worker_does_not_spin_on_claims(queue: hp.Queue) -> None:
    @queue.task
    async def noop(x: int) -> int:
        return x

    backend: Any = queue.backend
    claims = 0
    original = backend.job_claim

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return await original(*args, **kwargs)

    backend.job_claim = counting
    worker = hp.Worker(queue, handle_signals=False, idle_wait=1.0)
    task = asyncio.create_task(worker.run())
    try:
        job = await noop.enqueue(1)
        assert await job.result(timeout=10) == 1
        await asyncio.sleep(0.3)  # the worker has gone idle
        before = claims
        await asyncio.sleep(1.0)
        idle_claims = claims - before
    finally:
        worker.stop()
        await task
    assert idle_claims <= 10, f"an idle worker claimed {idle_claims} times in 1 s"


# ── 2. a channel named twice in a claim ──────────────────────────────────────
@redis_fails(
    "claim.lua: a channel listed twice becomes two candidates with the same heads: the "
    "same job is claimed twice (attempts +2) and ZPOPMIN pops jobs nobody claimed, which "
    "stay 'queued' outside every index and are never claimed again"
)
async def test_a_claim_naming_a_channel_twice_claims_each_job_once(queue: hp.Queue) -> None:
    backend: Any = queue.backend
    ids = [f"dup-{i}" for i in range(4)]
    await backend.job_insert_many(queue.name, [new(i, "a") for i in ids])
    claims = await backend.job_claim(ClaimParams(queue.name, "w", 4, 30.0, channels=("a", "a")))
    claimed = [c.job.id for c in claims]
    assert sorted(claimed) == ids, "each job once, none left behind"
    assert all(c.job.attempts == 1 for c in claims)
    stats = await backend.pool_stats(queue.name)
    assert stats.counts == {"running": 4}


# ── 3. integers that do not survive Lua's doubles ─────────────────────────────
@redis_fails(
    "insert.lua write_job: max_attempts goes into HSET as a Lua number, which Redis "
    "writes with %.17g: 10**17 is stored as '1e+17' and int() of it fails on every read "
    "(job_get, claim after the script already committed it, rescue, stats)",
    postgres="postgres enqueue(): json_to_recordset reads max_attempts as integer (32 "
    "bits): NumericValueOutOfRange",
)
async def test_a_huge_max_attempts_is_stored_as_given(queue: hp.Queue) -> None:
    job_id = await queue.add_job({"n": 1}, max_attempts=10**17)
    job = await queue.get_job(job_id)
    assert job is not None
    assert job.max_attempts == 10**17
    lease = await queue.claim()
    assert lease is not None
    assert lease.job_id == job_id
    assert lease.max_attempts == 10**17


@redis_fails(
    "common.lua ready_add / claim.lua: the ready set's score is -tonumber(priority), a "
    "double, so 64-bit priorities that differ below 2**-53 of their size tie and the "
    "older job wins",
    postgres="postgres enqueue(): json_to_recordset reads priority as integer (32 bits): "
    "NumericValueOutOfRange for a priority the core accepts (64 bits)",
)
async def test_priorities_beyond_2_to_the_53_keep_their_order(queue: hp.Queue) -> None:
    await queue.add_job("low", priority=2**62)
    high = await queue.add_job("high", priority=2**62 + 1)
    lease = await queue.claim()
    assert lease is not None
    assert lease.job_id == high, "the higher priority runs first"


# ── 4. due delayed jobs beyond the first thousand ─────────────────────────────
@redis_fails(
    "claim.lua: only the first 1000 due delayed jobs (by run_at) become claimable per "
    "claim, so a due job of higher priority behind them loses to lower ones"
)
async def test_a_claim_sees_every_due_job_by_priority(queue: hp.Queue) -> None:
    backend: Any = queue.backend
    jobs = [new(f"low-{i}", delay=0.05) for i in range(1001)]
    jobs.append(new("high", priority=5, delay=0.06))
    await backend.job_insert_many(queue.name, jobs)
    await asyncio.sleep(0.3)  # all due; no release pass ran
    claims = await backend.job_claim(ClaimParams(queue.name, "w", 1, 30.0))
    assert [c.job.id for c in claims] == ["high"]


# ── 5. a schedule tick whose insert fails ─────────────────────────────────────
@pytest.mark.parametrize(
    "backend_kind",
    [
        "sqlite",
        "postgres",
        "redis",  # schedule_fire.lua moved next_run before insert() could refuse the job
        "redis-cluster",
    ],
)
async def test_a_refused_schedule_tick_leaves_the_schedule_as_it_was(
    queue: hp.Queue, backend_kind: str
) -> None:
    backend: Any = queue.backend
    await backend.job_insert_many(queue.name, [new("taken")])
    record = ScheduleRecord(
        queue=queue.name,
        channel="c",
        name="tick",
        spec='{"every": 60.0}',
        task="t",
        payload="{}",
        priority=0,
        max_attempts=1,
        max_processing=None,
        next_run=1000.0,
    )
    await backend.schedule_upsert(record)
    [stored] = await backend.schedule_list(queue.name)
    with pytest.raises(Exception, match=r"taken|UNIQUE"):  # each store has its own error
        await backend.schedule_fire(stored, 2000.0, new("taken"))
    [after] = await backend.schedule_list(queue.name)
    assert after.next_run == stored.next_run, "the tick did not happen: next_run unchanged"


# ── 6. pub/sub: subscriptions that never happen ───────────────────────────────
async def _subscribers(url: str, channel: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url.split("?")[0])
    try:
        [(_, count)] = await client.pubsub_numsub(channel)
        return int(count)
    finally:
        await client.aclose()


async def test_a_second_queue_followed_while_the_first_subscribes_is_subscribed(
    redis_kind_url: str,
) -> None:
    from hydrapool.backends.redis.backend import RedisBackend, key_base

    missing = []
    for spins in range(6):
        backend = RedisBackend(redis_kind_url)
        await backend.open()
        try:
            first = asyncio.create_task(backend.work_wait("qa", 0.01))
            for _ in range(spins):
                await asyncio.sleep(0)
            second = asyncio.create_task(backend.work_wait("qb", 0.01))
            await asyncio.gather(first, second)
            await asyncio.sleep(0.1)
            wake = key_base(backend.prefix, "qb") + ":wake"
            if await _subscribers(redis_kind_url, wake) != 1:
                missing.append(spins)
        finally:
            await backend.close()
    assert missing == [], f"qb's wake-ups were not followed (after {missing} loop turns)"


async def test_a_reopened_queue_follows_its_wake_ups_again(redis_kind_url: str) -> None:
    from hydrapool.backends.redis.backend import key_base

    queue = hp.Queue(redis_kind_url, name=f"t{uuid.uuid4().hex[:8]}")
    backend: Any = queue.backend
    wake = key_base(backend.prefix, queue.name) + ":wake"
    async with queue:
        await backend.work_wait(queue.name, 0.01)
        assert await _subscribers(redis_kind_url, wake) == 1
    async with queue:
        await backend.work_wait(queue.name, 0.01)
        await asyncio.sleep(0.1)
        assert await _subscribers(redis_kind_url, wake) == 1, "following the queue again"
        other = hp.Queue(redis_kind_url, name=queue.name)
        async with other:
            await backend.job_claim(ClaimParams(queue.name, "w", 1, 30.0))
            waiting = asyncio.create_task(backend.work_wait(queue.name, 5.0))
            await asyncio.sleep(0.1)
            await other.add_job("wake up")
            await asyncio.wait_for(waiting, 2.0)


# ── 7. key layout ─────────────────────────────────────────────────────────────
async def test_two_prefixes_never_share_a_queue(redis_kind_url: str) -> None:
    from hydrapool.backends.redis.backend import RedisBackend

    # Prefix 'p' with queue 'x:q' and prefix 'p:x' with queue 'q' would share every key:
    # a prefix may not contain ':' (queue names may).
    one = RedisBackend(redis_kind_url)
    other_url = redis_kind_url.replace(f"prefix={one.prefix}", f"prefix={one.prefix}:x")
    with pytest.raises(ValueError, match=r"prefix '.*:x'.*colons"):
        RedisBackend(other_url)
    try:
        await one.job_insert_many("x:q", [new("mine")])
        assert await one.job_get("x:q", "mine") is not None
    finally:
        await one.close()
