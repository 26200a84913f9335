"""Events (issue 5): every transition of a job is an hp.Event, in order, to every subscriber."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

import hydrapool as hp

T = hp.EventType


async def run_until_done(queue: hp.Queue, jobs: Iterable[hp.Job], **worker_kw: Any) -> None:
    worker = hp.Worker(
        queue, concurrency=4, handle_signals=False, coordinator_interval=0.02, **worker_kw
    )
    task = asyncio.create_task(worker.run())
    for job in jobs:
        try:
            await job.result(timeout=10)
        except hp.JobFailed:
            pass
    worker.stop()
    await task


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


async def test_a_successful_job_tells_its_whole_life_in_order(queue: hp.Queue) -> None:
    @queue.task
    async def add(a: int, b: int) -> int:
        return a + b

    stream = queue.events()
    job = await add.options(channel="maths").enqueue(1, 2)
    worker = hp.Worker(queue, handle_signals=False, coordinator=False)
    task = asyncio.create_task(worker.run())
    seen = await until(stream, job.id, T.FINALIZED)
    worker.stop()
    await task
    assert kinds(seen) == ["enqueued", "dequeued", "succeeded", "finalized"]
    assert all(e.channel == "maths" and e.task == "add" and e.queue == queue.name for e in seen)
    assert [e.attempt for e in seen] == [0, 1, 1, 1]
    assert [e.worker_id for e in seen] == [None, worker.id, worker.id, worker.id]
    assert seen[-1].detail == "succeeded"
    seqs = [e.seq for e in seen]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 4
    times = [e.time for e in seen]
    assert times == sorted(times)
    assert times[0] > 0


async def test_retries_then_exhausted_attempts(queue: hp.Queue) -> None:
    @queue.task(retry=hp.Retry(attempts=2, backoff=hp.Backoff.fixed(0)))
    async def flaky() -> None:
        raise ValueError("nope")

    stream = queue.events()
    job = await flaky.enqueue()
    await run_until_done(queue, [job])
    seen = await until(stream, job.id, T.FINALIZED)
    assert kinds(seen) == [
        "enqueued",
        "dequeued",
        "failed",
        "retrying",  # HydraMQ's "locked"
        "unlocked",
        "dequeued",
        "failed",
        "attempts_exhausted",
        "finalized",
    ]
    assert [e.attempt for e in seen] == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert seen[2].error == "ValueError: nope"
    assert seen[-1].detail == "failed"


async def test_a_final_failure_with_attempts_left_is_not_exhaustion(queue: hp.Queue) -> None:
    @queue.task(retry=hp.Retry(attempts=3))
    async def refuse() -> None:
        raise hp.Fail("bad input", cancel_retries=True)

    stream = queue.events()
    job = await refuse.enqueue()
    await run_until_done(queue, [job])
    seen = await until(stream, job.id, T.FINALIZED)
    assert kinds(seen) == ["enqueued", "dequeued", "failed", "finalized"]


async def test_a_delayed_job_is_released_before_it_is_dequeued(queue: hp.Queue) -> None:
    @queue.task
    async def later() -> None:
        return None

    stream = queue.events(types=["enqueued", "released", "dequeued"])
    job = await later.options(delay=0.05).enqueue()
    await run_until_done(queue, [job])
    seen = await until(stream, job.id, T.DEQUEUED)
    assert kinds(seen) == ["enqueued", "released", "dequeued"]


async def test_dropped_and_deduplicated_enqueues(queue: hp.Queue) -> None:
    await queue.channel("tiny").set_policy(max_size=1)
    stream = queue.events()
    first = await queue.options("job", channel="tiny", dedup_key="k").enqueue()
    twin = await queue.options("job", channel="tiny", dedup_key="k").enqueue()
    dropped = await queue.options("job", channel="tiny").enqueue()
    assert twin.deduplicated
    assert twin.id == first.id
    seen = await until(stream, dropped.id, T.FINALIZED)
    assert [(e.type, e.job_id) for e in await drain(stream)] == []
    assert kinds(seen) == ["dropped", "finalized"]
    assert seen[0].error == "channel full"


async def drain(stream: hp.queue._stream.EventStream) -> list[hp.Event]:
    """What is already stored beyond the stream's cursor (without waiting for more)."""
    backend = await stream.queue._backend_ready()
    assert stream.cursor is not None
    return await backend.event_read(stream.queue.name, stream.cursor, 100)


async def test_first_enqueue_event_is_the_only_one_for_a_dedup_key(queue: hp.Queue) -> None:
    stream = queue.events()
    first = await queue.options("job", dedup_key="k").enqueue()
    await queue.options("job", dedup_key="k").enqueue()
    [enqueued] = await until(stream, first.id, T.ENQUEUED)
    assert await drain(stream) == []
    assert enqueued.type is T.ENQUEUED


