"""Hydra-style external jobs: any process claims a job and reports its outcome.

    job_id = await queue.add_job({"task": "exampleTask"})      # Hydra's addJob
    lease = await queue.claim(channel="tenant-42")             # None if nothing is ready
    ...                                                        # do the work
    await queue.finish_job(lease.job_id, result={"ok": True})  # Hydra's finishJob
    # or: await queue.fail_job(lease.job_id, "timeout talking to the API")

A claim is the worker's own claim (one backend step, within the channel's and
the queue's ``max_concurrency``, with the worker's ``dequeued`` events); a
report is the worker's own report (a ``Finish`` fenced by the lease token, with
the same events). The queue remembers the leases it handed out, so a report
needs only the job id; another process that got the token passes ``token=``.
A lease that lapses is rescued by the coordinator like a crashed worker's.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hydrapool.backends.base import Backend, Claim, ClaimParams, Emit, Finish, JobRecord
from hydrapool.exceptions import PayloadError, ReportRefused
from hydrapool.queue import events as ev
from hydrapool.queue._reports import finish_events
from hydrapool.queue.job import TERMINAL, JobState
from hydrapool.queue.queue import (
    EXTERNAL_TASK,
    Queue,
    _number,
    _positive,
    check_name,
    retry_from_json,
)

__all__ = ["Lease"]

WAIT_SLICE = 1.0  # seconds: a claim that waits looks again at least this often


@dataclass(frozen=True, slots=True)
class Lease:
    """A job claimed with ``queue.claim()``, and the lease that fences reports on it.

    ``payload`` is what ``add_job`` stored; for a task's job (claimed from a
    channel that also holds tasks) it is ``{"args": [...], "kwargs": {...}}``
    and ``task`` names the task. ``attempt`` is the try this claim starts
    (1 for the first), ``token`` the lease token another process needs to
    report (``token=``), ``expires_at`` when the lease lapses (epoch seconds
    of the backend's clock) unless extended. ``cancel_requested`` (set by
    ``extend_lease``) means ``queue.cancel()`` asked the job to stop.
    """

    job_id: str
    queue: str
    channel: str
    task: str
    payload: Any
    attempt: int
    max_attempts: int
    token: str
    expires_at: float
    cancel_requested: bool = False


# ── claiming ────────────────────────────────────────────────────────────────
async def claim(
    queue: Queue, channel: str | Iterable[str] | None, lease: float, wait: float
) -> Lease | None:
    """``queue.claim()``: one job, or None once ``wait`` seconds passed without one."""
    seconds = _lease_seconds(lease)
    patience = _number("wait", wait, allow_none=False)
    backend = await queue._backend_ready()
    params = ClaimParams(queue.name, queue._claimer, 1, seconds, _channels(channel))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        found = await _claim_one(queue, backend, params)
        left = deadline - loop.time()
        if found is not None or left <= 0:
            return found
        await backend.work_wait(queue.name, min(left, WAIT_SLICE))


def _lease_seconds(value: object) -> float:
    seconds = _positive("lease", value)
    if seconds is None:
        raise TypeError("lease must be a number of seconds > 0, got None")
    return seconds


def _channels(channel: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if channel is None:
        return None
    if isinstance(channel, str):
        return (check_name("channel", channel),)
    if not isinstance(channel, Iterable):
        raise TypeError(f"channel must be a name, names or None, got {channel!r}")
    names = tuple(check_name("channel", c) for c in channel)
    if not names:
        raise ValueError("claim(channel=[]) would claim nothing: name channels, or None for all")
    return names


async def _claim_one(queue: Queue, backend: Backend, params: ClaimParams) -> Lease | None:
    emit: Emit[list[Claim]] = Emit(functools.partial(ev.for_claims, worker=params.worker))
    claims = await backend.job_claim(params, emit=emit)
    queue._published(emit.stored)
    if not claims:
        return None
    found = claims[0]
    return _remember(queue, found.job, found.lease, found.lease_expires_at)


def _remember(
    queue: Queue, record: JobRecord, token: str, expires_at: float, cancel: bool = False
) -> Lease:
    data = json.loads(record.payload)
    if record.task == EXTERNAL_TASK:
        payload = data.get("payload")
    else:
        payload = {"args": data.get("args", []), "kwargs": data.get("kwargs", {})}
    lease = Lease(
        record.id,
        record.queue,
        record.channel,
        record.task,
        payload,
        record.attempts,
        record.max_attempts,
        token,
        expires_at,
        cancel,
    )
    queue._leases[record.id] = (lease, record)
    return lease


# ── heartbeats and reports ──────────────────────────────────────────────────
async def extend(queue: Queue, job: str | Lease, lease: float, token: str | None) -> Lease:
    """``queue.extend_lease()``: the renewed lease, or ``hp.ReportRefused``."""
    seconds = _lease_seconds(lease)
    job_id, token, record = await _held(queue, job, token)
    backend = await queue._backend_ready()
    # Read before the heartbeat: the backend's own expiry is at least this late.
    now = await backend.now()
    beat = await backend.job_heartbeat_many(queue.name, {job_id: token}, seconds)
    if job_id not in beat.kept:
        _forget(queue, job_id, token)
        raise ReportRefused(job_id, await _why_refused(backend, queue.name, job_id, token))
    return _remember(queue, record, token, now + seconds, job_id in beat.cancel_requested)


async def finish(queue: Queue, job: str | Lease, result: Any, token: str | None) -> JobState:
    """``queue.finish_job()``: store the result under the job's lease."""
    job_id, token, record = await _held(queue, job, token)
    try:
        value = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"finish_job: the result of job {job_id} is not JSON ({type(result).__name__}: {exc})"
        ) from None
    return await _report(queue, record, Finish(job_id, token, "succeeded", result=value))


