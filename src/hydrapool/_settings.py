"""Settings of the ``hydrapool`` command line: flags, then the environment, then defaults.

    HYDRAPOOL_URL         the queue URL when no --url (or MODULE:ATTRIBUTE) is given
    HYDRAPOOL_QUEUE       the queue name when no --name is given
    REDIS_HOST/REDIS_PORT without HYDRAPOOL_URL: redis://HOST:PORT/0 (Hydra's variables)
    POOL_PREFIX           the prefix= of a Redis URL taken from the environment (Hydra)
    POOL_MAX_CONCURRENT   the queue-wide max_concurrency that worker/coordinator apply (Hydra)
    POOL_INTERVAL         the coordinator's tick in milliseconds (Hydra)

An empty variable counts as unset. ``load_env_file`` adds the NAME=VALUE lines
of ``./.env`` that the environment does not already set (Hydra's ``.env``),
before anything reads it. Every bad value raises ``ValueError`` naming the
variable, the value and the rule.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "DEFAULT_URL",
    "coordinator_interval",
    "load_env_file",
    "max_concurrency",
    "queue_name",
    "queue_url",
    "read_env_file",
]

DEFAULT_URL = "sqlite:///hydrapool.db"
DEFAULT_INTERVAL = 1.0  # seconds, as hp.Coordinator's default
REDIS_SCHEMES = ("redis", "rediss")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PREFIX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*")
Source = str  # where a value came from: a flag, variables, or "default"


# ── .env ────────────────────────────────────────────────────────────────────
def read_env_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """``NAME=VALUE`` lines (``export`` and quotes allowed; ``#`` starts a comment).

    No interpolation, no multi-line values. A line that is not ``NAME=VALUE``
    is skipped (the file may serve other tools too, as python-dotenv does);
    the second list names each one by file and line.
    """
    found: dict[str, str] = {}
    skipped: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.fullmatch(key):
            skipped.append(f"{path}:{number}: skipped, not NAME=VALUE: {raw!r}")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        found[key] = value
    return found, skipped


def load_env_file(
    path: Path | None = None, environ: MutableMapping[str, str] | None = None
) -> None:
    """Add the variables of ``path`` (default ``./.env``) that ``environ`` lacks; each
    line skipped is reported on stderr."""
    path = Path(".env") if path is None else path
    environ = os.environ if environ is None else environ
    if path.is_file():
        found, skipped = read_env_file(path)
        for note in skipped:
            print(f"hydrapool: {note}", file=sys.stderr)
        for key, value in found.items():
            environ.setdefault(key, value)


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


# ── the queue URL and name ──────────────────────────────────────────────────
def queue_url(flag: str | None, env: Mapping[str, str]) -> tuple[str, Source]:
    """``--url``, else ``HYDRAPOOL_URL``, else ``redis://REDIS_HOST:REDIS_PORT/0``, else
    the SQLite default; a Redis URL from the environment takes ``POOL_PREFIX``."""
    if flag:
        return flag, "--url"
    url = _get(env, "HYDRAPOOL_URL")
    if url is not None:
        if not urlsplit(url).scheme or "://" not in url:
            raise ValueError(
                f"HYDRAPOOL_URL={url!r} is not a queue URL: use memory://, "
                "sqlite:///path.db, postgresql://... or redis://host:port/db"
            )
        return _prefixed(url, "HYDRAPOOL_URL", env)
    host = _get(env, "REDIS_HOST")
    if host is not None:
        url = f"redis://{_host(host)}:{_port(env)}/0"
        named = "REDIS_HOST, REDIS_PORT" if _get(env, "REDIS_PORT") else "REDIS_HOST"
        return _prefixed(url, named, env)
    return DEFAULT_URL, "default"


def _prefixed(url: str, source: Source, env: Mapping[str, str]) -> tuple[str, Source]:
    prefix = _get(env, "POOL_PREFIX")
    parts = urlsplit(url)
    if prefix is None or parts.scheme not in REDIS_SCHEMES:
        return url, source
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"POOL_PREFIX={prefix!r} is invalid: use 1-200 letters, digits and _ . : - "
            "(not starting with . : or -)"
        )
    have = dict(parse_qsl(parts.query)).get("prefix")
    if have is not None and have != prefix:
        raise ValueError(
            f"{source} has prefix={have!r} but POOL_PREFIX={prefix!r}: set only one of them"
        )
    if have is None:
        query = f"{parts.query}&prefix={prefix}" if parts.query else f"prefix={prefix}"
        url = parts._replace(query=query).geturl()
    return url, f"{source}, POOL_PREFIX"


def _host(host: str) -> str:
    if _HOST.fullmatch(host):
        return host
    if _IPV6.fullmatch(host):
        return host if host.startswith("[") else f"[{host}]"
    raise ValueError(
        f"REDIS_HOST={host!r} is not a host name or IP address: use letters, digits, "
        "'.' and '-' (or an IPv6 address)"
    )


def _port(env: Mapping[str, str]) -> int:
    text = _get(env, "REDIS_PORT")
    if text is None:
        return 6379
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"REDIS_PORT={text!r} must be a port number from 1 to 65535")
    return int(text)


def queue_name(flag: str | None, env: Mapping[str, str]) -> tuple[str, Source]:
    """``--name``, else ``HYDRAPOOL_QUEUE``, else ``default``."""
    if flag:
        return flag, "--name"
    name = _get(env, "HYDRAPOOL_QUEUE")
    return (name, "HYDRAPOOL_QUEUE") if name is not None else ("default", "default")


# ── the manager's knobs (Hydra's POOL_*) ────────────────────────────────────
def max_concurrency(flag: int | None, env: Mapping[str, str]) -> tuple[int | None, Source]:
    """``--max-concurrency``, else ``POOL_MAX_CONCURRENT``, else None (leave it as stored)."""
    if flag is not None:
        return flag, "--max-concurrency"
    text = _get(env, "POOL_MAX_CONCURRENT")
    if text is None:
        return None, "default"
    if not text.isdigit() or int(text) < 1:
        raise ValueError(
            f"POOL_MAX_CONCURRENT={text!r} must be a whole number >= 1 "
            "(how many of the queue's jobs may run at once)"
        )
    return int(text), "POOL_MAX_CONCURRENT"


def coordinator_interval(
    flag: float | None, env: Mapping[str, str], flag_name: str = "--interval"
) -> tuple[float, Source]:
    """Seconds between coordinator passes: the flag, else ``POOL_INTERVAL`` (ms), else 1 s."""
    if flag is not None:
        return flag, flag_name
    text = _get(env, "POOL_INTERVAL")
    if text is None:
        return DEFAULT_INTERVAL, "default"
    try:
        ms = float(text)
    except ValueError:
        ms = float("nan")
    if not 0 < ms < 86_400_000:  # NaN fails too
        raise ValueError(
            f"POOL_INTERVAL={text!r} must be a number of milliseconds above 0 and below "
            "86400000 (the coordinator's tick)"
        )
    return ms / 1000.0, "POOL_INTERVAL"
