"""Scheduler: recurring in-process jobs, on a cron expression or every N seconds.

    async def prune() -> None: ...

    async with hp.Scheduler() as scheduler:
        scheduler.add("prune", prune, cron="*/15 * * * * *")  # 6 fields: seconds first
        scheduler.add("tick", tick, every=5.0)
        await stop_event.wait()

A job may change its own schedule by returning (or raising) ``hp.Reschedule``
(``every=`` or ``cron=``), remove itself with ``hp.Unschedule()``, or stop the
whole scheduler with ``hp.StopScheduler()``. By default a job never overlaps
itself: a tick that comes while the previous run is still going is skipped
and counted. Time comes from a clock (``hp.ManualClock`` in tests), never
from sleeping through real minutes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from math import inf
from typing import Any

from hydrapool._callables import call_maybe_async
from hydrapool.clock import Clock, SystemClock
from hydrapool.cron import Cron, zone_of
from hydrapool.exceptions import HydrapoolError
from hydrapool.retry import Retry

__all__ = [
    "JobStatistics",
    "Reschedule",
    "Scheduler",
    "SchedulerStatistics",
    "StopScheduler",
    "Unschedule",
]

logger = logging.getLogger("hydrapool.scheduler")


class Reschedule(HydrapoolError):
    """Returned (or raised) by a job: from now on run on this schedule instead."""

    def __init__(self, *, every: float | timedelta | None = None, cron: str | None = None) -> None:
        _one_schedule(every, cron)
        if every is not None:
            _seconds(every)
        else:
            assert cron is not None
            Cron(cron)  # validate now, where the job raised or returned it
        self.every = every
        self.cron = cron
        super().__init__(f"reschedule to {'every ' + str(every) if every is not None else cron}")


class Unschedule(HydrapoolError):
    """Returned (or raised) by a job: remove this job from the scheduler."""


class StopScheduler(HydrapoolError):
    """Returned (or raised) by a job: stop the whole scheduler."""


_SIGNALS = (Reschedule, Unschedule, StopScheduler)


def _one_schedule(every: object, cron: object) -> None:
    if (every is None) == (cron is None):
        raise ValueError(
            f"give exactly one of every= or cron=, got every={every!r} and cron={cron!r}"
        )


def _seconds(every: float | timedelta) -> float:
    value = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"every must be seconds (a number or timedelta), got {every!r}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"every must be a finite number of seconds > 0, got {every!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class JobStatistics:
    """Counters of one scheduled job."""

    runs: int  # succeeded runs
    failures: int  # runs that failed after their last attempt
    retries: int
    skipped: int  # ticks skipped because the previous run was still going
    next_run: datetime | None
    paused: bool


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """A snapshot of every job's counters, by job name."""

    running: bool
    jobs: Mapping[str, JobStatistics]


@dataclass(slots=True, eq=False)
class _Job:
    name: str
    fn: Callable[..., Any]
    cron: Cron | None
    every: float | None
    retry: Retry | None
    overlap: bool
    jitter: float
    tz: str | tzinfo | None = None  # the job's own zone for cron (None: the scheduler's)
    next_run: datetime | None = None
    paused: bool = False
    runs: int = 0
    failures: int = 0
    retries: int = 0
    skipped: int = 0
    active: set[asyncio.Task[None]] = field(default_factory=set)

    def advance(self, now: datetime) -> None:
        """Set next_run to the first tick after ``now``."""
        if self.cron is not None:
            self.next_run = self.cron.next_after(now)
            return
        assert self.every is not None
        step = timedelta(seconds=self.every)
        now = now.astimezone(UTC)  # absolute arithmetic: wall-clock zones jump at DST
        base = self.next_run.astimezone(UTC) if self.next_run is not None else now
        nxt = base + step
        if nxt <= now:  # fell behind (a long stall): skip the missed ticks
            missed = (now - nxt) // step + 1
            nxt += step * missed
        self.next_run = nxt


