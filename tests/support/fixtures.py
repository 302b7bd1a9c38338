"""Fixtures every suite may ask for by name, registered for the whole tree in ``tests/conftest.py``.

Only what several test modules used to define for themselves lives here: one fake clock, one scratch
audit database, the module-wide echo app and tripwire of the integration tests. The fast-state and
relational-store fixtures have their own plugins (``fast_state.py``, ``database.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.store.db import Database, default_sqlite_url
from gateway.store.migrate import upgrade
from tests.integration.harness import Echo, Tripwire, run_echo, run_tripwire

__all__ = ["audit_db", "clock", "echo", "tripwire"]


@pytest.fixture
def clock() -> FakeClock:
    """The test's one clock: Unix and monotonic time move only when the test advances it.

    The fast-state fixtures run on it too (``fast_clock`` is the same object), so one ``advance``
    ages sessions, codes and TTLs together, as the real clock would.
    """
    return FakeClock()


@pytest.fixture
async def audit_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database for an audit trail the test needs but does not examine.

    The audit trail's backends are covered by its own suite, so one SQLite file is enough here.
    """
    url = default_sqlite_url(tmp_path)
    await upgrade(url)
    db = Database.open(url, pool_size=2)
    yield db
    await db.close()


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    """An echo app for the module's gateways to forward to."""
    with run_echo() as app:
        yield app


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    """A listener that never answers: a route pointed at it shows whether a request was forwarded."""
    with run_tripwire() as wire:
        yield wire
