"""Shared test helpers.

Services (PostgreSQL, Redis) are reached through HYDRAPOOL_TEST_POSTGRES_URL and
HYDRAPOOL_TEST_REDIS_URL; a test that needs an unreachable one is skipped,
unless HYDRAPOOL_REQUIRE_SERVICES=1, where it fails (see `require_service`).
A Redis Cluster of three throwaway ``redis-server`` processes is started once per
session (per xdist worker) by the first test that asks for it (`redis_cluster`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
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


# ── a throwaway Redis Cluster ────────────────────────────────────────────────
def redis_binary(name: str) -> str:
    """``name``'s path (redis-server, redis-cli); skip (or fail, under
    HYDRAPOOL_REQUIRE_SERVICES=1) without it."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not on PATH (the Redis Cluster tests start a throwaway cluster)"
    if os.environ.get("HYDRAPOOL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"HYDRAPOOL_REQUIRE_SERVICES=1 and {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayCluster:
    """``size`` redis-server processes in cluster mode on free ports (and free cluster
    bus ports), their files in ``folder``, no persistence, one primary per node and no
    replicas, joined by ``redis-cli --cluster create``; ``args``: more server options."""

    def __init__(self, folder: Path, size: int = 3, args: tuple[str, ...] = ()) -> None:
        self.server, self.cli = redis_binary("redis-server"), redis_binary("redis-cli")
        self.folder, self.size, self.args = folder, size, args
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def url(self, port: int | None = None) -> str:
        """A URL naming one node (the first, unless ``port``): any node leads to all."""
        return f"redis://127.0.0.1:{port or self.ports[0]}/0"

    def start(self) -> None:
        try:
            for _ in range(self.size):
                self.ports.append(self._node())
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            created = subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *nodes,
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert created.returncode == 0, created.stdout.decode() + created.stderr.decode()
            self._wait_until_ok()
        except BaseException:
            self.stop()
            raise

    def _node(self) -> int:
        """Start one node; a port taken meanwhile (by a test run beside this one) is
        retried on others."""
        for _ in range(5):
            port, bus = free_port(), free_port()
            args = ["--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1"]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            args += ["--dir", str(self.folder), "--save", "", "--appendonly", "no", *self.args]
            with (self.folder / f"redis-{port}.log").open("ab") as log:
                proc = subprocess.Popen([self.server, *args], stdout=log, stderr=log)
            if self._answers(proc, port):
                self.procs[port] = proc
                return port
        raise AssertionError(f"no cluster node would start; see the logs in {self.folder}")

    def _answers(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        """Poll the new node (setup, not a test's synchronisation) until it answers as
        itself (its process id: not a server another run started on the same port)."""
        import redis

        client = redis.Redis(port=port, socket_timeout=1)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(redis.RedisError):
                    if client.info("server")["process_id"] == proc.pid:
                        return True
                time.sleep(0.02)
        finally:
            client.close()
        proc.kill()
        proc.wait()
        return False

    def _wait_until_ok(self) -> None:
        """Poll every node (setup) until each sees every slot served and the state ok."""
        import redis

        deadline = time.monotonic() + 30
        for port in self.ports:
            client = redis.Redis(port=port, decode_responses=True)
            try:
                while (info := client.cluster("INFO"))["cluster_state"] != "ok" or int(
                    info["cluster_known_nodes"]
                ) < self.size:
                    assert time.monotonic() < deadline, f"{port}: {info}"
                    time.sleep(0.05)
            finally:
                client.close()

    def owner(self, key: str) -> int:
        """The port of the node that serves ``key``'s slot (CLUSTER KEYSLOT, CLUSTER SLOTS)."""
        import redis

        client = redis.Redis(port=self.ports[0], decode_responses=True)
        try:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for first, last, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return int(primary[1])
        finally:
            client.close()
        raise AssertionError(f"slot {slot} of {key!r} is served by no node")

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)

    def drop_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` on every node still running."""
        import redis

        deleted = 0
        for port in self.procs:
            client = redis.Redis(port=port)
            try:
                keys = list(client.scan_iter(match="{" + prefix + ":*", count=1000))
                with client.pipeline(transaction=False) as pipe:
                    for key in keys:  # one DEL each: a node's keys may be in several slots
                        pipe.delete(key)
                    pipe.execute()
                deleted += len(keys)
            finally:
                client.close()
        return deleted


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayCluster]:
    """Three throwaway cluster nodes for the whole session, killed at its end."""
    cluster = ThrowawayCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_redis_cluster(tmp_path: Path) -> Iterator[ThrowawayCluster]:
    """A cluster of this test's own, whose nodes it may kill: the others keep serving
    their slots (``cluster-require-full-coverage no``)."""
    cluster = ThrowawayCluster(tmp_path, args=("--cluster-require-full-coverage", "no"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: ThrowawayCluster) -> Iterator[str]:
    """A URL naming the cluster's first node, with a key prefix of this test's own (its
    keys, on every node, deleted afterwards)."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield with_prefix(redis_cluster.url(), prefix)
    redis_cluster.drop_prefix(prefix)
