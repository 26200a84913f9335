"""The job state machine, the named SQL of each backend, and SQLite migrations."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import pytest

import hydrapool as hp
from hydrapool.backends._sql import load_queries, migrations
from hydrapool.queue.job import ACTIVE, CLAIMABLE, TERMINAL, TRANSITIONS, JobState, can_move

SRC = Path(__file__).resolve().parents[2] / "src" / "hydrapool"


def test_transition_table_is_complete_and_consistent() -> None:
    assert set(TRANSITIONS) == {None, *JobState}
    assert {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.DROPPED,
    } == TERMINAL
    assert set(JobState) == ACTIVE | TERMINAL
    assert not ACTIVE & TERMINAL
    assert {JobState.WAITING, JobState.QUEUED, JobState.RETRYING} == CLAIMABLE
    for state in TERMINAL:
        assert not TRANSITIONS[state], f"{state} is terminal: nothing leaves it"
    assert can_move(None, JobState.DROPPED)
    assert can_move(JobState.RUNNING, JobState.QUEUED)
    assert not can_move(JobState.SUCCEEDED, JobState.RUNNING)
    assert not can_move(JobState.QUEUED, JobState.SUCCEEDED)


def test_every_named_query_is_used_and_every_used_name_exists() -> None:
    queries = load_queries("hydrapool.backends.sqlite")
    code = (SRC / "backends" / "sqlite" / "backend.py").read_text()
    used = set(re.findall(r'Q\["([a-z_]+)"\]', code))
    assert used == set(queries), f"unused: {set(queries) - used}; missing: {used - set(queries)}"


def test_every_postgres_query_is_used_and_every_used_name_exists() -> None:
    queries = load_queries("hydrapool.backends.postgres")
    code = "".join(p.read_text() for p in (SRC / "backends" / "postgres").glob("*.py"))
    used = set(re.findall(r'q\["([a-z_]+)"\]', code))
    used |= set(re.findall(r'_rows\(\s*"([a-z_]+)"', code))
    used |= set(re.findall(r'_write\(\s*"([a-z_]+)"', code))
    used |= set(re.findall(r'_limit_step\(\s*spec,\s*"([a-z_]+)"', code))
    assert used == set(queries), f"unused: {set(queries) - used}; missing: {used - set(queries)}"


def test_no_query_text_in_python_files() -> None:
    pattern = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM)\b")
    offenders = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if pattern.search(re.sub(r'"""[\s\S]*?"""', "", p.read_text()))
    ]
    assert offenders == []


def test_migrations_are_numbered_and_idempotent(tmp_path: Path) -> None:
    found = migrations("hydrapool.backends.sqlite")
    assert [v for v, _, _ in found] == list(range(1, len(found) + 1))

    async def scenario() -> list[str]:
        queue = hp.Queue(f"sqlite:///{tmp_path / 'm.db'}")
        async with queue:
            again = await queue.migrate()
        return again

    assert asyncio.run(scenario()) == [], "opening applied everything; a second run does nothing"
    conn = sqlite3.connect(tmp_path / "m.db")
    applied = [row[0] for row in conn.execute("SELECT name FROM hydrapool_migrations")]
    assert applied == [name for _, name, _ in found]


def test_fresh_schema_equals_step_by_step_schema(tmp_path: Path) -> None:
    """Applying the files one by one gives the schema a fresh open gives."""
    step = sqlite3.connect(tmp_path / "step.db")
    for _, _, sql in migrations("hydrapool.backends.sqlite"):
        step.executescript(sql)

    async def fresh() -> None:
        async with hp.Queue(f"sqlite:///{tmp_path / 'fresh.db'}"):
            pass

    asyncio.run(fresh())
    fresh_db = sqlite3.connect(tmp_path / "fresh.db")

    def schema(conn: sqlite3.Connection) -> list[tuple[str, str]]:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE name LIKE 'hydrapool_%' "
            "AND name != 'hydrapool_migrations' ORDER BY name"
        )
        return [(name, re.sub(r"\s+", " ", sql or "")) for name, sql in rows]

    assert schema(step) == schema(fresh_db)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///", "names no file"),
        ("redis://localhost/0?prefix=a{b", "prefix 'a{b'.*without braces"),
        ("redis://localhost/0?events_max=0", "events_max='0'.*positive whole number"),
        ("postgresql://localhost/db?schema=Bad-Name", "schema 'Bad-Name' is not allowed"),
        ("mysql://x", "unknown queue URL scheme 'mysql'"),
    ],
)
def test_bad_urls(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        hp.Queue(url)
