"""Regressions from the review of the PostgreSQL backend (issue 6); most run on every backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import hydrapool as hp
from hydrapool.backends.base import ChannelPolicy, NewJob


async def run_all(queue: hp.Queue, jobs: list[hp.Job]) -> None:
    worker = hp.Worker(queue, handle_signals=False, coordinator_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        for job in jobs:
            try:
                await job.result(timeout=10)
            except hp.JobFailed:
                pass
    finally:
        worker.stop()
        await task


async def test_a_deduplicated_job_can_be_a_parent_later_in_the_batch(queue: hp.Queue) -> None:
    order: list[str] = []

    @queue.task
    async def step(name: str) -> None:
        order.append(name)

    first = await step.options(dedup_key="k").enqueue("parent")
    twin, child = await queue.enqueue_many(
        [
            (step.options(dedup_key="k"), ("again",)),
            (step.options(depends_on=[0]), ("child",)),
        ]
    )
    assert twin.deduplicated
    assert twin.id == first.id
    assert child.state is hp.JobState.WAITING
    await run_all(queue, [first, child])
    assert order == ["parent", "child"], "the child waited for the job it was deduplicated to"


async def test_an_error_with_a_nul_character_is_stored(queue: hp.Queue) -> None:
    @queue.task
    async def bad() -> None:
        raise ValueError("bad \x00 byte")

    job = await bad.enqueue()
    events: list[hp.Event] = []
    stop = queue.on_event(events.append)
    await run_all(queue, [job])
    stop()
    final = await job.refresh()
    assert final.state is hp.JobState.FAILED
    assert final.error is not None
    assert final.error == "ValueError: bad \\x00 byte", "kept whole, the NUL shown escaped"
    assert final.attempts == 1, "the outcome was stored at once, not rescued after the lease"


@pytest.mark.parametrize("backend_kind", ["postgres"])
async def test_a_sync_caller_transaction_does_not_freeze_the_loop(
    queue: hp.Queue, backend_kind: str
) -> None:
    """A sync connection waiting for a row lock must not block the loop that holds it."""
    import psycopg

    backend: Any = queue.backend
    await backend.channel_policy_set(queue.name, "capped", ChannelPolicy(max_size=10_000))
    stop = asyncio.Event()

    async def enqueue_in_a_loop() -> int:
        n = 0
        while not stop.is_set():
            job = NewJob(id=f"loop-{n}", task="t", channel="capped", payload="{}")
            await backend.job_insert_many(queue.name, [job])
            n += 1
        return n

    looping = asyncio.create_task(enqueue_in_a_loop())
    await asyncio.sleep(0)  # the loop's first enqueue is under way
    conn = psycopg.connect(backend.conninfo)
    try:
        async with asyncio.timeout(20):
            for i in range(20):
                with conn.transaction():
                    async with queue.transaction(conn):
                        await queue.channel("capped").enqueue("t", i)
    finally:
        stop.set()
        loops = await looping
        conn.close()
    capped = await queue.jobs(channel="capped", limit=1000)
    assert len(capped) == loops + 20


async def test_a_handed_back_job_does_not_collide_with_its_dedup_twin(queue: hp.Queue) -> None:
    """Found in review: J1 (key k) runs, J2 (key k) is enqueued meanwhile, J1 is handed back;
    the hand-back must not break the one-waiting-job-per-key rule (nor fail its batch)."""
    from hydrapool.backends.base import ClaimParams, Finish

    backend: Any = queue.backend
    first = await queue.options("t", dedup_key="k").enqueue()
    claims = await backend.job_claim(ClaimParams(queue.name, "w", 1, 30.0))
    assert [c.job.id for c in claims] == [first.id]
    second = await queue.options("t", dedup_key="k").enqueue()
    assert not second.deduplicated, "the first had started: the key was free"
    other = await queue.options("t", channel="x").enqueue()
    more = await backend.job_claim(ClaimParams(queue.name, "w", 1, 30.0, channels=("x",)))
    assert [c.job.id for c in more] == [other.id]
    result = await backend.job_finish_many(
        queue.name,
        [
            Finish(first.id, claims[0].lease, "queued"),
            Finish(more[0].job.id, more[0].lease, "succeeded", result="null"),
        ],
    )
    assert result.states == ["queued", "succeeded"]
    third = await queue.options("t", dedup_key="k").enqueue()
    assert third.deduplicated
    assert third.id == second.id, "the job that never started is the key's waiting job"
    assert {j.id for j in await queue.jobs(state="queued")} == {first.id, second.id}
