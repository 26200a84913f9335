"""Real worker processes on one store (a SQLite file, a PostgreSQL schema, a Redis key
prefix): limits across processes, SIGKILL, nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

import hydrapool as hp

APP = Path(__file__).with_name("app.py")
BACKENDS = ["sqlite", "postgres", "redis"]


Stop = Callable[[Sequence[subprocess.Popen[bytes]]], None]  # the stop_processes fixture


class Workers:
    """Worker processes started from app.py; all are killed at the end of the test."""

    def __init__(self, url: str, name: str, log_dir: Path, stop: Stop) -> None:
        self._stop = stop
        self.url, self.name, self.log_dir = url, name, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, lease: float = 30.0, *, prefetch: int = 0, concurrency: int = 4
    ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(Path(hp.__file__).parents[1])}
        args = [self.url, self.name, str(self.log_dir), str(lease), "1.0"]
        args += [str(prefetch), str(concurrency)]
        proc = subprocess.Popen([sys.executable, str(APP), *args], env=env)
        self.procs.append(proc)
        return proc

    async def ready(self, proc: subprocess.Popen[bytes]) -> None:
        marker = self.log_dir / f"ready-{proc.pid}"
        for _ in range(400):
            if marker.exists():
                return
            assert proc.poll() is None, "the worker process died while starting"
            await asyncio.sleep(0.025)
        raise AssertionError("worker process did not start")

    def stop_all(self) -> None:
        self._stop(self.procs)


@pytest.fixture(params=BACKENDS)
def workers(
    request: pytest.FixtureRequest, tmp_path: Path, stop_processes: Stop
) -> Iterator[Workers]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    if request.param in ("postgres", "redis"):
        # A schema or key prefix of this test's own, dropped after the workers stop.
        url = str(request.getfixturevalue(f"{request.param}_url"))
    else:
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    group = Workers(url, "it", log_dir, stop_processes)
    try:
        yield group
    finally:
        group.stop_all()


def peak_concurrency(log_dir: Path, channel: str | None = None) -> int:
    events = []
    for log in log_dir.glob("worker-*.log"):
        for line in log.read_text().splitlines():
            kind, chan, ns = line.split()
            if channel is None or chan == channel:
                events.append((int(ns), 0 if kind == "end" else 1))
    running = peak = 0
    for _, delta in sorted(events):  # at equal times an end sorts first: no false overlap
        running += 1 if delta else -1
        peak = max(peak, running)
    return peak


async def wait_all_ended(queue: hp.Queue, count: int, timeout: float = 60) -> list[hp.Job]:
    async with asyncio.timeout(timeout):
        while True:
            jobs = await queue.jobs(limit=count + 10)
            if len(jobs) == count and all(j.done for j in jobs):
                return jobs
            await asyncio.sleep(0.05)


async def test_limits_hold_across_four_worker_processes(workers: Workers) -> None:
    queue = hp.Queue(workers.url, name=workers.name)
    async with queue:
        await queue.set_limits(max_concurrency=5)
        await queue.channel("limited").set_policy(max_concurrency=3)
        calls = [(queue._task_of("work").options(channel="limited"), ("limited", 0.01))] * 60
        calls += [
            (queue._task_of("work").options(channel=f"c{i % 3}"), (f"c{i % 3}", 0.01))
            for i in range(90)
        ]
        jobs = await queue.enqueue_many(calls)
        procs = [workers.start() for _ in range(4)]
        await asyncio.gather(*(workers.ready(p) for p in procs))
        ended = await wait_all_ended(queue, len(jobs))
    assert {j.state for j in ended} == {hp.JobState.SUCCEEDED}
    assert len({j.return_value for j in ended}) > 1, "more than one process did work"
    assert peak_concurrency(workers.log_dir) <= 5
    assert peak_concurrency(workers.log_dir, "limited") <= 3
    assert peak_concurrency(workers.log_dir) >= 4, "the limits were approached"


async def test_a_sigkilled_workers_job_completes_elsewhere(
    workers: Workers, tmp_path: Path
) -> None:
    queue = hp.Queue(workers.url, name=workers.name)
    flag = tmp_path / "first-try"
    async with queue:
        retry = hp.Retry(attempts=3)  # this process does not register the task: say it here
        job = await queue._task_of("slow_first").options(retry=retry).enqueue(str(flag))
        victim = workers.start(lease=1.0)
        async with asyncio.timeout(30):
            while not flag.exists():
                await asyncio.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        assert (await job.refresh()).state is hp.JobState.RUNNING
        survivor = workers.start(lease=1.0)
        await workers.ready(survivor)
        winner = await job.result(timeout=60)
        final = await job.refresh()
    assert winner == survivor.pid
    assert final.state is hp.JobState.SUCCEEDED
    assert final.attempts == 2
    assert final.error is not None
    assert "lease expired" in final.error


async def survivor_runs(workers: Workers, jobs: list[hp.Job]) -> None:
    """A new worker process runs ``jobs``, leased to a killed one, once their leases lapse:
    each succeeds there on its second attempt."""
    survivor = workers.start(lease=1.0)
    await workers.ready(survivor)
    winners = [await j.result(timeout=60) for j in jobs]
    finals = [await j.refresh() for j in jobs]
    assert winners == [survivor.pid] * len(jobs)
    assert all(f.state is hp.JobState.SUCCEEDED for f in finals)
    assert all(f.attempts == 2 and "lease expired" in (f.error or "") for f in finals)


async def test_the_held_jobs_of_a_sigkilled_prefetching_worker_complete_elsewhere(
    workers: Workers, tmp_path: Path
) -> None:
    queue = hp.Queue(workers.url, name=workers.name)
    flag = tmp_path / "first-try"
    retry = hp.Retry(attempts=3)  # this process does not register the tasks: say it here
    async with queue:
        jobs = await queue.enqueue_many(
            [(queue._task_of("slow_first").options(retry=retry), (str(flag),))]
            + [(queue._task_of("work").options(retry=retry), ("held", 0.01))] * 2
        )
        # One slot, two held: its first claim takes all three.
        victim = workers.start(lease=1.0, prefetch=2, concurrency=1)
        async with asyncio.timeout(30):
            while not flag.exists():
                await asyncio.sleep(0.02)
        assert [(await j.refresh()).state for j in jobs] == [hp.JobState.RUNNING] * 3
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        # The held jobs never started in the victim; their lost claim counts as an attempt.
        await survivor_runs(workers, jobs)
    victim_log = workers.log_dir / f"worker-{victim.pid}.log"
    assert not victim_log.exists() or "held" not in victim_log.read_text()


# ── Redis: jobs handed straight to idle workers (hand.lua) ─────────────────────
async def idle_workers(queue: hp.Queue, url: str, count: int) -> Any:
    """A Redis client, once ``count`` workers are registered as idle for ``queue``."""
    from hydrapool.backends.redis.backend import key_base

    client = redis.asyncio.Redis.from_url(url.split("?")[0], decode_responses=True)
    base = key_base(queue.backend.prefix, queue.name)  # type: ignore[attr-defined]
    async with asyncio.timeout(30):
        while await client.hlen(f"{base}:idle") < count:
            await asyncio.sleep(0.02)
    return client, base


@pytest.mark.parametrize("workers", ["redis"], indirect=True)
async def test_jobs_handed_to_four_idle_worker_processes_keep_the_limits(
    workers: Workers,
) -> None:
    queue = hp.Queue(workers.url, name=workers.name)
    async with queue:
        await queue.set_limits(max_concurrency=5)
        await queue.channel("limited").set_policy(max_concurrency=3)
        procs = [workers.start() for _ in range(4)]
        await asyncio.gather(*(workers.ready(p) for p in procs))
        client, base = await idle_workers(queue, workers.url, 4)
        work = queue._task_of("work")
        jobs = []
        for _ in range(40):  # one at a time and in threes, while the workers idle
            jobs.append(await work.options(channel="limited").enqueue("limited", 0.01))
            jobs += await queue.enqueue_many(
                [(work.options(channel=f"c{k}"), (f"c{k}", 0.01)) for k in range(3)]
            )
        ended = await wait_all_ended(queue, len(jobs))
        handed = int(await client.get(f"{base}:hn") or 0)
        await client.aclose()
    assert {j.state for j in ended} == {hp.JobState.SUCCEEDED}
    assert {j.attempts for j in ended} == {1}
    assert handed > 0, "jobs were handed to idle workers"
    assert len({j.return_value for j in ended}) > 1, "more than one process did work"
    assert peak_concurrency(workers.log_dir) <= 5
    assert peak_concurrency(workers.log_dir, "limited") <= 3


@pytest.mark.parametrize("workers", ["redis"], indirect=True)
async def test_jobs_handed_to_a_sigkilled_idle_worker_run_elsewhere(workers: Workers) -> None:
    queue = hp.Queue(workers.url, name=workers.name)
    async with queue:
        victim = workers.start(lease=1.0)
        await workers.ready(victim)
        client, base = await idle_workers(queue, workers.url, 1)
        [victim_id] = await client.hkeys(f"{base}:idle")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        work = queue._task_of("work").options(retry=hp.Retry(attempts=3))
        jobs = await queue.enqueue_many([(work, ("c", 0.01))] * 3)
        # Its registration outlives it: the jobs went to its inbox, under a lease.
        assert await client.llen(f"{base}:in:{victim_id}") == 1
        assert {(await j.refresh()).state for j in jobs} == {hp.JobState.RUNNING}
        await client.aclose()
        await survivor_runs(workers, jobs)
