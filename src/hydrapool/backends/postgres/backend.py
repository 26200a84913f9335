"""postgresql:// — many processes on many machines, one PostgreSQL.

psycopg 3, async, with a connection pool. Each step is one transaction: a
claim and the common enqueue are one call to a function of the schema (one
round trip, commit included); other steps are sent in pipeline mode and cost
two (the step, then its events with the commit), however many jobs they cover.

- Limits hold under any number of claimers: claims of one queue take turns
  on a transaction-scoped advisory lock and count running jobs in a snapshot
  taken after it, then pick and lock jobs with ``FOR UPDATE SKIP LOCKED``.
- Wake-ups are pushed: enqueues, releases, finishes that put a job back or
  may free a place under a limit ``NOTIFY`` at commit
  and one listening connection per backend wakes idle workers and event
  streams at once. While that connection is down, waits fall back to polling
  every ``poll_interval`` seconds and it reconnects with back-off.
- Events are numbered per queue under a row lock held to commit, so seqs
  become visible in order and a subscriber's cursor never skips one.
- Times are the server's clock (``clock_timestamp()``), so hosts agree.
- Rates (job starts per window, a channel's and the queue's) are enforced by
  the claim function from a log of its claims, kept only for what has a rate;
  a hand-back with a pause (``hp.RetryAfter``) pauses its channel for every
  claim (tables ``starts`` and ``pauses``, see 0003_rates.sql).
- The Limiter's steps are functions of the schema (one call, one round trip
  each) that lock the limiter key's row, so the steps of one key take turns;
  a step notifies the waiters it promotes, with their grants, on their
  process's channel (see _limiter.py).

The URL takes ``?schema=name`` (default ``hydrapool``): every table lives in
that schema, so several hydrapools share a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql as pgsql
from psycopg_pool import AsyncConnectionPool

from hydrapool.backends._deps import initial_state, parents_of, with_aliases
from hydrapool.backends._sql import load_queries, migrations
from hydrapool.backends._wake import ClaimMarks
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
    NewJob,
    PoolSnapshot,
    ScheduleRecord,
    stamp,
)
from hydrapool.backends.postgres._db import AsyncPsycopg, Db, Pending, Row, adapt
from hydrapool.backends.postgres._limiter import LimiterSteps, channel_for
from hydrapool.exceptions import HydrapoolError
from hydrapool.queue.events import Event, EventType

__all__ = ["PostgresBackend", "SchemaError", "installation_sql", "schema_of"]

logger = logging.getLogger("hydrapool.postgres")

T = TypeVar("T")
DEFAULT_SCHEMA = "hydrapool"
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,49}")
_TERMINAL = ("succeeded", "failed", "cancelled", "dropped")
_COLS = [f for f in JobRecord.__dataclass_fields__ if f != "deduplicated"]
_MISSING: tuple[type[Exception], ...] = (
    psycopg.errors.InvalidSchemaName,
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
)
_RAW = load_queries(__package__ or "hydrapool.backends.postgres")
_MIGRATIONS = (__package__ or "hydrapool.backends.postgres") + ".migrations"


def schema_of(url: str) -> tuple[str, str]:
    """Split ``?schema=`` off a URL: ``(conninfo URL, schema)``; the schema is checked."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    rest = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    check_schema(schema)
    return urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote))), schema


def check_schema(schema: object) -> str:
    """A schema name: lower-case letters, digits and ``_``, not starting with a digit."""
    if not isinstance(schema, str) or not _SCHEMA.fullmatch(schema):
        raise ValueError(
            f"PostgreSQL schema {schema!r} is not allowed: use 1-50 characters of a-z, 0-9 "
            "and _, not starting with a digit"
        )
    return schema


def _queries(schema: str) -> dict[str, str]:
    quoted = f'"{schema}"'  # check_schema allows no character that needs escaping
    cols = ", ".join(_COLS)
    jcols = ", ".join(f"j.{c}" for c in _COLS)
    return {
        name: text.replace("{schema}", quoted).replace("{cols}", cols).replace("{jcols}", jcols)
        for name, text in _RAW.items()
    }


def installation_sql(schema: str = DEFAULT_SCHEMA) -> list[str]:
    """Every statement that installs the current schema, for your own migration tool.

    Run them in order, in one transaction. They also record the migrations as
    applied, so ``hydrapool migrate`` and ``Queue(...)`` later find nothing to do.
    """
    q = _queries(check_schema(schema))
    out = [q["schema_create"], q["migrations_create"]]
    for version, name, text in migrations(_MIGRATIONS):
        out.append(text.replace("{schema}", f'"{schema}"').strip())
        out.append(
            q["migration_installed"].replace("{version}", str(version)).replace("{name}", name)
        )
    return out


