"""hp.Scheduler, driven by hp.ManualClock: no test sleeps through real minutes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

import hydrapool as hp

START = datetime(2026, 1, 1, tzinfo=UTC)


class Recorder:
    def __init__(self, clock: hp.ManualClock) -> None:
        self.clock = clock
        self.times: list[datetime] = []

    async def __call__(self) -> None:
        self.times.append(self.clock.now())

    def offsets(self) -> list[float]:
        return [(t - START).total_seconds() for t in self.times]


async def test_every_runs_on_a_fixed_rate() -> None:
    clock = hp.ManualClock(START)
    tick = Recorder(clock)
    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("tick", tick, every=5)
        await clock.advance(60)
        assert tick.offsets() == [5.0 * i for i in range(1, 13)]
        assert scheduler.next_run("tick") == START + timedelta(seconds=65)


async def test_cron_with_seconds_fires_on_its_marks() -> None:
    clock = hp.ManualClock(START + timedelta(seconds=7))
    prune = Recorder(clock)
    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("prune", prune, cron="*/15 * * * * *")
        await clock.advance(60)
    assert prune.offsets() == [15.0, 30.0, 45.0, 60.0]


async def test_args_and_kwargs_reach_the_job() -> None:
    clock = hp.ManualClock(START)
    seen: list[tuple[int, str]] = []

    async def job(n: int, *, label: str) -> None:
        seen.append((n, label))

    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("job", job, every=1, args=(7,), kwargs={"label": "x"})
        await clock.advance(2)
    assert seen == [(7, "x"), (7, "x")]


async def test_a_job_reschedules_itself() -> None:
    clock = hp.ManualClock(START)
    rec = Recorder(clock)

    async def job() -> object:
        await rec()
        if len(rec.times) == 2:
            return hp.Reschedule(every=10)
        return None

    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("job", job, every=1)
        await clock.advance(25)
    assert rec.offsets() == [1.0, 2.0, 12.0, 22.0]


async def test_a_job_reschedules_itself_to_cron() -> None:
    clock = hp.ManualClock(START)
    rec = Recorder(clock)

    async def job() -> object:
        await rec()
        return hp.Reschedule(cron="0 * * * * *")  # at second 0 of every minute

    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("job", job, every=1)
        await clock.advance(130)
    assert rec.offsets() == [1.0, 60.0, 120.0]


async def test_a_job_unschedules_itself() -> None:
    clock = hp.ManualClock(START)
    rec = Recorder(clock)

    async def job() -> object:
        await rec()
        return hp.Unschedule if len(rec.times) == 3 else None  # the class works too

    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("job", job, every=1)
        await clock.advance(10)
        assert scheduler.jobs == []
    assert len(rec.times) == 3


async def test_a_job_stops_the_whole_scheduler() -> None:
    clock = hp.ManualClock(START)
    other = Recorder(clock)

    async def stopper() -> object:
        return hp.StopScheduler()

    scheduler = hp.Scheduler(clock=clock)
    scheduler.add("other", other, every=1)
    scheduler.add("stopper", stopper, every=3.5)
    runner = asyncio.ensure_future(scheduler.run())
    await clock.advance(10)
    await runner
    assert not scheduler.running
    assert other.offsets() == [1.0, 2.0, 3.0]


async def test_no_overlap_by_default_skipped_ticks_are_counted() -> None:
    clock = hp.ManualClock(START)
    release = asyncio.Event()
    starts: list[float] = []

    async def slow() -> None:
        starts.append((clock.now() - START).total_seconds())
        await release.wait()

    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("slow", slow, every=1)
        await clock.advance(5)
        assert starts == [1.0]
        assert scheduler.statistics().jobs["slow"].skipped == 4
        release.set()
        await clock.advance(1)
    assert starts == [1.0, 6.0]


async def test_overlap_true_runs_concurrently() -> None:
    clock = hp.ManualClock(START)
    release = asyncio.Event()
    running = 0
    peak = 0

    async def slow() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("slow", slow, every=1, overlap=True)
        await clock.advance(3)
        release.set()
    assert peak == 3


async def test_a_successful_retry_keeps_the_job_scheduled() -> None:
    """Poolder's scheduler crashed after a successful retry."""
    clock = hp.ManualClock(START)
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("first try fails")

    retry = hp.Retry(attempts=2, backoff=hp.Backoff.fixed(0.5))
    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("flaky", flaky, every=10, retry=retry)
        await clock.advance(30)
        stats = scheduler.statistics().jobs["flaky"]
    assert calls == 4  # 10 s: fail + retry; 20 s; 30 s
    assert (stats.runs, stats.retries, stats.failures) == (3, 1, 0)


async def test_final_failure_reaches_on_error_and_the_job_goes_on() -> None:
    clock = hp.ManualClock(START)
    errors: list[tuple[str, str]] = []

    async def broken() -> None:
        raise ValueError("nope")

    scheduler = hp.Scheduler(
        clock=clock, on_error=lambda name, exc: errors.append((name, str(exc)))
    )
    scheduler.add("broken", broken, every=1)
    async with scheduler:
        await clock.advance(3)
    assert errors == [("broken", "nope")] * 3
    assert scheduler.statistics().jobs["broken"].failures == 3


