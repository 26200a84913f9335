"""A finished job whose outcome is slow to store keeps its lease (found by the PostgreSQL
connection-kill test): the coordinator must not rescue and re-run it meanwhile."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import hydrapool as hp


async def test_a_job_whose_report_keeps_failing_is_not_run_again(
    queue: hp.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[int] = []

    @queue.task(retry=hp.Retry(attempts=3))
    async def once() -> str:
        runs.append(1)
        return "done"

    backend: Any = queue.backend
    real = backend.job_finish_many
    failing_until = [0.0]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if time.monotonic() < failing_until[0]:
            raise ConnectionError("the store is away")
        return await real(*args, **kwargs)

    backend.job_finish_many = flaky
    job = await once.enqueue()
    failing_until[0] = time.monotonic() + 1.0  # longer than the lease below
    worker = hp.Worker(queue, lease=0.45, handle_signals=False, coordinator_interval=0.05)
    with caplog.at_level(logging.CRITICAL, logger="hydrapool.worker"):
        task = asyncio.create_task(worker.run())
        assert await job.result(timeout=15) == "done"
        worker.stop()
        await task
    final = await job.refresh()
    assert runs == [1], "the job ran again while its outcome waited to be stored"
    assert final.attempts == 1
    assert final.state is hp.JobState.SUCCEEDED
