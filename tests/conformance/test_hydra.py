"""Hydra parity on every backend: add_job, claim, finish_job / fail_job, show_pool.

Hydra's publishers call addJob and its workers finishJob, while a manager
process keeps POOL_MAX_CONCURRENT jobs running. Here any process claims a
payload-only job under a lease, within the channel's and the queue's
max_concurrency, and reports on it fenced by that lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

import hydrapool as hp

T = hp.EventType
EXTERNAL = "hydrapool.external"


def twin(queue: hp.Queue, url: str) -> hp.Queue:
    """Another Queue object on the same store: what another process would open."""
    if url.startswith("memory"):
        return hp.Queue(url, name=queue.name, backend=queue.backend)
    return hp.Queue(url, name=queue.name)


async def claimed(queue: hp.Queue, channel: str | None = None) -> hp.Lease:
    lease = await queue.claim(channel)
    assert lease is not None, "a job was ready"
    return lease


async def until(stream: AsyncIterator[hp.Event], job_id: str, last: T) -> list[hp.Event]:
    """This job's events, up to and including the first of type ``last``."""
    seen: list[hp.Event] = []
    async with asyncio.timeout(10):
        async for event in stream:
            if event.job_id == job_id:
                seen.append(event)
                if event.type is last:
                    return seen
    raise AssertionError(f"the stream ended before {last}: {seen}")


def kinds(events: list[hp.Event]) -> list[str]:
    return [str(e.type) for e in events]


async def test_add_claim_finish_round_trip_stores_payload_and_result(queue: hp.Queue) -> None:
    payload = {"task": "exampleTask", "n": [1, 2.5, None], "ok": True}
    job_id = await queue.add_job(payload, channel="hydra")
    assert isinstance(job_id, str)
    stored = await queue.get_job(job_id)
    assert stored is not None
    assert (stored.state, stored.task, stored.payload) == (hp.JobState.QUEUED, EXTERNAL, payload)

    lease = await claimed(queue)
    assert (lease.job_id, lease.queue, lease.channel) == (job_id, queue.name, "hydra")
    assert (lease.task, lease.payload, lease.attempt, lease.max_attempts) == (
        EXTERNAL,
        payload,
        1,
        1,
    )
    assert lease.token
    assert lease.expires_at > stored.created_at
    assert not lease.cancel_requested
    assert (await queue.get_job(job_id)).state is hp.JobState.RUNNING  # type: ignore[union-attr]
    assert await queue.claim() is None, "nothing else is ready"

    state = await queue.finish_job(job_id, result={"rows": 3})
    assert state is hp.JobState.SUCCEEDED
    done = await queue.get_job(job_id)
    assert done is not None
    assert (done.state, done.return_value, done.payload, done.attempts) == (
        hp.JobState.SUCCEEDED,
        {"rows": 3},
        payload,
        1,
    )
    assert await done.result(timeout=5) == {"rows": 3}


async def test_any_json_payload_and_dedup_go_through_the_insert(queue: hp.Queue) -> None:
    for payload in ("text", 7, [1, "two"], None):
        job = await queue.get_job(await queue.add_job(payload))
        assert job is not None
        assert job.payload == payload
    first = await queue.add_job({"user": 42}, dedup_key="welcome:42")
    assert await queue.add_job({"user": 42}, dedup_key="welcome:42") == first
    assert await queue.add_job({"user": 42}, dedup_key="welcome:42", channel="eu") != first


async def test_claim_respects_channel_max_concurrency(queue: hp.Queue) -> None:
    await queue.channel("solo").set_policy(max_concurrency=1)
    first = await queue.add_job("s1", channel="solo")
    second = await queue.add_job("s2", channel="solo")
    other = await queue.add_job("x1", channel="other")
    assert (await claimed(queue, "solo")).job_id == first
    assert await queue.claim("solo") is None, "the channel is at its limit"
    assert (await claimed(queue)).job_id == other, "other channels still run"
    assert await queue.claim() is None
    await queue.finish_job(first)
    assert (await claimed(queue, ["solo", "nowhere"])).job_id == second


