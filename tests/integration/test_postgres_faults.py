"""PostgreSQL connections terminated under real worker processes: no job is lost.

The workers connect with an ``application_name`` of this test's own, and only
connections bearing it are terminated (``pg_terminate_backend``), so other
tests and other users of the server are left alone. The test process's own
queue connects without it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

import hydrapool as hp

APP = Path(__file__).with_name("app.py")
# In the select list, not the WHERE clause: there the planner may call it before the
# application_name test has filtered the row out.
TERMINATE = (
    "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = %(app)s"
)
LISTENING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = %(app)s AND query LIKE 'LISTEN %%'"
)


Stop = Callable[[Sequence[subprocess.Popen[bytes]]], None]  # the stop_processes fixture


class Workers:
    """app.py worker processes whose connections carry ``app``; stopped at the end."""

    def __init__(self, queue_url: str, log_dir: Path, stop: Stop) -> None:
        self._stop = stop
        self.queue_url = queue_url  # the test's own connections: never terminated
        self.server = urlsplit(queue_url)._replace(query="").geturl()
        schema = parse_qs(urlsplit(queue_url).query)["schema"][0]
        self.app = f"hp_test_{schema}"
        self.url = f"{queue_url}&application_name={self.app}"
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self, lease: float) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(Path(hp.__file__).parents[1])}
        with (self.log_dir / f"stderr-{len(self.procs)}.txt").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(APP), self.url, "faults", str(self.log_dir), str(lease)],
                env=env,
                stderr=err,
            )
        self.procs.append(proc)
        async with asyncio.timeout(20):
            while not (self.log_dir / f"ready-{proc.pid}").exists():
                assert proc.poll() is None, "the worker process died while starting"
                await asyncio.sleep(0.025)
        return proc

    async def terminate_connections(self) -> list[int]:
        """Terminate every connection of the workers; their server pids."""
        async with await psycopg.AsyncConnection.connect(self.server, autocommit=True) as conn:
            cursor = await conn.execute(TERMINATE, {"app": self.app})
            return [pid for pid, done in await cursor.fetchall() if done]

    async def listening(self) -> list[int]:
        """The server pids of the workers' LISTEN connections."""
        async with await psycopg.AsyncConnection.connect(self.server, autocommit=True) as conn:
            cursor = await conn.execute(LISTENING, {"app": self.app})
            return [row[0] for row in await cursor.fetchall()]

    def stderr(self) -> str:
        return "".join(p.read_text() for p in sorted(self.log_dir.glob("stderr-*.txt")))

    def stop_all(self) -> None:
        self._stop(self.procs)


@pytest.fixture
def workers(postgres_url: str, tmp_path: Path, stop_processes: Stop) -> Iterator[Workers]:
    group = Workers(postgres_url, tmp_path, stop_processes)
    try:
        yield group
    finally:
        group.stop_all()


def runs_by_label(log_dir: Path) -> tuple[Counter[str], Counter[str]]:
    """How many times each job (by its label) started and ran to its end, in all workers."""
    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    for log in log_dir.glob("worker-*.log"):
        for line in log.read_text().splitlines():
            kind, label, _ = line.split()
            (starts if kind == "start" else ends)[label] += 1
    return starts, ends


async def wait_all_ended(queue: hp.Queue, count: int, timeout: float) -> list[hp.Job]:
    async with asyncio.timeout(timeout):
        while True:
            jobs = await queue.jobs(limit=count + 10)
            if len(jobs) == count and all(j.done for j in jobs):
                return jobs
            await asyncio.sleep(0.05)


async def test_connection_kills_mid_claim_lose_no_job(workers: Workers) -> None:
    queue = hp.Queue(workers.queue_url, name="faults")
    async with queue:
        await asyncio.gather(workers.start(lease=1.0), workers.start(lease=1.0))
        # Retries cover claims whose commit the worker never heard of (rescued after
        # the lease) and outcomes it could not store (the same).
        call = queue.options("work", retry=hp.Retry(attempts=10))
        jobs = await queue.enqueue_many([(call, (f"j{i}", 0.005)) for i in range(300)])
        labels = {job.id: f"j{i}" for i, job in enumerate(jobs)}
        killed: list[list[int]] = []
        for _ in range(8):
            await asyncio.sleep(0.075)
            killed.append(await workers.terminate_connections())
        unfinished = sum(not j.done for j in await queue.jobs(limit=400))
        ended = await wait_all_ended(queue, len(jobs), timeout=45)
    assert unfinished > 0, "the jobs all ended before the last kill: kill sooner or add jobs"
    assert sum(map(len, killed)) >= len(killed), f"too few connections terminated: {killed}"
    assert all(p.poll() is None for p in workers.procs), workers.stderr()[-3000:]
    assert Counter(j.state for j in ended) == {hp.JobState.SUCCEEDED: len(jobs)}
    starts, ends = runs_by_label(workers.log_dir)
    for job in ended:
        label = labels[job.id]
        # Each try starts the task at most once; only a try whose outcome was lost
        # (then rescued) lets the task run to its end again.
        assert 1 <= ends[label] <= starts[label] <= job.attempts, (label, job)


async def test_an_idle_worker_takes_new_work_after_its_connections_are_killed(
    workers: Workers,
) -> None:
    queue = hp.Queue(workers.queue_url, name="faults")
    async with queue:
        worker = await workers.start(lease=5.0)
        call = queue.options("work")
        assert await (await call.enqueue("warm-up", 0)).result(timeout=20) == worker.pid
        listening = await workers.listening()
        assert len(listening) == 1, "the worker listens on one connection"
        killed = await workers.terminate_connections()
        assert set(listening) <= set(killed)
        job = await call.enqueue("after", 0)  # its NOTIFY may reach no one
        assert await job.result(timeout=20) == worker.pid
        async with asyncio.timeout(20):
            while not (again := await workers.listening()):
                await asyncio.sleep(0.05)
    assert set(again).isdisjoint(killed), "the worker listens again on a new connection"
    assert worker.poll() is None, workers.stderr()[-3000:]
