"""PostgreSQL only (issue 6): limits under concurrent claimers, caller transactions, migrations.

Limits: eight claimers, each with a backend (a pool, so connections) of its
own, hammer one queue; the limit must hold at every instant, as seen by the
claimers, by a sampler on another connection, and by the jobs' own run
intervals on the server's clock.

Caller transactions: the same cases as test_transactions.py (SQLite) for each
connection type a PostgreSQL queue takes: psycopg ``Connection`` and
``AsyncConnection``, and asyncpg.

The last tests are regressions of what this file's first version found.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlencode, urlsplit

import asyncpg
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import hydrapool as hp
from hydrapool.backends._sql import migrations
from hydrapool.backends.base import ChannelPolicy, ClaimParams, Emit, Finish, JobRecord
from hydrapool.backends.postgres import PostgresBackend, installation_sql
from hydrapool.backends.postgres.backend import schema_of
from hydrapool.queue import events as ev

DRIVERS = ["psycopg", "psycopg-async", "asyncpg"]
LIMIT = 3
CLAIMERS = 8


@pytest.fixture(params=["postgres"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def conninfo_of(queue: hp.Queue) -> str:
    return schema_of(queue.url)[0]


def table(queue: hp.Queue, name: str = "jobs") -> sql.Composed:
    """A table of the queue's schema, qualified (as the backend's own statements are)."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema_of(queue.url)[1]), sql.Identifier(name))


