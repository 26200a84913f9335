"""Every ```python block in docs/*.md runs, and prints the ```text block that follows it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
PG_EXAMPLE_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_EXAMPLE_URL = "redis://127.0.0.1:6379/0"


def _examples() -> list[tuple[str, str, str | None]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        blocks = list(BLOCK.finditer(text))
        for i, block in enumerate(blocks):
            if block.group(1) != "python":
                continue
            expected = None
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            if nxt and nxt.group(1) == "text" and not text[block.end() : nxt.start()].strip():
                expected = nxt.group(2)
            line = text[: block.start()].count("\n") + 1
            found.append((f"{page.name}:{line}", block.group(2), expected))
    return found


EXAMPLES = _examples()


@pytest.mark.parametrize(("where", "code", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_doc_example_runs(
    where: str, code: str, expected: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if PG_EXAMPLE_URL in code:  # on a schema of this test's own (skipped without the server)
        code = code.replace(PG_EXAMPLE_URL, str(request.getfixturevalue("postgres_url")))
    if REDIS_EXAMPLE_URL in code:  # under a key prefix of this test's own
        code = code.replace(REDIS_EXAMPLE_URL, str(request.getfixturevalue("redis_url")))
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stderr[-3000:]}"
    if expected is not None:
        assert result.stdout == expected, f"{where} printed something else"
