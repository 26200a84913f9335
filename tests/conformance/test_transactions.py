"""Enqueue inside the caller's transaction (issue 5; invariant 8): exists only if it commits."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

import hydrapool as hp


@pytest.fixture(params=["sqlite"])  # the SQL backends (PostgreSQL joins with its issue)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def own_connection(queue: hp.Queue) -> sqlite3.Connection:
    return sqlite3.connect(queue.backend.path, timeout=10)  # type: ignore[attr-defined]


async def test_committed_enqueue_exists(queue: hp.Queue) -> None:
    conn = own_connection(queue)
    conn.execute("CREATE TABLE orders (id INTEGER)")
    async with queue.transaction(conn):
        job = await queue.enqueue("ship", 1)
        conn.execute("INSERT INTO orders VALUES (1)")
    assert await queue.get_job(job.id) is None, "not visible before the caller commits"
    conn.commit()
    stored = await queue.get_job(job.id)
    assert stored is not None
    assert stored.state is hp.JobState.QUEUED


async def test_rolled_back_enqueue_leaves_nothing(queue: hp.Queue) -> None:
    conn = own_connection(queue)
    async with queue.transaction(conn):
        jobs = await queue.enqueue_many([("ship", (i,)) for i in range(3)])
    conn.rollback()
    assert [await queue.get_job(j.id) for j in jobs] == [None, None, None]
    assert await queue.jobs() == []


async def test_a_worker_runs_the_job_once_committed(queue: hp.Queue) -> None:
    @queue.task
    async def ship(order: int) -> int:
        return order

    conn = own_connection(queue)
    async with queue.transaction(conn):
        job = await ship.enqueue(7)
    conn.commit()
    worker = hp.Worker(queue, handle_signals=False)
    task = asyncio.create_task(worker.run())
    assert await job.result(timeout=10) == 7
    worker.stop()
    await task


async def test_memory_has_no_caller_transactions() -> None:
    queue = hp.Queue("memory://")
    with pytest.raises(TypeError, match="no caller transactions"):
        async with queue.transaction(object()):
            await queue.enqueue("t")
    assert await queue.jobs() == []


async def test_clear_errors(queue: hp.Queue, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "elsewhere.db")
    with pytest.raises(ValueError, match="no hydrapool tables"):
        async with queue.transaction(other):
            await queue.enqueue("t")
    with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
        async with queue.transaction("not a connection"):
            await queue.enqueue("t")
    assert await queue.jobs() == []


async def test_tasks_started_inside_the_block_do_not_keep_using_it(queue: hp.Queue) -> None:
    conn = own_connection(queue)
    later = asyncio.Event()
    jobs: list[hp.Job] = []

    async def enqueue_later() -> None:
        await later.wait()
        jobs.append(await queue.enqueue("late", 1))

    async with queue.transaction(conn):
        background = asyncio.create_task(enqueue_later())
    conn.commit()
    later.set()
    await background
    assert await queue.get_job(jobs[0].id) is not None, "stored through the queue itself"
    assert not conn.in_transaction


async def test_nested_blocks_of_two_queues_each_use_the_connection(queue: hp.Queue) -> None:
    other = hp.Queue(queue.url, name="second")
    conn = own_connection(queue)
    async with queue.transaction(conn), other.transaction(conn):
        first = await queue.enqueue("a")
        second = await other.enqueue("b")
    conn.rollback()
    assert await queue.get_job(first.id) is None
    assert await other.get_job(second.id) is None
    await other.close()


async def test_autocommit_connections_are_refused_before_writing(queue: hp.Queue) -> None:
    conn = sqlite3.connect(queue.backend.path, isolation_level=None)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="autocommit"):
        async with queue.transaction(conn):
            await queue.enqueue("t")
    assert await queue.jobs() == []


async def test_dedup_inside_a_transaction_with_bytes_text(queue: hp.Queue) -> None:
    first = await queue.options("t", dedup_key="k").enqueue()
    conn = own_connection(queue)
    conn.text_factory = bytes
    async with queue.transaction(conn):
        twin = await queue.options("t", dedup_key="k").enqueue()
    conn.commit()
    assert twin.deduplicated
    assert twin.id == first.id
    assert conn.text_factory is bytes, "the caller's settings are restored"


async def test_enqueue_events_follow_the_callers_transaction(queue: hp.Queue) -> None:
    stream = queue.events(types="enqueued")
    conn = own_connection(queue)
    async with queue.transaction(conn):
        lost = await queue.enqueue("ship", 1)
    conn.rollback()
    async with queue.transaction(conn):
        kept = await queue.enqueue("ship", 2)
    conn.commit()
    async with asyncio.timeout(10):
        event = await anext(stream)
    assert event.job_id == kept.id, "the rolled-back job has no event"
    backend = await queue._backend_ready()
    assert [e.job_id for e in await backend.event_read(queue.name, 0, 10)] == [kept.id]
    assert lost.id != kept.id