class Scheduler:
    """Run named jobs on cron expressions or fixed intervals, in this process.

    Args:
        clock: where time comes from (default: the system clock, UTC).
        tz: the default zone cron expressions are read in (default UTC).
        retry: the default ``hp.Retry`` for jobs (default: one try).
        on_error: ``on_error(name, error)`` when a run failed after its last attempt.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        tz: str | tzinfo | None = "UTC",
        retry: Retry | None = None,
        on_error: Callable[[str, BaseException], Any] | None = None,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._tz = tz
        self._retry = retry
        self._on_error = on_error
        self._jobs: dict[str, _Job] = {}
        self._changed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._napping: set[asyncio.Task[Any]] = set()  # runs waiting out jitter or back-off
        self._runs: set[asyncio.Task[None]] = set()  # every run in progress, removed jobs too

    # ── the job table ──────────────────────────────────────────────────────
    def add(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        retry: Retry | None = None,
        overlap: bool = False,
        jitter: float = 0.0,
        tz: str | tzinfo | None = None,
    ) -> None:
        """Schedule ``fn(*args, **kwargs)`` as ``name`` (which must be new)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"job name must be a non-empty string, got {name!r}")
        if name in self._jobs:
            raise ValueError(f"a job named {name!r} is already scheduled; use reschedule()")
        if not callable(fn):
            raise TypeError(f"job {name!r}: fn must be callable, got {fn!r}")
        _one_schedule(every, cron)
        if (
            isinstance(jitter, bool)
            or not isinstance(jitter, (int, float))
            or not 0 <= jitter < inf
        ):
            raise ValueError(
                f"job {name!r}: jitter must be a number of seconds >= 0, got {jitter!r}"
            )
        if tz is not None:
            zone_of(tz)  # a bad zone is refused now, even for an every= job
        call = functools.partial(fn, *args, **(kwargs or {})) if args or kwargs else fn
        job = _Job(name, call, None, None, retry or self._retry, overlap, float(jitter), tz)
        self._set_schedule(job, every, cron)
        self._jobs[name] = job
        self._changed.set()

    def _set_schedule(self, job: _Job, every: float | timedelta | None, cron: str | None) -> None:
        if cron is not None:
            zone = job.tz if job.tz is not None else self._tz
            job.cron, job.every = Cron(cron, tz=zone), None
        else:
            assert every is not None
            job.cron, job.every = None, _seconds(every)
        job.next_run = None
        job.advance(self._clock.now())

    def _job(self, name: str) -> _Job:
        try:
            return self._jobs[name]
        except KeyError:
            raise KeyError(f"no job named {name!r} is scheduled") from None

    def remove(self, name: str) -> None:
        """Unschedule ``name``; a run in progress finishes."""
        del self._jobs[self._job(name).name]
        self._changed.set()

    def reschedule(
        self,
        name: str,
        *,
        every: float | timedelta | None = None,
        cron: str | None = None,
        tz: str | tzinfo | None = None,
    ) -> None:
        """Give ``name`` a new schedule, counted from now (``tz``: a new zone for cron)."""
        _one_schedule(every, cron)
        job = self._job(name)
        if tz is not None:
            zone_of(tz)  # refuse a bad zone before changing anything
            job.tz = tz
        self._set_schedule(job, every, cron)
        self._changed.set()

    def pause(self, name: str) -> None:
        """Skip ``name``'s ticks until ``resume(name)``."""
        self._job(name).paused = True
        self._changed.set()

    def resume(self, name: str) -> None:
        """Run ``name`` again, from its next tick after now."""
        job = self._job(name)
        if job.paused:
            job.paused = False
            job.next_run = None
            job.advance(self._clock.now())
            self._changed.set()

    def next_run(self, name: str) -> datetime | None:
        """When ``name`` runs next (None while paused)."""
        job = self._job(name)
        return None if job.paused else job.next_run

    @property
    def jobs(self) -> list[str]:
        """The names of the scheduled jobs."""
        return list(self._jobs)

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._loop_task is not None and not self._loop_task.done()

    # ── running ────────────────────────────────────────────────────────────
    async def start(self) -> None:
        """Start firing jobs in the background."""
        if self.running:
            return
        self._stopping = False
        self._changed = asyncio.Event()
        self._loop_task = asyncio.get_running_loop().create_task(self._run_loop())

    async def run(self) -> None:
        """Start, and return once the scheduler stops (``stop()`` or ``hp.StopScheduler``)."""
        await self.start()
        assert self._loop_task is not None
        await asyncio.shield(self._loop_task)
        await self._wait_jobs()

    async def stop(self) -> None:
        """Stop firing; wait for runs in progress to finish."""
        self._request_stop()
        if self._loop_task is not None:
            await self._loop_task
        await self._wait_jobs()

    def _request_stop(self) -> None:
        self._stopping = True
        self._changed.set()
        for task in self._napping:
            task.cancel()  # not started yet (jitter) or between tries: nothing to finish

    async def _wait_jobs(self) -> None:
        current = asyncio.current_task()
        pending = [t for t in self._runs if t is not current]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _run_loop(self) -> None:
        while not self._stopping:
            now = self._clock.now()
            for job in list(self._jobs.values()):
                if not job.paused and job.next_run is not None and job.next_run <= now:
                    self._fire(job, now)
            self._changed.clear()
            await self._sleep_until_next(now)

    async def _sleep_until_next(self, now: datetime) -> None:
        # Compare in UTC: within one zone Python ignores `fold`, so 01:00 EST
        # (the second pass of a fall-back) would sort before 01:30 EDT.
        upcoming = [
            j.next_run.astimezone(UTC) for j in self._jobs.values() if not j.paused and j.next_run
        ]
        waiters: list[asyncio.Task[Any]] = [asyncio.ensure_future(self._changed.wait())]
        if upcoming:
            delay = (min(upcoming) - now).total_seconds()
            waiters.append(asyncio.ensure_future(self._clock.sleep(delay)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _fire(self, job: _Job, now: datetime) -> None:
        job.advance(now)
        if job.active and not job.overlap:
            job.skipped += 1
            return
        task = asyncio.get_running_loop().create_task(self._run_job(job))
        job.active.add(task)
        task.add_done_callback(job.active.discard)
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _run_job(self, job: _Job) -> None:
        if job.jitter and not await self._nap(random.uniform(0, job.jitter)):
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = await call_maybe_async(job.fn)
            except _SIGNALS as signal:
                outcome = signal
            except Exception as exc:
                if job.retry is not None and job.retry.should_retry(exc, attempt):
                    job.retries += 1
                    if await self._nap(job.retry.delay(attempt)):
                        continue
                    return  # the scheduler stopped during the back-off: not a failure
                await self._failed(job, exc)
                return
            job.runs += 1
            self._obey(job, outcome)
            return

    async def _nap(self, seconds: float) -> bool:
        """Wait on the clock; False if the scheduler stopped meanwhile."""
        task = asyncio.current_task()
        assert task is not None
        self._napping.add(task)
        try:
            await self._clock.sleep(seconds)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            task.uncancel()
            return False
        finally:
            self._napping.discard(task)
        return not self._stopping

    async def _failed(self, job: _Job, exc: BaseException) -> None:
        job.failures += 1
        if self._on_error is None:
            logger.error("scheduled job %r failed", job.name, exc_info=exc)
            return
        try:
            await call_maybe_async(self._on_error, job.name, exc, in_thread=False)
        except Exception:
            logger.exception("on_error hook raised for job %r", job.name)

    def _obey(self, job: _Job, outcome: object) -> None:
        if isinstance(outcome, type) and issubclass(outcome, (Unschedule, StopScheduler)):
            outcome = outcome()
        if isinstance(outcome, Reschedule):
            if self._jobs.get(job.name) is job:
                self._set_schedule(job, outcome.every, outcome.cron)
        elif isinstance(outcome, Unschedule):
            if self._jobs.get(job.name) is job:
                del self._jobs[job.name]
        elif isinstance(outcome, StopScheduler):
            self._request_stop()
        else:
            return
        self._changed.set()

    def statistics(self) -> SchedulerStatistics:
        """A frozen snapshot of every job's counters."""
        jobs = {
            name: JobStatistics(
                runs=j.runs,
                failures=j.failures,
                retries=j.retries,
                skipped=j.skipped,
                next_run=None if j.paused else j.next_run,
                paused=j.paused,
            )
            for name, j in self._jobs.items()
        }
        return SchedulerStatistics(running=self.running, jobs=jobs)

    def __repr__(self) -> str:
        return f"<Scheduler jobs={len(self._jobs)}{' running' if self.running else ''}>"
