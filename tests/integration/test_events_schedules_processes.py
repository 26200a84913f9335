"""Across processes on one store (a SQLite file, a PostgreSQL schema, a Redis key prefix):
events reach another process; a schedule declared by two coordinator processes fires once
per tick."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import hydrapool as hp

APP = Path(__file__).with_name("events_app.py")
BACKENDS = ["sqlite", "postgres", "redis"]


Stop = Callable[[Sequence[subprocess.Popen[bytes]]], None]  # the stop_processes fixture


class Procs:
    def __init__(self, url: str, tmp_path: Path, stop: Stop) -> None:
        self._stop = stop
        self.url = url
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self, mode: str, out: str) -> Path:
        path = self.tmp / out
        env = {**os.environ, "PYTHONPATH": str(Path(hp.__file__).parents[1])}
        proc = subprocess.Popen([sys.executable, str(APP), mode, self.url, "x", str(path)], env=env)
        self.procs.append(proc)
        async with asyncio.timeout(20):
            while not path.with_suffix(".ready").exists():
                assert proc.poll() is None, f"the {mode} process died while starting"
                await asyncio.sleep(0.02)
        return path

    def stop(self) -> None:
        self._stop(self.procs)


@pytest.fixture(params=BACKENDS)
def procs(request: pytest.FixtureRequest, tmp_path: Path, stop_processes: Stop) -> Iterator[Procs]:
    if request.param in ("postgres", "redis"):
        # A schema or key prefix of this test's own, dropped after the processes stop.
        url = str(request.getfixturevalue(f"{request.param}_url"))
    else:
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    group = Procs(url, tmp_path, stop_processes)
    try:
        yield group
    finally:
        group.stop()


async def test_a_subscriber_in_another_process_sees_each_transition(procs: Procs) -> None:
    out = await procs.start("listen", "events.jsonl")
    queue = hp.Queue(procs.url, name="x")

    @queue.task
    async def double(n: int) -> int:
        return 2 * n

    async with queue:
        job = await double.enqueue(21)
        worker = hp.Worker(queue, handle_signals=False, coordinator=False)
        runner = asyncio.create_task(worker.run())
        assert await job.result(timeout=20) == 42
        seen: list[dict[str, object]] = []
        async with asyncio.timeout(20):
            while not any(e["type"] == "finalized" for e in seen):
                await asyncio.sleep(0.02)
                lines = out.read_text().splitlines() if out.exists() else []
                seen = [e for e in map(json.loads, lines) if e["job_id"] == job.id]
        worker.stop()
        await runner
    assert [e["type"] for e in seen] == ["enqueued", "dequeued", "succeeded", "finalized"]
    assert seen[1]["worker_id"] == worker.id


async def ticks_of_two_coordinators(procs: Procs, mode: str, count: int) -> list[float]:
    """Start two coordinator processes declaring the same schedule, wait until ``count``
    ticks are stored, stop both; the creation time of every tick job, oldest first."""
    await procs.start(mode, "one")
    await procs.start(mode, "two")
    async with hp.Queue(procs.url, name="x") as queue:
        async with asyncio.timeout(count + 15):
            while len(await queue.jobs(limit=count)) < count:
                await asyncio.sleep(0.1)
        procs.stop()
        ticks = await queue.jobs(limit=100)
    assert {j.task for j in ticks} == {"tick"}
    return sorted(j.created_at for j in ticks)


async def test_two_coordinator_processes_fire_an_every_second_schedule_once_per_tick(
    procs: Procs,
) -> None:
    times = await ticks_of_two_coordinators(procs, "every", 6)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Each tick is due a second after the previous one fired; a tick fired twice
    # would leave two jobs about one coordinator pass (0.02 s) apart.
    assert min(gaps) > 0.5, f"a tick fired twice: gaps {gaps}"
    assert sum(gaps) / len(gaps) < 1.5, f"ticks were missed: gaps {gaps}"


async def test_two_coordinator_processes_fire_a_cron_schedule_once_per_second(
    procs: Procs,
) -> None:
    times = await ticks_of_two_coordinators(procs, "cron", 6)
    # A tick fires within a coordinator pass of its whole second, and the next is
    # due at the first whole second after that: one job per second, none skipped.
    seconds = [math.floor(t) for t in times]
    assert len(set(seconds)) == len(seconds), f"a tick fired twice: {times}"
    skipped = seconds[-1] - seconds[0] + 1 - len(seconds)
    assert skipped <= 1, f"{skipped} ticks were skipped: {times}"
