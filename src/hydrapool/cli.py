"""The ``hydrapool`` command line (``pip install hydrapool[cli]``: click and rich).

    hydrapool worker myapp.tasks:queue --concurrency 10
    hydrapool coordinator myapp.tasks:queue
    hydrapool status myapp.tasks:queue          # or --url sqlite:///x.db --name default
    hydrapool jobs --state failed --limit 20
    hydrapool enqueue send_email '["a@b.c", "hi"]'
    hydrapool cancel 3f2a...
    hydrapool migrate
    hydrapool config                            # the settings the environment gives

A queue is named either as ``MODULE:ATTRIBUTE`` (the application's own
``hp.Queue``, with its registered tasks: what ``worker`` needs) or by
``--url``/``HYDRAPOOL_URL`` and ``--name``/``HYDRAPOOL_QUEUE``. Hydra's own
variables are honoured too (``REDIS_HOST``, ``REDIS_PORT``, ``POOL_PREFIX``,
``POOL_MAX_CONCURRENT``, ``POOL_INTERVAL``), and ``./.env`` is read at start
(see ``hydrapool._settings``); flags win over the environment.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

from hydrapool import _settings
from hydrapool.exceptions import HydrapoolError
from hydrapool.queue.job import Job
from hydrapool.queue.queue import Queue

T = TypeVar("T")


def load_queue(
    target: str | None, url: str | None, name: str | None, *, must_exist: bool = False
) -> Queue:
    """The queue a command acts on: ``MODULE:ATTR``, else ``url`` and ``name``.

    ``must_exist``: for commands that only read or change existing jobs, a
    SQLite file that does not exist is an error, not a new empty database.
    """
    if target:
        module_name, _, attr = target.partition(":")
        if not module_name or not attr:
            raise ValueError(f"queue target {target!r} must look like MODULE:ATTRIBUTE")
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
        queue = getattr(module, attr, None)
        if not isinstance(queue, Queue):
            raise ValueError(f"{target!r} is not an hp.Queue (got {type(queue).__name__})")
        return queue
    url, source = _settings.queue_url(url, os.environ)
    name, named_by = _settings.queue_name(name, os.environ)
    try:
        queue = Queue(url, name=name)
    except ValueError as exc:  # say which setting gave the bad value
        raise ValueError(f"{exc} (the URL is from {source}, the name from {named_by})") from None
    path = getattr(queue.backend, "path", None)
    if must_exist and path not in (None, ":memory:") and not os.path.exists(path):
        raise ValueError(f"no database at {path!r} (from {url!r})")
    return queue


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion (the command's body)."""

    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def jobs_table(title: str, jobs: list[Job]) -> Any:
    """A rich table of jobs."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("id", "task", "channel", "state", "attempts", "created", "error"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            job.id,
            job.task,
            job.channel,
            str(job.state),
            f"{job.attempts}/{job.max_attempts}",
            _when(job.created_at),
            (job.error or "")[:60],
        )
    return table


def main() -> None:
    """The ``hydrapool`` console script."""
    try:
        from hydrapool._cli_commands import cli
    except ImportError as exc:
        sys.exit(
            f"the hydrapool command needs its extra ({exc.name} is missing): "
            "pip install 'hydrapool[cli]'"
        )
    try:
        _settings.load_env_file()
        cli()
    except (ValueError, OverflowError, HydrapoolError, LookupError, ImportError) as exc:
        # bad targets, names, numbers and payloads: one clear line, no traceback
        sys.exit(f"hydrapool: {exc}")


if __name__ == "__main__":
    main()
