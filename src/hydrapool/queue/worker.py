"""Worker: claims durable jobs into its execution slots and runs them.

    worker = hp.Worker(queue, concurrency=10)
    await worker.run()          # until SIGTERM/SIGINT or worker.stop()

A worker claims up to its free slots in one backend step (plus ``prefetch``
jobs held ready to start the moment a slot frees), runs each job's
task (``async def`` on the loop, plain functions in threads), extends its
leases with heartbeats, and reports each outcome fenced by the job's lease:
a report on a lease that expired meanwhile is refused and logged, never
crashing the worker. On SIGTERM/SIGINT (or ``stop()``) it claims nothing new,
lets running jobs finish within ``grace`` seconds, and hands the rest back
without spending an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydrapool._callables import call_maybe_async
from hydrapool.backends.base import Claim, ClaimParams, Emit, Finish, Hands, JobRecord
from hydrapool.exceptions import Fail, PayloadError, RetryAfter
from hydrapool.queue import _signals
from hydrapool.queue import events as ev
from hydrapool.queue._reports import Stored, store_finishes
from hydrapool.queue.coordinator import Coordinator
from hydrapool.queue.queue import (
    EXTERNAL_TASK,
    Queue,
    Task,
    _encode,
    check_name,
    retry_from_json,
)

__all__ = ["Worker", "WorkerStatistics"]

logger = logging.getLogger("hydrapool.worker")

_CANCEL = "cancel"  # queue.cancel(): the job ends cancelled
_HAND_BACK = "hand_back"  # graceful stop: back to the queue, attempt refunded
_LEASE_LOST = "lease_lost"  # our lease is gone: someone else owns the job now
_OUTCOME = {
    "succeeded": "succeeded",
    "failed": "failed",
    "retrying": "retried",
    "cancelled": "cancelled",
    "queued": "handed_back",
}


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """A snapshot of a Worker's counters."""

    concurrency: int
    running: int
    succeeded: int
    failed: int
    retried: int
    cancelled: int
    handed_back: int
    refused: int  # reports refused because the lease had expired
    lost: int  # running or held jobs abandoned because their lease was lost
    held: int = 0  # claimed jobs waiting for a free slot (``prefetch``)