async def fail(
    queue: Queue,
    job: str | Lease,
    error: str | BaseException,
    retry: bool,
    delay: float | None,
    token: str | None,
) -> JobState:
    """``queue.fail_job()``: retry while attempts remain (and ``retry``), else fail."""
    text = _error_text(error)
    wait = _number("delay", delay)
    job_id, token, record = await _held(queue, job, token)
    if retry and record.attempts < record.max_attempts:
        if wait is None:
            policy = retry_from_json(json.loads(record.payload).get("retry"))
            wait = policy.delay(record.attempts) if policy is not None else 0.0
        finish = Finish(job_id, token, "retrying", error=text, delay=float(wait))
    else:
        finish = Finish(job_id, token, "failed", error=text)
    return await _report(queue, record, finish)


async def _report(queue: Queue, record: JobRecord, finish: Finish) -> JobState:
    """Apply ``finish`` with a worker report's events; ``hp.ReportRefused`` if fenced off."""
    backend = await queue._backend_ready()
    emit = finish_events(queue.name, [finish], [record], record.worker)
    outcome = await backend.job_finish_many(queue.name, [finish], emit=emit)
    queue._published(emit.stored)
    _forget(queue, finish.job_id, finish.lease)
    state = outcome.states[0]
    if state is None:
        reason = await _why_refused(backend, queue.name, finish.job_id, finish.lease)
        raise ReportRefused(finish.job_id, reason)
    queue._job_ended(finish.job_id)
    queue._notify()  # a slot is free (or a retry is due): local claims look again
    return JobState(state)


def _target(job: str | Lease, token: str | None) -> tuple[str, str | None]:
    """The job id and the token the caller named (None: this queue's own claim)."""
    if token is not None and (not isinstance(token, str) or not token):
        raise TypeError(f"token must be a lease token (a non-empty str), got {token!r}")
    if isinstance(job, Lease):
        if token is not None and token != job.token:
            raise ValueError(f"job {job.job_id}: token= differs from the Lease's own token")
        return job.job_id, job.token
    if not isinstance(job, str) or not job:
        raise TypeError(f"job must be a job id (a non-empty str) or an hp.Lease, got {job!r}")
    return job, token


async def _held(queue: Queue, job: str | Lease, token: str | None) -> tuple[str, str, JobRecord]:
    """The job id, its lease token and the job as claimed; ``hp.ReportRefused`` if there
    is no lease to report under."""
    job_id, token = _target(job, token)
    entry = queue._leases.get(job_id)
    if entry is not None and token in (None, entry[0].token):
        return job_id, entry[0].token, entry[1]
    record = await (await queue._backend_ready()).job_get(queue.name, job_id)
    if record is None:
        raise ReportRefused(job_id, f"no such job in queue {queue.name!r}")
    if token is None and record.state in TERMINAL:
        raise ReportRefused(job_id, f"it already ended {record.state}")
    if token is None:
        raise ReportRefused(
            job_id,
            f"this queue holds no lease on it (it is {record.state}): claim it with "
            "queue.claim(), or pass token= from the process that claimed it",
        )
    return job_id, token, record


def _forget(queue: Queue, job_id: str, token: str) -> None:
    entry = queue._leases.get(job_id)
    if entry is not None and entry[0].token == token:
        del queue._leases[job_id]


async def _why_refused(backend: Backend, queue: str, job_id: str, token: str) -> str:
    record = await backend.job_get(queue, job_id)
    if record is None:
        return f"no such job in queue {queue!r}"
    if record.state in TERMINAL:
        return f"it already ended {record.state}"
    if record.state == "running" and record.lease == token:
        return "its lease expired before the report (renew long jobs with queue.extend_lease())"
    if record.state == "running":
        return (
            "this lease is not the job's current one (it expired and the job was claimed "
            "again, or the token is wrong)"
        )
    return (
        f"it is {record.state}, not running under this lease (the lease expired and "
        "the coordinator took the job back, or it was never claimed)"
    )


def _error_text(error: str | BaseException) -> str:
    """The error as stored: valid UTF-8 without NUL characters (as a worker stores it)."""
    if isinstance(error, BaseException):
        message = str(error)
        text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    elif isinstance(error, str):
        text = error
    else:
        raise TypeError(f"fail_job error must be a str or an exception, got {error!r}")
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
