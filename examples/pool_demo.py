"""hydrapool demo: 2,000 simulated HTTP calls through one concurrency-limited Pool.

What it shows:

* at most 50 calls run at once (fake_get counts itself and checks the limit);
* flaky calls (~3% ConnectionError) are retried with exponential back-off;
* throttled calls (~1% RetryAfter, like an HTTP 429) pause new starts and rerun;
* a rich progress bar fed by ``pool.as_completed()``, then a summary table.

Every call draws from its own RNG seeded with (SEED, url, try number), so the
counts are the same on every run whatever order the calls happen to start in.
Run it with ``make run``; it also works when stdout is not a terminal (CI).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import hydrapool as hp

SEED = 2024
CALLS = 2_000
CONCURRENCY = 50

tries: Counter[str] = Counter()  # url -> tries so far
in_flight = 0
peak = 0
slept = 0.0  # total simulated network time, failed tries included


async def fake_get(url: str) -> int:
    """Pretend to GET ``url``: 5-40 ms, ~3% ConnectionError, ~1% HTTP 429."""
    global in_flight, peak, slept
    tries[url] += 1
    rng = random.Random(f"{SEED}:{url}:{tries[url]}")
    delay = rng.uniform(0.005, 0.040)
    roll = rng.random()
    in_flight += 1
    peak = max(peak, in_flight)
    assert in_flight <= CONCURRENCY, f"{in_flight} calls at once"
    try:
        await asyncio.sleep(delay)
        slept += delay
    finally:
        in_flight -= 1
    if roll < 0.03:
        raise ConnectionError(f"connection reset by {url}")
    if roll < 0.04:
        raise hp.RetryAfter(0.05)  # the server said 429, come back in 50 ms
    return 200


async def main() -> None:
    console = Console()
    retry = hp.Retry(attempts=3, backoff=hp.Backoff.exponential(0.01, max=0.1))
    urls = [f"https://api.example.com/items/{i}" for i in range(CALLS)]
    columns = (
        TextColumn("[bold]fetching"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("fetch", total=CALLS)
        async with hp.Pool(concurrency=CONCURRENCY, retry=retry) as pool:
            handles = [pool.add(fake_get, url) for url in urls]
            async for _ in pool.as_completed(handles):
                progress.advance(bar)
    wall = time.perf_counter() - started
    # The in-task assert fails a task (and is retried); this one stops the demo.
    assert peak <= CONCURRENCY, f"peak concurrency {peak} > {CONCURRENCY}"

    stats = pool.statistics()
    failed = [h for h in handles if h.state is hp.TaskState.FAILED]
    table = Table(title="hydrapool demo", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("tasks", f"{CALLS:,}")
    table.add_row("succeeded", f"{stats.completed:,}")
    table.add_row("failed after retries", f"{stats.failed:,}")
    table.add_row("retries", f"{stats.retried:,}")
    table.add_row("RetryAfter pauses", f"{stats.throttled:,}")
    table.add_row("peak concurrency", f"{peak} (limit {CONCURRENCY})")
    table.add_row("wall time", f"{wall:.2f} s")
    table.add_row("ideal time (sleep / 50)", f"{slept / CONCURRENCY:.2f} s")
    console.print(table)
    for handle in failed:
        console.print(f"  gave up on {handle.args[0]}: {handle.exception()!r}")


if __name__ == "__main__":
    asyncio.run(main())
