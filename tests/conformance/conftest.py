"""The conformance suite: every test runs once per backend.

PostgreSQL tests each get a schema of their own (see ``postgres_url``), Redis
tests a key prefix of their own (see ``redis_url``). ``redis-cluster`` runs every
test again on the session's throwaway three-node Redis Cluster, through a URL
naming its first node (see ``redis_cluster_url``): the whole suite adds about
35 s to a run.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import hydrapool as hp

BACKENDS = ["memory", "sqlite", "postgres", "redis", "redis-cluster"]


def backend_url(kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(backend_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend_kind == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    if backend_kind == "redis":
        return str(request.getfixturevalue("redis_url"))
    if backend_kind == "redis-cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return backend_url(backend_kind, tmp_path)


@pytest.fixture
async def queue(url: str) -> AsyncIterator[hp.Queue]:
    q = hp.Queue(url, name=f"t{uuid.uuid4().hex[:8]}")
    async with q:
        yield q
