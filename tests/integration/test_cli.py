"""The hydrapool command line, run as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

APP = """
import hydrapool as hp
queue = hp.Queue("sqlite:///app.db", name="demo")

@queue.task
async def hello(who: str) -> str:
    return f"hello {who}"
"""


def hydrapool(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hydrapool.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def test_enqueue_status_jobs_cancel_migrate(app_dir: Path) -> None:
    target = ["--url", "sqlite:///app.db", "--name", "demo"]
    assert "applied" in hydrapool(app_dir, "migrate", "app:queue").stdout
    job_id, state = hydrapool(app_dir, "enqueue", "hello", '["world"]', *target).stdout.split()
    assert state == "queued"
    later_id, _ = hydrapool(
        app_dir, "enqueue", "hello", '{"who": "x"}', "--delay", "60", *target
    ).stdout.split()
    status = hydrapool(app_dir, "status", "app:queue").stdout
    assert "queued" in status
    assert "waiting" in status
    assert job_id[:8] in hydrapool(app_dir, "jobs", *target).stdout
    assert hydrapool(app_dir, "cancel", later_id, *target).stdout.split() == [later_id, "cancelled"]
    missing = hydrapool(app_dir, "cancel", "nope", *target, check=False)
    assert missing.returncode != 0
    assert "no job 'nope'" in missing.stderr
    bad = hydrapool(app_dir, "status", "not-a-target", check=False)
    assert bad.returncode != 0
    assert "MODULE:ATTRIBUTE" in bad.stderr
    bad_json = hydrapool(app_dir, "enqueue", "hello", "{nope", *target, check=False)
    assert bad_json.returncode != 0
    assert "ARGS must be JSON" in bad_json.stderr


def test_worker_runs_jobs_and_stops_on_sigterm(app_dir: Path) -> None:
    target = ["--url", "sqlite:///app.db", "--name", "demo"]
    hydrapool(app_dir, "enqueue", "hello", '["cli"]', *target)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "hydrapool.cli", "worker", "app:queue"),
            *("--concurrency", "2", "--prefetch", "3"),
        ],
        cwd=app_dir,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while "succeeded" not in hydrapool(app_dir, "jobs", *target).stdout:
            assert time.monotonic() < deadline, "the worker did not run the job"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "tasks: hello" in err
    assert "2 slots (+3 prefetched)" in err
    bad = hydrapool(app_dir, "worker", "app:queue", "--prefetch", "-1", check=False)
    assert bad.returncode != 0
    assert "-1 is not in the range x>=0" in bad.stderr
