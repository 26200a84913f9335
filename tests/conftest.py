"""Shared test helpers.

Services (PostgreSQL, Redis) are reached through HYDRAPOOL_TEST_POSTGRES_URL and
HYDRAPOOL_TEST_REDIS_URL; a test that needs an unreachable one is skipped,
unless HYDRAPOOL_REQUIRE_SERVICES=1, where it fails (see `require_service`).
"""

from __future__ import annotations

import os
import socket
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
