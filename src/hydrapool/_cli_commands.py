"""The ``hydrapool`` commands (click + rich: only imported when the CLI runs)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from hydrapool import _settings
from hydrapool.cli import jobs_table, load_queue, run
from hydrapool.queue.coordinator import Coordinator
from hydrapool.queue.job import Job
from hydrapool.queue.queue import Queue, QueueSnapshot
from hydrapool.queue.worker import Worker


def _queue_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.argument("target", required=False)(fn)
    fn = click.option("--url", help="backend URL (else HYDRAPOOL_URL)")(fn)
    fn = click.option("--name", help="queue name (else HYDRAPOOL_QUEUE or 'default')")(fn)
    return fn


def _limit_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--max-concurrency",
        type=click.IntRange(min=1),
        default=None,
        help="cap the queue's running jobs, set at start (else POOL_MAX_CONCURRENT)",
    )(fn)


async def _apply_limit(queue: Queue, limit: int | None) -> None:
    if limit is not None:
        await queue.set_limits(max_concurrency=limit)


@click.group(help="hydrapool: durable job queues and concurrency limits.")
def cli() -> None:
    """The command group."""


@cli.command(help="Run a worker: claim and run the queue's jobs until SIGTERM/SIGINT.")
@click.argument("target")
@click.option("--concurrency", default=10, show_default=True, help="execution slots")
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="jobs claimed ahead and held, to start as slots free",
)
@click.option("--lease", default=30.0, show_default=True, help="lease seconds")
@click.option("--grace", default=30.0, show_default=True, help="seconds to finish on stop")
@click.option("--channels", default=None, help="comma-separated channels (default: all)")
@click.option("--no-coordinator", is_flag=True, help="do not run the coordinator here")
@click.option(
    "--coordinator-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="seconds between coordinator passes (else POOL_INTERVAL in ms, else 1)",
)
@_limit_option
def worker(
    target: str,
    concurrency: int,
    prefetch: int,
    lease: float,
    grace: float,
    channels: str | None,
    no_coordinator: bool,
    coordinator_interval: float | None,
    max_concurrency: int | None,
) -> None:
    """hydrapool worker MODULE:QUEUE."""
    queue = load_queue(target, None, None)
    interval, _ = _settings.coordinator_interval(
        coordinator_interval, os.environ, "--coordinator-interval"
    )
    limit, _ = _settings.max_concurrency(max_concurrency, os.environ)
    chosen = [c for c in channels.split(",") if c] if channels else None
    w = Worker(
        queue,
        concurrency,
        prefetch=prefetch,
        lease=lease,
        grace=grace,
        channels=chosen,
        coordinator=not no_coordinator,
        coordinator_interval=interval,
    )
    tasks = ", ".join(sorted(queue.tasks)) or "(none registered)"
    cap = "" if limit is None else f", queue max_concurrency={limit}"
    ahead = f" (+{prefetch} prefetched)" if prefetch else ""
    click.echo(
        f"worker {w.id}: queue {queue.name!r} on {queue.url}, {concurrency} slots{ahead}{cap}, "
        f"tasks: {tasks}",
        err=True,
    )

    async def go() -> None:
        async with queue:
            await _apply_limit(queue, limit)
            await w.run()

    run(go())


@cli.command(help="Run only the coordinator (leases, release, retention): Hydra's manager.")
@_queue_options
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="seconds between passes (else POOL_INTERVAL in ms, else 1)",
)
@_limit_option
def coordinator(
    target: str | None,
    url: str | None,
    name: str | None,
    interval: float | None,
    max_concurrency: int | None,
) -> None:
    """hydrapool coordinator."""
    queue = load_queue(target, url, name)
    seconds, _ = _settings.coordinator_interval(interval, os.environ)
    limit, _ = _settings.max_concurrency(max_concurrency, os.environ)
    cap = "" if limit is None else f", queue max_concurrency={limit}"
    click.echo(
        f"coordinator: queue {queue.name!r} on {queue.url}, every {seconds:g}s{cap}", err=True
    )

    async def go() -> None:
        async with queue:
            await _apply_limit(queue, limit)
            await Coordinator(queue, interval=seconds).run()

    run(go())


def _status_table(queue: Queue, snap: QueueSnapshot) -> Table:
    states = sorted({s for per in snap.channels.values() for s in per})
    table = Table(title=f"queue {queue.name!r} on {queue.url}")
    table.add_column("channel")
    for state in states:
        table.add_column(state, justify="right")
    table.add_column("policy")
    for channel, per in sorted(snap.channels.items()):
        policy = snap.policies.get(channel)
        rule = (
            ""
            if policy is None
            else (f"max_concurrency={policy.max_concurrency} max_size={policy.max_size}")
        )
        table.add_row(channel, *(str(per.get(s, 0)) for s in states), rule)
    table.add_row(
        "[b]all[/b]",
        *(str(snap.counts.get(s, 0)) for s in states),
        f"queue max_concurrency={snap.max_concurrency}",
    )
    return table


@cli.command(help="Counts by state and channel, and the running jobs.")
@_queue_options
def status(target: str | None, url: str | None, name: str | None) -> None:
    """hydrapool status."""
    queue = load_queue(target, url, name, must_exist=True)

    async def go() -> QueueSnapshot:
        async with queue:
            return await queue.show_pool()

    snap = run(go())
    console = Console()
    console.print(_status_table(queue, snap))
    if snap.running:
        console.print(jobs_table("running", snap.running))


@cli.command(help="List jobs, newest first.")
@_queue_options
@click.option("--state", default=None)
@click.option("--channel", default=None)
@click.option("--limit", default=50, show_default=True)
def jobs(
    target: str | None,
    url: str | None,
    name: str | None,
    state: str | None,
    channel: str | None,
    limit: int,
) -> None:
    """hydrapool jobs."""
    queue = load_queue(target, url, name, must_exist=True)

    async def go() -> list[Job]:
        async with queue:
            return await queue.jobs(state=state, channel=channel, limit=limit)

    found = run(go())
    Console().print(jobs_table(f"{len(found)} jobs", found))


@cli.command(help="Enqueue TASK with ARGS: a JSON list (args), object (kwargs) or value.")
@click.argument("task")
@click.argument("args", default="[]")
@click.option("--url")
@click.option("--name")
@click.option("--channel", default=None)
@click.option("--priority", default=None, type=int)
@click.option("--delay", default=None, type=float)
def enqueue(
    task: str,
    args: str,
    url: str | None,
    name: str | None,
    channel: str | None,
    priority: int | None,
    delay: float | None,
) -> None:
    """hydrapool enqueue TASK JSON."""
    queue = load_queue(None, url, name)
    try:
        data = json.loads(args)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"ARGS must be JSON: {exc}", param_hint="ARGS") from None
    positional = data if isinstance(data, list) else ([] if isinstance(data, dict) else [data])
    keywords = data if isinstance(data, dict) else {}

    async def go() -> Job:
        async with queue:
            call = queue._task_of(task).options(channel=channel, priority=priority, delay=delay)
            return await call.enqueue(*positional, **keywords)

    job = run(go())
    click.echo(f"{job.id} {job.state}")


@cli.command(help="Cancel a job by id.")
@click.argument("job_id")
@click.option("--url")
@click.option("--name")
def cancel(job_id: str, url: str | None, name: str | None) -> None:
    """hydrapool cancel ID."""
    queue = load_queue(None, url, name, must_exist=True)

    async def go() -> Job | None:
        async with queue:
            return await queue.cancel(job_id)

    job = run(go())
    if job is None:
        raise click.ClickException(f"no job {job_id!r} in queue {queue.name!r}")
    click.echo(f"{job.id} {job.state}")


@cli.command(help="Apply pending schema migrations.")
@_queue_options
def migrate(target: str | None, url: str | None, name: str | None) -> None:
    """hydrapool migrate."""
    queue = load_queue(target, url, name)

    async def go() -> list[str]:
        # Straight to the backend: opening the queue first would migrate on its own
        # (Queue(migrate=True)) and leave this command nothing to report.
        try:
            return await queue.backend.migrate()
        finally:
            await queue.backend.close()

    applied = run(go())
    click.echo("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


@cli.command(help="Show the settings the flags and environment give, and where each came from.")
@click.option("--url", help="backend URL (else HYDRAPOOL_URL, else REDIS_HOST/REDIS_PORT)")
@click.option("--name", help="queue name (else HYDRAPOOL_QUEUE or 'default')")
def config(url: str | None, name: str | None) -> None:
    """hydrapool config: nothing is opened or changed."""
    env = os.environ
    rows = [
        ("url", *_settings.queue_url(url, env)),
        ("name", *_settings.queue_name(name, env)),
        ("max_concurrency", *_settings.max_concurrency(None, env)),
        ("coordinator_interval", *_settings.coordinator_interval(None, env)),
    ]
    for key, value, source in rows:
        shown = "unchanged" if value is None else value
        if key == "coordinator_interval":
            shown = f"{value:g}s"
        click.echo(f"{key} = {shown}  ({source})")
