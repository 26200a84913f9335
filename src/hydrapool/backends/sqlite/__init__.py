"""The SQLite backend package: the code in backend.py, the SQL beside it."""

from hydrapool.backends.sqlite.backend import SqliteBackend

__all__ = ["SqliteBackend"]
