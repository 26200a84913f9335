"""The Redis backend on a real Redis Cluster, where the nodes matter.

The session's throwaway cluster (``redis_cluster`` in tests/conftest.py: three
primaries, no replicas) also runs the whole conformance suite as the backend
kind ``redis-cluster``. These tests place queues and a limiter on chosen nodes
(each queue's keys share one slot, so one node serves it) and check what the
conformance suite cannot see: each node holds its own queues' keys, a backend
listens to pub/sub on the one node its URL names, and wake-ups published by a
script on another node still reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

import hydrapool as hp
from hydrapool.backends.base import ClaimParams, NewJob
from hydrapool.backends.redis import RedisBackend, key_base
from hydrapool.backends.redis.backend import limiter_base

T = hp.EventType
# ``redis_cluster`` is tests/conftest.py's ThrowawayCluster: ``ports`` (its nodes),
# ``url(port)``, ``owner(key)`` (the port of the node serving the key's slot).
Cluster = Any


def prefix_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["prefix"][0]


def on_node(url: str, port: int) -> str:
    """``url`` naming the node on ``port`` instead (any node leads to the whole cluster)."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"127.0.0.1:{port}").geturl()


def one_per_node(cluster: Cluster, base: Any) -> dict[int, str]:
    """A name for each node, by port, whose keys (``base(name)``) that node serves."""
    names: dict[int, str] = {}
    for i in range(1000):
        name = f"n{i}-{uuid.uuid4().hex[:6]}"
        names.setdefault(cluster.owner(base(name)), name)
        if len(names) == len(cluster.ports):
            return names
    raise AssertionError(f"no names spread over every node: {names}")


def subscribers(port: int, channel: str) -> int:
    """How many clients of the node on ``port`` follow ``channel`` (per node: SUBSCRIBE
    is local to the node it was sent to)."""
    client = redis.Redis(port=port)
    try:
        [(_, count)] = client.pubsub_numsub(channel)
        return int(count)
    finally:
        client.close()


@pytest.fixture
def spread(redis_cluster: Cluster, redis_cluster_url: str) -> dict[int, str]:
    """One queue name per node (the URL's prefix), by the port of the node serving it."""
    prefix = prefix_of(redis_cluster_url)
    return one_per_node(redis_cluster, lambda name: key_base(prefix, name))


async def double(n: int) -> int:
    return n * 2


def keys_on(port: int, match: str) -> list[bytes]:
    client = redis.Redis(port=port)
    try:
        return list(client.scan_iter(match=match))
    finally:
        client.close()


async def test_queues_on_every_node_are_served_and_followed(
    redis_cluster: Cluster, redis_cluster_url: str, spread: dict[int, str]
) -> None:
    _, second, third = redis_cluster.ports
    prefix = prefix_of(redis_cluster_url)
    async with contextlib.AsyncExitStack() as stack:
        workers: list[tuple[hp.Worker, asyncio.Task[None]]] = []
        streams = {}
        for name in spread.values():
            # Workers follow pub/sub on the first node, subscribers on the third, and the
            # jobs come from the second: every step's wake-up crosses nodes somewhere.
            serving = await stack.enter_async_context(hp.Queue(redis_cluster_url, name=name))
            serving.task(double, name="work")
            # An idle_wait far beyond the test's bounds: a job left to it would time out.
            worker = hp.Worker(serving, concurrency=2, handle_signals=False, idle_wait=120.0)
            workers.append((worker, asyncio.create_task(worker.run())))
            watching = await stack.enter_async_context(
                hp.Queue(on_node(redis_cluster_url, third), name=name)
            )
            streams[name] = await stack.enter_async_context(watching.events())
        try:
            producers = [
                await stack.enter_async_context(
                    hp.Queue(on_node(redis_cluster_url, second), name=name)
                )
                for name in spread.values()
            ]
            for round_ in range(2):
                jobs = [
                    await q.options("work").enqueue(round_ * 10 + i)
                    for i, q in enumerate(producers)
                ]
                results = [await job.result(timeout=10) for job in jobs]
                assert results == [(round_ * 10 + i) * 2 for i in range(3)]
                for job, name in zip(jobs, spread.values(), strict=True):
                    seen = await events_until_finalized(streams[name], job.id)
                    assert seen == ["enqueued", "dequeued", "succeeded", "finalized"]
        finally:
            for worker, task in workers:
                worker.stop()
                await task
    # Each queue's keys are on the node that serves its slot, and only there.
    for port, name in spread.items():
        for node in redis_cluster.ports:
            keys = keys_on(node, key_base(prefix, name) + ":*")
            assert bool(keys) == (node == port), (name, port, node, keys)