def _key(*parts: str) -> int:
    """A stable signed 64-bit advisory lock key."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _skew(conn: Any, clock_sql: str) -> float:
    """The server's clock minus this host's (best of three round trips)."""
    best: tuple[float, float] | None = None
    for _ in range(3):
        before = time.time()
        cursor = await conn.execute(clock_sql)
        server = float((await cursor.fetchone())[0])
        after = time.time()
        if best is None or after - before < best[0]:
            best = (after - before, server - (before + after) / 2)
    assert best is not None
    return best[1]


def _record(row: Row) -> JobRecord:
    return JobRecord(*row)


@dataclass(slots=True)
class _Later:
    """A step's events, stored in its transaction; numbered once it committed."""

    emit: Emit[Any]
    events: Sequence[Event]
    pending: Pending

    async def done(self) -> None:
        first, at = (await self.pending.fetch())[0]
        self.emit.stored = stamp(self.events, int(first), float(at))


@dataclass(slots=True)
class _Seen:
    """What an insert read before deciding each new job's fate."""

    now: float
    twins_looked: bool = False
    limits: dict[str, int] = field(default_factory=dict)  # capped channel -> max_size
    sizes: dict[str, int] = field(default_factory=dict)  # capped channel -> jobs waiting
    twins: dict[tuple[str, str], JobRecord] = field(default_factory=dict)
    states: dict[str, tuple[str, float | None] | None] = field(default_factory=dict)


class SchemaError(HydrapoolError, RuntimeError):
    """The schema is missing or behind, and this queue may not migrate it."""


class _Redo(Exception):
    """A concurrent enqueue stored a dedup key first: start the insert again."""


