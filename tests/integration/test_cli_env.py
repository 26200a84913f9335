"""The command line configured from the environment (HYDRAPOOL_*, Hydra's POOL_* and
REDIS_*), and from ./.env, run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

VARIABLES = (
    "HYDRAPOOL_URL",
    "HYDRAPOOL_QUEUE",
    "REDIS_HOST",
    "REDIS_PORT",
    "POOL_PREFIX",
    "POOL_MAX_CONCURRENT",
    "POOL_INTERVAL",
)
APP = """
import hydrapool as hp
queue = hp.Queue("sqlite:///app.db", name="demo")

@queue.task
async def hello(who: str) -> str:
    return f"hello {who}"
"""


def environment(**values: str) -> dict[str, str]:
    """This process's environment without any of ours, plus ``values``."""
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return {**base, "COLUMNS": "200", **values}


def hydrapool(
    cwd: Path, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hydrapool.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        env=environment(**env),
    )


def settings(cwd: Path, *args: str, **env: str) -> dict[str, str]:
    """``hydrapool config``: each setting's value and its source."""
    out = hydrapool(cwd, "config", *args, **env).stdout
    return {line.split(" = ")[0]: line.split(" = ")[1] for line in out.splitlines()}


def test_hydra_variables_build_the_redis_url_and_the_manager_settings(tmp_path: Path) -> None:
    got = settings(
        tmp_path,
        REDIS_HOST="redis.internal",
        REDIS_PORT="6380",
        POOL_PREFIX="emails",
        POOL_MAX_CONCURRENT="5",
        POOL_INTERVAL="100",
    )
    assert got == {
        "url": "redis://redis.internal:6380/0?prefix=emails  (REDIS_HOST, REDIS_PORT, POOL_PREFIX)",
        "name": "default  (default)",
        "max_concurrency": "5  (POOL_MAX_CONCURRENT)",
        "coordinator_interval": "0.1s  (POOL_INTERVAL)",
    }
    assert settings(tmp_path, REDIS_HOST="::1")["url"] == "redis://[::1]:6379/0  (REDIS_HOST)"


def test_hydrapool_url_wins_over_redis_host_and_flags_win_over_both(tmp_path: Path) -> None:
    env = {"HYDRAPOOL_URL": "redis://cache:6379/2", "REDIS_HOST": "other", "POOL_PREFIX": "p"}
    assert settings(tmp_path, **env)["url"] == (
        "redis://cache:6379/2?prefix=p  (HYDRAPOOL_URL, POOL_PREFIX)"
    )
    flagged = settings(tmp_path, "--url", "memory://", "--name", "jobs", **env)
    assert flagged["url"] == "memory://  (--url)"
    assert flagged["name"] == "jobs  (--name)"
    assert settings(tmp_path)["url"] == "sqlite:///hydrapool.db  (default)"
    assert settings(tmp_path, POOL_PREFIX="p", HYDRAPOOL_QUEUE="q") == {
        "url": "sqlite:///hydrapool.db  (default)",  # a prefix is for Redis URLs only
        "name": "q  (HYDRAPOOL_QUEUE)",
        "max_concurrency": "unchanged  (default)",
        "coordinator_interval": "1s  (default)",
    }


