"""The public surface is exactly hydrapool.__all__, and importing it needs no extras."""

from __future__ import annotations

import subprocess
import sys

import hydrapool


def test_all_is_sorted_and_complete() -> None:
    names = hydrapool.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    public = {n for n in vars(hydrapool) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(hydrapool, n)).__name__ == "module"}
    assert public - modules == set(names)
    for name in names:
        assert getattr(hydrapool, name).__doc__, f"{name} has no docstring"


def test_import_needs_no_optional_dependency() -> None:
    code = (
        "import sys, hydrapool\n"
        "bad = [m for m in ('psycopg', 'redis', 'starlette', 'rich', 'uvicorn', 'click')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_py_typed_marker_ships() -> None:
    from importlib.resources import files

    assert files("hydrapool").joinpath("py.typed").is_file()


def test_hydra_parity_names_are_public() -> None:
    assert {"Lease", "ReportRefused"} <= set(hydrapool.__all__)
    assert issubclass(hydrapool.ReportRefused, hydrapool.HydrapoolError)
    for method in ("add_job", "claim", "extend_lease", "finish_job", "fail_job", "show_pool"):
        assert getattr(hydrapool.Queue, method).__doc__, method
    for total in ("pending", "executing", "finished"):
        assert isinstance(getattr(hydrapool.QueueSnapshot, total), property), total
