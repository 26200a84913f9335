"""Benchmark: hydrapool.Pool against the usual ways to bound concurrency in asyncio.

Prints one JSON object. Timing: 100,000 no-op tasks at concurrency 100,
microseconds per task, median of --rounds interleaved rounds (the machine is
shared, so compare ratios from one run, not absolute times across runs).
Memory: traced bytes per waiting task with 1,000,000 tasks added up front, and
peak traced memory of pool.map over a generator of 1,000,000 items, each
measured in a fresh subprocess.

    python bench/pool.py [--n 100000] [--rounds 5] [--concurrency 100] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import hydrapool as hp


async def noop(*_: object) -> None:
    return None


# ── the contenders (each runs n no-op tasks at concurrency c) ────────────────
async def hydrapool_pool(n: int, c: int) -> None:
    """Pool with a Retry, mixed priorities and a handle per task, all added up front."""
    retry = hp.Retry(attempts=3, backoff=hp.Backoff.exponential(0.1))
    async with hp.Pool(c, retry=retry) as pool:
        add = pool.add
        for i in range(n):
            add(noop, priority=i & 1)


async def hydrapool_put(n: int, c: int) -> None:
    """Pool with a bounded backlog: the producer awaits put() (back-pressure)."""
    async with hp.Pool(c, max_pending=c) as pool:
        put = pool.put
        for _ in range(n):
            await put(noop)


async def hydrapool_map(n: int, c: int) -> None:
    """pool.map over a range, results consumed in order."""
    async with hp.Pool(c) as pool:
        async for _ in pool.map(noop, range(n)):
            pass


async def semaphore_lazy(n: int, c: int) -> None:
    """await sem.acquire() before create_task: at most c tasks exist."""
    sem = asyncio.Semaphore(c)
    tasks: set[asyncio.Task[None]] = set()

    async def run() -> None:
        try:
            await noop()
        finally:
            sem.release()

    for _ in range(n):
        await sem.acquire()
        task = asyncio.create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for _ in range(c):
        await sem.acquire()


async def semaphore_taskgroup(n: int, c: int) -> None:
    """asyncio.Semaphore + TaskGroup with every task created up front."""
    sem = asyncio.Semaphore(c)

    async def run() -> None:
        async with sem:
            await noop()

    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(run())


async def aiometer_run(n: int, c: int) -> None:
    import aiometer

    await aiometer.run_on_each(noop, range(n), max_at_once=c)


async def aiojobs_scheduler(n: int, c: int) -> None:
    import aiojobs

    scheduler = aiojobs.Scheduler(limit=c, pending_limit=n)
    for _ in range(n):
        await scheduler.spawn(noop())
    await scheduler.wait_and_close()


async def anyio_limiter(n: int, c: int) -> None:
    import anyio

    limiter = anyio.CapacityLimiter(c)

    async def run() -> None:
        async with limiter:
            await noop()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(run)


CONTENDERS: dict[str, Callable[[int, int], Awaitable[None]]] = {
    "hydrapool.Pool (add, retry+priority+handles)": hydrapool_pool,
    "hydrapool.Pool (await put, max_pending)": hydrapool_put,
    "hydrapool.Pool (map)": hydrapool_map,
    "asyncio lazy semaphore loop": semaphore_lazy,
    "asyncio Semaphore + TaskGroup (eager)": semaphore_taskgroup,
    "aiometer.run_on_each": aiometer_run,
    "aiojobs.Scheduler": aiojobs_scheduler,
    "anyio CapacityLimiter + task group": anyio_limiter,
}
BASELINE = "asyncio lazy semaphore loop"


def time_one(fn: Callable[[int, int], Awaitable[None]], n: int, c: int) -> float:
    gc.collect()

    async def main() -> float:
        start = time.perf_counter()
        await fn(n, c)
        return time.perf_counter() - start

    return asyncio.run(main()) / n * 1e6


# ── memory cases (each in a fresh process) ───────────────────────────────────
async def mem_pool_upfront(n: int) -> dict[str, float]:
    pool = hp.Pool(100)
    pool.pause()  # keep them all waiting while we measure
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    handles = [pool.add(noop, i) for i in range(n)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_task = (after - before) / n
    # the list of handles the caller keeps is 8 bytes a task; it is the caller's
    pool.resume()
    await pool.done()
    del handles
    return {"bytes_per_pending_task": round(per_task, 1)}


async def mem_eager_tasks(n: int) -> dict[str, float]:
    sem = asyncio.Semaphore(100)

    async def run(i: int) -> None:
        async with sem:
            await noop()

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tasks = [asyncio.create_task(run(i)) for i in range(n)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    await asyncio.gather(*tasks)
    return {"bytes_per_pending_task": round((after - before) / n, 1)}


async def mem_map_generator(n: int) -> dict[str, float]:
    def items() -> Any:
        yield from range(n)

    gc.collect()
    tracemalloc.start()
    count = 0
    async with hp.Pool(100) as pool:
        async for _ in pool.map(noop, items()):
            count += 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == n
    return {"peak_mb": round(peak / 1e6, 2), "items": count}


MEMORY_CASES: dict[str, Callable[[int], Awaitable[dict[str, float]]]] = {
    "hydrapool.Pool: 1M tasks added up front": mem_pool_upfront,
    "asyncio: 1M Tasks created up front (Semaphore)": mem_eager_tasks,
    "hydrapool.Pool.map over a 1M-item generator": mem_map_generator,
}


def run_memory_case(name: str, n: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-case", name, "--memory-n", str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-n", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        result = asyncio.run(MEMORY_CASES[args.memory_case](args.memory_n))
        print(json.dumps(result))
        return
    if args.quick:
        args.n, args.rounds, args.memory_n = 10_000, 1, 100_000

    samples: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(args.rounds):
        for name, fn in CONTENDERS.items():  # interleaved: noise hits everyone alike
            samples[name].append(time_one(fn, args.n, args.concurrency))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians[BASELINE]
    report = {
        "benchmark": "pool",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} x{__import__('os').cpu_count()}",
        "tasks": args.n,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "us_per_task": {
            name: {
                "median": round(medians[name], 2),
                "vs_lazy_semaphore": round(medians[name] / base, 2),
                "all": [round(v, 2) for v in samples[name]],
            }
            for name in CONTENDERS
        },
        "memory": {name: run_memory_case(name, args.memory_n) for name in MEMORY_CASES},
        "memory_items": args.memory_n,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
