"""hp.Limiter across real processes on one store (a SQLite file, a PostgreSQL schema,
a Redis key prefix): the limit and the rate hold, a SIGKILLed holder's place frees
after its lease."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import hydrapool as hp

APP = Path(__file__).with_name("limiter_app.py")
Stop = Callable[[Sequence[subprocess.Popen[bytes]]], None]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'limits.db'}"
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def spawn(stop_processes: Stop) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: object) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(Path(hp.__file__).parents[1])}
        proc = subprocess.Popen([sys.executable, str(APP), *map(str, args)], env=env)
        procs.append(proc)
        return proc

    yield start
    stop_processes(procs)


def records(log: Path) -> list[tuple[str, int]]:
    """A process's ``start``/``end`` records: (kind, CLOCK_MONOTONIC ns)."""
    words = log.read_text().split()
    return [(kind, int(ns)) for kind, ns in zip(words[::2], words[1::2], strict=True)]


def peak(logs: Sequence[Path]) -> int:
    """The most holds at once, from the holders' own records."""
    points = [(ns, 1 if kind == "start" else -1) for log in logs for kind, ns in records(log)]
    points.sort(key=lambda p: (p[0], p[1]))  # an end before a start at the same instant
    inside = most = 0
    for _, step in points:
        inside += step
        most = max(most, inside)
    return most


def wait_all(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        assert proc.wait(max(0.1, deadline - time.monotonic())) == 0


def test_processes_never_hold_more_than_the_limit(
    store: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    name = f"it{uuid.uuid4().hex[:6]}"
    logs = [tmp_path / f"holds-{i}.log" for i in range(4)]
    procs = [spawn("run", store, name, 3, 0, 0, 12, 0.01, log) for log in logs]
    wait_all(procs, 120)
    assert sum(len(records(log)) for log in logs) == 4 * 12 * 2  # every hold began and ended
    assert peak(logs) <= 3


def test_processes_never_exceed_the_rate(
    store: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    name = f"it{uuid.uuid4().hex[:6]}"
    logs = [tmp_path / f"holds-{i}.log" for i in range(3)]
    procs = [spawn("run", store, name, 0, 4, 0.5, 4, 0, log) for log in logs]
    wait_all(procs, 120)
    starts = sorted(ns for log in logs for kind, ns in records(log) if kind == "start")
    assert len(starts) == 12
    window = int(0.45e9)  # the grant is a little before its record: allow for that
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + window) <= 4


async def test_a_killed_holder_frees_its_place_after_its_lease(
    store: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    name = f"it{uuid.uuid4().hex[:6]}"
    ready = tmp_path / "ready"
    holder = spawn("hold", store, name, 1, 1.5, ready)
    async with asyncio.timeout(30):
        while not ready.exists():
            assert holder.poll() is None, "the holder died while starting"
            await asyncio.sleep(0.02)
    async with hp.Limiter(store, name, limit=1, lease=10) as limiter:
        assert await limiter.try_acquire() is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        killed = time.monotonic()
        permit = await limiter.acquire(timeout=20)
        waited = time.monotonic() - killed
        assert waited < 1.5 + 2.0  # the lease, plus the first waiter's re-check
        assert await permit.release()


async def wait_for_waiters(limiter: hp.Limiter, count: int) -> None:
    async with asyncio.timeout(30):
        while True:
            if (await limiter.statistics()).waiters == count:
                return
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("handoff", [0, 2])
async def test_a_waiter_in_another_process_is_overtaken_at_most_handoff_times(
    store: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]], handoff: int
) -> None:
    """Waiters a1..a5 here and, second in line, r in another process. A place released
    here passes straight to the next waiter here at most ``handoff`` times in a row,
    then goes back to the shared line, where r is first: with handoff=2 the holds go
    a1, a2, r, a3, a4, a5; with handoff=0 strictly in line order, a1, r, a2, ..."""
    name = f"ho{uuid.uuid4().hex[:6]}"
    log = tmp_path / "remote.log"
    spans: dict[str, tuple[int, int]] = {}
    async with hp.Limiter(store, name, limit=1, handoff=handoff) as limiter:
        held = await limiter.acquire()

        async def local(label: str) -> None:
            async with limiter.acquire(timeout=60):
                start = time.monotonic_ns()
                await asyncio.sleep(0.02)
                spans[label] = (start, time.monotonic_ns())

        tasks = [asyncio.ensure_future(local("a1"))]
        await wait_for_waiters(limiter, 1)
        proc = spawn("once", store, name, 1, log)
        await wait_for_waiters(limiter, 2)
        for i, label in enumerate(["a2", "a3", "a4", "a5"]):
            tasks.append(asyncio.ensure_future(local(label)))
            await wait_for_waiters(limiter, 3 + i)
        assert await held.release()
        await asyncio.gather(*tasks)
        await asyncio.to_thread(wait_all, [proc], 60)
    (_, start), (_, end) = records(log)
    spans["r"] = (start, end)
    order = sorted(spans, key=lambda label: spans[label][0])
    if handoff:
        assert order == ["a1", "a2", "r", "a3", "a4", "a5"]
    else:
        assert order == ["a1", "r", "a2", "a3", "a4", "a5"]
    holds = [spans[label] for label in order]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(holds))  # one at a time
