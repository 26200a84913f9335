"""A process using an hp.Limiter, for tests/integration/test_limiter_processes.py.

``python limiter_app.py run URL NAME LIMIT RATE_N RATE_PER TASKS HOLD LOG``
    runs TASKS concurrent tasks; each acquires (limit LIMIT, rate RATE_N per
    RATE_PER seconds; 0 means none), holds HOLD seconds, releases, and appends
    ``start <ns>`` / ``end <ns>`` (CLOCK_MONOTONIC, shared by every process of the
    host) to LOG, written while the place is held.
``python limiter_app.py hold URL NAME LIMIT LEASE READY``
    acquires one place with lease LEASE, creates READY and waits to be killed.
``python limiter_app.py once URL NAME LIMIT LOG``
    waits for one place, holds it 20 ms and writes ``start <ns>`` / ``end <ns>`` to LOG.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import hydrapool as hp


async def run(args: list[str]) -> None:
    url, name, limit, rate_n, rate_per, tasks, hold, log = args
    rate = hp.RateLimit(int(rate_n), per=float(rate_per)) if int(rate_n) else None
    lines: list[str] = []
    async with hp.Limiter(url, name, limit=int(limit) or None, rate=rate) as limiter:

        async def one() -> None:
            async with limiter.acquire(timeout=120):
                lines.append(f"start {time.monotonic_ns()}")
                await asyncio.sleep(float(hold))
                lines.append(f"end {time.monotonic_ns()}")

        await asyncio.gather(*(one() for _ in range(int(tasks))))
    Path(log).write_text("\n".join(lines) + "\n")


async def hold(args: list[str]) -> None:
    url, name, limit, lease, ready = args
    limiter = hp.Limiter(url, name, limit=int(limit), lease=float(lease))
    await limiter.acquire()
    Path(ready).write_text(str(os.getpid()))
    await asyncio.Event().wait()


async def once(args: list[str]) -> None:
    url, name, limit, log = args
    limiter = hp.Limiter(url, name, limit=int(limit))
    async with limiter, limiter.acquire(timeout=60):
        start = time.monotonic_ns()
        await asyncio.sleep(0.02)
        end = time.monotonic_ns()
    Path(log).write_text(f"start {start}\nend {end}\n")


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    asyncio.run({"run": run, "hold": hold, "once": once}[mode](rest))
