"""One interface over the connections the PostgreSQL backend writes with.

The backend's own pooled connections are psycopg ``AsyncConnection`` in
pipeline mode: statements are queued and sent together, and a round trip
happens only when a result is needed (or at commit). A caller's transaction
may be on a psycopg ``Connection`` or ``AsyncConnection``, or on an asyncpg
connection; each gets the same three calls, so the enqueue logic is written
once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

Row = Sequence[Any]
_PARAM = re.compile(r"%\((\w+)\)s")


class Pending(Protocol):
    """A statement sent (or queued); its rows when asked."""

    async def fetch(self) -> list[Row]: ...


class Db(Protocol):
    """Where the backend's statements run: one open transaction."""

    async def submit(self, sql: str, params: Mapping[str, Any]) -> Pending:
        """Send (or queue) a statement; read its rows later."""

    async def rows(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        """Run a statement and return its rows."""

    async def in_transaction(self) -> bool:
        """Whether a transaction is open (statements will not commit one by one)."""


class _Done:
    def __init__(self, rows: list[Row]) -> None:
        self._rows = rows

    async def fetch(self) -> list[Row]:
        return self._rows


class _Cursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    async def fetch(self) -> list[Row]:
        rows: list[Row] = await self._cursor.fetchall()
        return rows


def _open(conn: Any) -> bool:
    from psycopg.pq import TransactionStatus

    return bool(not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE)


class AsyncPsycopg:
    """A psycopg ``AsyncConnection`` (pipelined when in pipeline mode). Rows are read
    as tuples whatever the connection's own row factory."""

    def __init__(self, conn: Any) -> None:
        from psycopg.rows import tuple_row

        self.conn = conn
        self.row_factory = tuple_row

    async def submit(self, sql: str, params: Mapping[str, Any]) -> Pending:
        cursor = self.conn.cursor(row_factory=self.row_factory)
        return _Cursor(await cursor.execute(sql, params))

    async def rows(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        cursor = await self.conn.cursor(row_factory=self.row_factory).execute(sql, params)
        rows: list[Row] = await cursor.fetchall()  # (in pipeline mode, a sync)
        return rows

    async def in_transaction(self) -> bool:
        return _open(self.conn)


class SyncPsycopg:
    """A psycopg (sync) ``Connection``: each call blocks for its round trip."""

    def __init__(self, conn: Any) -> None:
        from psycopg.rows import tuple_row

        self.conn = conn
        self.row_factory = tuple_row

    async def submit(self, sql: str, params: Mapping[str, Any]) -> Pending:
        return _Done(await self.rows(sql, params))

    async def rows(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        # In a thread: waiting for a row lock must not block the event loop, which may
        # be running the very step (of this process) that holds the lock.
        return await asyncio.to_thread(self._rows, sql, params)

    def _rows(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        cursor = self.conn.cursor(row_factory=self.row_factory).execute(sql, params)
        return list(cursor.fetchall()) if cursor.description is not None else []

    async def in_transaction(self) -> bool:
        return _open(self.conn)


class Asyncpg:
    """An asyncpg connection: named parameters become ``$n``."""

    _converted: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    def convert(cls, sql: str) -> tuple[str, tuple[str, ...]]:
        found = cls._converted.get(sql)
        if found is None:
            names: list[str] = []

            def number(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in names:
                    names.append(name)
                return f"${names.index(name) + 1}"

            found = (_PARAM.sub(number, sql), tuple(names))
            cls._converted[sql] = found
        return found

    async def submit(self, sql: str, params: Mapping[str, Any]) -> Pending:
        return _Done(await self.rows(sql, params))

    async def rows(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        text, names = self.convert(sql)
        rows: list[Row] = await self.conn.fetch(text, *(params[n] for n in names))
        return rows

    async def in_transaction(self) -> bool:
        return bool(self.conn.is_in_transaction())


def adapt(conn: Any) -> Db:
    """The ``Db`` for a caller's connection, or a TypeError naming what is accepted."""
    module = type(conn).__module__
    if module.startswith("psycopg"):
        import psycopg

        if isinstance(conn, psycopg.AsyncConnection):
            return AsyncPsycopg(conn)
        if isinstance(conn, psycopg.Connection):
            return SyncPsycopg(conn)
    if module.startswith("asyncpg"):
        return Asyncpg(conn)
    raise TypeError(
        "a PostgreSQL queue takes a psycopg Connection or AsyncConnection, an asyncpg "
        "connection, or a SQLAlchemy AsyncConnection on either, for caller transactions; "
        f"got {conn!r}"
    )
