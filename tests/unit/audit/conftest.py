"""Fixtures for the audit-trail tests: the relational-store fixtures (SQLite and PostgreSQL)."""

from __future__ import annotations

from tests.unit.store.conftest_db import (  # noqa: F401 - fixtures are found by name
    database,
    database_url,
    migrated_url,
    pg_database,
)
