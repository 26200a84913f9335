"""Versioned PostgreSQL migrations: ``NNNN_name.sql``, ``{schema}`` replaced by the schema."""
