"""Dependencies (issue 5; invariant 6): children run after their parents succeed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import hydrapool as hp


async def run_all(queue: hp.Queue, jobs: list[hp.Job]) -> None:
    worker = hp.Worker(queue, concurrency=4, handle_signals=False, coordinator_interval=0.05)
    task = asyncio.create_task(worker.run())
    for job in jobs:
        try:
            await job.result(timeout=10)
        except hp.JobFailed:
            pass
    worker.stop()
    await task


async def test_a_child_runs_only_after_its_parents_succeeded(queue: hp.Queue) -> None:
    order: list[str] = []

    @queue.task
    async def step(name: str) -> str:
        order.append(name)
        await asyncio.sleep(0.01 if name == "slow-parent" else 0)
        return name

    a = await step.enqueue("slow-parent")
    b = await step.enqueue("quick-parent")
    child = await step.options(depends_on=[a, b.id]).enqueue("child")
    await run_all(queue, [a, b, child])
    assert order.index("child") > max(order.index("slow-parent"), order.index("quick-parent"))
    assert (await child.refresh()).state is hp.JobState.SUCCEEDED


async def test_a_failed_parent_fails_every_descendant_without_running_it(queue: hp.Queue) -> None:
    ran: list[str] = []

    @queue.task
    async def step(name: str) -> None:
        ran.append(name)
        if name == "parent":
            raise ValueError("broken")

    parent = await step.enqueue("parent")
    child = await step.options(depends_on=[parent]).enqueue("child")
    grandchild = await step.options(depends_on=[child]).enqueue("grandchild")
    tolerant = await step.options(depends_on=[parent], cascade=False).enqueue("tolerant")
    await run_all(queue, [parent, child, grandchild, tolerant])
    assert sorted(ran) == ["parent", "tolerant"]
    for job, cause in ((child, parent.id), (grandchild, child.id)):
        final = await job.refresh()
        assert final.state is hp.JobState.FAILED
        assert final.error == f"dependency {cause} ended failed"
    assert (await tolerant.refresh()).state is hp.JobState.SUCCEEDED


async def test_a_cancelled_parent_fails_its_children(queue: hp.Queue) -> None:
    parent = await queue.enqueue("p")
    child = await queue.options("c", depends_on=[parent]).enqueue()
    await queue.cancel(parent.id)
    final = await child.refresh()
    assert final.state is hp.JobState.FAILED
    assert final.error == f"dependency {parent.id} ended cancelled"


async def test_unknown_or_started_parents_are_refused_and_nothing_is_stored(
    queue: hp.Queue,
) -> None:
    with pytest.raises(hp.DependencyError, match="parent 'nope' does not exist"):
        await queue.options("c", depends_on=["nope"]).enqueue()
    started = await queue.enqueue("p")
    from hydrapool.backends.base import ClaimParams

    await queue.backend.job_claim(ClaimParams(queue.name, "w", 1, 30.0))
    with pytest.raises(hp.DependencyError, match=f"parent '{started.id}' already started"):
        await queue.enqueue_many([("a", ()), (queue.options("c", depends_on=[started]), ())])
    assert [j.id for j in await queue.jobs()] == [started.id], "the batch stored nothing"


async def test_enqueue_many_builds_a_dag_in_one_call(queue: hp.Queue) -> None:
    ran: list[str] = []

    @queue.task
    async def step(name: str) -> None:
        ran.append(name)

    jobs = await queue.enqueue_many(
        [
            (step, ("extract",)),
            (step.options(depends_on=[0]), ("transform-a",)),
            (step.options(depends_on=[0]), ("transform-b",)),
            (step.options(depends_on=[1, 2]), ("load",)),
        ]
    )
    await run_all(queue, jobs)
    assert ran[0] == "extract"
    assert ran[-1] == "load"
    with pytest.raises(ValueError, match="earlier item of enqueue_many"):
        await step.options(depends_on=[0]).enqueue("x")
    with pytest.raises(ValueError, match="no earlier item 3"):
        await queue.enqueue_many([(step.options(depends_on=[3]), ("x",))])


async def test_bad_depends_on_values(queue: hp.Queue) -> None:
    bad: Any = 3.5
    with pytest.raises(TypeError, match="depends_on takes jobs"):
        queue.options("c", depends_on=[bad])
    with pytest.raises(ValueError, match="schedule\\(\\) takes no depends_on"):
        await queue.schedule("s", task="t", every=1, depends_on=["x"])


async def test_a_reference_to_a_deduplicated_item_follows_its_twin(queue: hp.Queue) -> None:
    jobs = await queue.enqueue_many(
        [
            (queue.options("t", dedup_key="k"), (1,)),
            (queue.options("t", dedup_key="k"), (2,)),
            (queue.options("t", depends_on=[1]), (3,)),
        ]
    )
    assert jobs[1].deduplicated
    assert jobs[1].id == jobs[0].id
    assert len(await queue.jobs()) == 2


async def test_a_parent_that_ended_unstarted_decides_the_child_at_once(queue: hp.Queue) -> None:
    await queue.channel("c").set_policy(max_size=1)
    await queue.options("t", channel="c").enqueue()
    jobs = await queue.enqueue_many(
        [
            (queue.options("t", channel="c"), (1,)),  # dropped: the channel is full
            (queue.options("t", depends_on=[0]), (2,)),
            (queue.options("t", depends_on=[0], cascade=False), (3,)),
        ]
    )
    assert jobs[0].state is hp.JobState.DROPPED
    assert jobs[1].state is hp.JobState.FAILED
    assert jobs[1].error == f"dependency {jobs[0].id} ended dropped"
    assert jobs[2].state is hp.JobState.QUEUED, "cascade=False: it does not wait for it"


async def test_dedup_and_dependencies_do_not_mix(queue: hp.Queue) -> None:
    parent = await queue.enqueue("p")
    with pytest.raises(ValueError, match="do not mix"):
        queue.options("c", dedup_key="k", depends_on=[parent])


async def test_ended_parents_leave_no_bookkeeping_behind(queue: hp.Queue) -> None:
    @queue.task
    async def step(n: int) -> None:
        return None

    parent = await step.enqueue(1)
    child = await step.options(depends_on=[parent]).enqueue(2)
    await run_all(queue, [parent, child])
    assert await queue.purge() == 2
    backend: Any = queue.backend
    if hasattr(backend, "_q"):
        data = backend._q(queue.name)
        assert data.children == {}
        assert data.parents_left == {}
    elif hasattr(backend, "prefix"):  # Redis: no child lists left
        client = await backend._ready()
        base = backend._base(queue.name)
        assert [k async for k in client.scan_iter(match=base + ":kids:*")] == []
    elif hasattr(backend, "schema"):  # PostgreSQL
        import psycopg

        async with await psycopg.AsyncConnection.connect(backend.conninfo) as conn:
            cursor = await conn.execute(f'SELECT COUNT(*) FROM "{backend.schema}".deps')
            assert (await cursor.fetchone()) == (0,)
    else:
        import sqlite3

        conn = sqlite3.connect(backend.path)
        assert conn.execute("SELECT COUNT(*) FROM hydrapool_deps").fetchone()[0] == 0