async def test_pause_resume_remove_and_reschedule() -> None:
    clock = hp.ManualClock(START)
    rec = Recorder(clock)
    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("job", rec, every=2)
        await clock.advance(4)
        scheduler.pause("job")
        assert scheduler.next_run("job") is None
        await clock.advance(10)
        scheduler.resume("job")
        await clock.advance(4)
        scheduler.reschedule("job", every=5)
        await clock.advance(10)
        scheduler.remove("job")
        await clock.advance(10)
        with pytest.raises(KeyError, match="job"):
            scheduler.next_run("job")
    assert rec.offsets() == [2.0, 4.0, 16.0, 18.0, 23.0, 28.0]


async def test_jitter_delays_each_run_within_its_bound() -> None:
    clock = hp.ManualClock(START)
    rec = Recorder(clock)
    async with hp.Scheduler(clock=clock) as scheduler:
        scheduler.add("job", rec, every=10, jitter=2.0)
        await clock.advance(50)
    assert len(rec.times) >= 4
    for i, offset in enumerate(rec.offsets(), start=1):
        assert 10 * i <= offset <= 10 * i + 2.0


async def test_dst_spring_forward_daily_job_runs_once_a_day() -> None:
    clock = hp.ManualClock(datetime(2026, 3, 7, 12, 0, tzinfo=UTC))
    rec = Recorder(clock)
    async with hp.Scheduler(clock=clock, tz="America/New_York") as scheduler:
        scheduler.add("nightly", rec, cron="30 2 * * *")
        await clock.advance(3 * 86400)
    local = [t.astimezone(hp.Cron("* * * * *", tz="America/New_York").tz) for t in rec.times]
    assert [t.strftime("%m-%d %H:%M") for t in local] == [
        "03-08 03:00",
        "03-09 02:30",
        "03-10 02:30",
    ]


async def test_real_clock_smoke() -> None:
    done = asyncio.Event()
    count = 0

    async def tick() -> None:
        nonlocal count
        count += 1
        if count == 3:
            done.set()

    async with hp.Scheduler() as scheduler:
        scheduler.add("tick", tick, every=0.01)
        await asyncio.wait_for(done.wait(), 5)
    assert count >= 3


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({}, ValueError, "exactly one of every= or cron="),
        ({"every": 1, "cron": "* * * * *"}, ValueError, "exactly one"),
        ({"every": 0}, ValueError, "every must be"),
        ({"every": "5"}, TypeError, "'5'"),
        ({"cron": "0 0 30 2 *"}, ValueError, "never fire"),
        ({"every": 1, "jitter": -1}, ValueError, "jitter"),
    ],
)
def test_bad_schedules(kwargs, error, words) -> None:  # type: ignore[no-untyped-def]
    scheduler = hp.Scheduler(clock=hp.ManualClock(START))
    with pytest.raises(error, match=words):
        scheduler.add("job", lambda: None, **kwargs)
    assert scheduler.jobs == []


def test_duplicate_and_unknown_names() -> None:
    scheduler = hp.Scheduler(clock=hp.ManualClock(START))
    scheduler.add("job", lambda: None, every=1)
    with pytest.raises(ValueError, match="already scheduled"):
        scheduler.add("job", lambda: None, every=1)
    with pytest.raises(KeyError, match="nope"):
        scheduler.remove("nope")
    with pytest.raises(TypeError, match="callable"):
        scheduler.add("x", 5, every=1)  # type: ignore[arg-type]


async def test_fall_back_night_fixed_job_fires_on_time_beside_an_hourly_job() -> None:
    clock = hp.ManualClock(datetime(2026, 11, 1, 4, 0, tzinfo=UTC))  # 00:00 EDT
    fixed = Recorder(clock)
    async with hp.Scheduler(clock=clock, tz="America/New_York") as scheduler:
        scheduler.add("fixed", fixed, cron="30 1 * * *")  # 01:30 EDT = 05:30 UTC
        scheduler.add("hourly", Recorder(clock), cron="0 * * * *")
        await clock.advance(4 * 3600)
    assert [t.isoformat() for t in fixed.times] == ["2026-11-01T05:30:00+00:00"]


async def test_a_jobs_own_zone_survives_rescheduling() -> None:
    clock = hp.ManualClock(START)
    scheduler = hp.Scheduler(clock=clock)
    scheduler.add("job", lambda: None, cron="0 9 * * *", tz="America/New_York")
    scheduler.reschedule("job", cron="0 10 * * *")
    next_run = scheduler.next_run("job")
    assert next_run is not None
    assert next_run.isoformat() == "2026-01-01T10:00:00-05:00"
    scheduler.reschedule("job", cron="0 10 * * *", tz="Europe/Paris")
    next_run = scheduler.next_run("job")
    assert next_run is not None
    assert next_run.isoformat() == "2026-01-01T10:00:00+01:00"