async def events_until_finalized(stream: Any, job_id: str) -> list[str]:
    seen: list[str] = []
    async with asyncio.timeout(10):
        async for event in stream:
            if event.job_id == job_id:
                seen.append(str(event.type))
                if event.type is T.FINALIZED:
                    return seen
    raise AssertionError(f"the stream ended: {seen}")


async def test_a_wake_up_from_a_script_on_another_node_reaches_the_listening_node(
    redis_cluster: Cluster, redis_cluster_url: str, spread: dict[int, str]
) -> None:
    first, second, _ = redis_cluster.ports
    listener = RedisBackend(redis_cluster_url)  # follows pub/sub on the first node
    sender = RedisBackend(on_node(redis_cluster_url, second))
    try:
        for port, name in spread.items():
            await listener.job_claim(ClaimParams(name, "w", 1, 30.0))  # nothing: idle
            await listener.work_wait(name, 0.01)  # subscribes (and returns: look again)
            wake = key_base(listener.prefix, name) + ":wake"
            assert subscribers(first, wake) == 1
            assert subscribers(port, wake) == (1 if port == first else 0)
            waiting = asyncio.create_task(listener.work_wait(name, 60.0))
            await sender.job_insert_many(
                name, [NewJob(id="j", task="t", channel="c", payload="{}")]
            )
            # The script ran on the node serving the queue; only its PUBLISH, spread by
            # the cluster to every node, can end this wait in time.
            await asyncio.wait_for(waiting, 10)
            claims = await listener.job_claim(ClaimParams(name, "w", 1, 30.0))
            assert [c.job.id for c in claims] == ["j"]
    finally:
        await listener.close()
        await sender.close()


async def test_a_limiter_on_another_node_hands_its_place_over(
    redis_cluster: Cluster, redis_cluster_url: str
) -> None:
    first, second, third = redis_cluster.ports
    prefix = prefix_of(redis_cluster_url)
    name = one_per_node(redis_cluster, lambda name: limiter_base(prefix, name))[second]
    # The waiter listens on the first node, the holder on the third; the second serves
    # the limiter, runs its scripts and publishes their wake-ups.
    waiter = hp.Limiter(redis_cluster_url, name, limit=1, lease=10.0)
    holder = hp.Limiter(on_node(redis_cluster_url, third), name, limit=1, lease=10.0)
    waiter.backend.limiter_poll = 60.0  # only a wake-up can wake it in time
    waiting: asyncio.Future[hp.Permit] | None = None
    try:
        held = await holder.acquire()
        waiting = asyncio.ensure_future(waiter.acquire())
        async with asyncio.timeout(10):
            while (await holder.statistics()).waiters != 1:
                await asyncio.sleep(0.005)
        wake = limiter_base(prefix, name) + ":wake"
        assert [subscribers(port, wake) for port in (first, second)] == [1, 0]
        assert keys_on(second, limiter_base(prefix, name) + ":*"), "the limiter's node"
        assert await held.release()
        permit = await asyncio.wait_for(waiting, 10)
        assert (await holder.statistics()).holders == 1
        assert await permit.release()
    finally:
        if waiting is not None:
            waiting.cancel()
        await waiter.close()
        await holder.close()


async def test_pub_sub_moves_to_another_node_when_its_node_dies(own_redis_cluster: Cluster) -> None:
    cluster = own_redis_cluster
    first, second, third = cluster.ports
    url = cluster.url() + "?prefix=t"
    name = one_per_node(cluster, lambda name: key_base("t", name))[second]
    wake = key_base("t", name) + ":wake"
    listener = RedisBackend(url)  # follows pub/sub on the first node
    sender = RedisBackend(on_node(url, third))
    try:
        # (Opened before the kill: redis-py's RedisCluster cannot start while a primary
        # is down, it reads the commands' key specs from the first primary it lists.)
        await sender.open()
        await listener.work_wait(name, 0.01)
        assert subscribers(first, wake) == 1
        cluster.kill(first)
        async with asyncio.timeout(10):  # it follows the queue again, on another node
            while subscribers(second, wake) + subscribers(third, wake) != 1:
                await asyncio.sleep(0.01)
        # Twice: the first wait may end on the wake-up everyone gets once the lost
        # subscription is back; the second can end only on the enqueue's.
        for job_id in ("a", "b"):
            await listener.job_claim(ClaimParams(name, "w", 1, 30.0))
            waiting = asyncio.create_task(listener.work_wait(name, 60.0))
            await sender.job_insert_many(
                name, [NewJob(id=job_id, task="t", channel="c", payload="{}")]
            )
            await asyncio.wait_for(waiting, 10)
    finally:
        await listener.close()
        await sender.close()
