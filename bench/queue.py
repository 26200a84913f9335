"""Benchmark: the durable queue on SQLite (the embedded default), PostgreSQL or Redis.

Prints one JSON object with, like ../shared/bench-peers (whose table gives
the peers' figures on this machine class):

- single enqueue rate: 2,000 ``await task.enqueue()`` one after the other;
- bulk enqueue rate: N no-op jobs with ``queue.enqueue_many`` (chunks of 1,000);
- throughput: one worker *process* at concurrency 50 drains the N jobs;
  processing_per_s = N / (last job end - first job start), measured inside
  the jobs; total_wall_s from the bulk enqueue's start to the last job's end;
- latency: an idle worker process (concurrency 10), 200 jobs enqueued one at a
  time on a 20 ms grid; latency = job start - enqueue time (p50/p95/p99);
- sleep: 2,000 jobs of ``asyncio.sleep(0.05)``, one worker process at
  concurrency 100; sleep_wall_s = last end - first start (ideal 1.0 s).

    python bench/queue.py [--backend sqlite|postgres|redis] [--n 20000] [--runs 3]
                          [--prefetch N]

``--prefetch N`` gives every worker process ``hp.Worker(prefetch=N)`` (default 0).

PostgreSQL: ``--pg-url`` (default $HYDRAPOOL_TEST_POSTGRES_URL or the local
server); every run uses a fresh schema, dropped afterwards. Redis:
``--redis-url`` (default $HYDRAPOOL_TEST_REDIS_URL or the local server); every
run uses a fresh key prefix, deleted afterwards.
"""

from __future__ import annotations

import os
import sys

# This file is named like the stdlib's `queue`; run as a script, its folder
# would shadow that module for everything imported below.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydrapool as hp

QUEUE = "bench"
PG_URL = os.environ.get("HYDRAPOOL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HYDRAPOOL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFETCH = {"n": 0}  # the worker processes' prefetch (--prefetch)


class Store:
    """Where a run's queues live: SQLite files in the run's folder, PostgreSQL schemas,
    or Redis key prefixes."""

    def __init__(self, backend: str, workdir: Path, pg_url: str, redis_url: str) -> None:
        self.backend, self.workdir, self.pg_url = backend, workdir, pg_url
        self.redis_url = redis_url
        self.schemas: list[str] = []
        self.prefixes: list[str] = []

    def url(self, label: str) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.workdir / label}.db"
        if self.backend == "redis":
            prefix = f"bench_{label}_{os.getpid()}_{len(self.prefixes)}"
            self.prefixes.append(prefix)
            sep = "&" if "?" in self.redis_url else "?"
            return f"{self.redis_url}{sep}prefix={prefix}"
        schema = f"bench_{label}_{os.getpid()}_{len(self.schemas)}"
        self.schemas.append(schema)
        sep = "&" if "?" in self.pg_url else "?"
        return f"{self.pg_url}{sep}schema={schema}"

    def drop(self) -> None:
        if self.prefixes:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            for prefix in self.prefixes:
                keys = list(client.scan_iter(match="{" + prefix + ":*", count=1000))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start : start + 500])
            client.close()
        if self.schemas:
            import psycopg

            with psycopg.connect(self.pg_url, autocommit=True) as conn:
                for schema in self.schemas:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                conn.execute("CHECKPOINT")


def build(url: str, out: Path, expected: int) -> hp.Queue:
    queue = hp.Queue(url, name=QUEUE)
    marks: list[float] = []
    done = {"n": 0}

    def record(value: float) -> None:
        marks.append(value)
        done["n"] += 1
        if done["n"] == expected:
            out.write_text(json.dumps(marks))

    @queue.task
    async def noop(sent: float | None = None) -> None:
        now = time.time()
        record(now - sent if sent is not None else now)

    spans: list[list[float]] = []

    @queue.task
    async def nap(seconds: float) -> None:
        start = time.time()
        await asyncio.sleep(seconds)
        spans.append([start, time.time()])
        if len(spans) == expected:
            out.write_text(json.dumps(spans))

    return queue


async def worker_main(url: str, out: Path, expected: int, concurrency: int, prefetch: int) -> None:
    queue = build(url, out, expected)
    worker = hp.Worker(queue, concurrency=concurrency, prefetch=prefetch, coordinator_interval=1.0)
    (out.parent / f"ready-{os.getpid()}").write_text("ready")
    async with queue:
        task = asyncio.create_task(worker.run())
        while not out.exists():
            await asyncio.sleep(0.01)
        worker.stop()
        await task