@contextlib.asynccontextmanager
async def opened(backends: list[PostgresBackend]) -> AsyncIterator[list[PostgresBackend]]:
    """Open all at once (each on connections of its own); close all, even after a failure."""
    try:
        results = await asyncio.gather(*(b.open() for b in backends), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        yield backends
    finally:
        await asyncio.gather(*(b.close() for b in backends))


# ── limits under concurrent claimers ───────────────────────────────────────


@dataclass
class Tally:
    """What the claimers and the sampler saw, all on one event loop."""

    total: int
    held: set[str] = field(default_factory=set)  # limited jobs claimed and not yet let go
    peak: int = 0
    claimed: list[str] = field(default_factory=list)
    finished: int = 0
    db_peak: int = 0
    samples: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def claimer(
    backend: PostgresBackend,
    queue: str,
    worker: str,
    tally: Tally,
    limited: Callable[[JobRecord], bool],
) -> None:
    """Claim two at a time in a tight loop; hold each batch 0-3 ms, then finish it.

    A job enters ``held`` once its claim has committed and leaves it before its
    finish is sent, so ``held`` is never larger than what the database counts
    as running: a breach seen here is a breach there.
    """
    rng = random.Random(worker)
    params = ClaimParams(queue, worker, limit=2, lease=30.0)
    while not tally.done.is_set():
        # With events, as a worker claims: the claim then also numbers and stores them.
        claims = await backend.job_claim(params, emit=Emit(partial(ev.for_claims, worker=worker)))
        if not claims:
            continue
        ids = [c.job.id for c in claims]
        tally.claimed += ids
        tally.held.update(c.job.id for c in claims if limited(c.job))
        tally.peak = max(tally.peak, len(tally.held))
        await asyncio.sleep(rng.uniform(0, 0.003))
        tally.held.difference_update(ids)
        finishes = [Finish(c.job.id, c.lease, "succeeded") for c in claims]
        result = await backend.job_finish_many(queue, finishes)
        assert result.states == ["succeeded"] * len(claims)
        tally.finished += len(claims)
        if tally.finished >= tally.total:
            tally.done.set()


async def sampler(conninfo: str, query: sql.Composable, params: list[Any], tally: Tally) -> None:
    """Count running jobs over and over, on a connection of its own."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        while not tally.done.is_set():
            cursor = await conn.execute(query, params)
            row = await cursor.fetchone()
            assert row is not None
            tally.db_peak = max(tally.db_peak, int(row[0]))
            tally.samples += 1


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals [start, end) open at once (an end before a start at the same time)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


async def hammer(queue: hp.Queue, where: str, limited: Callable[[JobRecord], bool]) -> Tally:
    """Run the claimers and the sampler until every job of the queue succeeded.

    ``where`` restricts the sampler's count (and the interval check) to the
    limited jobs; ``limited(job)`` says the same to the claimers.
    """
    counts = (await queue.backend.pool_stats(queue.name)).counts
    tally = Tally(total=sum(counts.values()))
    conninfo = conninfo_of(queue)
    query = sql.SQL("SELECT count(*) FROM {} WHERE queue = %s AND state = 'running' {}").format(
        table(queue), sql.SQL(where)
    )
    backends = [PostgresBackend(queue.url, max_connections=1) for _ in range(CLAIMERS)]
    async with opened(backends), asyncio.timeout(30), asyncio.TaskGroup() as group:
        group.create_task(sampler(conninfo, query, [queue.name], tally))
        for i, backend in enumerate(backends):
            group.create_task(claimer(backend, queue.name, f"claimer-{i}", tally, limited))
    intervals = sql.SQL(
        "SELECT started_at, finished_at FROM {} WHERE queue = %s AND state = 'succeeded' {}"
    ).format(table(queue), sql.SQL(where))
    states = sql.SQL(
        "SELECT state, count(*), max(attempts) FROM {} WHERE queue = %s GROUP BY state"
    ).format(table(queue))
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        runs = await (await conn.execute(intervals, [queue.name])).fetchall()
        ended = await (await conn.execute(states, [queue.name])).fetchall()
    assert [tuple(r) for r in ended] == [("succeeded", tally.total, 1)], "each ran exactly once"
    assert len(tally.claimed) == len(set(tally.claimed)) == tally.total, "none claimed twice"
    assert tally.samples > 0
    assert tally.db_peak <= LIMIT, f"the sampler saw {tally.db_peak} running"
    overlap = peak_overlap([(float(s), float(e)) for s, e in runs])
    assert overlap <= LIMIT, f"{overlap} run intervals overlap on the server's clock"
    assert tally.peak <= LIMIT, f"claimers held {tally.peak} at once"
    assert tally.peak == LIMIT, "the limit was reached, so the test could have caught a breach"
    return tally


async def test_eight_concurrent_claimers_never_exceed_a_limit_of_three(queue: hp.Queue) -> None:
    await queue.backend.channel_policy_set(queue.name, "hot", ChannelPolicy(max_concurrency=LIMIT))
    hot = queue.options("job", channel="hot")
    cold = queue.options("job", channel="cold")  # unlimited: claims mix it with "hot"
    await queue.enqueue_many([(hot, (i,)) for i in range(300)] + [(cold, (i,)) for i in range(60)])
    await hammer(queue, "AND channel = 'hot'", lambda job: job.channel == "hot")


async def test_eight_concurrent_claimers_never_exceed_a_queue_limit_of_three(
    queue: hp.Queue,
) -> None:
    await queue.backend.queue_limits_set(queue.name, LIMIT)
    calls = [(queue.options("job", channel=f"c{i % 6}"), (i,)) for i in range(300)]
    await queue.enqueue_many(calls)
    await hammer(queue, "", lambda job: True)


# ── enqueue inside the caller's transaction ────────────────────────────────


class Caller:
    """The caller's own connection to the queue's database, always inside a transaction.

    psycopg begins one implicitly at the first statement; asyncpg is told to.
    ``commit()`` and ``rollback()`` end it and the next one begins.
    """

    def __init__(self, driver: str, conn: Any) -> None:
        self.driver = driver
        self.conn = conn
        self._tx: Any = None

    @classmethod
    async def connect(cls, driver: str, conninfo: str) -> Caller:
        if driver == "psycopg":
            caller = cls(driver, psycopg.connect(conninfo))
        elif driver == "psycopg-async":
            caller = cls(driver, await psycopg.AsyncConnection.connect(conninfo))
        else:
            caller = cls(driver, await asyncpg.connect(conninfo))
        await caller._begin()
        return caller

    async def _begin(self) -> None:
        if self.driver == "asyncpg":
            self._tx = self.conn.transaction()
            await self._tx.start()

    async def execute(self, statement: str) -> None:
        if self.driver == "psycopg":
            self.conn.execute(statement)
        else:
            await self.conn.execute(statement)

    async def commit(self) -> None:
        await self._end("commit")

    async def rollback(self) -> None:
        await self._end("rollback")

    async def _end(self, how: str) -> None:
        target = self._tx if self.driver == "asyncpg" else self.conn
        done = getattr(target, how)()
        if self.driver != "psycopg":
            await done
        await self._begin()

    async def close(self) -> None:
        closed = self.conn.close()
        if self.driver != "psycopg":
            await closed


@pytest.fixture(params=DRIVERS)
async def caller(request: pytest.FixtureRequest, queue: hp.Queue) -> AsyncIterator[Caller]:
    """A caller's connection of each type, to the (already migrated) queue's database."""
    found = await Caller.connect(str(request.param), conninfo_of(queue))
    yield found
    await found.close()


async def test_committed_enqueue_exists_only_after_the_commit(
    queue: hp.Queue, caller: Caller
) -> None:
    orders = f'"{schema_of(queue.url)[1]}".orders'
    await caller.execute(f"CREATE TABLE {orders} (id integer)")
    await caller.commit()
    async with queue.transaction(caller.conn):
        job = await queue.enqueue("ship", 1)
        await caller.execute(f"INSERT INTO {orders} VALUES (1)")
    assert job.state is hp.JobState.QUEUED
    assert await queue.get_job(job.id) is None, "not visible before the caller commits"
    await caller.commit()
    stored = await queue.get_job(job.id)
    assert stored is not None
    assert stored.state is hp.JobState.QUEUED
    assert stored.args == (1,)


async def test_rolled_back_enqueue_leaves_no_job_and_no_event(
    queue: hp.Queue, caller: Caller
) -> None:
    async with queue.transaction(caller.conn):
        jobs = await queue.enqueue_many([("ship", (i,)) for i in range(3)])
    await caller.rollback()
    assert [await queue.get_job(j.id) for j in jobs] == [None, None, None]
    assert await queue.jobs() == []
    later = await queue.enqueue("ship", 9)  # numbers whatever caller transactions left
    backend = await queue._backend_ready()
    assert [e.job_id for e in await backend.event_read(queue.name, 0, 10)] == [later.id]


async def test_a_worker_runs_the_job_once_committed(queue: hp.Queue, caller: Caller) -> None:
    @queue.task
    async def ship(order: int) -> int:
        return order

    async with queue.transaction(caller.conn):
        job = await ship.enqueue(7)
    await caller.commit()
    worker = hp.Worker(queue, handle_signals=False)
    task = asyncio.create_task(worker.run())
    assert await job.result(timeout=10) == 7
    worker.stop()
    await asyncio.wait_for(task, 10)


async def test_the_enqueued_event_follows_the_commit(queue: hp.Queue, caller: Caller) -> None:
    """A caller's events wait unnumbered until the queue's next step: here a coordinator's
    pass, as every worker runs one (see events_pending in the schema)."""
    stream = queue.events(types="enqueued")
    async with queue.transaction(caller.conn):
        lost = await queue.enqueue("ship", 1)
    await caller.rollback()
    async with queue.transaction(caller.conn):
        kept = await queue.enqueue("ship", 2)
    await caller.commit()
    stop = asyncio.Event()
    coordinator = asyncio.create_task(hp.Coordinator(queue).run(stop))
    try:
        async with asyncio.timeout(10):
            event = await anext(stream)
    finally:
        stop.set()
        await coordinator
    assert event.job_id == kept.id, "the rolled-back job has no event"
    assert event.seq > 0
    backend = await queue._backend_ready()
    assert [e.job_id for e in await backend.event_read(queue.name, 0, 10)] == [kept.id]
    assert lost.id != kept.id


async def test_dedup_inside_a_callers_transaction(queue: hp.Queue, caller: Caller) -> None:
    first = await queue.options("t", dedup_key="k").enqueue()
    async with queue.transaction(caller.conn):
        twin = await queue.options("t", dedup_key="k").enqueue()
        other = await queue.options("t", dedup_key="other").enqueue()
    await caller.commit()
    assert twin.deduplicated
    assert twin.id == first.id
    assert not other.deduplicated
    assert await queue.get_job(other.id) is not None


async def test_search_path_does_not_matter(queue: hp.Queue, caller: Caller) -> None:
    await caller.execute("SET search_path TO nowhere_at_all")
    async with queue.transaction(caller.conn):
        job = await queue.enqueue("ship", 1)
    await caller.commit()
    assert await queue.get_job(job.id) is not None


async def test_nested_blocks_of_two_queues_each_use_the_connection(
    queue: hp.Queue, caller: Caller
) -> None:
    other = hp.Queue(queue.url, name=f"{queue.name}-second")
    try:
        async with queue.transaction(caller.conn), other.transaction(caller.conn):
            first = await queue.enqueue("a")
            second = await other.enqueue("b")
        await caller.rollback()
        assert await queue.get_job(first.id) is None
        assert await other.get_job(second.id) is None
    finally:
        await other.close()


@pytest.mark.parametrize("wrong", ["sqlite3", "str", "none"])
async def test_a_wrong_object_is_a_type_error_naming_what_is_accepted(
    queue: hp.Queue, wrong: str
) -> None:
    objects = {"sqlite3": sqlite3.connect(":memory:"), "str": "not a connection", "none": None}
    accepted = "psycopg Connection or AsyncConnection, an asyncpg connection, or a SQLAlchemy"
    with pytest.raises(TypeError, match=re.escape(accepted)):
        async with queue.transaction(objects[wrong]):
            await queue.enqueue("t")
    assert await queue.jobs() == []
    objects["sqlite3"].close()  # type: ignore[union-attr]


async def test_a_concurrent_caller_with_the_same_dedup_key_is_told_to_enqueue_again(
    queue: hp.Queue,
) -> None:
    """Two open transactions enqueue one dedup key: the second waits for the first, and
    when that commits, it is told to roll back and try again (it then finds the twin)."""
    conninfo = conninfo_of(queue)
    first = await Caller.connect("psycopg-async", conninfo)
    second = await Caller.connect("asyncpg", conninfo)
    try:
        async with queue.transaction(first.conn):
            kept = await queue.options("t", dedup_key="k").enqueue()

        async def enqueue_second() -> hp.Job:
            async with queue.transaction(second.conn):
                return await queue.options("t", dedup_key="k").enqueue()

        blocked = asyncio.create_task(enqueue_second())
        await wait_until_blocked(conninfo, second.conn.get_server_pid())
        await first.commit()
        with pytest.raises(RuntimeError, match="roll back and enqueue again"):
            await blocked
        await second.rollback()
        async with queue.transaction(second.conn):
            twin = await queue.options("t", dedup_key="k").enqueue()
        await second.commit()
        assert twin.deduplicated
        assert twin.id == kept.id
    finally:
        await first.close()
        await second.close()


async def wait_until_blocked(conninfo: str, pid: int) -> None:
    """Until the server says ``pid`` waits for another transaction (no event to await)."""
    query = "SELECT cardinality(pg_blocking_pids(%s)) > 0"
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        for _ in range(2000):
            row = await (await conn.execute(query, [pid])).fetchone()
            if row is not None and row[0]:
                return
            await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} never waited for the other transaction")


async def test_a_callers_event_waits_for_the_queues_next_step(queue: hp.Queue) -> None:
    """As docs/postgres.md says: numbered at the queue's next event-producing step. So with
    no worker (hence no coordinator) anywhere and nothing else happening, subscribers do
    not see it at all; SQLite delivers it within milliseconds."""
    backend = await queue._backend_ready()
    caller = await Caller.connect("psycopg-async", conninfo_of(queue))
    try:
        async with queue.transaction(caller.conn):
            kept = await queue.enqueue("ship", 1)
        await caller.commit()
        assert await backend.event_read(queue.name, 0, 10) == []
        assert await backend.event_last(queue.name) == 0
        await hp.Coordinator(queue).run_once()
        assert [e.job_id for e in await backend.event_read(queue.name, 0, 10)] == [kept.id]
    finally:
        await caller.close()


# Found by this file's first version, fixed since.


@pytest.mark.parametrize("driver", ["psycopg", "psycopg-async"])
async def test_a_callers_dict_row_connection_works(queue: hp.Queue, driver: str) -> None:
    caller = await Caller.connect(driver, conninfo_of(queue))
    try:
        caller.conn.row_factory = dict_row
        async with queue.transaction(caller.conn):
            job = await queue.enqueue("ship", 1)
        await caller.commit()
        assert await queue.get_job(job.id) is not None
    finally:
        await caller.close()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_connections_outside_a_transaction_are_refused_before_writing(
    queue: hp.Queue, driver: str
) -> None:
    conninfo = conninfo_of(queue)
    if driver == "psycopg":
        conn: Any = psycopg.connect(conninfo, autocommit=True)
    elif driver == "psycopg-async":
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    else:
        conn = await asyncpg.connect(conninfo)
    try:
        with pytest.raises(ValueError, match=r"autocommit|transaction"):
            async with queue.transaction(conn):
                await queue.enqueue("t")
        assert await queue.jobs() == []
    finally:
        closed = conn.close()
        if driver != "psycopg":
            await closed


async def test_a_connection_to_another_database_is_a_clear_error(queue: hp.Queue) -> None:
    elsewhere = urlsplit(conninfo_of(queue))._replace(path="/postgres").geturl()
    with psycopg.connect(elsewhere) as conn:
        with pytest.raises(ValueError, match="schema"):
            async with queue.transaction(conn):
                await queue.enqueue("t")
        conn.rollback()


async def test_a_stream_misses_nothing_stored_after_it_began(queue: hp.Queue) -> None:
    elsewhere = hp.Queue(queue.url, name=queue.name)  # as another process: no local pushes
    caller = await Caller.connect("psycopg-async", conninfo_of(queue))
    try:
        async with queue.transaction(caller.conn):
            await queue.enqueue("ship", "in the caller's transaction")
        stream = queue.events(types="enqueued")  # starts now
        after_start = await elsewhere.enqueue("ship", "from another process")
        await caller.commit()
        last = await elsewhere.enqueue("ship", "last")  # numbers the caller's event
        seen: list[str] = []
        async with asyncio.timeout(10):
            async for event in stream:
                seen.append(event.job_id)
                if event.job_id == last.id:
                    break
        assert after_start.id in seen
    finally:
        await caller.close()
        await elsewhere.close()


# ── migrations ─────────────────────────────────────────────────────────────


def schema_exists(url: str) -> bool:
    conninfo, schema = schema_of(url)
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", [f'"{schema}"']).fetchone()
    return bool(row and row[0])


async def test_migrate_false_on_an_empty_schema_names_hydrapool_migrate(
    postgres_url: str,
) -> None:
    queue = hp.Queue(postgres_url, migrate=False)
    schema = schema_of(postgres_url)[1]
    with pytest.raises(RuntimeError, match=rf"'{schema}'.*`hydrapool migrate`"):
        async with queue:
            pass
    assert not schema_exists(postgres_url), "checking created nothing"


async def test_concurrent_migrations_of_a_new_schema_all_succeed_once(postgres_url: str) -> None:
    """Advisory-locked: the first migrates, the others wait and find nothing to do."""
    async with opened([PostgresBackend(postgres_url) for _ in range(4)]) as backends:
        conninfo, schema = schema_of(postgres_url)
        query = sql.SQL("SELECT version, count(*) FROM {}.migrations GROUP BY version").format(
            sql.Identifier(schema)
        )
        with psycopg.connect(conninfo) as conn:
            applied = sorted(tuple(r) for r in conn.execute(query).fetchall())
        known = [version for version, _, _ in migrations("hydrapool.backends.postgres.migrations")]
        assert applied == [(version, 1) for version in known]
        assert await backends[0].migrate() == []


async def test_installation_sql_in_a_fresh_schema_then_a_queue_without_migrating(
    postgres_url: str,
) -> None:
    conninfo, schema = schema_of(postgres_url)
    with psycopg.connect(conninfo) as conn, conn.transaction():
        for statement in installation_sql(schema):
            conn.execute(statement)
    queue = hp.Queue(postgres_url, name="installed", migrate=False)
    async with queue:

        @queue.task
        async def double(x: int) -> int:
            return 2 * x

        job = await double.enqueue(21)
        worker = hp.Worker(queue, handle_signals=False)
        task = asyncio.create_task(worker.run())
        assert await job.result(timeout=10) == 42
        worker.stop()
        await asyncio.wait_for(task, 10)
        assert await queue.migrate() == [], "installation_sql recorded its migrations"


@pytest.mark.parametrize("schema", ["Bad-Name", "UPPER", "1st", "", "x" * 51, 'a"b', "a b"])
def test_a_bad_schema_name_is_a_value_error_naming_it_and_the_rule(schema: str) -> None:
    url = f"postgresql://postgres@127.0.0.1:5432/test?{urlencode({'schema': schema})}"
    rule = "use 1-50 characters of a-z, 0-9 and _, not starting with a digit"
    with pytest.raises(ValueError, match=re.escape(repr(schema)) + ".*" + re.escape(rule)):
        hp.Queue(url)
    with pytest.raises(ValueError, match=re.escape(repr(schema))):
        installation_sql(schema)


def test_a_good_schema_name_is_taken() -> None:
    """The counterpart: the longest allowed name passes (no connection is made)."""
    queue = hp.Queue(f"postgresql://postgres@127.0.0.1:5432/test?schema=_{'a1' * 24}z")
    assert isinstance(queue.backend, PostgresBackend)
    assert queue.backend.schema == f"_{'a1' * 24}z"


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "postgresql+asyncpg"])
async def test_a_sqlalchemy_async_connection_is_a_caller_transaction(
    queue: hp.Queue, driver: str
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(conninfo_of(queue).replace("postgresql", driver, 1))
    try:
        async with engine.connect() as conn:
            async with conn.begin():
                async with queue.transaction(conn):
                    kept = await queue.enqueue("ship", 1)
                await conn.execute(text("SELECT 1"))
            trans = await conn.begin()
            async with queue.transaction(conn):
                dropped = await queue.enqueue("ship", 2)
            await trans.rollback()
    finally:
        await engine.dispose()
    assert await queue.get_job(kept.id) is not None
    assert await queue.get_job(dropped.id) is None
