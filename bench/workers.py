"""Benchmark: WorkerGroup and Batcher against hand-written asyncio equivalents.

Prints one JSON object: µs per message for WorkerGroup.cast and .call (8
workers) next to N asyncio tasks reading one asyncio.Queue with a future per
call, and µs per item for Batcher next to a hand-written list-and-flush loop.
Medians of --rounds interleaved rounds; compare ratios within one run.

    python bench/workers.py [--n 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import hydrapool as hp

SIZE = 8


class Echo:
    async def handle(self, msg: Any, state: None) -> Any:
        return msg


async def group_cast(n: int) -> None:
    async with hp.WorkerGroup(Echo, size=SIZE, mailbox_size=1000) as group:
        for i in range(n):
            await group.cast(i)


async def group_call(n: int) -> None:
    async with hp.WorkerGroup(Echo, size=SIZE, mailbox_size=1000) as group:
        for start in range(0, n, 1000):
            await asyncio.gather(*(group.call(i) for i in range(start, min(n, start + 1000))))


async def queue_workers(n: int, *, replies: bool) -> None:
    queue: asyncio.Queue[tuple[Any, asyncio.Future[Any] | None] | None] = asyncio.Queue(1000)

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            msg, fut = item
            if fut is not None:
                fut.set_result(msg)

    workers = [asyncio.create_task(worker()) for _ in range(SIZE)]
    loop = asyncio.get_running_loop()

    async def call(i: int) -> Any:
        fut = loop.create_future()
        await queue.put((i, fut))
        return await fut

    if replies:
        for start in range(0, n, 1000):
            await asyncio.gather(*(call(i) for i in range(start, min(n, start + 1000))))
    else:
        for i in range(n):
            await queue.put((i, None))
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)


async def batcher(n: int) -> None:
    async def handle(items: list[int]) -> None:
        return None

    async with hp.Batcher(handle, limit=1000) as b:
        for i in range(n):
            b.push(i)
            if i % 1000 == 999:
                await asyncio.sleep(0)


async def hand_batcher(n: int) -> None:
    async def handle(items: list[int]) -> None:
        return None

    batch: list[int] = []
    for i in range(n):
        batch.append(i)
        if len(batch) == 1000:
            await handle(batch)
            batch = []
            await asyncio.sleep(0)
    if batch:
        await handle(batch)


async def queue_cast(n: int) -> None:
    await queue_workers(n, replies=False)


async def queue_call(n: int) -> None:
    await queue_workers(n, replies=True)


CASES: dict[str, tuple[Callable[[int], Awaitable[None]], int]] = {
    "WorkerGroup.cast (8 workers)": (group_cast, 1),
    "asyncio.Queue + 8 tasks, no reply": (queue_cast, 1),
    "WorkerGroup.call (8 workers)": (group_call, 1),
    "asyncio.Queue + 8 tasks + future per call": (queue_call, 1),
    "Batcher.push (limit 1000)": (batcher, 20),
    "hand-written list + flush every 1000": (hand_batcher, 20),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, (fn, scale) in CASES.items():
            n = args.n * scale
            start = time.perf_counter()
            asyncio.run(fn(n))
            samples[name].append((time.perf_counter() - start) / n * 1e6)
    report = {
        "benchmark": "workers",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "messages": args.n,
        "rounds": args.rounds,
        "us_per_message": {
            name: {"median": round(statistics.median(v), 3), "all": [round(x, 3) for x in v]}
            for name, v in samples.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
