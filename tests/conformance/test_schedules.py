"""Durable schedules (issue 5): exactly-once ticks, missed ticks once, names per channel."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

import hydrapool as hp


async def test_a_schedule_enqueues_on_its_ticks(queue: hp.Queue) -> None:
    schedule = await queue.schedule("pulse", task="ping", every=1.0, args=(1,), priority=3)
    assert (schedule.every, schedule.args, schedule.channel) == (1.0, (1,), "default")
    coordinator = hp.Coordinator(queue, interval=0.01)
    assert (await coordinator.run_once()).fired == 0, "not due yet"
    await asyncio.sleep(max(0.0, schedule.next_run.timestamp() - time.time()) + 0.01)
    assert (await coordinator.run_once()).fired == 1
    [job] = await queue.jobs()
    assert (job.task, job.args, job.priority) == ("ping", (1,), 3)


async def test_each_tick_fires_exactly_once_across_coordinators(queue: hp.Queue) -> None:
    await queue.schedule("once", task="ping", every=0.02)
    coordinators = [hp.Coordinator(queue, interval=10, owner=f"c{i}") for i in range(4)]
    total = 0
    for _ in range(3):
        await asyncio.sleep(0.03)
        fired = await asyncio.gather(*(c._fire_schedules() for c in coordinators))
        assert sum(fired) == 1, "one tick, one job, whoever fires it"
        total += sum(fired)
    assert len(await queue.jobs()) == total == 3


async def test_missed_ticks_fire_once_on_recovery(queue: hp.Queue) -> None:
    await queue.schedule("busy", task="ping", every=0.02)
    await asyncio.sleep(0.3)  # about fifteen ticks pass with no coordinator
    fired_from = time.time()
    report = await hp.Coordinator(queue, interval=1).run_once()
    assert report.fired == 1
    [schedule] = await queue.schedules()
    assert schedule.next_run.timestamp() > fired_from, "the missed ticks were skipped"
    assert len(await queue.jobs()) == 1


async def test_names_are_scoped_per_channel_and_replaced_in_place(queue: hp.Queue) -> None:
    await queue.schedule("report", task="r", cron="0 3 * * *")
    await queue.schedule("report", task="r", cron="0 4 * * *", channel="tenant-1")
    await queue.schedule("report", task="r", cron="30 5 * * *", tz="Europe/Paris")
    schedules = {(s.channel, s.name): s for s in await queue.schedules()}
    assert set(schedules) == {("default", "report"), ("tenant-1", "report")}
    replaced = schedules[("default", "report")]
    assert (replaced.cron, replaced.tz) == ("30 5 * * *", "Europe/Paris")
    assert replaced.next_run.astimezone(hp.Cron("* * * * *", tz="Europe/Paris").tz).hour == 5
    with pytest.raises(ValueError, match="channels default, tenant-1"):
        await queue.unschedule("report")
    assert await queue.unschedule("report", channel="default") is True
    assert await queue.unschedule("report", channel="default") is False
    assert await queue.unschedule("report") is True, "the only one left, in tenant-1"
    assert await queue.unschedule("report") is False
    assert await queue.schedules() == []


async def test_six_field_cron_with_seconds(queue: hp.Queue) -> None:
    before = datetime.now(UTC)
    schedule = await queue.schedule("tick", task="t", cron="*/2 * * * * *")
    assert 0 < (schedule.next_run - before).total_seconds() <= 2.01


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({}, ValueError, "exactly one of every= or cron="),
        ({"every": 1, "cron": "* * * * *"}, ValueError, "exactly one"),
        ({"every": 0}, ValueError, "every must be"),
        ({"cron": "0 0 30 2 *"}, ValueError, "never fire"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, ValueError, "Mars/Olympus"),
        ({"every": 1, "priority": "high"}, TypeError, "priority"),
    ],
)
async def test_bad_schedules_store_nothing(
    queue: hp.Queue, kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        await queue.schedule("bad", task="t", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schedule name"):
        await queue.schedule("no spaces", task="t", every=1)
    assert await queue.schedules() == []


async def test_a_worker_runs_scheduled_jobs(queue: hp.Queue) -> None:
    ran = asyncio.Event()

    @queue.task
    async def heartbeat() -> None:
        ran.set()

    await queue.schedule("beat", task=heartbeat, every=0.05)
    worker = hp.Worker(queue, handle_signals=False, coordinator_interval=0.02)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(ran.wait(), 10)
    worker.stop()
    await task


async def test_declaring_the_same_schedule_again_keeps_its_next_tick(queue: hp.Queue) -> None:
    first = await queue.schedule("pulse", task="ping", every=60)
    again = await queue.schedule("pulse", task="ping", every=60)
    assert again.next_run == first.next_run
    changed = await queue.schedule("pulse", task="ping", every=120)
    assert changed.next_run > first.next_run


async def test_schedule_refuses_per_enqueue_options(queue: hp.Queue) -> None:
    with pytest.raises(ValueError, match="takes no delay"):
        await queue.schedule("s", task="t", every=1, delay=5)
    with pytest.raises(ValueError, match="dedup_key"):
        await queue.schedule("s", task="t", every=1, dedup_key="k")
    assert await queue.schedules() == []
