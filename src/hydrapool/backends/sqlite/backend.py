"""sqlite:///path.db — the embedded default: one machine, many processes, one file.

WAL mode, every write transaction ``BEGIN IMMEDIATE`` (one writer at a time,
so a claim sees and takes jobs atomically), ``synchronous=NORMAL`` (durable
across process crashes; a power cut may lose the last commits). All calls
run on one thread that owns the connection, so the event loop never blocks
on the file; claims and finishes go in batches to pay that hop once per batch.

Idle workers in another process notice new work through ``PRAGMA
data_version``, which changes whenever another connection commits: checking
it costs no query of the tables, so it can be checked every few milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from hydrapool.backends import _limits
from hydrapool.backends._deps import Parents, initial_state, parents_of, with_aliases
from hydrapool.backends._fair import Candidates, pick
from hydrapool.backends._sql import load_queries, migrations
from hydrapool.backends.base import (
    CancelResult,
    Change,
    ChannelPolicy,
    Claim,
    ClaimParams,
    Emit,
    Finish,
    FinishResult,
    Heartbeat,
    JobRecord,
    LimitSpec,
    LimitStats,
    LimitTurn,
    NewJob,
    PoolSnapshot,
    ScheduleRecord,
    stamp,
)
from hydrapool.backends.sqlite import limiter
from hydrapool.queue.events import Event, EventType

T = TypeVar("T")
Q = load_queries(__package__ or "hydrapool.backends.sqlite")
_COLUMNS = [f for f in JobRecord.__dataclass_fields__]
_TERMINAL = ("succeeded", "failed", "cancelled", "dropped")
_FINISH_SQL = {
    "end": Q["job_finish_end"],
    "retry": Q["job_finish_retry"],
    "hand_back": Q["job_finish_hand_back"],
}


def path_of(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs.db`` -> ``/abs.db``; ``:memory:``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ValueError(f"not a sqlite URL: {url!r}")
    path = unquote(parts.path)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(
            f"sqlite URL {url!r} must have no host: sqlite:///relative or ////absolute"
        )
    path = path[1:] if path.startswith("/") else path
    if not path:
        raise ValueError(f"sqlite URL {url!r} names no file: write sqlite:///hydrapool.db")
    return path


def _schedule(row: sqlite3.Row) -> ScheduleRecord:
    names = row.keys()
    return ScheduleRecord(**{k: row[k] for k in names})


def _record(row: sqlite3.Row) -> JobRecord:
    names = row.keys()  # a Row iterates over its values, not its column names
    values = {k: row[k] for k in names if k in JobRecord.__dataclass_fields__}
    values["cancel_requested"] = bool(values.get("cancel_requested"))
    return JobRecord(**values)


def _wal(conn: sqlite3.Connection) -> None:
    """Switch a new file to WAL. The switch needs the file to itself and SQLite may
    refuse it at once (no busy wait) while another process is creating the schema,
    so try again for up to 10 s."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class SqliteBackend:
    """The SQLite backend (see the module docstring)."""

    def __init__(self, url: str, *, poll_interval: float = 0.005) -> None:
        self.url = url
        self.path = path_of(url)
        self.poll_interval = poll_interval
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._wakers: dict[str, asyncio.Event] = {}
        self._event_waker = asyncio.Event()  # set when this process stored events
        self._stored_events = False  # set on the connection thread, read after each call
        self._opened = False
        self._opening = asyncio.Lock()
        self._claimed_version: int | None = None
        # Queue -> when its next channel pause ends, as the last claim that found
        # nothing saw it: work_wait wakes then (nobody commits when a pause ends).
        self._resume: dict[str, float | None] = {}
        self._limit_watchers = limiter.Watchers(self.path)
        self._limit_steps = limiter.Steps(self._run, self._limit_watchers)

    # ── the connection thread ──────────────────────────────────────────────
    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._opened:
            await self.open()
        assert self._executor is not None
        result = await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)
        if self._stored_events:  # wake this process's event streams at once
            self._stored_events = False
            self._event_waker.set()
            self._event_waker = asyncio.Event()  # the waiters of that one are all woken
        return result

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._conn is not None
        return fn(self._conn)

    def _connect(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=10000")
        _wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        self._conn = conn
        self._migrate(conn)

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[float]:
        """A write transaction; yields the time read *after* the write lock was taken.

        Reading the clock before ``BEGIN IMMEDIATE`` would date a claim from
        before a wait for the lock, handing out a lease already partly spent.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield time.time()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self, conn: sqlite3.Connection) -> list[str]:
        applied: list[str] = []
        with self._write(conn):
            conn.execute(Q["migrations_create"])
            done = {row[0] for row in conn.execute(Q["migrations_applied"])}
            for version, name, sql in migrations(__package__ or "hydrapool.backends.sqlite"):
                if version in done:
                    continue
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    Q["migration_record"], {"version": version, "name": name, "now": time.time()}
                )
                applied.append(name)
        return applied

    async def open(self) -> None:
        """Open the file (creating it and its schema if needed); safe to call concurrently."""
        async with self._opening:
            if self._opened:
                return
            executor = ThreadPoolExecutor(1, thread_name_prefix="hydrapool-sqlite")
            try:
                await asyncio.get_running_loop().run_in_executor(executor, self._connect)
            except BaseException:
                executor.shutdown(wait=False)
                raise
            self._executor = executor
            self._opened = True

    async def close(self) -> None:
        """Close the connection and its thread."""
        if not self._opened:
            return
        await self._limit_steps.stop()
        self._limit_watchers.stop()
        self._opened = False
        assert self._executor is not None
        conn = self._conn
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)
        self._executor = None
        self._conn = None

    async def migrate(self) -> list[str]:
        """Apply pending migrations (opening applies them too)."""
        return await self._run(self._migrate)

    async def now(self) -> float:
        """``time.time()``: one machine, one clock."""
        return time.time()

    # ── jobs ───────────────────────────────────────────────────────────────
    async def job_insert_many(
        self, queue: str, jobs: Sequence[NewJob], *, emit: Emit[list[JobRecord]] | None = None
    ) -> list[JobRecord]:
        """Insert all in one transaction; a job into a full channel is stored ``dropped``."""
        return await self._run(lambda conn: self._insert(conn, queue, jobs, emit))

    def _insert(
        self,
        conn: sqlite3.Connection,
        queue: str,
        jobs: Sequence[NewJob],
        emit: Emit[list[JobRecord]] | None,
    ) -> list[JobRecord]:
        with self._write(conn) as now:
            records = self._insert_in(conn, queue, jobs, now)
            self._emit(conn, queue, emit, records, now)
            return records

    @staticmethod
    def _dedup_twin(conn: sqlite3.Connection, queue: str, new: NewJob) -> JobRecord | None:
        if new.dedup_key is None:
            return None
        row = conn.execute(
            Q["job_dedup_find"],
            {"queue": queue, "channel": new.channel, "dedup_key": new.dedup_key},
        ).fetchone()
        return None if row is None else _record(row)

    @staticmethod
    def _resolve(
        conn: sqlite3.Connection, queue: str, ended: list[tuple[str, str]], now: float
    ) -> list[Change]:
        """Tell the children of jobs that just ended: release them, or fail them in cascade.

        One query per cascade level for the whole batch, so finishing jobs that
        have no children (the common case) costs a single indexed lookup.
        """
        changes: list[Change] = []
        level = dict(ended)  # job id -> how it ended
        while level:
            parents = json.dumps(list(level))
            rows = conn.execute(Q["dep_children"], {"queue": queue, "parents": parents}).fetchall()
            nxt: dict[str, str] = {}
            for parent, child, cascade, channel, task, attempts, old in rows:
                state = level[parent]
                change = Change(child, channel, task, attempts, old, old, parent, state)
                if state == "succeeded" or not cascade:
                    params = {"queue": queue, "id": child, "now": now}
                    row = conn.execute(Q["dep_release"], params).fetchone()
                    if row is not None:  # None: another parent of this batch failed it
                        changes.append(replace(change, new=row[0]))
                    continue
                error = f"dependency {parent} ended {state}"
                params = {"queue": queue, "id": child, "now": now, "error": error}
                if conn.execute(Q["dep_fail"], params).rowcount:
                    nxt[child] = "failed"
                    changes.append(replace(change, new="failed", error=error))
            conn.execute(Q["dep_forget"], {"queue": queue, "parents": parents})
            level = nxt
        return changes

    @staticmethod
    def _parents(conn: sqlite3.Connection, queue: str, new: NewJob) -> Parents:
        """The parents still to wait for, and the first that ended without success."""
        states = {}
        for parent in new.depends_on:
            row = conn.execute(Q["dep_parent_state"], {"queue": queue, "id": parent}).fetchone()
            states[parent] = None if row is None else (row["state"], row["started_at"])
        return parents_of(queue, new, states)

    def _insert_in(
        self, conn: sqlite3.Connection, queue: str, jobs: Sequence[NewJob], now: float
    ) -> list[JobRecord]:
        """Insert inside an open write transaction."""
        out = []
        sizes: dict[str, tuple[int, int | None]] = {}
        alias: dict[str, str] = {}  # a new id that was deduplicated -> its twin's id
        for new in jobs:
            new = with_aliases(new, alias)
            twin = self._dedup_twin(conn, queue, new)
            if twin is not None:
                alias[new.id] = twin.id
                out.append(replace(twin, deduplicated=True))
                continue
            parents = self._parents(conn, queue, new)
            if new.channel not in sizes:
                conn.execute(Q["channel_touch"], {"queue": queue, "channel": new.channel})
                policy = conn.execute(
                    Q["channel_policy_get"], {"queue": queue, "channel": new.channel}
                ).fetchone()
                size = conn.execute(
                    Q["channel_size"], {"queue": queue, "channel": new.channel}
                ).fetchone()[0]
                sizes[new.channel] = (size, policy["max_size"] if policy else None)
            size, max_size = sizes[new.channel]
            full = max_size is not None and size >= max_size
            run_at = new.run_at if new.run_at is not None else now + new.delay
            state = initial_state(full, run_at, now, parents)
            if not full:
                sizes[new.channel] = (size + 1, max_size)
            record = JobRecord.new(queue, new, state, now, run_at, parents.doomed)
            params = {
                "id": new.id,
                "queue": queue,
                "task": new.task,
                "channel": new.channel,
                "state": state,
                "priority": new.priority,
                "max_attempts": new.max_attempts,
                "payload": new.payload,
                "now": now,
                "run_at": run_at,
                "finished_at": record.finished_at,
                "error": record.error,
                "max_processing": new.max_processing,
                "dedup_key": new.dedup_key,
                "parents_left": len(parents.waiting_for),
                "cascade": int(new.cascade),
            }
            try:
                conn.execute(Q["job_insert"], params)
            except sqlite3.IntegrityError:
                # Another connection's transaction stored the same dedup key meanwhile.
                twin = self._dedup_twin(conn, queue, new)
                if twin is None:
                    raise
                out.append(replace(twin, deduplicated=True))
                continue
            if state not in ("dropped", "failed"):
                for parent in parents.waiting_for:
                    edge = {"queue": queue, "parent": parent, "child": new.id}
                    conn.execute(Q["dep_insert"], edge)
            out.append(record)
        return out

    def job_insert_in_transaction(
        self,
        conn: sqlite3.Connection,
        queue: str,
        jobs: Sequence[NewJob],
        *,
        emit: Emit[list[JobRecord]] | None = None,
    ) -> list[JobRecord]:
        """Insert with the *caller's* connection, inside the caller's transaction.

        Nothing is committed here: the jobs (and their events) exist once the
        caller commits, and a rollback leaves none (DESIGN.md invariant 8).
        """
        if not isinstance(conn, sqlite3.Connection):
            raise TypeError(f"a SQLite queue takes a sqlite3.Connection, got {conn!r}")
        if conn.isolation_level is None and not conn.in_transaction:
            raise ValueError(
                "the connection is in autocommit mode with no open transaction: each "
                "statement would commit at once; run BEGIN first (or use the default "
                "isolation level)"
            )
        saved = conn.row_factory, conn.text_factory
        conn.row_factory, conn.text_factory = sqlite3.Row, str
        try:
            now = time.time()
            records = self._insert_in(conn, queue, jobs, now)
            if emit is not None:  # not through _emit: nothing is stored until the caller commits
                emit.stored = self._store_events(conn, queue, emit.make(records), now)
            return records
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise ValueError(
                    "this connection's database has no hydrapool tables: connect to the "
                    f"queue's own file ({self.path!r}) and open the queue once first"
                ) from None
            raise
        finally:
            conn.row_factory, conn.text_factory = saved

    async def job_claim(
        self, params: ClaimParams, *, emit: Emit[list[Claim]] | None = None
    ) -> list[Claim]:
        """Claim due jobs within the channel and queue limits, in one transaction."""
        return await self._run(lambda conn: self._claim(conn, params, emit))

    def _claim(
        self, conn: sqlite3.Connection, params: ClaimParams, emit: Emit[list[Claim]] | None
    ) -> list[Claim]:
        q = {"queue": params.queue}
        with self._write(conn) as now:
            # What this claim saw: work_wait wakes on any commit after it.
            self._claimed_version = _data_version(conn)
            limits = conn.execute(Q["queue_get"], q).fetchone()
            counter = limits["counter"] if limits else 0
            slots = self._queue_slots(conn, params, limits, now)
            if slots <= 0:
                return []
            was: dict[str, str] = {}
            rated: set[str] = set()  # candidate channels with a rate
            candidates = self._candidates(conn, params, now, slots, was, rated)
            chosen, served, counter = pick(candidates, slots, counter)
            if not chosen:
                self._resume[params.queue] = conn.execute(
                    Q["pause_next"], {**q, "now": now}
                ).fetchone()[0]
                return []
            # One lease token for the batch: the (job id, token) pair is what fences.
            token = uuid.uuid4().hex
            expires = now + params.lease
            rows = conn.execute(
                Q["job_claim"],
                {
                    **q,
                    "ids": json.dumps([job_id for _, job_id in chosen]),
                    "now": now,
                    "lease": token,
                    "expires": expires,
                    "worker": params.worker,
                },
            ).fetchall()
            by_id = {row["id"]: row for row in rows}
            claims = [
                Claim(_record(by_id[job_id]), token, expires, was[job_id])
                for _, job_id in chosen
                if job_id in by_id
            ]
            for channel, mark in served.items():
                conn.execute(Q["channel_served"], {**q, "channel": channel, "mark": mark})
            conn.execute(Q["queue_counter_set"], {**q, "counter": counter})
            queue_rated = limits is not None and limits["rate_n"] is not None
            if rated or queue_rated:
                _log_starts(conn, params.queue, claims, rated, queue_rated, now)
            self._emit(conn, params.queue, emit, claims, now)
            return claims

    @staticmethod
    def _queue_slots(
        conn: sqlite3.Connection, params: ClaimParams, limits: sqlite3.Row | None, now: float
    ) -> int:
        """How many jobs the queue's max_concurrency and rate let this claim take."""
        slots = params.limit
        if limits is None:
            return slots
        if limits["max_concurrency"] is not None:
            running = conn.execute(Q["queue_running"], {"queue": params.queue}).fetchone()[0]
            slots = min(slots, limits["max_concurrency"] - running)
        if slots > 0 and limits["rate_n"] is not None:
            room = _room(conn, params.queue, "", limits["rate_n"], limits["rate_per"], now)
            slots = min(slots, room)
        return slots

    def _candidates(
        self,
        conn: sqlite3.Connection,
        params: ClaimParams,
        now: float,
        slots: int,
        was: dict[str, str],
        rated: set[str],
    ) -> list[Candidates]:
        q = {"queue": params.queue}
        running = dict(conn.execute(Q["channel_running"], q).fetchall())
        wanted = None if params.channels is None else set(params.channels)
        out = []
        # Paused channels are not listed (channel_meta).
        for meta in conn.execute(Q["channel_meta"], {**q, "now": now}).fetchall():
            channel = meta["channel"]
            if wanted is not None and channel not in wanted:
                continue
            limit = meta["max_concurrency"]
            capacity = None if limit is None else limit - running.get(channel, 0)
            if meta["rate_n"] is not None and (capacity is None or capacity > 0):
                rated.add(channel)
                room = _room(conn, params.queue, channel, meta["rate_n"], meta["rate_per"], now)
                capacity = room if capacity is None else min(capacity, room)
            if capacity is not None and capacity <= 0:
                continue
            take = slots if capacity is None else min(slots, capacity)
            rows = conn.execute(
                Q["claim_heads"], {**q, "channel": channel, "now": now, "limit": take}
            ).fetchall()
            if rows:
                jobs = [(row["priority"], row["id"]) for row in rows]
                was.update((row["id"], row["state"]) for row in rows)
                out.append(Candidates(channel, meta["last_served"], capacity, jobs))
        return out

    async def job_heartbeat_many(
        self, queue: str, leases: Mapping[str, str], lease: float
    ) -> Heartbeat:
        """Extend the leases still ours and unexpired."""
        return await self._run(lambda conn: self._heartbeat(conn, queue, leases, lease))

    def _heartbeat(
        self, conn: sqlite3.Connection, queue: str, leases: Mapping[str, str], lease: float
    ) -> Heartbeat:
        kept, cancel = set(), set()
        with self._write(conn) as now:
            for job_id, token in leases.items():
                row = conn.execute(
                    Q["job_heartbeat"],
                    {
                        "queue": queue,
                        "id": job_id,
                        "lease": token,
                        "now": now,
                        "expires": now + lease,
                    },
                ).fetchone()
                if row is not None:
                    kept.add(row["id"])
                    if row["cancel_requested"]:
                        cancel.add(row["id"])
        return Heartbeat(frozenset(kept), frozenset(cancel))

    async def job_finish_many(
        self, queue: str, finishes: Sequence[Finish], *, emit: Emit[FinishResult] | None = None
    ) -> FinishResult:
        """Apply each decision where its lease still matches, in one transaction."""
        return await self._run(lambda conn: self._finish(conn, queue, finishes, emit))

    def _finish(
        self,
        conn: sqlite3.Connection,
        queue: str,
        finishes: Sequence[Finish],
        emit: Emit[FinishResult] | None,
    ) -> FinishResult:
        groups = _finish_groups(finishes)
        # Hand-backs that pause their channel (hp.RetryAfter): job id -> seconds.
        pauses = {f.job_id: f.pause for f in finishes if f.state == "queued" and f.pause > 0}
        applied: dict[str, str] = {}
        with self._write(conn) as now:
            for kind, batch in groups.items():
                if batch:
                    rows = conn.execute(
                        _FINISH_SQL[kind],
                        {"queue": queue, "now": now, "batch": json.dumps(batch)},
                    ).fetchall()
                    applied.update((row[0], row[1]) for row in rows)
                    if kind == "hand_back" and pauses:  # only those applied (fenced)
                        _pause(conn, queue, rows, pauses, now)
            ended = [(job_id, state) for job_id, state in applied.items() if state in _TERMINAL]
            changes = self._resolve(conn, queue, ended, now)
            # One statement per kind of outcome; a worker reports a job once per claim.
            result = FinishResult([applied.get(f.job_id) for f in finishes], changes)
            self._emit(conn, queue, emit, result, now)
        return result

    async def job_cancel(
        self, queue: str, job_id: str, *, emit: Emit[CancelResult] | None = None
    ) -> CancelResult:
        """Cancel a job not yet running; flag a running one."""

        def cancel(conn: sqlite3.Connection) -> CancelResult:
            changes: list[Change] = []
            with self._write(conn) as now:
                params = {"queue": queue, "id": job_id, "now": now}
                ended = conn.execute(Q["job_cancel_waiting"], params).rowcount == 1
                if ended:
                    changes = self._resolve(conn, queue, [(job_id, "cancelled")], now)
                else:
                    conn.execute(Q["job_cancel_running"], params)
                row = conn.execute(Q["job_get"], params).fetchone()
                result = CancelResult(None if row is None else _record(row), ended, changes)
                self._emit(conn, queue, emit, result, now)
            return result

        return await self._run(cancel)

    async def job_get(self, queue: str, job_id: str) -> JobRecord | None:
        """One job, or None."""

        def get(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(Q["job_get"], {"queue": queue, "id": job_id}).fetchone()
            return None if row is None else _record(row)

        return await self._run(get)

    async def job_list(
        self, queue: str, *, state: str | None, channel: str | None, limit: int
    ) -> list[JobRecord]:
        """Newest first."""
        params = {"queue": queue, "state": state, "channel": channel, "limit": limit}
        return await self._run(
            lambda conn: [_record(r) for r in conn.execute(Q["job_list"], params)]
        )

    async def job_expired(self, queue: str, limit: int) -> list[JobRecord]:
        """Running jobs past their lease or max_processing (the latter get an expired lease)."""

        def expired(conn: sqlite3.Connection) -> list[JobRecord]:
            with self._write(conn) as now:
                rows = conn.execute(
                    Q["job_expired"], {"queue": queue, "now": now, "limit": limit}
                ).fetchall()
                for row in rows:
                    conn.execute(
                        Q["job_expire_lease"], {"queue": queue, "id": row["id"], "now": now}
                    )
                rows = [
                    conn.execute(Q["job_get"], {"queue": queue, "id": r["id"]}).fetchone()
                    for r in rows
                ]
            return [_record(r) for r in rows if r is not None]

        return await self._run(expired)

    async def job_release_due(
        self, queue: str, *, emit: Emit[list[Change]] | None = None
    ) -> list[Change]:
        """waiting/retrying -> queued once due (and no parent is left to wait for)."""

        def release(conn: sqlite3.Connection) -> list[Change]:
            moved = []
            with self._write(conn) as now:
                for old in ("waiting", "retrying"):
                    params = {"queue": queue, "now": now, "state": old}
                    for job_id, channel, task, attempts in conn.execute(
                        Q["job_release_due"], params
                    ).fetchall():
                        moved.append(Change(job_id, channel, task, attempts, old, "queued"))
                self._emit(conn, queue, emit, moved, now)
            return moved

        return await self._run(release)

    async def job_delete_finished(
        self,
        queue: str,
        older_than: float,
        *,
        state: str | None = None,
        emit: Emit[list[Change]] | None = None,
    ) -> list[Change]:
        """Delete jobs that ended long enough ago (of one state, if given)."""

        def delete(conn: sqlite3.Connection) -> list[Change]:
            with self._write(conn) as now:
                rows = conn.execute(
                    Q["job_delete_finished"],
                    {"queue": queue, "cutoff": now - older_than, "state": state},
                ).fetchall()
                conn.execute(Q["channel_prune"], {"queue": queue, "now": now})
                deleted = [Change(i, c, t, a, old, "deleted") for i, c, t, a, old in rows]
                self._emit(conn, queue, emit, deleted, now)
            return deleted

        return await self._run(delete)

    async def pool_stats(self, queue: str) -> PoolSnapshot:
        """Counts by state and channel, running jobs, limits."""

        def stats(conn: sqlite3.Connection) -> PoolSnapshot:
            q = {"queue": queue}
            counts: dict[str, int] = {}
            channels: dict[str, dict[str, int]] = {}
            for channel, state, n in conn.execute(Q["stats_counts"], q):
                counts[state] = counts.get(state, 0) + n
                channels.setdefault(channel, {})[state] = n
            running = [_record(r) for r in conn.execute(Q["stats_running"], q)]
            limits = conn.execute(Q["queue_get"], q).fetchone()
            policies = {
                r["channel"]: ChannelPolicy(r["max_concurrency"], r["max_size"], _rate(r))
                for r in conn.execute(Q["stats_policies"], q)
            }
            paused = dict(conn.execute(Q["stats_paused"], {**q, "now": time.time()}).fetchall())
            if limits is None:
                return PoolSnapshot(counts, channels, running, None, policies, None, paused)
            cap, rate = limits["max_concurrency"], _rate(limits)
            return PoolSnapshot(counts, channels, running, cap, policies, rate, paused)

        return await self._run(stats)

    async def channel_policy_set(self, queue: str, channel: str, policy: ChannelPolicy) -> None:
        """Set a channel's limits."""
        params = {
            "queue": queue,
            "channel": channel,
            "max_concurrency": policy.max_concurrency,
            "max_size": policy.max_size,
            **_rate_params(policy.rate),
        }
        await self._write_one(Q["channel_policy_set"], params)

    async def channel_policy_clear(self, queue: str, channel: str) -> None:
        """Remove a channel's limits."""
        await self._write_one(Q["channel_policy_clear"], {"queue": queue, "channel": channel})

    async def queue_limits_set(
        self, queue: str, max_concurrency: int | None, rate: tuple[int, float] | None = None
    ) -> None:
        """Cap the queue: jobs running at once, and starts per window."""
        params = {"queue": queue, "max_concurrency": max_concurrency, **_rate_params(rate)}
        await self._write_one(Q["queue_limits_set"], params)

    async def _write_one(self, sql: str, params: dict[str, Any]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                conn.execute(sql, params)

        await self._run(write)

    # ── schedules ──────────────────────────────────────────────────────────
    async def schedule_upsert(self, record: ScheduleRecord) -> None:
        """Create or replace a schedule."""
        params = {f: getattr(record, f) for f in ScheduleRecord.__dataclass_fields__}
        params["now"] = time.time()
        params.pop("created_at")
        await self._write_one(Q["schedule_upsert"], params)

    async def schedule_delete(self, queue: str, channel: str, name: str) -> bool:
        """Remove a schedule."""

        def delete(conn: sqlite3.Connection) -> bool:
            with self._write(conn):
                params = {"queue": queue, "channel": channel, "name": name}
                return conn.execute(Q["schedule_delete"], params).rowcount == 1

        return await self._run(delete)

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Every schedule of the queue."""
        return await self._run(
            lambda conn: [_schedule(r) for r in conn.execute(Q["schedule_list"], {"queue": queue})]
        )

    async def schedule_due(self, queue: str, limit: int) -> list[ScheduleRecord]:
        """Schedules whose next run has come."""
        params = {"queue": queue, "now": time.time(), "limit": limit}
        return await self._run(
            lambda conn: [_schedule(r) for r in conn.execute(Q["schedule_due"], params)]
        )

    async def schedule_fire(
        self,
        record: ScheduleRecord,
        next_run: float,
        job: NewJob,
        *,
        emit: Emit[JobRecord | None] | None = None,
    ) -> JobRecord | None:
        """Advance the schedule and insert its job, in one transaction."""

        def fire(conn: sqlite3.Connection) -> JobRecord | None:
            with self._write(conn) as now:
                moved = conn.execute(
                    Q["schedule_advance"],
                    {
                        "queue": record.queue,
                        "channel": record.channel,
                        "name": record.name,
                        "old_next_run": record.next_run,
                        "new_next_run": next_run,
                    },
                ).rowcount
                if moved != 1:
                    return None
                inserted = self._insert_in(conn, record.queue, [job], now)[0]
                self._emit(conn, record.queue, emit, inserted, now)
                return inserted

        return await self._run(fire)

    async def leader_try(self, queue: str, name: str, owner: str, ttl: float) -> bool:
        """Take or renew a named lease."""

        def take(conn: sqlite3.Connection) -> bool:
            with self._write(conn) as now:
                params = {"queue": queue, "name": name, "owner": owner, "now": now, "ttl": ttl}
                return conn.execute(Q["leader_try"], params).fetchone() is not None

        return await self._run(take)

    # ── events ─────────────────────────────────────────────────────────────
    def _emit(
        self, conn: sqlite3.Connection, queue: str, emit: Emit[T] | None, result: T, now: float
    ) -> None:
        """Store the core's events for a step inside its (still open) transaction."""
        if emit is not None:
            events = emit.make(result)
            if events:
                emit.stored = self._store_events(conn, queue, events, now)
                self._stored_events = True

    @staticmethod
    def _store_events(
        conn: sqlite3.Connection, queue: str, events: Sequence[Event], now: float
    ) -> list[Event]:
        conn.executemany(
            Q["event_insert"],
            [
                (
                    queue,
                    e.type.value,
                    e.job_id,
                    e.channel,
                    e.task,
                    e.attempt,
                    now,
                    e.worker_id,
                    e.error,
                    e.detail,
                )
                for e in events
            ],
        )
        # Inside the write transaction seqs are consecutive, ending at the last rowid.
        last = conn.execute(Q["event_last_rowid"]).fetchone()[0]
        return stamp(events, last - len(events) + 1, now)

    async def event_read(self, queue: str, after: int, limit: int) -> list[Event]:
        """Events after ``after``, oldest first."""
        params = {"queue": queue, "after": after, "limit": limit}
        return await self._run(
            lambda conn: [_event(r) for r in conn.execute(Q["event_read"], params)]
        )

    async def event_last(self, queue: str) -> int:
        """The newest event's number."""
        return await self._run(
            lambda conn: int(conn.execute(Q["event_last"], {"queue": queue}).fetchone()[0])
        )

    async def event_since(self, queue: str, time: float) -> int:
        """The newest event's number stored before ``time`` (0 if none)."""
        params = {"time": time}
        return await self._run(
            lambda conn: int(conn.execute(Q["event_since"], params).fetchone()[0])
        )

    async def event_wait(self, queue: str, after: int, timeout: float) -> None:
        """Return when this process stores events, another commits anything, or the timeout."""
        waker = self._event_waker

        def look(conn: sqlite3.Connection) -> tuple[int, int]:
            # The version first: a commit after it wakes the loop below.
            version = _data_version(conn)
            return version, int(conn.execute(Q["event_last"], {"queue": queue}).fetchone()[0])

        seen, last = await self._run(look)
        if last > after:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(waker.wait(), min(remaining, self.poll_interval))
                return
            except TimeoutError:
                pass
            if await self._run(_data_version) != seen:
                return

    async def event_trim(self, queue: str, older_than: float) -> int:
        """Delete events older than ``older_than`` seconds."""

        def trim(conn: sqlite3.Connection) -> int:
            with self._write(conn) as now:
                params = {"queue": queue, "cutoff": now - older_than}
                return int(conn.execute(Q["event_trim"], params).rowcount)

        return await self._run(trim)

    # ── wake-ups ───────────────────────────────────────────────────────────
    async def work_wait(self, queue: str, timeout: float) -> None:
        """Return on a local enqueue, a commit by another process, the end of a channel
        pause the last empty claim saw, or the timeout."""
        event = self._wakers.setdefault(queue, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        resume = self._resume.get(queue)
        if resume is not None and resume > time.time():  # a paused channel may claim then
            deadline = min(deadline, loop.time() + resume - time.time() + 0.001)
        seen = self._claimed_version
        if seen is None:
            seen = await self._run(_data_version)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(event.wait(), min(remaining, self.poll_interval))
                event.clear()
                return
            except TimeoutError:
                pass
            if await self._run(_data_version) != seen:
                return

    def work_notify(self, queue: str) -> None:
        """Wake this process's waiters at once."""
        event = self._wakers.get(queue)
        if event is not None:
            event.set()

    # ── the Limiter (sqlite/limiter.py: the steps of _limits on stored rows) ─
    limiter_poll = 0.5
    """Other processes' commits reach waiters within a few milliseconds (the checker
    of limiter.Watchers); this re-check only finds holders that died (their lease
    ended, nobody released) and costs the first waiter one small write each time."""

    async def limiter_acquire(
        self, spec: LimitSpec, ticket: str, weight: int, wait: bool
    ) -> LimitTurn:
        """Settle, join or keep the ticket's place, promote: one step (see limiter.Steps);
        none when another step or the wake-up check found the ticket's grant already
        (limiter.Watchers.offer)."""
        read_first, turn = self._limit_watchers.joining(ticket, spec, weight)
        if turn is None:
            turn = await self._limit_steps.step(
                spec,
                lambda conn, loaded, now: limiter.acquire(
                    conn, loaded, now, spec, ticket, weight, wait
                ),
                ticket,
                read_first=read_first,
            )
        self._limit_watchers.saw(ticket, turn)
        return turn

    async def limiter_renew(self, spec: LimitSpec, tokens: Sequence[int]) -> list[bool]:
        """Extend the live grants: one step."""
        return await self._limit_steps.step(
            spec, lambda _, loaded, now: _limits.renew(loaded.state, spec, tokens, now), urgent=True
        )

    async def limiter_release(self, spec: LimitSpec, token: int) -> tuple[bool, tuple[str, ...]]:
        """End a live grant (fenced), settle: one step."""
        done, woken = await self._limit_steps.step(
            spec,
            lambda _, loaded, now: _limits.release(loaded.state, spec, token, now),
            urgent=True,
        )
        return done, tuple(woken)

    async def limiter_cancel(self, spec: LimitSpec, ticket: str) -> tuple[str, ...]:
        """Leave the line, or give back a grant that came meanwhile: one step."""
        woken = await self._limit_steps.step(
            spec,
            lambda _, loaded, now: _limits.cancel(loaded.state, spec, ticket, now),
            ticket,
            urgent=True,
        )
        return tuple(woken)

    async def limiter_stats(self, spec: LimitSpec) -> LimitStats:
        """Counts now, read only (one read transaction; nothing is written back)."""
        return await self._run(lambda conn: limiter.stats(conn, spec))

    def limiter_watch(self, ticket: str) -> asyncio.Event:
        """The ticket's event (other processes' commits reach it through the checker)."""
        return self._limit_watchers.watch(ticket)

    def limiter_unwatch(self, ticket: str) -> None:
        """Forget the ticket's event."""
        self._limit_watchers.unwatch(ticket)

    def limiter_woken(self, spec: LimitSpec, tickets: Sequence[str]) -> None:
        """Wake those of ``tickets`` watched here (or by another backend of this process on
        the same file); other processes' checkers see the commit."""
        self._limit_watchers.wake(tickets)


def _event(row: sqlite3.Row) -> Event:
    return Event(
        EventType(row["type"]),
        row["job_id"],
        row["queue"],
        row["channel"],
        row["task"],
        row["attempt"],
        row["at"],
        row["worker"],
        row["error"],
        row["detail"],
        row["seq"],
    )


def _finish_groups(finishes: Sequence[Finish]) -> dict[str, list[dict[str, Any]]]:
    """The finishes by statement (see _FINISH_SQL), as each one's JSON batch rows."""
    groups: dict[str, list[dict[str, Any]]] = {"end": [], "retry": [], "hand_back": []}
    for f in finishes:
        if f.state in _TERMINAL:
            kind = "end"
        elif f.state == "retrying":
            kind = "retry"
        elif f.state == "queued":
            kind = "hand_back"
        else:
            raise ValueError(f"cannot finish a job as {f.state!r}")
        groups[kind].append(
            {
                "id": f.job_id,
                "lease": f.lease,
                "state": f.state,
                "result": f.result,
                "error": f.error,
                "delay": f.delay,
                "expired": int(f.expired),
            }
        )
    return groups


def _room(
    conn: sqlite3.Connection, queue: str, channel: str, n: int, per: float, now: float
) -> int:
    """Starts a rate (n per ``per`` seconds) still allows now; drops what left its window.
    Channel '': the queue's rate."""
    params = {"queue": queue, "channel": channel}
    conn.execute(Q["rate_prune"], {**params, "cutoff": now - per})
    return n - int(conn.execute(Q["rate_count"], params).fetchone()[0])


def _log_starts(
    conn: sqlite3.Connection,
    queue: str,
    claims: Sequence[Claim],
    rated: set[str],
    queue_rated: bool,
    now: float,
) -> None:
    """Count this step's claims in the logs of the rates they fall under."""
    counts: dict[str, int] = {}
    for claim in claims:
        if claim.job.channel in rated:
            counts[claim.job.channel] = counts.get(claim.job.channel, 0) + 1
    if queue_rated and claims:
        counts[""] = len(claims)
    conn.executemany(Q["rate_log"], [(queue, c, now, n) for c, n in counts.items()])


def _pause(
    conn: sqlite3.Connection,
    queue: str,
    rows: Sequence[sqlite3.Row],
    pauses: Mapping[str, float],
    now: float,
) -> None:
    """Pause the channels of the applied hand-backs (``rows``: id, state, channel) that
    asked for it, each until that long from now unless it is paused longer already."""
    conn.executemany(
        Q["channel_pause"],
        [
            {"queue": queue, "channel": row[2], "until": now + pauses[row[0]]}
            for row in rows
            if row[0] in pauses
        ],
    )


def _rate(row: sqlite3.Row) -> tuple[int, float] | None:
    """A stored rate (columns rate_n, rate_per) as (n, per seconds), or None."""
    if row["rate_n"] is None:
        return None
    return int(row["rate_n"]), float(row["rate_per"])


def _rate_params(rate: tuple[int, float] | None) -> dict[str, Any]:
    """A rate as the columns rate_n, rate_per store it."""
    if rate is None:
        return {"rate_n": None, "rate_per": None}
    return {"rate_n": rate[0], "rate_per": float(rate[1])}


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute(Q["data_version"]).fetchone()[0])


def _statements(sql: str) -> list[str]:
    """Split a migration file into statements (semicolons in comments and strings are fine)."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        not x.strip() or x.strip().startswith("--") for x in buffer.splitlines()
    ):
        raise ValueError(f"migration ends with an incomplete statement: {buffer.strip()[:80]!r}")
    return statements