class PostgresBackend(LimiterSteps):
    """The PostgreSQL backend (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 1,
        max_connections: int = 10,
        poll_interval: float = 0.5,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self.conninfo, self.schema = schema_of(url)
        self.q = _queries(self.schema)
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.poll_interval = poll_interval
        self.auto_migrate = migrate
        self.work_channel = f"{self.schema}.work"
        self.event_channel = f"{self.schema}.events"
        self.limiter_channel = channel_for(self.schema)  # this process's (see _limiter.py)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._opened = False
        self._opening = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._notified: dict[str, int] = {}  # queue -> work notifications received
        # Per calling task (a worker's loop) and queue: _notified when its last claim began.
        self._claim_marks = ClaimMarks(f"{id(self):x}")
        self._work: dict[str, asyncio.Event] = {}
        self._event_seen: dict[str, int] = {}  # queue -> newest seq announced
        self._event_wakers: dict[str, asyncio.Event] = {}
        self._limiter_setup()
        self._skew = 0.0  # the server's clock minus this host's, measured on open

    # ── connections ────────────────────────────────────────────────────────
    async def open(self) -> None:
        """Connect, apply migrations (unless ``migrate=False``: then check), start listening."""
        async with self._opening:
            if self._opened:
                return
            # A first connection of its own: a bad URL or an unreachable server fails
            # here at once with the driver's own message (a pool would retry quietly).
            async with await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True
            ) as conn:
                if self.auto_migrate:
                    await self._migrate(conn)
                else:
                    await self._check_schema(conn)
                self._skew = await _skew(conn, self.q["clock"])
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self.conninfo,
                min_size=self.min_connections,
                max_size=self.max_connections,
                kwargs={"autocommit": True},
                configure=self._configure,
                open=False,
                name=f"hydrapool-{self.schema}",
            )
            try:
                await pool.open(wait=True, timeout=30)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            self._listener = asyncio.create_task(self._listen(), name="hydrapool-listen")
            with contextlib.suppress(TimeoutError):  # else: poll until it connects
                await asyncio.wait_for(self._listening.wait(), 10)
            self._opened = True

    async def _configure(self, conn: Any) -> None:
        """Each pooled connection: a step stalled mid-transaction (a frozen client) is
        ended by the server, so it cannot hold the queue's locks for ever."""
        await conn.execute(self.q["session_guard"])

    async def close(self) -> None:
        """Stop listening and close the pool."""
        async with self._opening:  # not in the middle of an open
            await self._close()

    async def _close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._listening.clear()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _ready(self) -> AsyncConnectionPool[Any]:
        if not self._opened:
            await self.open()
        assert self._pool is not None
        return self._pool

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Db]:
        """A pipelined transaction on a pooled connection."""
        pool = await self._ready()
        async with pool.connection() as conn, conn.pipeline(), conn.transaction():
            yield AsyncPsycopg(conn)

    async def _step(self, fn: Callable[[Db], Awaitable[tuple[T, _Later | None]]]) -> T:
        """Run ``fn`` in one transaction; number its events after the commit."""
        async with self._tx() as db:
            result, later = await fn(db)
        if later is not None:
            await later.done()
        return result

    async def _rows(self, name: str, params: Mapping[str, Any]) -> list[Row]:
        """One statement in its own transaction."""
        pool = await self._ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(self.q[name], params)
            return await cursor.fetchall() if cursor.description is not None else []

    # ── schema ─────────────────────────────────────────────────────────────
    async def _migrate(self, conn: Any) -> list[str]:
        applied = []
        async with conn.transaction():
            await conn.execute(self.q["migrate_lock"], {"key": _key("migrate", self.schema)})
            cursor = await conn.execute(self.q["schema_exists"], {"schema": f'"{self.schema}"'})
            if not (await cursor.fetchone())[0]:
                await conn.execute(self.q["schema_create"])
            await conn.execute(self.q["migrations_create"])
            cursor = await conn.execute(self.q["migrations_applied"])
            done = {row[0] for row in await cursor.fetchall()}
            for version, name, text in migrations(_MIGRATIONS):
                if version in done:
                    continue
                await conn.execute(text.replace("{schema}", f'"{self.schema}"'))
                await conn.execute(self.q["migration_record"], {"version": version, "name": name})
                applied.append(name)
        return applied

    async def _check_schema(self, conn: Any) -> None:
        table = f'"{self.schema}".migrations'
        cursor = await conn.execute(self.q["migrations_exists"], {"table": table})
        done: set[int] = set()
        if (await cursor.fetchone())[0]:
            cursor = await conn.execute(self.q["migrations_applied"])
            done = {row[0] for row in await cursor.fetchall()}
        missing = [name for version, name, _ in migrations(_MIGRATIONS) if version not in done]
        if missing:
            raise SchemaError(
                f"PostgreSQL schema {self.schema!r} lacks migrations {', '.join(missing)}: run "
                "`hydrapool migrate`, apply installation_sql(), or open the queue with "
                "migrate=True"
            )

    async def migrate(self) -> list[str]:
        """Apply pending migrations (one process at a time, under an advisory lock)."""
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            return await self._migrate(conn)

    async def now(self) -> float:
        """The server's clock."""
        return float((await self._rows("clock", {}))[0][0])

    # ── wake-ups ───────────────────────────────────────────────────────────
    async def _listen(self) -> None:
        """Follow NOTIFY on a dedicated connection; reconnect with back-off when it drops."""
        pause = 0.05
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                async with conn:
                    for channel in (self.work_channel, self.event_channel, self.limiter_channel):
                        await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
                    self._listening.set()
                    self._wake_everyone()  # anything sent while we were away
                    pause = 0.05
                    async for note in conn.notifies():
                        self._notice(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._listening.is_set():
                    logger.warning("lost the LISTEN connection (%s); reconnecting", exc)
            self._listening.clear()
            self._wake_everyone()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    def _notice(self, channel: str, payload: str) -> None:
        if channel == self.work_channel:
            self._wake_work(payload)
            return
        if channel == self.limiter_channel:
            self._limiter_heard(payload)
            return
        queue, _, seq = payload.rpartition(" ")
        with contextlib.suppress(ValueError):
            self._event_seen[queue] = max(self._event_seen.get(queue, 0), int(seq))
        waker = self._event_wakers.pop(queue, None)
        if waker is not None:
            waker.set()

    def _wake_work(self, queue: str) -> None:
        self._notified[queue] = self._notified.get(queue, 0) + 1
        waker = self._work.pop(queue, None)
        if waker is not None:
            waker.set()

    def _wake_everyone(self) -> None:
        for queue in list(self._work):
            self._wake_work(queue)
        for waker in self._event_wakers.values():
            waker.set()
        self._event_wakers.clear()
        self._limiter_wake_all()

    async def _sleep_on(self, waker: asyncio.Event, timeout: float) -> None:
        if not self._listening.is_set():
            timeout = min(timeout, self.poll_interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waker.wait(), timeout)

    async def work_wait(self, queue: str, timeout: float) -> None:
        """Return on a NOTIFY for ``queue`` since the last claim began, or after ``timeout``."""
        if self._claim_marks.news(queue, self._notified.get(queue, 0)):
            return
        waker = self._work.setdefault(queue, asyncio.Event())
        await self._sleep_on(waker, timeout)

    def work_notify(self, queue: str) -> None:
        """Local enqueues need no extra wake-up: their NOTIFY arrives (unless not listening)."""
        if not self._listening.is_set():
            self._wake_work(queue)

    # ── events ─────────────────────────────────────────────────────────────
    async def _events(self, db: Db, queue: str, emit: Emit[T] | None, result: T) -> _Later | None:
        """Queue the core's events of a step (and their NOTIFY) into its transaction."""
        if emit is None:
            return None
        events = emit.make(result)
        if not events:
            return None
        params = {"events": _events_json(events), "queue": queue, "notify": self.event_channel}
        return _Later(emit, events, await db.submit(self.q["event_store"], params))

    async def _notify_work(self, db: Db, queue: str) -> None:
        await db.submit(self.q["work_notify"], {"channel": self.work_channel, "queue": queue})

    async def event_read(self, queue: str, after: int, limit: int) -> list[Event]:
        """Events after ``after``, oldest first."""
        rows = await self._rows("event_read", {"queue": queue, "after": after, "limit": limit})
        return [
            Event(EventType(r[1]), r[2], queue, r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[0])
            for r in rows
        ]

    async def event_last(self, queue: str) -> int:
        """The newest event's number."""
        return int((await self._rows("event_last", {"queue": queue}))[0][0])

    async def event_since(self, queue: str, time: float) -> int:
        """The newest event's number stored before ``time`` (0 if none)."""
        # ``time`` is this host's clock; events are dated by the server's.
        params = {"queue": queue, "time": time + self._skew}
        return int((await self._rows("event_since", params))[0][0])

    async def event_wait(self, queue: str, after: int, timeout: float) -> None:
        """Return when an event after ``after`` was announced or stored, or at ``timeout``."""
        if self._event_seen.get(queue, 0) > after:
            return
        waker = self._event_wakers.setdefault(queue, asyncio.Event())
        if await self.event_last(queue) > after:
            return
        await self._sleep_on(waker, timeout)

    async def event_trim(self, queue: str, older_than: float) -> int:
        """Delete events older than ``older_than`` seconds (the newest stays)."""
        pool = await self._ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                self.q["event_trim"], {"queue": queue, "older_than": older_than}
            )
            return int(cursor.rowcount)

    # ── enqueue ────────────────────────────────────────────────────────────
    async def job_insert_many(
        self, queue: str, jobs: Sequence[NewJob], *, emit: Emit[list[JobRecord]] | None = None
    ) -> list[JobRecord]:
        """Insert all in one transaction; a job into a full channel is stored ``dropped``."""
        if all(j.dedup_key is None and not j.depends_on and j.run_at is None for j in jobs):
            done = await self._enqueue(queue, jobs, emit)
            if done is not None:
                return done

        async def insert(db: Db) -> tuple[list[JobRecord], _Later | None]:
            records = await self._insert_in(db, queue, jobs)
            later = await self._events(db, queue, emit, records)
            # Also when nothing is queued: parents locked by this step were skipped
            # by claims meanwhile.
            await self._notify_work(db, queue)
            return records, later

        for _ in range(5):
            try:
                return await self._step(insert)
            except _Redo:
                continue
        raise RuntimeError("enqueue kept meeting concurrent enqueues of the same dedup keys")

    async def _enqueue(
        self, queue: str, jobs: Sequence[NewJob], emit: Emit[list[JobRecord]] | None
    ) -> list[JobRecord] | None:
        """The common enqueue in one round trip; None (nothing done) if a channel is capped."""
        records = [
            JobRecord.new(queue, j, "waiting" if j.delay > 0 else "queued", 0.0, j.delay)
            for j in jobs
        ]
        events = emit.make(records) if emit is not None else []  # the clock is not in them
        params = {
            "queue": queue,
            "work": self.work_channel,
            "notify": self.event_channel,
            "channels": sorted({j.channel for j in jobs}),
            "queued": any(j.delay <= 0 for j in jobs),
            "jobs": _dumps(
                [
                    {
                        "id": j.id,
                        "task": j.task,
                        "channel": j.channel,
                        "priority": j.priority,
                        "max_attempts": j.max_attempts,
                        "payload": j.payload,
                        "delay": j.delay,
                        "max_processing": j.max_processing,
                    }
                    for j in jobs
                ]
            ),
            "events": _events_json(events),
        }
        pool = await self._ready()
        async with pool.connection() as conn:  # one statement, its own transaction
            cursor = await conn.execute(self.q["job_enqueue"], params)
            row = await cursor.fetchone()
        if row is None:
            return None
        now, first, at = row
        if emit is not None and events:
            emit.stored = stamp(events, int(first), float(at))
        for record, job in zip(records, jobs, strict=True):
            # Fresh records nobody has seen yet: set the server's times in place
            # (dataclasses.replace would cost a third of a bulk enqueue).
            object.__setattr__(record, "created_at", now)
            object.__setattr__(record, "run_at", now + job.delay)
        return records

    async def job_insert_in_transaction(
        self,
        conn: Any,
        queue: str,
        jobs: Sequence[NewJob],
        *,
        emit: Emit[list[JobRecord]] | None = None,
    ) -> list[JobRecord]:
        """Insert with the *caller's* connection, in the caller's open transaction.

        Nothing is committed here: the jobs, their events and their NOTIFY take
        effect when the caller commits; a rollback leaves none.
        """
        if type(conn).__module__.startswith("sqlalchemy"):
            conn = await self._driver_of(conn)
        db = adapt(conn)
        await self._ready()
        if not await db.in_transaction():
            raise ValueError(
                "the connection has no open transaction: each statement would commit at "
                "once; enqueue inside `async with conn.transaction():` (or with autocommit off)"
            )
        await db.submit(self.q["savepoint"], {})
        try:
            records = await self._insert_in(db, queue, jobs)
        except _Redo:
            await db.submit(self.q["savepoint_rollback"], {})  # the batch leaves nothing
            raise RuntimeError(
                "a concurrent transaction stored the same dedup key first: roll back and "
                "enqueue again"
            ) from None
        except _MISSING as exc:
            raise ValueError(
                f"this connection's database has no hydrapool schema {self.schema!r} "
                f"({exc.__class__.__name__}): connect to the queue's own database; roll "
                "the transaction back"
            ) from None
        if emit is not None and (events := emit.make(records)):
            # Left unnumbered (see events_pending in the schema): numbering them here
            # would hold the queue's numbering lock until the caller commits.
            params = {"events": _events_json(events), "queue": queue}
            await db.submit(self.q["event_pend"], params)
        await self._notify_work(db, queue)
        return records

    async def _driver_of(self, conn: Any) -> Any:
        """The driver connection under a SQLAlchemy ``AsyncConnection``, its transaction begun
        (SQLAlchemy begins the driver's lazily, at its first statement)."""
        from sqlalchemy import text

        if not conn.in_transaction():
            raise ValueError(
                "the SQLAlchemy connection has no open transaction: enqueue inside "
                "`async with conn.begin():`"
            )
        await conn.execute(text(self.q["noop"]))
        raw = await conn.get_raw_connection()
        return raw.driver_connection

    async def _insert_in(self, db: Db, queue: str, jobs: Sequence[NewJob]) -> list[JobRecord]:
        """Insert inside an open transaction: two round trips (three with dedup keys)."""
        seen = await self._look(db, queue, jobs)
        out, rows, edges = _plan(queue, jobs, seen)
        q = {"queue": queue}
        twins = sorted({p for p, _ in edges} & {t.id for t in seen.twins.values()})
        if twins:  # deduplicated jobs named as parents later in the batch: mark them too
            await db.submit(self.q["parents_mark"], {**q, "ids": twins})
        if rows:
            parents = sorted({p for p, _ in edges})  # in this batch: marked as they go in
            inserted = await db.submit(
                self.q["job_insert"],
                {**q, "now": seen.now, "parents": parents, "jobs": _jobs(rows)},
            )
            if edges:
                await db.submit(
                    self.q["dep_insert"],
                    {**q, "parents": [p for p, _ in edges], "children": [c for _, c in edges]},
                )
            if seen.twins_looked and len(await inserted.fetch()) != len(rows):
                raise _Redo  # another transaction committed one of our keys meanwhile
        return out

    async def _look(self, db: Db, queue: str, jobs: Sequence[NewJob]) -> _Seen:
        """What an insert must know, in one round trip: the clock, the capped channels,
        waiting twins of dedup keys and the parents (all three locked)."""
        q = {"queue": queue}
        channels = sorted({j.channel for j in jobs})
        in_batch = {j.id for j in jobs}
        parent_ids = sorted({p for j in jobs for p in j.depends_on} - in_batch)
        keyed = [j for j in jobs if j.dedup_key is not None]
        clock = await db.submit(self.q["clock"], {})
        capped = await db.submit(self.q["capped_lock"], {**q, "channels": channels})
        twins_p = parents_p = None
        if keyed:
            pairs = {"channels": [j.channel for j in keyed], "keys": [j.dedup_key for j in keyed]}
            twins_p = await db.submit(self.q["dedup_twins"], {**q, **pairs})
        if parent_ids:
            parents_p = await db.submit(self.q["parents_mark"], {**q, "ids": parent_ids})
        seen = _Seen(float((await clock.fetch())[0][0]), twins_looked=bool(keyed))
        seen.limits = {row[0]: int(row[1]) for row in await capped.fetch()}
        seen.sizes = dict.fromkeys(seen.limits, 0)
        if seen.limits:
            for channel, count in await db.rows(
                self.q["capped_sizes"], {**q, "channels": channels}
            ):
                seen.sizes[channel] = int(count)
        for row in await twins_p.fetch() if twins_p is not None else []:
            twin = _record(row)
            seen.twins[(twin.channel, str(twin.dedup_key))] = twin
            seen.states[twin.id] = (twin.state, None)  # may be named as a parent
        for job_id, state, started_at in await parents_p.fetch() if parents_p else []:
            seen.states[job_id] = (state, started_at)
        return seen

    # ── claims ─────────────────────────────────────────────────────────────
    async def job_claim(
        self, params: ClaimParams, *, emit: Emit[list[Claim]] | None = None
    ) -> list[Claim]:
        """Claim due jobs within the channel and queue limits: one round trip, its commit
        included (see the claim function in the schema)."""
        queue = params.queue
        self._claim_marks.claimed(queue, self._notified.get(queue, 0))
        token = uuid.uuid4().hex  # one lease token per batch: (job id, token) fences
        pool = await self._ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                self.q["job_claim"],
                {
                    "queue": queue,
                    "key": _key("claim", self.schema, queue),
                    "limit": params.limit,
                    "channels": None if params.channels is None else list(params.channels),
                    "lease": token,
                    "duration": params.lease,
                    "worker": params.worker,
                    "notify": self.event_channel,
                    "events": emit is not None,
                },
            )
            row = await cursor.fetchone()
        assert row is not None
        jobs, first, at, stored = row
        claims = [
            Claim(
                JobRecord(**{c: job[c] for c in _COLS}),
                token,
                float(job["lease_expires_at"]),
                job["was"],
            )
            for job in jobs
        ]
        if emit is not None and claims:
            # The claim function stored the events of the core's rule for claims: the
            # core's own copies, numbered alike, go to this process's subscribers.
            events = emit.make(claims)
            if len(events) != stored:
                logger.error(
                    "claim events differ: the core made %d, the server stored %d",
                    len(events),
                    stored,
                )
            emit.stored = stamp(events, int(first), float(at))
        return claims

    async def job_heartbeat_many(
        self, queue: str, leases: Mapping[str, str], lease: float
    ) -> Heartbeat:
        """Extend the leases still ours and unexpired, in one statement."""
        rows = await self._rows(
            "job_heartbeat",
            {
                "queue": queue,
                "ids": list(leases),
                "leases": list(leases.values()),
                "duration": lease,
            },
        )
        return Heartbeat(frozenset(r[0] for r in rows), frozenset(r[0] for r in rows if r[1]))

    # ── finishes ───────────────────────────────────────────────────────────
    async def job_finish_many(
        self, queue: str, finishes: Sequence[Finish], *, emit: Emit[FinishResult] | None = None
    ) -> FinishResult:
        """Apply each decision where its lease still matches: one statement for the batch."""
        params = _finish_params(queue, finishes)

        async def finish(db: Db) -> tuple[FinishResult, _Later | None]:
            rows = await db.rows(self.q["job_finish"], params)
            applied = {row[0]: row[1] for row in rows}
            ended = [(r[0], r[1]) for r in rows if r[1] in _TERMINAL and r[2]]
            changes = await self._resolve(db, queue, ended, float(rows[0][3])) if ended else []
            result = FinishResult([applied.get(f.job_id) for f in finishes], changes)
            if any(r[1] in ("queued", "retrying") for r in rows) or changes:
                await self._notify_work(db, queue)  # jobs back, or children released
            elif rows:
                note = {"channel": self.work_channel, "queue": queue}
                await db.submit(self.q["work_notify_if_limited"], note)
            return result, await self._events(db, queue, emit, result)

        return await self._step(finish)

    async def _resolve(
        self, db: Db, queue: str, ended: list[tuple[str, str]], now: float
    ) -> list[Change]:
        """Tell the children of jobs that just ended: release them, or fail them in cascade."""
        changes: list[Change] = []
        level = dict(ended)
        while level:
            q = {"queue": queue, "parents": list(level)}
            rows = await db.rows(self.q["dep_children"], q)
            nxt: dict[str, str] = {}
            for parent, child, cascade, channel, task, attempts, old in rows:
                state = level[parent]
                change = Change(child, channel, task, attempts, old, old, parent, state)
                if state == "succeeded" or not cascade:
                    found = await db.rows(
                        self.q["dep_release"], {"queue": queue, "id": child, "now": now}
                    )
                    if found:  # none: another parent of this batch failed it
                        changes.append(replace(change, new=found[0][0]))
                    continue
                error = f"dependency {parent} ended {state}"
                params = {"queue": queue, "id": child, "now": now, "error": error}
                if await db.rows(self.q["dep_fail"], params):
                    nxt[child] = "failed"
                    changes.append(replace(change, new="failed", error=error))
            await db.submit(self.q["dep_forget"], q)
            level = nxt
        return changes

    async def job_cancel(
        self, queue: str, job_id: str, *, emit: Emit[CancelResult] | None = None
    ) -> CancelResult:
        """Cancel a job not yet running; flag a running one."""

        async def cancel(db: Db) -> tuple[CancelResult, _Later | None]:
            params = {"queue": queue, "id": job_id}
            found = await db.rows(self.q["job_cancel_waiting"], params)
            changes: list[Change] = []
            if found:
                changes = await self._resolve(db, queue, [(job_id, "cancelled")], found[0][0])
                if changes:
                    await self._notify_work(db, queue)  # children may have been released
            else:
                await db.submit(self.q["job_cancel_running"], params)
            rows = await db.rows(self.q["job_get"], params)
            result = CancelResult(_record(rows[0]) if rows else None, bool(found), changes)
            return result, await self._events(db, queue, emit, result)

        return await self._step(cancel)

    # ── reads and maintenance ──────────────────────────────────────────────
    async def job_get(self, queue: str, job_id: str) -> JobRecord | None:
        """One job, or None."""
        rows = await self._rows("job_get", {"queue": queue, "id": job_id})
        return _record(rows[0]) if rows else None

    async def job_list(
        self, queue: str, *, state: str | None, channel: str | None, limit: int
    ) -> list[JobRecord]:
        """Newest first."""
        params = {"queue": queue, "state": state, "channel": channel, "limit": limit}
        return [_record(r) for r in await self._rows("job_list", params)]

    async def job_expired(self, queue: str, limit: int) -> list[JobRecord]:
        """Running jobs past their lease or max_processing (the latter get an expired lease)."""
        return [
            _record(r) for r in await self._rows("job_expired", {"queue": queue, "limit": limit})
        ]

    async def job_release_due(
        self, queue: str, *, emit: Emit[list[Change]] | None = None
    ) -> list[Change]:
        """waiting/retrying -> queued once due (and no parent is left to wait for)."""

        async def release(db: Db) -> tuple[list[Change], _Later | None]:
            rows = await db.rows(self.q["job_release_due"], {"queue": queue})
            moved = [Change(i, c, t, a, old, "queued") for i, c, t, a, old in rows]
            if moved:
                await self._notify_work(db, queue)
            later = await self._events(db, queue, emit, moved)
            if later is None:  # number what caller transactions left pending
                await db.submit(self.q["event_store"], _no_events(queue, self.event_channel))
            return moved, later

        return await self._step(release)

    async def job_delete_finished(
        self,
        queue: str,
        older_than: float,
        *,
        state: str | None = None,
        emit: Emit[list[Change]] | None = None,
    ) -> list[Change]:
        """Delete jobs that ended long enough ago (of one state, if given)."""

        async def delete(db: Db) -> tuple[list[Change], _Later | None]:
            params = {"queue": queue, "older_than": older_than, "state": state}
            rows = await db.rows(self.q["job_delete_finished"], params)
            await db.submit(self.q["turns_prune"], {"queue": queue})
            await db.submit(self.q["pauses_prune"], {"queue": queue})
            await db.submit(self.q["starts_prune"], {"queue": queue})
            deleted = [Change(i, c, t, a, old, "deleted") for i, c, t, a, old in rows]
            return deleted, await self._events(db, queue, emit, deleted)

        return await self._step(delete)

    async def pool_stats(self, queue: str) -> PoolSnapshot:
        """Counts by state and channel, running jobs, limits."""
        q = {"queue": queue}
        async with self._tx() as db:
            p_counts = await db.submit(self.q["stats_counts"], q)
            p_running = await db.submit(self.q["stats_running"], q)
            p_limits = await db.submit(self.q["queue_get"], q)
            p_policies = await db.submit(self.q["stats_policies"], q)
            p_paused = await db.submit(self.q["stats_paused"], q)
            counts: dict[str, int] = {}
            channels: dict[str, dict[str, int]] = {}
            for channel, state, n in await p_counts.fetch():
                counts[state] = counts.get(state, 0) + n
                channels.setdefault(channel, {})[state] = n
            running = [_record(r) for r in await p_running.fetch()]
            limits = await p_limits.fetch()
            policies = {
                r[0]: ChannelPolicy(r[1], r[2], _rate(r[3], r[4])) for r in await p_policies.fetch()
            }
            paused = {r[0]: float(r[1]) for r in await p_paused.fetch()}
        cap, rate = (limits[0][0], _rate(limits[0][1], limits[0][2])) if limits else (None, None)
        return PoolSnapshot(counts, channels, running, cap, policies, rate, paused)

    async def channel_policy_set(self, queue: str, channel: str, policy: ChannelPolicy) -> None:
        """Set a channel's limits (and wake workers: the limit may have risen)."""
        params = {
            "queue": queue,
            "channel": channel,
            "max_concurrency": policy.max_concurrency,
            "max_size": policy.max_size,
            **_rate_params(policy.rate),
        }
        await self._write("channel_policy_set", params, queue)

    async def channel_policy_clear(self, queue: str, channel: str) -> None:
        """Remove a channel's limits."""
        await self._write("channel_policy_clear", {"queue": queue, "channel": channel}, queue)

    async def queue_limits_set(
        self, queue: str, max_concurrency: int | None, rate: tuple[int, float] | None = None
    ) -> None:
        """Cap the queue: jobs running at once, and job starts per window."""
        params = {"queue": queue, "max_concurrency": max_concurrency, **_rate_params(rate)}
        await self._write("queue_limits_set", params, queue)

    async def _write(self, name: str, params: Mapping[str, Any], queue: str) -> None:
        async with self._tx() as db:
            await db.submit(self.q[name], params)
            await self._notify_work(db, queue)

    # ── schedules ──────────────────────────────────────────────────────────
    async def schedule_upsert(self, record: ScheduleRecord) -> None:
        """Create or replace a schedule."""
        params = {f: getattr(record, f) for f in ScheduleRecord.__dataclass_fields__}
        params.pop("created_at")
        await self._rows("schedule_upsert", params)

    async def schedule_delete(self, queue: str, channel: str, name: str) -> bool:
        """Remove a schedule."""
        params = {"queue": queue, "channel": channel, "name": name}
        return bool(await self._rows("schedule_delete", params))

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Every schedule of the queue."""
        return [ScheduleRecord(*r) for r in await self._rows("schedule_list", {"queue": queue})]

    async def schedule_due(self, queue: str, limit: int) -> list[ScheduleRecord]:
        """Schedules whose next run has come."""
        rows = await self._rows("schedule_due", {"queue": queue, "limit": limit})
        return [ScheduleRecord(*r) for r in rows]

    async def schedule_fire(
        self,
        record: ScheduleRecord,
        next_run: float,
        job: NewJob,
        *,
        emit: Emit[JobRecord | None] | None = None,
    ) -> JobRecord | None:
        """Advance the schedule and insert its job, in one transaction."""

        async def fire(db: Db) -> tuple[JobRecord | None, _Later | None]:
            moved = await db.rows(
                self.q["schedule_advance"],
                {
                    "queue": record.queue,
                    "channel": record.channel,
                    "name": record.name,
                    "old_next_run": record.next_run,
                    "new_next_run": next_run,
                },
            )
            if not moved:
                return None, None
            inserted = (await self._insert_in(db, record.queue, [job]))[0]
            if inserted.state == "queued":
                await self._notify_work(db, record.queue)
            return inserted, await self._events(db, record.queue, emit, inserted)

        for _ in range(5):
            try:
                return await self._step(fire)
            except _Redo:
                continue
        raise RuntimeError("a schedule's tick kept meeting concurrent enqueues of its dedup key")

    async def leader_try(self, queue: str, name: str, owner: str, ttl: float) -> bool:
        """Take or renew a named lease."""
        params = {"queue": queue, "name": name, "owner": owner, "ttl": ttl}
        return bool(await self._rows("leader_try", params))


def _plan(
    queue: str, jobs: Sequence[NewJob], seen: _Seen
) -> tuple[list[JobRecord], list[tuple[NewJob, JobRecord, int]], list[tuple[str, str]]]:
    """Decide each new job's fate in Python, from what the first round trip read."""
    now, limits, sizes, twins, states = seen.now, seen.limits, seen.sizes, seen.twins, seen.states
    out: list[JobRecord] = []
    rows: list[tuple[NewJob, JobRecord, int]] = []
    edges: list[tuple[str, str]] = []
    alias: dict[str, str] = {}
    for new in jobs:
        new = with_aliases(new, alias)
        key = None if new.dedup_key is None else (new.channel, new.dedup_key)
        twin = twins.get(key) if key is not None else None
        if twin is not None:
            alias[new.id] = twin.id
            out.append(replace(twin, deduplicated=True))
            continue
        parents = parents_of(queue, new, {p: states.get(p) for p in new.depends_on})
        limit = limits.get(new.channel)
        full = limit is not None and sizes[new.channel] >= limit
        run_at = new.run_at if new.run_at is not None else now + new.delay
        state = initial_state(full, run_at, now, parents)
        if limit is not None and not full:
            sizes[new.channel] += 1
        record = JobRecord.new(queue, new, state, now, run_at, parents.doomed)
        out.append(record)
        rows.append((new, record, len(parents.waiting_for)))
        states[new.id] = (state, None)  # a parent for later jobs of the batch
        if state not in ("dropped", "failed"):
            edges += [(parent, new.id) for parent in parents.waiting_for]
            if key is not None:
                twins[key] = record
    return out, rows, edges


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _jobs(rows: list[tuple[NewJob, JobRecord, int]]) -> str:
    """The new jobs as one JSON array, for a single insert."""
    return _dumps(
        [
            {
                "id": r.id,
                "task": r.task,
                "channel": r.channel,
                "state": r.state,
                "priority": r.priority,
                "max_attempts": r.max_attempts,
                "payload": r.payload,
                "run_at": r.run_at,
                "finished_at": r.finished_at,
                "error": r.error,
                "max_processing": r.max_processing,
                "dedup_key": r.dedup_key,
                "parents_left": left,
                "cascade": new.cascade,
            }
            for new, r, left in rows
        ]
    )


