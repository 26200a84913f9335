"""A worker process for the integration tests:
``python app.py DB_URL QUEUE LOG_DIR [lease [idle_wait [prefetch [concurrency]]]]``.

Each job appends ``start``/``end`` lines with CLOCK_MONOTONIC nanoseconds
(shared by every process on the machine) to this process's log, so the test
can rebuild how many jobs ran at once across all processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path

import hydrapool as hp


def build(url: str, name: str, log_dir: Path) -> hp.Queue:
    queue = hp.Queue(url, name=name)
    log = log_dir / f"worker-{os.getpid()}.log"

    def note(kind: str, channel: str) -> None:
        with log.open("a") as f:
            f.write(f"{kind} {channel} {time.monotonic_ns()}\n")

    @queue.task(retry=hp.Retry(attempts=3))
    async def work(channel: str, seconds: float) -> int:
        note("start", channel)
        await asyncio.sleep(seconds)
        note("end", channel)
        return os.getpid()

    @queue.task(retry=hp.Retry(attempts=3))
    async def slow_first(flag: str) -> int:
        marker = Path(flag)
        if not marker.exists():
            marker.write_text("started once")
            await asyncio.sleep(60)  # the test SIGKILLs us here
        return os.getpid()

    return queue


async def main() -> None:
    url, name, log_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    lease = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    idle_wait = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    prefetch = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    concurrency = int(sys.argv[7]) if len(sys.argv) > 7 else 4
    # Timestamped warnings (lost connections, refused reports, rescues) for post-mortems.
    logging.basicConfig(format="%(created).3f %(process)d %(name)s %(levelname)s %(message)s")
    queue = build(url, name, log_dir)
    worker = hp.Worker(
        queue,
        concurrency=concurrency,
        prefetch=prefetch,
        lease=lease,
        grace=5,
        coordinator_interval=0.1,
        idle_wait=idle_wait,
    )
    (log_dir / f"ready-{os.getpid()}").write_text("ready")
    async with queue:
        await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