async def test_claim_respects_queue_max_concurrency(queue: hp.Queue) -> None:
    await queue.set_limits(max_concurrency=2)
    ids = [await queue.add_job(i, channel=f"c{i}") for i in range(3)]
    running = [(await claimed(queue)).job_id for _ in range(2)]
    assert await queue.claim() is None, "the queue is at its limit"
    assert await queue.fail_job(running[0], "gave up", retry=False) is hp.JobState.FAILED
    last = await claimed(queue)
    assert sorted([*running, last.job_id]) == sorted(ids)
    assert await queue.claim() is None
    snap = await queue.show_pool()
    assert (snap.executing, snap.max_concurrency) == (2, 2)


async def test_claim_waits_for_a_free_slot(queue: hp.Queue) -> None:
    await queue.set_limits(max_concurrency=1)
    first = await queue.add_job("a")
    second = await queue.add_job("b")
    await claimed(queue)
    assert await queue.claim(wait=0.05) is None, "waited, and the limit still held"
    waiter = asyncio.create_task(queue.claim(wait=10))
    await queue.finish_job(first)
    lease = await asyncio.wait_for(waiter, 10)
    assert lease is not None
    assert lease.job_id == second


async def test_a_report_after_the_lease_expired_is_refused_and_the_job_ends_once(
    queue: hp.Queue,
) -> None:
    job_id = await queue.add_job({"slow": True}, max_attempts=2)
    stream = queue.events()
    old = await claimed(queue)
    stop = asyncio.Event()
    coordinator = asyncio.create_task(hp.Coordinator(queue, interval=0.02).run(stop))
    try:
        await queue.extend_lease(job_id, lease=0.1)
        seen = await until(stream, job_id, T.RETRYING)
        assert kinds(seen) == ["dequeued", "lease_expired", "failed", "retrying"]
        with pytest.raises(hp.ReportRefused, match=job_id) as refused:
            await queue.finish_job(job_id, result="late")
        assert refused.value.job_id == job_id
        assert "not running under this lease" in refused.value.reason
        assert (await until(stream, job_id, T.REPORT_REFUSED))[-1].type is T.REPORT_REFUSED

        new = await claimed(queue)
        assert (new.job_id, new.attempt) == (job_id, 2)
        assert new.token != old.token
        with pytest.raises(hp.ReportRefused, match="claimed again"):
            await queue.finish_job(old, result="late again")
        assert await queue.finish_job(job_id, result="on time") is hp.JobState.SUCCEEDED
        rest = await until(stream, job_id, T.FINALIZED)
    finally:
        stop.set()
        await coordinator
    job = await queue.get_job(job_id)
    assert job is not None
    assert (job.state, job.return_value, job.attempts) == (hp.JobState.SUCCEEDED, "on time", 2)
    assert job.error is not None
    assert job.error.startswith("lease expired")
    assert kinds(rest).count("finalized") == 1
    assert "succeeded" in kinds(rest)
    with pytest.raises(hp.ReportRefused, match="already ended succeeded"):
        await queue.finish_job(job_id, result="twice")
    after = await queue.get_job(job_id)
    assert after is not None
    assert (after.return_value, after.finished_at) == ("on time", job.finished_at)


async def test_fail_job_retries_while_attempts_remain_then_fails(queue: hp.Queue) -> None:
    job_id = await queue.add_job({"n": 1}, max_attempts=3)
    stream = queue.events()
    assert (await claimed(queue)).attempt == 1
    assert await queue.fail_job(job_id, "upstream 503") is hp.JobState.RETRYING
    job = await queue.get_job(job_id)
    assert job is not None
    assert (job.state, job.error) == (hp.JobState.RETRYING, "upstream 503")
    assert (await claimed(queue)).attempt == 2
    assert await queue.fail_job(job_id, ValueError("bad row")) is hp.JobState.RETRYING
    assert (await claimed(queue)).attempt == 3
    assert await queue.fail_job(job_id, "still bad") is hp.JobState.FAILED
    with pytest.raises(hp.JobFailed, match="still bad"):
        await queue.result(job_id, timeout=5)
    seen = await until(stream, job_id, T.FINALIZED)
    assert kinds(seen) == [
        "dequeued",
        "failed",
        "retrying",
        "unlocked",
        "dequeued",
        "failed",
        "retrying",
        "unlocked",
        "dequeued",
        "failed",
        "attempts_exhausted",
        "finalized",
    ]
    assert seen[5].error == "ValueError: bad row"

    quick = await queue.add_job("q", max_attempts=5)
    await claimed(queue)
    assert await queue.fail_job(quick, "fatal", retry=False) is hp.JobState.FAILED


