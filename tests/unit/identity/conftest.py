"""Fixtures for the identity tests: the sessions' timeouts. The fast state and the clock come from the
shared plugins (tests/support)."""

from __future__ import annotations

import pytest

from gateway.settings.schema import Duration, SessionSettings

IDLE = 1800.0
LIFETIME = 3600.0


@pytest.fixture
def session_settings() -> SessionSettings:
    return SessionSettings(idle_timeout=Duration(IDLE), lifetime=Duration(LIFETIME))
