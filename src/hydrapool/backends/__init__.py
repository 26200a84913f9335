"""Storage backends for the durable queue, chosen by URL scheme.

A driver is imported only when its scheme is used, so ``import hydrapool``
needs none of them installed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from hydrapool.backends.base import Backend

__all__ = ["Backend", "backend_from_url"]

SCHEMES = ("memory", "sqlite", "postgresql", "postgres", "redis", "rediss")


def backend_from_url(url: str, *, migrate: bool = True) -> Backend:
    """Make the backend for ``url`` (``memory://``, ``sqlite:///path.db``, ...).

    ``migrate=False`` asks a backend with a versioned schema (PostgreSQL) to
    check it on open instead of applying pending migrations.
    """
    if not isinstance(url, str):
        raise TypeError(f"queue URL must be a string, got {url!r}")
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from hydrapool.backends.memory import MemoryBackend

        return MemoryBackend(url)
    if scheme == "sqlite":
        from hydrapool.backends.sqlite import SqliteBackend

        return SqliteBackend(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from hydrapool.backends.postgres import PostgresBackend
        except ImportError as exc:
            raise ImportError(
                f"the postgresql:// backend needs psycopg 3 ({exc}): "
                "pip install 'hydrapool[postgres]'"
            ) from exc

        return PostgresBackend(url, migrate=migrate)
    if scheme in ("redis", "rediss"):
        try:
            from hydrapool.backends.redis import RedisBackend
        except ImportError as exc:
            raise ImportError(
                f"the {scheme}:// backend needs redis-py ({exc}): pip install 'hydrapool[redis]'"
            ) from exc

        return RedisBackend(url)
    if scheme in SCHEMES:
        raise ValueError(f"the {scheme}:// backend is not available yet (queue URL {url!r})")
    raise ValueError(
        f"unknown queue URL scheme {scheme!r} in {url!r}: use memory://, sqlite:///path.db, "
        "postgresql://... or redis://..."
    )