def test_commands_use_hydrapool_url(tmp_path: Path) -> None:
    env = {"HYDRAPOOL_URL": "sqlite:///env.db", "HYDRAPOOL_QUEUE": "demo"}
    job_id, state = hydrapool(tmp_path, "enqueue", "hello", '["env"]', **env).stdout.split()
    assert state == "queued"
    assert (tmp_path / "env.db").exists()
    assert job_id[:8] in hydrapool(tmp_path, "jobs", **env).stdout
    other = hydrapool(tmp_path, "jobs", "--url", "sqlite:///flag.db", check=False, **env)
    assert other.returncode != 0, "the flag wins: flag.db does not exist"
    assert "flag.db" in other.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_HOST": "a/b"}, "REDIS_HOST='a/b' is not a host name"),
        ({"REDIS_HOST": "h", "REDIS_PORT": "99999"}, "REDIS_PORT='99999' must be a port"),
        ({"REDIS_HOST": "h", "REDIS_PORT": "x"}, "REDIS_PORT='x' must be a port"),
        ({"REDIS_HOST": "h", "POOL_PREFIX": "{x}"}, "POOL_PREFIX='{x}' is invalid"),
        (
            {"HYDRAPOOL_URL": "redis://h/0?prefix=a", "POOL_PREFIX": "b"},
            "HYDRAPOOL_URL has prefix='a' but POOL_PREFIX='b'",
        ),
        ({"HYDRAPOOL_URL": "jobs.db"}, "HYDRAPOOL_URL='jobs.db' is not a queue URL"),
        ({"POOL_MAX_CONCURRENT": "0"}, "POOL_MAX_CONCURRENT='0' must be a whole number >= 1"),
        ({"POOL_MAX_CONCURRENT": "ten"}, "POOL_MAX_CONCURRENT='ten' must be a whole number"),
        ({"POOL_INTERVAL": "-5"}, "POOL_INTERVAL='-5' must be a number of milliseconds"),
        ({"POOL_INTERVAL": "fast"}, "POOL_INTERVAL='fast' must be a number of milliseconds"),
    ],
)
def test_bad_values_name_the_variable_and_the_rule(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = hydrapool(tmp_path, "config", check=False, **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_scheme_says_where_the_url_came_from(tmp_path: Path) -> None:
    result = hydrapool(tmp_path, "status", check=False, HYDRAPOOL_URL="mysql://db/x")
    assert result.returncode != 0
    assert "unknown queue URL scheme 'mysql'" in result.stderr
    assert "from HYDRAPOOL_URL" in result.stderr


def test_dot_env_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# Hydra's .env, hydrapool's names\n"
        "\n"
        "export HYDRAPOOL_URL='sqlite:///dot.db'\n"
        'POOL_MAX_CONCURRENT="3"\n'
        "POOL_INTERVAL=250 # milliseconds\n"
    )
    got = settings(tmp_path, POOL_MAX_CONCURRENT="4")
    assert got["url"] == "sqlite:///dot.db  (HYDRAPOOL_URL)"
    assert got["max_concurrency"] == "4  (POOL_MAX_CONCURRENT)"
    assert got["coordinator_interval"] == "0.25s  (POOL_INTERVAL)"
    (tmp_path / ".env").write_text("POOL_INTERVAL=100\nthis is not an assignment\n")
    other_tools = hydrapool(tmp_path, "config")
    assert ".env:2: skipped, not NAME=VALUE: 'this is not an assignment'" in other_tools.stderr
    assert "coordinator_interval = 0.1s  (POOL_INTERVAL)" in other_tools.stdout
    (tmp_path / ".env").write_text("POOL_MAX_CONCURRENT=-1\n")
    bad = hydrapool(tmp_path, "config", check=False)
    assert bad.returncode != 0
    assert "POOL_MAX_CONCURRENT='-1' must be a whole number >= 1" in bad.stderr


def test_the_env_example_at_the_repo_root_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / ".env.example"
    (tmp_path / ".env").write_text(example.read_text())
    assert settings(tmp_path) == {
        "url": "redis://localhost:6379/0?prefix=hydra  (REDIS_HOST, REDIS_PORT, POOL_PREFIX)",
        "name": "default  (default)",
        "max_concurrency": "10  (POOL_MAX_CONCURRENT)",
        "coordinator_interval": "1s  (POOL_INTERVAL)",
    }


def wait_for_status(cwd: Path, text: str, **env: str) -> None:
    """Poll ``hydrapool status`` (another process's doing: there is no event to await)."""
    deadline = time.monotonic() + 30
    while text not in hydrapool(cwd, "status", "app:queue", **env).stdout:
        assert time.monotonic() < deadline, f"status never showed {text!r}"
        time.sleep(0.1)


def test_worker_and_coordinator_apply_the_queue_limit(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    hydrapool(tmp_path, "migrate", "app:queue")
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "hydrapool.cli", "coordinator", "app:queue"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(POOL_MAX_CONCURRENT="3", POOL_INTERVAL="50"),
    )
    try:
        wait_for_status(tmp_path, "queue max_concurrency=3")
    finally:
        coordinator.terminate()
        _, err = coordinator.communicate(timeout=30)
    assert "every 0.05s, queue max_concurrency=3" in err

    hydrapool(
        tmp_path, "enqueue", "hello", '["limits"]', "--url", "sqlite:///app.db", "--name", "demo"
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "hydrapool.cli", "worker", "app:queue", "--max-concurrency", "2"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(POOL_MAX_CONCURRENT="5"),
    )
    try:
        wait_for_status(tmp_path, "queue max_concurrency=2")
        wait_for_status(tmp_path, "succeeded")
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "queue max_concurrency=2" in err


def test_redis_host_and_pool_prefix_reach_a_real_redis(tmp_path: Path, redis_url: str) -> None:
    parts = urlsplit(redis_url)
    if parts.path not in ("", "/0"):
        pytest.skip("REDIS_HOST/REDIS_PORT build a URL of database 0")
    prefix = dict(parse_qsl(parts.query))["prefix"]
    env = {
        "REDIS_HOST": parts.hostname or "127.0.0.1",
        "REDIS_PORT": str(parts.port or 6379),
        "POOL_PREFIX": prefix,
    }
    job_id, state = hydrapool(tmp_path, "enqueue", "hello", '["redis"]', **env).stdout.split()
    assert state == "queued"
    assert f"prefix={prefix}" in hydrapool(tmp_path, "status", **env).stdout
    assert job_id[:8] in hydrapool(tmp_path, "jobs", **env).stdout