def _text(value: str | None) -> str | None:
    """PostgreSQL text holds no NUL character (an error message may): show it escaped."""
    return value.replace("\x00", "\\x00") if value is not None and "\x00" in value else value


def _events_json(events: Sequence[Event]) -> str:
    return _dumps(
        [
            {
                "type": e.type.value,
                "job_id": e.job_id,
                "channel": e.channel,
                "task": e.task,
                "attempt": e.attempt,
                "worker": e.worker_id,
                "error": _text(e.error),
                "detail": _text(e.detail),
            }
            for e in events
        ]
    )


def _no_events(queue: str, notify: str) -> dict[str, Any]:
    return {"events": "[]", "queue": queue, "notify": notify}


def _rate(n: int | None, per: float | None) -> tuple[int, float] | None:
    """A stored rate (columns rate_n, rate_per) as (n, per seconds), or None."""
    return None if n is None or per is None else (int(n), float(per))


def _rate_params(rate: tuple[int, float] | None) -> dict[str, Any]:
    """A rate as the columns rate_n, rate_per store it."""
    if rate is None:
        return {"rate_n": None, "rate_per": None}
    return {"rate_n": int(rate[0]), "rate_per": float(rate[1])}


def _finish_params(queue: str, finishes: Sequence[Finish]) -> dict[str, Any]:
    kinds = []
    for f in finishes:
        if f.state in _TERMINAL:
            kinds.append("end")
        elif f.state == "retrying":
            kinds.append("retry")
        elif f.state == "queued":
            kinds.append("hand_back")
        else:
            raise ValueError(f"cannot finish a job as {f.state!r}")
    batch = [
        {
            "id": f.job_id,
            "lease": f.lease,
            "kind": kind,
            "state": f.state,
            "result": f.result,
            "error": _text(f.error),
            "delay": float(f.delay),
            "expired": f.expired,
            "pause": float(f.pause),  # the statement pauses only for hand-backs
        }
        for f, kind in zip(finishes, kinds, strict=True)
    ]
    return {"queue": queue, "batch": _dumps(batch)}
