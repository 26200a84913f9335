"""The durable queue on the embedded SQLite default: what `make run` shows.

3,000 jobs over three tenant channels go into a SQLite file; one channel has
a policy (at most 2 of its jobs at once); one task fails now and then and is
retried with back-off. Two worker *processes* drain the file while a progress
bar follows the queue, then the final counts by channel and state are printed.

    python examples/queue_demo.py            # the demo
    python examples/queue_demo.py --worker   # one worker process (the demo starts two)
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import hydrapool as hp

DB = Path(os.environ.get("HYDRAPOOL_DEMO_DB", Path(tempfile.gettempdir()) / "hydrapool-demo.db"))
queue = hp.Queue(f"sqlite:///{DB}", name="demo")
CHANNELS = ["tenant-a", "tenant-b", "tenant-c"]
JOBS = 3000


@queue.task(retry=hp.Retry(attempts=3, backoff=hp.Backoff.exponential(0.05, factor=2)))
async def thumbnail(image: int) -> str:
    """A stand-in for real work: 1-5 ms of I/O, and 5% transient failures."""
    await asyncio.sleep(random.uniform(0.001, 0.005))
    if random.random() < 0.05:
        raise ConnectionError("storage hiccup")
    return f"thumb-{image}.png"


async def work() -> None:
    """One worker process: 20 slots, until SIGTERM."""
    async with queue:
        await hp.Worker(queue, concurrency=20, lease=10, coordinator_interval=0.2).run()


def fresh_file() -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DB}{suffix}").unlink(missing_ok=True)


async def demo() -> None:
    console = Console()
    async with queue:
        await queue.channel("tenant-c").set_policy(max_concurrency=2)
        calls = [(thumbnail.options(channel=CHANNELS[i % 3]), (i,)) for i in range(JOBS)]
        start = time.perf_counter()
        await queue.enqueue_many(calls)
        console.print(f"enqueued {JOBS:,} jobs into {DB} in {time.perf_counter() - start:.2f} s")
        workers = [
            await asyncio.create_subprocess_exec(sys.executable, __file__, "--worker")
            for _ in range(2)
        ]
        try:
            await follow(console)
        finally:
            for proc in workers:
                proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*(proc.wait() for proc in workers))
        console.print(await counts_table())


async def follow(console: Console) -> None:
    columns = [TextColumn("draining"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("jobs", total=JOBS)
        done = 0
        while done < JOBS:
            await asyncio.sleep(0.1)
            snap = await queue.show_pool()
            done = sum(snap.counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
            progress.update(bar, completed=done)


async def counts_table() -> Table:
    snap = await queue.show_pool()
    states = sorted({state for per in snap.channels.values() for state in per})
    table = Table(title="final counts")
    table.add_column("channel")
    for state in states:
        table.add_column(state, justify="right")
    for channel, per in sorted(snap.channels.items()):
        table.add_row(channel, *(f"{per.get(s, 0):,}" for s in states))
    retried = sum(1 for job in await queue.jobs(limit=JOBS) if job.attempts > 1)
    table.caption = f"tenant-c: at most 2 at once; {retried} jobs needed a retry"
    return table


if __name__ == "__main__":
    if "--worker" in sys.argv:
        asyncio.run(work())
    else:
        fresh_file()
        asyncio.run(demo())
