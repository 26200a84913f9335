"""Named SQL: ``-- name: x`` blocks in a backend's ``.sql`` files, loaded once."""

from __future__ import annotations

import re
from importlib.resources import files

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.M)


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Map each ``-- name:`` to the statement below it (comments kept, trailing ``;`` removed)."""
    text = files(package).joinpath(filename).read_text()
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in {package}/{filename}")
        queries[name] = body.strip().rstrip(";").strip()
    return queries


def migrations(package: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for every ``NNNN_name.sql`` file, in order."""
    found = []
    for entry in files(package).iterdir():
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)