async def test_dependency_events(queue: hp.Queue) -> None:
    @queue.task
    async def step(name: str) -> None:
        if name == "bad":
            raise ValueError("broken")

    stream = queue.events()
    good = await step.enqueue("good")
    bad = await step.enqueue("bad")
    waits = await step.options(depends_on=[good]).enqueue("waits")
    doomed = await step.options(depends_on=[bad]).enqueue("doomed")
    assert waits.state is hp.JobState.WAITING  # until its parent succeeds
    events: list[hp.Event] = []
    collector = asyncio.create_task(collect(stream, events, {waits.id, doomed.id}))
    await run_until_done(queue, [good, bad, waits, doomed])
    await asyncio.wait_for(collector, 10)
    of_waits = [e for e in events if e.job_id == waits.id]
    of_doomed = [e for e in events if e.job_id == doomed.id]
    assert kinds(of_waits) == [
        "enqueued",
        "dependency_resolved",
        "released",
        "dequeued",
        "succeeded",
        "finalized",
    ]
    assert of_waits[1].detail == f"parent {good.id} succeeded"
    assert kinds(of_doomed) == [
        "enqueued",
        "dependency_resolved",
        "dependencies_unmet",
        "finalized",
    ]
    assert of_doomed[2].error == f"dependency {bad.id} ended failed"


async def collect(
    stream: hp.queue._stream.EventStream, into: list[hp.Event], ids: set[str]
) -> None:
    left = set(ids)
    async for event in stream:
        into.append(event)
        if event.type is T.FINALIZED:
            left.discard(event.job_id)
            if not left:
                return


async def test_a_child_of_an_ended_parent_fails_at_enqueue(queue: hp.Queue) -> None:
    await queue.channel("tiny").set_policy(max_size=0)
    stream = queue.events()
    gone = await queue.options("job", channel="tiny").enqueue()
    child = await queue.options("job", depends_on=[gone]).enqueue()
    seen = await until(stream, child.id, T.FINALIZED)
    assert kinds(seen) == ["enqueued", "dependencies_unmet", "finalized"]


async def test_cancel_events(queue: hp.Queue) -> None:
    started = asyncio.Event()

    @queue.task
    async def hang() -> None:
        started.set()
        await asyncio.sleep(60)

    stream = queue.events()
    waiting = await hang.options(delay=60).enqueue()
    await queue.cancel(waiting.id)
    assert kinds(await until(stream, waiting.id, T.FINALIZED)) == [
        "enqueued",
        "cancelled",
        "finalized",
    ]
    running = await hang.enqueue()
    worker = hp.Worker(queue, handle_signals=False, coordinator=False)
    task = asyncio.create_task(worker.run())
    await started.wait()
    await queue.cancel(running.id)
    seen = await until(stream, running.id, T.FINALIZED)
    worker.stop()
    await task
    assert kinds(seen) == ["enqueued", "dequeued", "cancelled", "finalized"]


async def test_a_stopping_worker_hands_back_with_requeued(queue: hp.Queue) -> None:
    started = asyncio.Event()

    @queue.task
    async def hang() -> None:
        started.set()
        await asyncio.sleep(60)

    stream = queue.events()
    job = await hang.enqueue()
    worker = hp.Worker(queue, handle_signals=False, coordinator=False, grace=0.01)
    task = asyncio.create_task(worker.run())
    await started.wait()
    worker.stop()
    await task
    seen = await until(stream, job.id, T.REQUEUED)
    assert kinds(seen) == ["enqueued", "dequeued", "requeued"]
    assert seen[-1].attempt == 0  # the attempt was refunded


async def test_lease_expiry_is_an_event(queue: hp.Queue) -> None:
    from hydrapool.backends.base import ClaimParams

    job = await queue.enqueue("job")
    stream = queue.events()
    await queue.backend.job_claim(ClaimParams(queue.name, "ghost", 1, lease=0.01))
    await asyncio.sleep(0.03)
    report = await hp.Coordinator(queue).run_once()
    assert report.failed == 1
    seen = await until(stream, job.id, T.FINALIZED)
    assert kinds(seen) == ["lease_expired", "failed", "attempts_exhausted", "finalized"]
    assert seen[0].worker_id == "ghost"
    assert "lease expired" in (seen[0].error or "")


async def test_purge_and_retention_emit_deleted(queue: hp.Queue) -> None:
    await queue.channel("tiny").set_policy(max_size=0)
    gone = await queue.options("job", channel="tiny").enqueue()
    stream = queue.events(types="deleted")
    assert await queue.purge() == 1
    [deleted] = await until(stream, gone.id, T.DELETED)
    assert deleted.detail == "dropped"