def spawn(url: str, out: Path, expected: int, concurrency: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, __file__, "--role", "worker", "--url", url, "--out", str(out)]
    args += ["--n", str(expected), "--concurrency", str(concurrency)]
    args += ["--prefetch", str(PREFETCH["n"])]
    return subprocess.Popen(args)


async def wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        await asyncio.sleep(0.005)


async def throughput(n: int, store: Store) -> dict[str, float]:
    workdir = store.workdir
    url = store.url("tp")
    out = workdir / "tp.json"
    queue = build(url, out, n)
    noop = queue.tasks["noop"]
    async with queue:
        start = time.perf_counter()
        for _ in range(2000):
            await noop.enqueue()
        single = 2000 / (time.perf_counter() - start)
    # A fresh store for the drain, so the single-enqueue jobs do not count.
    url = store.url("tp2")
    queue = build(url, out, n)
    noop = queue.tasks["noop"]
    async with queue:
        wall0 = time.time()
        start = time.perf_counter()
        for offset in range(0, n, 1000):
            await queue.enqueue_many([(noop, ()) for _ in range(min(1000, n - offset))])
        bulk = n / (time.perf_counter() - start)
        spawned = time.time()
        proc = spawn(url, out, n, 50)
        await wait_file(out, 600)
        proc.wait(60)
    marks = json.loads(out.read_text())
    first, last = min(marks), max(marks)
    return {
        "single_enqueue_per_s": round(single),
        "bulk_enqueue_per_s": round(bulk),
        "processing_per_s": round(n / (last - first)),
        "total_wall_s": round(last - wall0, 3),
        "worker_startup_s": round(first - spawned, 3),
    }


async def latency(store: Store, count: int = 200) -> dict[str, float]:
    workdir = store.workdir
    url = store.url("lat")
    out = workdir / "lat.json"
    queue = build(url, out, count + 1)
    noop = queue.tasks["noop"]
    async with queue:
        proc = spawn(url, out, count + 1, 10)
        await wait_file(workdir / f"ready-{proc.pid}", 60)
        await noop.enqueue(time.time())  # warm-up
        await asyncio.sleep(1.0)
        tick = time.perf_counter()
        for _ in range(count):
            await noop.enqueue(time.time())
            tick += 0.02
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        await wait_file(out, 60)
        proc.wait(60)
    values = sorted(json.loads(out.read_text())[1:])  # drop the warm-up
    ms = [v * 1000 for v in values]

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, max(0, round(p / 100 * len(ms)) - 1))], 2)

    return {"p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": round(ms[-1], 2)}


async def sleep_workload(store: Store, count: int = 2000) -> dict[str, float]:
    url = store.url("sleep")
    out = store.workdir / "sleep.json"
    queue = build(url, out, count)
    nap = queue.tasks["nap"]
    async with queue:
        await queue.enqueue_many([(nap, (0.05,)) for _ in range(count)])
        proc = spawn(url, out, count, 100)
        await wait_file(out, 120)
        proc.wait(60)
    spans = json.loads(out.read_text())
    return {"sleep_wall_s": round(max(e for _, e in spans) - min(s for s, _ in spans), 3)}


async def bench(n: int, runs: int, backend: str, pg_url: str, redis_url: str) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(backend, Path(tmp), pg_url, redis_url)
            try:
                row = await throughput(n, store)
                row.update(await latency(store))
                row.update(await sleep_workload(store))
            finally:
                store.drop()
            results.append(row)
    median = {k: statistics.median(r[k] for r in results) for k in results[0]}
    return {
        "benchmark": f"queue-{backend}",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "jobs": n,
        "runs": runs,
        "prefetch": PREFETCH["n"],
        "median": median,
        "all": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--role", default="driver")
    parser.add_argument("--url")
    parser.add_argument("--out")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "redis"], default="sqlite")
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args()
    if args.role == "worker":
        asyncio.run(worker_main(args.url, Path(args.out), args.n, args.concurrency, args.prefetch))
        return
    PREFETCH["n"] = args.prefetch
    result = bench(args.n, args.runs, args.backend, args.pg_url, args.redis_url)
    print(json.dumps(asyncio.run(result), indent=2))


if __name__ == "__main__":
    main()
