"""A Redis server killed (SIGKILL) and restarted under real worker processes.

Each test starts a throwaway ``redis-server`` of its own, on a free port with
its files in the test's tmp directory, so the shared server of the other tests
is never touched. It runs with ``--appendfsync always``: Redis fsyncs the AOF
before it replies, so an acknowledged write is on disk and must survive.
Production's ``everysec`` may lose about the last second (at worst two) of
acknowledged writes in a power loss or kernel crash, as docs/redis.md states;
under ``always`` there is no such window, so any loss these tests see is
hydrapool's.

Workers and the event subscriber connect with a ``client_name`` of their own,
so the test can see on the server (``CLIENT LIST``) when they are subscribed
again.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import hydrapool as hp

APP = Path(__file__).with_name("app.py")
EVENTS_APP = Path(__file__).with_name("events_app.py")
QUEUE = "restart"

Stop = Callable[[Sequence[subprocess.Popen[bytes]]], None]  # the stop_processes fixture


def redis_server_path() -> str:
    """``redis-server``'s path; skip (or fail, under HYDRAPOOL_REQUIRE_SERVICES=1) without it."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    reason = "redis-server is not on PATH (these tests start a throwaway one)"
    if os.environ.get("HYDRAPOOL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"HYDRAPOOL_REQUIRE_SERVICES=1 and {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A throwaway redis-server: AOF on, fsynced before each reply, no RDB snapshots."""

    def __init__(self, path: str, folder: Path) -> None:
        self.path, self.folder = path, folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "redis-server.log"

    def url(self, client_name: str | None = None) -> str:
        url = f"redis://127.0.0.1:{self.port}/0?prefix=t"
        return url if client_name is None else f"{url}&client_name={client_name}"

    async def start(self) -> None:
        """Start on the same port and directory as before; return once it answers PING
        (it loads its AOF first)."""
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.path, *args], stdout=log, stderr=log)
        async with asyncio.timeout(15):
            while not self._answers():
                assert self.proc.poll() is None, self.log.read_text()[-2000:]
                await asyncio.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")  # not -LOADING
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what the AOF holds survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    folder = tmp_path / "redis"
    folder.mkdir()
    own = Server(redis_server_path(), folder)
    try:
        await own.start()
        yield own
    finally:
        own.kill()


class Procs:
    """app.py workers and an events_app.py subscriber on the throwaway server."""

    def __init__(self, server: Server, folder: Path, stop: Stop) -> None:
        self.server, self.folder, self._stop = server, folder, stop
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(Path(hp.__file__).parents[1])}
        with (self.folder / f"stderr-{len(self.procs)}.txt").open("wb") as err:
            proc = subprocess.Popen([sys.executable, *args], env=env, stderr=err)
        self.procs.append(proc)
        return proc

    async def _ready(self, proc: subprocess.Popen[bytes], marker: Path) -> None:
        async with asyncio.timeout(20):
            while not marker.exists():
                assert proc.poll() is None, self.stderr()[-3000:]
                await asyncio.sleep(0.02)

    async def worker(self, lease: float, idle_wait: float = 1.0) -> subprocess.Popen[bytes]:
        url = self.server.url("hp-worker")
        args = [str(APP), url, QUEUE, str(self.folder), str(lease), str(idle_wait)]
        proc = self._spawn(args)
        await self._ready(proc, self.folder / f"ready-{proc.pid}")
        return proc

    async def listener(self) -> Path:
        """A subscriber process writing every event it sees to the returned file."""
        out = self.folder / "events.jsonl"
        args = [str(EVENTS_APP), "listen", self.server.url("hp-listener"), QUEUE, str(out)]
        proc = self._spawn(args)
        await self._ready(proc, out.with_suffix(".ready"))
        return out

    def runs(self, since_ns: int = 0) -> tuple[Counter[str], Counter[str]]:
        """How many times each label started and ran to its end (after ``since_ns``)."""
        starts: Counter[str] = Counter()
        ends: Counter[str] = Counter()
        for log in self.folder.glob("worker-*.log"):
            for line in log.read_text().splitlines():
                kind, label, ns = line.split()
                if int(ns) > since_ns:
                    (starts if kind == "start" else ends)[label] += 1
        return starts, ends

    def stderr(self) -> str:
        return "".join(p.read_text() for p in sorted(self.folder.glob("stderr-*.txt")))

    def stop(self) -> None:
        self._stop(self.procs)


@pytest.fixture
def procs(server: Server, tmp_path: Path, stop_processes: Stop) -> Iterator[Procs]:
    folder = tmp_path / "procs"
    folder.mkdir()
    group = Procs(server, folder, stop_processes)
    try:
        yield group
    finally:
        group.stop()


def events_by_job(out: Path) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for line in out.read_text().splitlines():
        event = json.loads(line)
        seen.setdefault(event["job_id"], []).append(event["type"])
    return seen


async def wait_all_ended(queue: hp.Queue, count: int, timeout: float) -> list[hp.Job]:
    async with asyncio.timeout(timeout):
        while True:
            jobs = await queue.jobs(limit=count + 10)
            if len(jobs) == count and all(j.done for j in jobs):
                return jobs
            await asyncio.sleep(0.05)


async def subscribed(server: Server, *client_names: str) -> None:
    """Return once every client named here follows pub/sub on ``server`` (CLIENT LIST)."""
    client = aioredis.Redis(port=server.port, decode_responses=True)
    try:
        async with asyncio.timeout(15):
            while True:
                clients = await client.client_list()
                if {c["name"] for c in clients if int(c["sub"]) > 0} >= set(client_names):
                    return
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()


async def test_a_killed_redis_keeps_every_acknowledged_enqueue_and_finish(
    server: Server, procs: Procs
) -> None:
    out = await procs.listener()
    async with hp.Queue(server.url(), name=QUEUE) as queue:
        call = queue.options("work", retry=hp.Retry(attempts=10))
        jobs = await queue.enqueue_many([(call, (f"j{i}", 0.1)) for i in range(120)])
        await asyncio.gather(procs.worker(lease=2.0), procs.worker(lease=2.0))
        async with asyncio.timeout(20):
            while len(await queue.jobs(state="succeeded", limit=200)) < 40:
                await asyncio.sleep(0.02)
        jobs += await queue.enqueue_many([(call, (f"j{i}", 0.1)) for i in range(120, 140)])
        before = {j.id: j for j in await queue.jobs(limit=200)}
        killed_at = time.monotonic_ns()
        server.kill()
    # Redis stays down until every job that was running has ended: their outcomes
    # (and the workers' next claims) wait for it.
    async with asyncio.timeout(10):
        while (runs := procs.runs())[0] != runs[1]:
            await asyncio.sleep(0.02)
    await server.start()
    # A client connected before the kill fails once on each of its stale pooled
    # connections (the backend's redis-py client does not retry): read with a new one.
    async with hp.Queue(server.url(), name=QUEUE) as queue:
        after = {j.id: j for j in await queue.jobs(limit=200)}
        assert after.keys() == {j.id for j in jobs}, "an acknowledged enqueue was lost"
        done_before = [j for j in before.values() if j.done]
        assert len(done_before) >= 40
        for job in done_before:
            kept = after[job.id]
            assert (kept.state, kept.finished_at, kept.attempts) == (
                job.state,
                job.finished_at,
                job.attempts,
            ), "an acknowledged finish was lost"
        ended = await wait_all_ended(queue, len(jobs), timeout=30)
    async with asyncio.timeout(20):  # the subscriber catches up
        while sum("finalized" in e for e in events_by_job(out).values()) < len(jobs):
            await asyncio.sleep(0.05)
    assert procs.runs(killed_at)[1], "no job ended while Redis was down"
    assert Counter(j.state for j in ended) == {hp.JobState.SUCCEEDED: len(jobs)}
    labels = {job.id: f"j{i}" for i, job in enumerate(jobs)}
    starts, ends = procs.runs()
    starts_after, _ = procs.runs(killed_at)
    for job in ended:
        label = labels[job.id]
        # Each try starts the task at most once; only a try whose outcome was lost
        # (then rescued) lets the task run to its end again.
        assert 1 <= ends[label] <= starts[label] <= job.attempts, (label, job)
        if before[job.id].done:
            assert starts_after[label] == 0, f"{label} ran again after it had ended"
    seen = events_by_job(out)
    succeeded = Counter(types.count("succeeded") for types in seen.values())
    assert succeeded == {1: len(jobs)}, "each job succeeded once, seen by the subscriber"
    assert all(p.poll() is None for p in procs.procs), procs.stderr()[-3000:]


async def test_an_idle_worker_and_a_subscriber_follow_work_after_redis_restarts(
    server: Server, procs: Procs
) -> None:
    out = await procs.listener()
    # An idle_wait far beyond the test's bounds: only a wake-up gets the job started.
    worker = await procs.worker(lease=5.0, idle_wait=120.0)
    async with hp.Queue(server.url(), name=QUEUE) as queue:
        warm = await queue.options("work").enqueue("warm-up", 0)
        assert await warm.result(timeout=10) == worker.pid
    await subscribed(server, "hp-worker", "hp-listener")
    server.kill()
    await server.start()
    await subscribed(server, "hp-worker", "hp-listener")  # on new connections
    async with hp.Queue(server.url(), name=QUEUE) as queue:
        job = await queue.options("work").enqueue("after", 0)
        assert await job.result(timeout=10) == worker.pid
    async with asyncio.timeout(10):
        while "finalized" not in events_by_job(out).get(job.id, []):
            await asyncio.sleep(0.02)
    assert events_by_job(out)[job.id] == ["enqueued", "dequeued", "succeeded", "finalized"]
    assert all(p.poll() is None for p in procs.procs), procs.stderr()[-3000:]


async def test_an_event_stream_outlives_a_redis_restart(server: Server) -> None:
    queue = hp.Queue(server.url(), name=QUEUE)
    async with queue, queue.events(types={"enqueued"}) as stream:
        first = await queue.options("work").enqueue("before", 0)
        assert (await anext(stream)).job_id == first.id
        server.kill()
        reading = asyncio.ensure_future(anext(stream))
        try:
            # The outage's length, not a synchronisation: longer than a stream's
            # re-check (1 s), so the stream is sure to meet the server down.
            await asyncio.sleep(1.5)
            await server.start()
            async with hp.Queue(server.url(), name=QUEUE) as other:
                job = await other.options("work").enqueue("after", 0)
            event = await asyncio.wait_for(reading, 5)
        finally:
            reading.cancel()
    assert event.job_id == job.id