async def test_fail_job_waits_out_the_back_off(queue: hp.Queue) -> None:
    slow = await queue.add_job("slow", max_attempts=2, backoff=hp.Backoff.fixed(3600))
    await claimed(queue)
    assert await queue.fail_job(slow, "429") is hp.JobState.RETRYING
    assert await queue.claim() is None, "due again in an hour"
    job = await queue.get_job(slow)
    assert job is not None
    assert job.run_at - job.created_at > 3000

    hinted = await queue.add_job("hinted", max_attempts=2, backoff=3600)
    await claimed(queue)
    assert await queue.fail_job(hinted, "429", delay=0) is hp.JobState.RETRYING
    assert (await claimed(queue)).job_id == hinted, "delay= overrides the back-off"


async def test_events_of_a_round_trip(queue: hp.Queue) -> None:
    stream = queue.events()
    job_id = await queue.add_job({"task": "exampleTask"}, channel="hydra")
    await claimed(queue)
    await queue.finish_job(job_id)
    seen = await until(stream, job_id, T.FINALIZED)
    assert kinds(seen) == ["enqueued", "dequeued", "succeeded", "finalized"]
    assert all(e.channel == "hydra" and e.task == EXTERNAL for e in seen)
    claimer = seen[1].worker_id
    assert claimer
    assert [e.worker_id for e in seen[1:]] == [claimer] * 3
    assert [e.attempt for e in seen] == [0, 1, 1, 1]


async def test_show_pool_counts_pending_executing_finished(queue: hp.Queue) -> None:
    ids = [await queue.add_job(i, channel="a" if i < 2 else "b") for i in range(4)]
    await queue.add_job("later", channel="b", delay=3600)
    snap = await queue.show_pool()
    assert (snap.pending, snap.executing, snap.finished) == (5, 0, 0)
    first, second = await claimed(queue, "a"), await claimed(queue, "a")
    await queue.finish_job(first.job_id)
    await queue.fail_job(second.job_id, "no", retry=False)
    await claimed(queue, "b")
    snap = await queue.show_pool()
    assert (snap.pending, snap.executing, snap.finished) == (2, 1, 2)
    assert snap.counts == {"queued": 1, "waiting": 1, "running": 1, "succeeded": 1, "failed": 1}
    assert snap.channels["a"] == {"succeeded": 1, "failed": 1}
    assert [j.id for j in snap.running] in ([ids[2]], [ids[3]])


async def test_extend_lease_and_a_cancel_request(queue: hp.Queue) -> None:
    job_id = await queue.add_job("long", max_attempts=2)
    lease = await queue.claim(lease=5)
    assert lease is not None
    longer = await queue.extend_lease(job_id, lease=600)
    assert longer.expires_at > lease.expires_at + 500
    assert (longer.token, longer.attempt) == (lease.token, 1)
    await queue.cancel(job_id)
    flagged = await queue.extend_lease(longer)
    assert flagged.cancel_requested
    assert await queue.fail_job(job_id, "stopping") is hp.JobState.CANCELLED, "not retried"
    with pytest.raises(hp.ReportRefused, match="already ended cancelled"):
        await queue.extend_lease(job_id)


