"""Across processes on one SQLite file: events reach another process; a schedule
declared by two coordinator processes fires once per tick."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import hydrapool as hp

APP = Path(__file__).with_name("events_app.py")


class Procs:
    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'shared.db'}"
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
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tmp_path)
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


async def test_two_coordinator_processes_fire_an_every_second_schedule_once_per_tick(
    procs: Procs,
) -> None:
    await procs.start("coordinate", "one")
    await procs.start("coordinate", "two")
    await asyncio.sleep(10)  # the window being measured, not a synchronisation
    procs.stop()
    async with hp.Queue(procs.url, name="x") as queue:
        ticks = await queue.jobs(limit=100)
    assert all(j.task == "tick" for j in ticks)
    assert 8 <= len(ticks) <= 12, f"{len(ticks)} ticks in 10 s from two coordinators"