async def test_schedule_ticks_say_which_schedule(queue: hp.Queue) -> None:
    stream = queue.events(types={"enqueued"})
    await queue.schedule("nightly", every=0.01, task="job")
    coordinator = hp.Coordinator(queue)
    async with asyncio.timeout(10):
        while not (await coordinator.run_once()).fired:  # noqa: ASYNC110  # the tick is due in 10 ms
            await asyncio.sleep(0.01)
        event = await anext(stream)
    assert event.detail == "schedule nightly"


async def test_filters_by_type_and_channel(queue: hp.Queue) -> None:
    stream = queue.events(types=["enqueued"], channel="b")
    await queue.options("job", channel="a").enqueue()
    b = await queue.options("job", channel="b").enqueue()
    async with asyncio.timeout(10):
        event = await anext(stream)
    assert (event.type, event.job_id, event.channel) == (T.ENQUEUED, b.id, "b")


@pytest.mark.parametrize("bad", ["exploded", ["enqueued", "nope"], [3]])
def test_unknown_event_types_are_refused_by_name(queue: hp.Queue, bad: Any) -> None:
    with pytest.raises(ValueError, match="unknown event type") as info:
        queue.events(types=bad)
    assert "enqueued" in str(info.value)  # the valid names are listed
    with pytest.raises(TypeError, match="types must be"):
        queue.events(types=3)  # type: ignore[arg-type]


def test_bad_stream_arguments(queue: hp.Queue) -> None:
    with pytest.raises(ValueError, match="channel name"):
        queue.events(channel="no spaces")
    with pytest.raises(ValueError, match="after must be >= 0"):
        queue.events(after=-1)


def test_hydramq_names_are_accepted() -> None:
    assert T("locked") is T.RETRYING
    assert T("MESSAGE_LOCKED") is T.RETRYING
    assert T("MESSAGE_PROCESSED_SUCCESS") is T.SUCCEEDED
    assert T("MESSAGE_PROCESSED_FAIL") is T.FAILED
    assert T("MESSAGE_DEPENDENCIES_UNMET") is T.DEPENDENCIES_UNMET
    assert T.ENQUEUED == "enqueued"


async def test_after_resumes_from_a_known_event(queue: hp.Queue) -> None:
    stream = queue.events()
    a = await queue.enqueue("job")
    [first] = await until(stream, a.id, T.ENQUEUED)
    b = await queue.enqueue("job")
    c = await queue.enqueue("job")
    resumed = queue.events(after=first.seq)
    async with asyncio.timeout(10):
        got = [await anext(resumed), await anext(resumed)]
    assert [e.job_id for e in got] == [b.id, c.id]


async def test_every_subscriber_sees_the_same_events(queue: hp.Queue) -> None:
    one, two = queue.events(), queue.events()
    jobs = [await queue.enqueue("job") for _ in range(5)]
    async with asyncio.timeout(10):
        a = [await anext(one) for _ in jobs]
        b = [await anext(two) for _ in jobs]
    assert a == b
    assert [e.job_id for e in a] == [j.id for j in jobs]


async def test_a_stream_started_in_a_task_after_an_enqueue_misses_nothing_later(
    queue: hp.Queue,
) -> None:
    async with queue.events() as stream:  # the start is fixed on entry
        job = await queue.enqueue("job")
        async with asyncio.timeout(10):
            event = await anext(stream)
    assert event.job_id == job.id


async def test_on_event_calls_back_in_order_and_survives_errors(
    queue: hp.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    got_three = asyncio.Event()

    def record(event: hp.Event) -> None:
        seen.append(event.job_id)
        if len(seen) == 2:
            raise RuntimeError("callback bug")
        if len(seen) == 3:
            got_three.set()

    async def also(event: hp.Event) -> None:
        await asyncio.sleep(0)

    stop = queue.on_event(record, types="enqueued")
    stop_also = queue.on_event(also)
    jobs = [await queue.enqueue("job") for _ in range(3)]
    with caplog.at_level(logging.ERROR, logger="hydrapool.events"):
        await asyncio.wait_for(got_three.wait(), 10)
    assert seen == [j.id for j in jobs]
    assert "callback bug" in caplog.text
    stop()
    stop_also()
    await queue.enqueue("job")
    await asyncio.sleep(0.05)  # give a (wrongly) live subscription the chance to run
    assert len(seen) == 3


def test_on_event_needs_a_loop_and_a_callable(queue: hp.Queue) -> None:
    with pytest.raises(TypeError, match="callable"):
        queue.on_event("print")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="running event loop"):
        queue.on_event(print)


async def test_streams_end_when_the_queue_closes(url: str) -> None:
    queue = hp.Queue(url, name="closing")
    await queue.enqueue("job")
    stream = queue.events()
    reader = asyncio.create_task(consume(stream))
    await asyncio.sleep(0.02)
    await queue.close()
    assert await asyncio.wait_for(reader, 10) == []