class Worker:
    """Runs a queue's jobs with ``concurrency`` execution slots.

    Args:
        queue: the ``hp.Queue`` whose registered tasks this worker runs.
        concurrency: execution slots (jobs running at once in this worker).
        prefetch: jobs claimed beyond the free slots and held, each started the moment
            a slot frees, without a trip to the store (0: none). A held job is leased:
            it counts as running for the queue's and channels' limits, its
            ``started_at`` and ``max_processing`` count from the claim, and no other
            worker can take it meanwhile. For many short jobs; leave it at 0 where
            limits bind or jobs are long.
        lease: seconds a claim is valid without a heartbeat (heartbeats every lease/3).
        grace: seconds running jobs get to finish on a stop before being handed back.
        channels: serve only these channels (None: all).
        coordinator: also run the queue's coordinator (one acts at a time).
        handle_signals: stop gracefully on SIGTERM/SIGINT (main thread only).
    """

    def __init__(
        self,
        queue: Queue,
        concurrency: int = 10,
        *,
        prefetch: int = 0,
        lease: float = 30.0,
        grace: float = 30.0,
        channels: list[str] | tuple[str, ...] | None = None,
        coordinator: bool = True,
        coordinator_interval: float = 1.0,
        handle_signals: bool = True,
        idle_wait: float = 1.0,
    ) -> None:
        if not isinstance(queue, Queue):
            raise TypeError(f"Worker needs an hp.Queue, got {queue!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"Worker concurrency must be an int >= 1, got {concurrency!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"Worker prefetch must be an int >= 0, got {prefetch!r}")
        for name, value in (("lease", lease), ("grace", grace), ("idle_wait", idle_wait)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Worker {name} must be a number of seconds > 0, got {value!r}")
        self.queue = queue
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.lease = float(lease)
        self.grace = float(grace)
        if channels is not None and not channels:
            raise ValueError(
                "Worker channels=[] would serve nothing: name channels, or None for all"
            )
        self.channels = (
            None if channels is None else tuple(check_name("channel", c) for c in channels)
        )
        self.idle_wait = float(idle_wait)
        self._resume_at = 0.0  # a channel this worker paused (hp.RetryAfter) resumes then
        self._pausing = False  # a pausing hand-back waits to be stored
        self._taking = False  # run() serves: held and handed jobs start (see _handed)
        self.handle_signals = handle_signals
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._coordinator = (
            Coordinator(queue, interval=coordinator_interval, owner=self.id)
            if coordinator
            else None
        )
        self._running: dict[str, tuple[Claim, asyncio.Task[None]]] = {}
        self._held: dict[str, Claim] = {}  # claimed beyond the free slots, in claim order
        self._reasons: dict[asyncio.Task[None], str] = {}  # why we cancelled a run
        self._finishes: list[tuple[Finish, JobRecord]] = []
        self._unstored: dict[str, str] = {}  # reported, not yet stored: job id -> lease
        self._flushing: asyncio.Task[None] | None = None
        self._claiming = False  # run() is claiming, or waiting for a slot to claim for
        self._next_claim: asyncio.Future[None] | None = None  # reports wait for it (_flush)
        self._report_now = False  # a report that freed no slot waits for no claim
        self._stop = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._counts = dict.fromkeys(
            ("succeeded", "failed", "retried", "cancelled", "handed_back", "refused", "lost"), 0
        )

    def statistics(self) -> WorkerStatistics:
        """A frozen snapshot of the counters."""
        return WorkerStatistics(
            self.concurrency, len(self._running), **self._counts, held=len(self._held)
        )

    def stop(self) -> None:
        """Ask for a graceful stop (what SIGTERM/SIGINT do); ``run()`` returns after it."""
        self._stop.set()

    # ── the main loop ──────────────────────────────────────────────────────
    async def run(self) -> None:
        """Claim and run jobs until stopped, then stop gracefully.

        A ``stop()`` that came before ``run()`` makes it return at once.
        """
        self.queue._local_workers.add(self)
        backend = await self.queue._backend_ready()
        hands = backend if isinstance(backend, Hands) else None
        self._taking = True
        if hands is not None:  # an idle worker gets new jobs pushed, without a claim trip
            await hands.job_inbox_open(self.queue.name, self.id, self._handed, self.idle_wait + 5.0)
        helpers = [asyncio.create_task(self._heartbeats())]
        if self._coordinator is not None:
            helpers.append(asyncio.create_task(self._coordinator.run(self._stop)))
        _signals.register(self, self.handle_signals)
        self._claiming = True
        try:
            while not self._stop.is_set():
                claims = await self._claim_some(backend)
                if claims is None:
                    # It failed and backed off: claim again. Waiting for work instead
                    # would sleep through a wake-up that came before the failure.
                    continue
                if not claims or self._room() <= 0:
                    await self._wait(full=self._room() <= 0)
        finally:
            self._taking = False
            self._claiming = False
            self._claim_going()
            self._hand_back_held()  # at once: another worker may run them meanwhile
            try:
                if hands is not None:
                    with contextlib.suppress(Exception):
                        await hands.job_inbox_close(self.queue.name, self.id)
            finally:  # (also when cancelled again meanwhile)
                await self._shut_down()  # also when the loop itself failed: hand jobs back
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                _signals.unregister(self)
                self.queue._local_workers.discard(self)
                self._stop.clear()  # the worker may run again

    async def _claim_some(self, backend: Any) -> list[Claim] | None:
        """Claim what free slots allow and start it; None when the claim failed."""
        if self._pausing and self._flushing is not None:
            # A channel pause is stored before the next claim, which could take its jobs.
            # (Counted after it: jobs handed to this worker meanwhile took slots.)
            self._pausing = False
            self._claiming = False  # (the reports must not wait for this claim)
            self._claim_going()
            try:
                await asyncio.wait([self._flushing])  # (cancelling us does not cancel it)
            finally:
                self._claiming = True
        free = self._room()
        if free <= 0:
            self._claim_going()
            return []
        hold = self.prefetch - len(self._held)  # (of ``free``: places to hold, not slots)
        params = ClaimParams(self.queue.name, self.id, free, self.lease, self.channels, hold)
        try:
            emit = Emit(
                functools.partial(ev.for_claims, worker=self.id), wanted=self.queue._listened
            )
            self._claim_going()  # it is sent now, before the reports (see _claim_soon)
            claims: list[Claim] = await backend.job_claim(params, emit=emit)
        except Exception:  # a locked or unreachable store: back off, never die
            logger.exception("claiming jobs failed; retrying shortly")
            self._claiming = False  # (the reports go meanwhile)
            self._claim_going()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
            finally:
                self._claiming = True
            return None
        self.queue._published(emit.stored)
        for claim in claims:
            if not self._place(claim):  # (not expected: the claim asked for the room)
                self._give_back(claim)
        return claims

    def _room(self) -> int:
        """How many jobs a claim may take now: free slots, plus room to hold (prefetch)."""
        return self.concurrency + self.prefetch - len(self._running) - len(self._held)

    def _place(self, claim: Claim) -> bool:
        """Start a claimed job, or hold it (prefetch); False when there is no room. A job
        claimed again (rescued after its lease lapsed) replaces what this worker had of
        it: a held claim is dropped, and a stale run is cancelled by _start."""
        job_id = claim.job.id
        if self._held.pop(job_id, None) is not None:
            self._counts["lost"] += 1
        if job_id in self._running or len(self._running) < self.concurrency:
            self._start(claim)
            return True
        if len(self._held) < self.prefetch:
            self._held[job_id] = claim
            return True
        return False

    def _give_back(self, claim: Claim) -> None:
        """Back to the queue, attempt refunded: a claim this worker will not run."""
        self._report_now = True  # (no slot was freed: no claim follows)
        self._claim_going()
        self._report(claim.job, Finish(claim.job.id, claim.lease, "queued"))

    def _handed(self, claims: list[Claim]) -> None:
        """Jobs an enqueue claimed for this worker while it was idle (``Hands``): start
        them. One that finds no free slot (possible only after a failed claim) or comes
        while the worker stops goes back to the queue, its attempt refunded."""
        for claim in claims:
            if not (self._taking and self._place(claim)):
                self._give_back(claim)

    async def _wait(self, *, full: bool) -> None:
        self._claim_going()  # no claim now: the reports waiting go (new ones wait for a slot)
        self._slot_freed.clear()
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(self._slot_freed.wait()),
        ]
        if not full:
            waits.append(
                asyncio.ensure_future(self.queue.backend.work_wait(self.queue.name, self._idle()))
            )
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    def _claim_soon(self) -> asyncio.Future[None] | None:
        """For reports about to be stored: done once run() sent its next claim (or will
        send none soon); None when no claim is coming (stopping, backing off, pausing).
        A report comes from a run that ended, so its slot is free and run() claims for
        it next: when the claim reaches the store first, the slot's next job starts one
        store step sooner (the store runs commands in order; the reports can wait)."""
        if not self._claiming or self._pausing or self._report_now:
            return None
        if self._next_claim is None:
            self._next_claim = asyncio.get_running_loop().create_future()
        return self._next_claim

    def _claim_going(self) -> None:
        """A claim is on its way, or none comes now: the reports waiting for it go."""
        going, self._next_claim = self._next_claim, None
        if going is not None and not going.done():
            going.set_result(None)

    def _idle(self) -> float:
        """How long to wait for work: ``idle_wait``, or less when a channel this worker
        paused resumes sooner (nothing announces the end of a pause)."""
        left = self._resume_at - time.time()
        if left <= 0:
            return self.idle_wait
        return min(self.idle_wait, left + 0.01)  # (a hair after: clocks differ a little)

    async def _shut_down(self) -> None:
        running = [task for _, task in self._running.values()]
        if running:
            await asyncio.wait(running, timeout=self.grace)
        for _, task in list(self._running.values()):
            self._reasons.setdefault(task, _HAND_BACK)
            task.cancel()
        await asyncio.gather(*(t for _, t in self._running.values()), return_exceptions=True)
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        await self._flush()

    # ── running one job ────────────────────────────────────────────────────
    def _start(self, claim: Claim) -> None:
        job_id = claim.job.id
        older = self._running.get(job_id)
        if older is not None:  # rescued and claimed again while an old run hangs on
            self._reasons.setdefault(older[1], _LEASE_LOST)
            older[1].cancel()
        task = asyncio.create_task(self._execute(claim))
        self._running[job_id] = (claim, task)
        task.add_done_callback(lambda t: self._ended(job_id, t))

    def _ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        entry = self._running.get(job_id)
        if entry is not None and entry[1] is task:  # never remove a newer run's entry
            del self._running[job_id]
        self._reasons.pop(task, None)
        serving = self._taking and not self._stop.is_set()
        if self._held and serving and len(self._running) < self.concurrency:
            self._start(self._held.pop(next(iter(self._held))))  # (no trip to the store)
        self._slot_freed.set()

    async def _execute(self, claim: Claim) -> None:
        job = claim.job
        payload: Mapping[str, Any] = {}
        task: Task[Any, Any] | None = None
        try:
            payload = json.loads(job.payload)
            task = self.queue.tasks.get(job.task)
            if task is None:
                raise _no_task(job)
            value = await self._call(task, payload)
        except asyncio.CancelledError as exc:
            me = asyncio.current_task()
            reason = self._reasons.get(me) if me is not None else None
            if reason is not None:
                self._cancelled(claim, reason)
                return
            if me is not None and me.cancelling():
                raise  # the worker itself is being torn down
            self._failed(claim, exc, payload, task)  # the task raised it itself
            return
        except RetryAfter as exc:  # put back, attempt refunded; the channel pauses
            self._report(job, Finish(job.id, claim.lease, "queued", pause=exc.seconds))
            self._resume_at = max(self._resume_at, time.time() + exc.seconds)
            self._pausing = True
            self._hand_back_held(job.channel)  # (they would meet the same pause)
            return
        except Exception as exc:
            self._failed(claim, exc, payload, task)
            return
        try:
            result = "null" if value is None else _encode(value)
        except (TypeError, ValueError) as exc:
            error = PayloadError(f"task {job.task!r} returned a value that is not JSON: {exc}")
            self._report(job, Finish(job.id, claim.lease, "failed", error=_text(error)))
            return
        self._report(job, Finish(job.id, claim.lease, "succeeded", result=result))

    async def _call(self, task: Task[Any, Any], payload: Mapping[str, Any]) -> Any:
        args = payload.get("args", [])
        kwargs = payload.get("kwargs", {})
        timeout = payload.get("timeout")
        if timeout is None:
            timeout = task.timeout

        async def invoke() -> Any:
            if task.is_async:
                return await task.fn(*args, **kwargs)
            return await call_maybe_async(functools.partial(task.fn, *args, **kwargs))

        if timeout is None:
            return await invoke()
        try:
            async with asyncio.timeout(timeout):
                return await invoke()
        except TimeoutError:
            raise TimeoutError(f"the task ran past its timeout of {timeout:g}s") from None

    def _failed(
        self,
        claim: Claim,
        exc: BaseException,
        payload: Mapping[str, Any],
        task: Task[Any, Any] | None,
    ) -> None:
        job = claim.job
        retry = retry_from_json(payload.get("retry")) or (task.retry if task else None)
        retry_on = task.retry_on if task is not None else (Exception,)
        final = isinstance(exc, Fail) and exc.cancel_retries
        if not final and job.attempts < job.max_attempts and isinstance(exc, retry_on) and retry:
            delay = retry.delay(job.attempts)
            self._report(
                job, Finish(job.id, claim.lease, "retrying", error=_text(exc), delay=delay)
            )
            return
        if not isinstance(exc, (Fail, LookupError, TimeoutError)):
            logger.error("job %s (%s) failed", job.id, job.task, exc_info=exc)
        self._report(job, Finish(job.id, claim.lease, "failed", error=_text(exc)))

    def _cancelled(self, claim: Claim, reason: str) -> None:
        if reason == _LEASE_LOST:
            self._counts["lost"] += 1
            logger.warning("job %s: lease lost; another worker may run it", claim.job.id)
        elif reason == _HAND_BACK:
            self._report(claim.job, Finish(claim.job.id, claim.lease, "queued"))
        else:
            self._report(
                claim.job, Finish(claim.job.id, claim.lease, "cancelled", error="cancelled")
            )

    def _hand_back_held(self, channel: str | None = None) -> None:
        """Held jobs (of ``channel``, or all) go back to the queue, attempts refunded."""
        for job_id, claim in list(self._held.items()):
            if channel is None or claim.job.channel == channel:
                del self._held[job_id]
                self._give_back(claim)

    def _cancel_local(self, job_id: str) -> None:
        self._abandon(job_id, _CANCEL)

    # ── reports and heartbeats ─────────────────────────────────────────────
    def _report(self, job: JobRecord, finish: Finish) -> None:
        """Queue an outcome for storing (counted once the backend accepted it, see _flush)."""
        self._finishes.append((finish, job))
        self._unstored[finish.job_id] = finish.lease
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._finishes:
            going = self._claim_soon()
            if going is not None:
                await asyncio.wait([going])  # (cancelling us does not cancel it)
            self._report_now = False
            pairs, self._finishes = self._finishes, []
            batch = [finish for finish, _ in pairs]
            try:
                stored = await self._record(batch, [job for _, job in pairs])
            finally:
                for finish in batch:
                    if self._unstored.get(finish.job_id) == finish.lease:
                        del self._unstored[finish.job_id]
            applied = stored.applied
            self.queue._published(stored.events)
            for finish, ok in zip(batch, applied, strict=True):
                self._counts["refused" if not ok else _OUTCOME[finish.state]] += 1
                if not ok:
                    logger.warning(
                        "job %s: %s report refused: its lease had expired (the job is "
                        "retried or failed by the coordinator)",
                        finish.job_id,
                        finish.state,
                    )
                else:  # a cancel request may have turned a retry into an end: wake waiters
                    self.queue._job_ended(finish.job_id)
            if any(
                ok and f.state in ("retrying", "queued")
                for f, ok in zip(batch, applied, strict=True)
            ):
                self.queue._notify()

    async def _record(self, batch: list[Finish], jobs: list[JobRecord]) -> Stored:
        """Store reports; a batch that keeps failing goes one by one, so none blocks."""
        backend, name = self.queue.backend, self.queue.name
        return await store_finishes(
            backend, name, batch, jobs, self.id, (0.0, 0.2, 1.0), self.queue._listened
        )

    async def _heartbeats(self) -> None:
        backend = self.queue.backend
        while True:
            await asyncio.sleep(self.lease / 3)
            leases = {job_id: claim.lease for job_id, (claim, _) in self._running.items()}
            leases.update((job_id, claim.lease) for job_id, claim in self._held.items())
            # Outcomes still being stored keep their lease too: a slow or failing
            # store must not let the coordinator rescue (and re-run) a finished job.
            unstored = {k: v for k, v in self._unstored.items() if k not in leases}
            leases.update(unstored)
            if not leases:
                continue
            try:
                beat = await backend.job_heartbeat_many(self.queue.name, leases, self.lease)
            except Exception:
                logger.exception("heartbeat failed; retrying at the next beat")
                continue
            for job_id in leases:
                if job_id in unstored:
                    continue
                if job_id not in beat.kept:
                    self._abandon(job_id, _LEASE_LOST, leases[job_id])
                elif job_id in beat.cancel_requested:
                    self._abandon(job_id, _CANCEL, leases[job_id])

    def _abandon(self, job_id: str, reason: str, lease: str | None = None) -> None:
        """Stop this worker's claim of ``job_id`` (the one under ``lease``, when given: a
        heartbeat's answer about an older claim must not touch a newer one)."""
        held = self._held.get(job_id)
        if held is not None and lease in (None, held.lease):  # it never runs
            del self._held[job_id]
            self._cancelled(held, reason)
            self._slot_freed.set()  # (room to claim another)
            return
        entry = self._running.get(job_id)
        if entry is not None and lease not in (None, entry[0].lease):
            return
        if entry is not None and entry[1] not in self._reasons:
            self._reasons[entry[1]] = reason
            entry[1].cancel()


def _no_task(job: JobRecord) -> LookupError:
    """Why this worker cannot run ``job``; a job for an external claimer is also logged."""
    if job.task != EXTERNAL_TASK:
        return LookupError(f"no task named {job.task!r} is registered in this worker")
    logger.warning(
        "job %s in channel %r was added with queue.add_job() for an external claimer, "
        "and this Worker serves that channel: its try fails",
        job.id,
        job.channel,
    )
    return LookupError(
        f"job {job.id} was added with queue.add_job() for an external claimer "
        "(queue.claim()) and a Worker cannot run it: keep such jobs in channels no "
        "Worker serves (hp.Worker(queue, channels=[...]))"
    )


def _text(exc: BaseException) -> str:
    """The error as stored: always valid UTF-8 (a file name may carry lone surrogates),
    with no NUL character (SQLite cuts text there; PostgreSQL refuses it)."""
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