async def test_another_process_reports_with_the_token(queue: hp.Queue, url: str) -> None:
    job_id = await queue.add_job({"x": 1})
    lease = await claimed(queue)
    other = twin(queue, url)
    try:
        with pytest.raises(hp.ReportRefused, match="holds no lease"):
            await other.finish_job(job_id)
        with pytest.raises(hp.ReportRefused, match="or the token is wrong"):
            await other.finish_job(job_id, token="0" * 32)
        renewed = await other.extend_lease(job_id, lease=60, token=lease.token)
        assert renewed.payload == {"x": 1}
        assert await other.finish_job(job_id, 2, token=lease.token) is hp.JobState.SUCCEEDED
    finally:
        if other.backend is not queue.backend:
            await other.close()
    with pytest.raises(hp.ReportRefused, match="already ended succeeded"):
        await queue.finish_job(job_id)
    assert (await queue.result(job_id, timeout=5)) == 2


async def test_claim_takes_a_task_job_too(queue: hp.Queue) -> None:
    job = await queue.enqueue("resize", "cat.png", width=64)
    lease = await claimed(queue)
    assert (lease.task, lease.payload) == ("resize", {"args": ["cat.png"], "kwargs": {"width": 64}})
    await queue.finish_job(lease, result="cat-64.png")
    assert await job.result(timeout=5) == "cat-64.png"


async def test_bad_inputs_raise_specific_errors_and_store_nothing(queue: hp.Queue) -> None:
    with pytest.raises(hp.PayloadError, match="add_job: the payload is not JSON"):
        await queue.add_job({"ids": {1, 2}})
    with pytest.raises(hp.PayloadError):
        await queue.add_job(float("nan"))
    with pytest.raises(ValueError, match="channel name 'no spaces' is invalid"):
        await queue.add_job("x", channel="no spaces")
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        await queue.add_job("x", max_attempts=0)
    with pytest.raises(TypeError, match="priority"):
        await queue.add_job("x", priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay"):
        await queue.add_job("x", delay=-1)
    with pytest.raises(ValueError, match="reserved"):
        await queue.enqueue(EXTERNAL)
    with pytest.raises(ValueError, match="reserved"):
        queue.task(name=EXTERNAL)(lambda: None)
    assert await queue.jobs() == []
    assert (await queue.show_pool()).counts == {}

    with pytest.raises(ValueError, match="channel name"):
        await queue.claim("bad/name")
    with pytest.raises(ValueError, match="claim nothing"):
        await queue.claim([])
    with pytest.raises(ValueError, match="lease"):
        await queue.claim(lease=0)
    reports = (
        lambda: queue.finish_job("nope"),
        lambda: queue.fail_job("nope", "x"),
        lambda: queue.extend_lease("nope"),
    )
    for report in reports:
        with pytest.raises(hp.ReportRefused, match="job nope: report refused: no such job"):
            await report()

    job_id = await queue.add_job("x")
    with pytest.raises(hp.ReportRefused, match="holds no lease on it \\(it is queued\\)"):
        await queue.finish_job(job_id)
    await claimed(queue)
    with pytest.raises(hp.PayloadError, match=f"result of job {job_id} is not JSON"):
        await queue.finish_job(job_id, result=object())
    with pytest.raises(TypeError, match="fail_job error"):
        await queue.fail_job(job_id, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="job id"):
        await queue.finish_job(123)  # type: ignore[arg-type]
    still = await queue.get_job(job_id)
    assert still is not None
    assert (still.state, still.return_value) == (hp.JobState.RUNNING, None)
    assert await queue.finish_job(job_id, result="fine") is hp.JobState.SUCCEEDED


async def test_a_worker_fails_an_external_job_loudly(
    queue: hp.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await queue.add_job({"task": "exampleTask"})
    worker = hp.Worker(queue, handle_signals=False, coordinator=False)
    with caplog.at_level(logging.WARNING, logger="hydrapool.worker"):
        running = asyncio.create_task(worker.run())
        with pytest.raises(hp.JobFailed, match="external claimer") as failed:
            await queue.result(job_id, timeout=10)
        worker.stop()
        await running
    assert "channels no Worker serves" in str(failed.value.error)
    assert any(job_id in r.getMessage() for r in caplog.records)
