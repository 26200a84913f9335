"""One URL for one Redis or a Redis Cluster: what ``open()`` connects to.

``redis://host:port/0?...`` may name a single server or any node of a cluster.
The first reply tells which (``INFO cluster``: ``cluster_enabled``), so a single
server costs no more round trips than a ``PING`` did. On a cluster, commands and
scripts go through redis-py's ``RedisCluster``, which routes each by its keys'
slot (a queue's keys share one, see ``key_base``); pub/sub goes through a plain
client to one node, since a classic ``PUBLISH`` reaches every node of a cluster.
Scripts go by their SHA1 and are sent whole only to a node that lacks them
(``Script``).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError, NoScriptError

__all__ = ["Script", "connect", "next_hub"]


def _keepalive() -> dict[int, int]:
    """TCP options that find a dead server or network path within about half a minute."""
    wanted = (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    options = {getattr(socket, n): v for n, v in wanted if hasattr(socket, n)}
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # (Linux) unacknowledged data, in ms
        options[socket.TCP_USER_TIMEOUT] = 30_000
    return options


# No socket timeout (a URL may still set ``socket_timeout``): with one, redis-py sends
# every command through asyncio.wait_for, which on Python 3.11 wraps the send in a task of
# its own, so each command leaves a loop iteration later; that cost a job 0.1-0.15 ms of
# its enqueue-to-start latency on the test VM. TCP keepalive finds dead peers instead;
# step scripts (backend._run) and the inbox's BLMOVE carry their own time limits.
_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": None,
    "socket_keepalive": True,
    "socket_keepalive_options": _keepalive(),
}


class Script:
    """A Lua script run by its SHA1 (``EVALSHA``). Where the server does not know it yet
    (a new or restarted server, a cluster node that never ran it), it is sent whole once
    (``EVAL``, which also keeps it there). redis-py's own ``Script`` would load it with
    ``SCRIPT LOAD`` on every primary of a cluster, which fails while any one is down."""

    __slots__ = ("client", "sha", "text")

    def __init__(self, client: Any, text: str) -> None:
        self.client, self.text = client, text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.eval(self.text, len(keys), *keys, *args)


async def connect(url: str) -> tuple[Any, Any]:
    """(the client for commands and scripts, the plain client pub/sub listens through):
    the same client twice on a single server."""
    plain = aioredis.Redis.from_url(url, **_OPTIONS)
    try:
        if not await _is_cluster(plain):
            return plain, plain
        return await _cluster(url), plain
    except BaseException:
        await plain.aclose()
        raise


async def _is_cluster(plain: Any) -> bool:
    try:
        info = await plain.info("cluster")
    except NoPermissionError:  # an ACL without INFO: the server answered; take it as one
        return False
    return bool(info.get("cluster_enabled"))


async def _cluster(url: str) -> Any:
    cluster = RedisCluster.from_url(url, **_OPTIONS)
    try:
        await cluster.initialize()  # reads the slot map (CLUSTER SLOTS)
    except BaseException:
        await cluster.aclose()
        raise
    return cluster


async def next_hub(url: str, cluster: Any, hub: Any) -> Any:
    """A plain client to the cluster node after ``hub``'s (by name, round the ring), for
    pub/sub to listen through once ``hub``'s connection was lost: that node may be gone.
    Closes ``hub``."""
    kwargs = hub.get_connection_kwargs()
    current = f"{kwargs.get('host')}:{kwargs.get('port')}"
    names = sorted({node.name for node in cluster.get_nodes()} | {current})
    host, _, port = names[(names.index(current) + 1) % len(names)].rpartition(":")
    with contextlib.suppress(Exception):  # its connections are gone or going
        await hub.aclose()
    return aioredis.Redis.from_url(_node_url(url, host, int(port)), **_OPTIONS)


def _node_url(url: str, host: str, port: int) -> str:
    """``url`` pointed at ``host:port``, keeping its credentials, scheme and options."""
    parts = urlsplit(url)
    user, at, _ = parts.netloc.rpartition("@")
    address = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{user}{at}{address}:{port}"))
