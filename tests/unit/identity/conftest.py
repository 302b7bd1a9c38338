"""Fixtures for the identity tests: the fast-state fixtures (memory, the node's file, Redis) plus a fake
Unix clock."""

from __future__ import annotations

import pytest

from gateway.clock import FakeClock
from gateway.settings.schema import Duration, SessionSettings
from tests.unit.store.conftest import (  # noqa: F401 - fixtures are found by name
    fast_clock,
    fast_namespace,
    fast_state,
    fast_state_backend,
    fast_state_file,
    fast_state_peer,
    fast_tcp_proxy,
    make_fast_state,
)

IDLE = 1800.0
LIFETIME = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    """Unix time for sessions and hand-off codes; tests move it instead of sleeping."""
    return FakeClock()


@pytest.fixture
def session_settings() -> SessionSettings:
    return SessionSettings(idle_timeout=Duration(IDLE), lifetime=Duration(LIFETIME))
