"""Shared test helpers.

Services (PostgreSQL, Redis) are reached through HYDRAPOOL_TEST_POSTGRES_URL and
HYDRAPOOL_TEST_REDIS_URL; a test that needs an unreachable one is skipped,
unless HYDRAPOOL_REQUIRE_SERVICES=1, where it fails (see `require_service`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get(
    "HYDRAPOOL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("HYDRAPOOL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_service(url: str) -> None:
    """Skip (or, under HYDRAPOOL_REQUIRE_SERVICES=1, fail) unless ``url``'s server answers."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2):
            return
    except OSError as exc:
        reason = f"service at {parts.hostname}:{parts.port} is unreachable: {exc}"
    if os.environ.get("HYDRAPOOL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"HYDRAPOOL_REQUIRE_SERVICES=1 and {reason}")
    pytest.skip(reason)


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``?schema=`` set (a PostgreSQL queue's tables live in that schema)."""
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("schema="))
    query = f"{query}&schema={schema}" if query else f"schema={schema}"
    return parts._replace(query=query).geturl()


def drop_schema(schema: str) -> None:
    """Drop a test's own schema (and everything in it)."""
    import psycopg

    conninfo = urlsplit(POSTGRES_URL)._replace(query="").geturl()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL queue URL with a schema of this test's own, dropped afterwards."""
    require_service(POSTGRES_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield with_schema(POSTGRES_URL, schema)
    drop_schema(schema)


def with_prefix(url: str, prefix: str) -> str:
    """``url`` with ``?prefix=`` set (a Redis queue's keys start with ``{prefix:queue}``)."""
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("prefix="))
    query = f"{query}&prefix={prefix}" if query else f"prefix={prefix}"
    return parts._replace(query=query).geturl()


def drop_prefix(prefix: str, url: str = REDIS_URL) -> int:
    """Delete every key under a test's own prefix; returns how many."""
    import redis

    client = redis.Redis.from_url(urlsplit(url)._replace(query="").geturl())
    try:
        keys = list(client.scan_iter(match="{" + prefix + ":*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis queue URL with a key prefix of this test's own, its keys deleted afterwards."""
    require_service(REDIS_URL)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield with_prefix(REDIS_URL, prefix)
    drop_prefix(prefix)
