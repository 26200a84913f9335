"""Benchmark: hp.Limiter across processes, per backend (issue #8).

Prints one JSON object. For each backend:

- utilisation: 4 processes each run 500 tasks of 10 ms (``asyncio.sleep``)
  under one global ``limit=8``; all tasks start waiting at once. The ideal
  wall time is 500 * 4 * 0.01 / 8 = 2.5 s; ``wall_s`` runs from the first
  grant to the last release (as the holders record them) and ``ratio`` is
  ``wall_s / 2.5`` (target <= 1.15 on redis and postgres). Measured with the
  default ``handoff`` (a released place may pass straight to the next waiter in
  the same process, 16 times in a row at most) and again with ``handoff=0``
  (every place goes back through the store: strict first come, first served
  across processes), reported as ``strict``;
- overhead: one process, one task, ``acquire`` + ``release`` 1,000 times with
  nobody else around: microseconds per pair;
- hand-off: two processes take turns on ``limit=1`` (each holds 2 ms, 100
  holds each): the time from one holder starting its release to the other's
  grant, p50/p95 in ms.

    python bench/limiter.py [--backend sqlite|postgres|redis|memory|all] [--runs 3]

There is no peer in the same run: no Python queue peer ships a cross-process
limiter (arq, saq, dramatiq, procrastinate, pgqueuer); the ideal wall time is
the yardstick. Every run uses a fresh SQLite file, PostgreSQL schema or Redis
key prefix, removed afterwards.
"""

from __future__ import annotations

import os
import sys

# bench/queue.py is named like the stdlib's `queue`; run as a script from bench/,
# this file's folder would shadow that module for everything imported below.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import asyncio
import itertools
import json
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydrapool as hp