async def consume(stream: hp.queue._stream.EventStream) -> list[hp.Event]:
    return [event async for event in stream]


async def test_events_are_trimmed_by_retention(url: str) -> None:
    queue = hp.Queue(url, name="trim", event_retention=0.01)
    async with queue:
        await queue.enqueue("job")
        await queue.enqueue("job")
        await asyncio.sleep(0.03)
        report = await hp.Coordinator(queue).run_once()
        assert report.events_deleted == 1, "the newest event stays: numbering goes on from it"
        last = await queue.enqueue("job")
        assert await queue.purge_events(older_than=3600) == 0
        assert await queue.purge_events() == 1
        backend = await queue._backend_ready()
        [kept] = await backend.event_read(queue.name, 0, 10)
        assert kept.job_id == last.id
        newer = await queue.enqueue("job")
        [after] = await backend.event_read(queue.name, kept.seq, 10)
        assert (after.job_id, after.seq) == (newer.id, kept.seq + 1)


def test_event_retention_is_checked(url: str) -> None:
    with pytest.raises(ValueError, match="event_retention"):
        hp.Queue(url, event_retention=-1)


# ── from review ──────────────────────────────────────────────────────────────
async def test_a_quiet_stream_waits_without_spinning_while_another_queue_is_busy(
    url: str,
) -> None:
    quiet, busy = hp.Queue(url, name="quiet"), hp.Queue(url, name="busy")
    async with quiet, busy:
        backend = await quiet._backend_ready()
        reads = 0
        read = backend.event_read

        async def counting(*args: Any) -> list[hp.Event]:
            nonlocal reads
            reads += 1
            return await read(*args)

        backend.event_read = counting  # type: ignore[method-assign]
        stream = quiet.events()
        await busy.enqueue("job")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.3)
        assert reads < 10, f"{reads} reads in 0.3 s: the stream spins"


@pytest.mark.parametrize("failing_first", [True, False])
async def test_two_parents_ending_in_one_batch_tell_the_child_once(
    queue: hp.Queue, failing_first: bool
) -> None:
    from hydrapool.backends.base import ClaimParams, Finish
    from hydrapool.queue._reports import finish_events

    bad = await queue.enqueue("job")
    good = await queue.enqueue("job")
    child = await queue.options("job", depends_on=[bad, good]).enqueue()
    stream = queue.events()
    claims = await queue.backend.job_claim(ClaimParams(queue.name, "w", 2, 30.0))
    by_id = {c.job.id: c for c in claims}
    finishes = [
        Finish(bad.id, by_id[bad.id].lease, "failed", error="x"),
        Finish(good.id, by_id[good.id].lease, "succeeded", result="1"),
    ]
    if not failing_first:
        finishes.reverse()
    jobs = [by_id[f.job_id].job for f in finishes]
    emit = finish_events(queue.name, finishes, jobs, "w")
    await queue.backend.job_finish_many(queue.name, finishes, emit=emit)
    seen = await until(stream, child.id, T.FINALIZED)
    assert kinds(seen).count("dependencies_unmet") == 1
    await queue.close()
    rest = [e async for e in stream]  # everything stored is still read at close
    assert [e.type for e in rest if e.job_id == child.id] == []


def test_event_types_and_job_states_hash_like_their_text() -> None:
    assert T.FAILED in {"failed", "finalized"}
    assert len({T.FAILED, "failed"}) == 1
    assert hp.JobState.FAILED in {"failed"}
    assert {"succeeded": 1}[hp.JobState.SUCCEEDED] == 1


def test_an_empty_types_filter_is_refused(queue: hp.Queue) -> None:
    with pytest.raises(ValueError, match="types is empty"):
        queue.events(types=[])


async def test_close_lets_subscribers_deliver_what_was_stored(url: str) -> None:
    queue = hp.Queue(url, name="tail")
    seen: list[str] = []
    queue.on_event(lambda event: seen.append(event.job_id))
    jobs = [await queue.enqueue("job") for _ in range(3)]
    await queue.close()
    assert seen == [j.id for j in jobs]


async def test_a_stream_of_a_closed_queue_ends_without_reopening_it(url: str) -> None:
    queue = hp.Queue(url, name="shut")
    await queue.enqueue("job")
    stream = queue.events()
    await queue.close()
    assert [e async for e in stream] == []
    assert not queue._opened
    async with queue.events() as late:  # created after the close: a new opening
        await queue.enqueue("job")
        async with asyncio.timeout(10):
            assert (await anext(late)).type is T.ENQUEUED
    await queue.close()


async def test_aclose_from_another_task_ends_a_waiting_stream(queue: hp.Queue) -> None:
    stream = queue.events()
    reader = asyncio.create_task(consume(stream))
    await asyncio.sleep(0.05)  # let it reach its wait
    await stream.aclose()
    assert await asyncio.wait_for(reader, 0.5) == []
