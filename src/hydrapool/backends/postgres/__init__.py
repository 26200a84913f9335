"""The PostgreSQL backend package: the code in backend.py, the SQL beside it.

Importing it imports psycopg: ``pip install hydrapool[postgres]``.
"""

from hydrapool.backends.postgres.backend import PostgresBackend, installation_sql

__all__ = ["PostgresBackend", "installation_sql"]