PG_URL = os.environ.get("HYDRAPOOL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HYDRAPOOL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PROCS, TASKS, HOLD, LIMIT = 4, 500, 0.01, 8
IDEAL = PROCS * TASKS * HOLD / LIMIT


# ── child processes ─────────────────────────────────────────────────────────
async def child_utilisation(
    url: str, name: str, go: float, handoff: int | None
) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    options = {} if handoff is None else {"handoff": handoff}
    async with hp.Limiter(url, name, limit=LIMIT, **options) as limiter:
        await limiter.statistics()  # connected before the start
        await asyncio.sleep(max(0.0, go - time.time()))

        async def one() -> None:
            async with limiter.acquire():
                start = time.monotonic_ns()
                await asyncio.sleep(HOLD)
                spans.append((start, time.monotonic_ns()))

        await asyncio.gather(*(one() for _ in range(TASKS)))
    return spans


async def child_handoff(url: str, name: str, go: float, _: int | None) -> list[tuple[int, int]]:
    marks: list[tuple[int, int]] = []  # (granted, release begins)
    async with hp.Limiter(url, name, limit=1) as limiter:
        await limiter.statistics()
        await asyncio.sleep(max(0.0, go - time.time()))
        for _ in range(100):
            permit = await limiter.acquire()
            got = time.monotonic_ns()
            await asyncio.sleep(0.002)
            leaving = time.monotonic_ns()
            await permit.release()
            marks.append((got, leaving))
            await asyncio.sleep(0)  # let the other process's turn come first
    return marks


# ── the driver ──────────────────────────────────────────────────────────────
class Store:
    """A fresh place per run: a SQLite file, a PostgreSQL schema, a Redis prefix."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend, self.workdir = backend, workdir
        self.made: list[str] = []

    def url(self) -> str:
        tag = f"bl{uuid.uuid4().hex[:10]}"
        self.made.append(tag)
        if self.backend == "sqlite":
            return f"sqlite:///{self.workdir / (tag + '.db')}"
        if self.backend == "postgres":
            return f"{PG_URL}?schema={tag}"
        if self.backend == "redis":
            return f"{REDIS_URL}?prefix={tag}"
        return "memory://"

    def clean(self) -> None:
        if self.backend == "postgres":
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                for tag in self.made:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
        elif self.backend == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for tag in self.made:
                keys = list(client.scan_iter(match="{" + tag + ":*", count=1000))
                if keys:
                    client.delete(*keys)
            client.close()


def spawn(
    role: str, url: str, name: str, go: float, out: Path, handoff: int | None
) -> subprocess.Popen[bytes]:
    args = [sys.executable, __file__, "--role", role, "--url", url, "--name", name]
    if handoff is not None:
        args += ["--handoff", str(handoff)]
    return subprocess.Popen([*args, "--go", repr(go), "--out", str(out)])


def run_children(
    role: str, url: str, count: int, workdir: Path, handoff: int | None = None
) -> list[Any]:
    name = f"b{uuid.uuid4().hex[:8]}"
    go = time.time() + 2.0  # every child connected and waiting by then
    outs = [workdir / f"{role}-{uuid.uuid4().hex[:6]}.json" for _ in range(count)]
    procs = [spawn(role, url, name, go, out, handoff) for out in outs]
    for proc in procs:
        if proc.wait(300) != 0:
            raise RuntimeError(f"a {role} child failed ({proc.returncode})")
    return [json.loads(out.read_text()) for out in outs]


def utilisation(url: str, workdir: Path, handoff: int | None = None) -> dict[str, float]:
    spans = [s for part in run_children("util", url, PROCS, workdir, handoff) for s in part]
    wall = (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e9
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    inside = most = 0
    for _, step in points:
        inside += step
        most = max(most, inside)
    return {"wall_s": round(wall, 3), "ratio": round(wall / IDEAL, 3), "peak_holders": most}


def handoff(url: str, workdir: Path) -> dict[str, float]:
    marks = sorted(m for part in run_children("handoff", url, 2, workdir) for m in part)
    gaps = [(b[0] - a[1]) / 1e6 for a, b in itertools.pairwise(marks) if b[0] > a[1]]
    gaps.sort()
    return {
        "p50_ms": round(statistics.median(gaps), 3),
        "p95_ms": round(gaps[int(len(gaps) * 0.95)], 3),
    }


async def overhead(url: str) -> float:
    async with hp.Limiter(url, f"o{uuid.uuid4().hex[:8]}", limit=LIMIT) as limiter:
        await (await limiter.acquire()).release()  # connect
        n = 1000
        start = time.perf_counter()
        for _ in range(n):
            await (await limiter.acquire()).release()
        return (time.perf_counter() - start) / n * 1e6


def measure(backend: str, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(backend, Path(tmp))
        try:
            out: dict[str, Any] = {
                "overhead_us": [],
                "utilisation": [],
                "strict": [],
                "handoff": [],
            }
            for _ in range(runs):
                out["overhead_us"].append(round(asyncio.run(overhead(store.url())), 1))
                if backend != "memory":  # memory:// is one process
                    out["utilisation"].append(utilisation(store.url(), Path(tmp)))
                    out["strict"].append(utilisation(store.url(), Path(tmp), handoff=0))
                    out["handoff"].append(handoff(store.url(), Path(tmp)))
            return summarise(out)
        finally:
            store.clean()


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"runs": out}
    summary["overhead_us_median"] = statistics.median(out["overhead_us"])
    if out["utilisation"]:
        summary["wall_s_median"] = statistics.median(u["wall_s"] for u in out["utilisation"])
        summary["ratio_median"] = round(summary["wall_s_median"] / IDEAL, 3)
        strict = statistics.median(u["wall_s"] for u in out["strict"])
        summary["strict_ratio_median"] = round(strict / IDEAL, 3)
        summary["handoff_p50_ms_median"] = statistics.median(h["p50_ms"] for h in out["handoff"])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="all")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--role", default="driver")
    parser.add_argument("--url")
    parser.add_argument("--name")
    parser.add_argument("--go", type=float)
    parser.add_argument("--out")
    parser.add_argument("--handoff", type=int)
    args = parser.parse_args()
    if args.role in ("util", "handoff"):
        child = child_utilisation if args.role == "util" else child_handoff
        spans = asyncio.run(child(args.url, args.name, args.go, args.handoff))
        Path(args.out).write_text(json.dumps(spans))
        return
    chosen = ["memory", "sqlite", "postgres", "redis"] if args.backend == "all" else [args.backend]
    result: dict[str, Any] = {
        "bench": "limiter",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "setup": {"processes": PROCS, "tasks": TASKS, "hold_s": HOLD, "limit": LIMIT},
        "ideal_wall_s": IDEAL,
    }
    for backend in chosen:
        result[backend] = measure(backend, args.runs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
