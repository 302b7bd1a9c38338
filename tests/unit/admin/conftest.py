"""Fixtures for the admin tests: the fast-state fixtures (memory, the node's file, Redis) and a fake Unix
clock."""

from __future__ import annotations

import pytest

from gateway.clock import FakeClock
from tests.unit.store.conftest import (  # noqa: F401 - fixtures are found by name
    fast_clock,
    fast_namespace,
    fast_state,
    fast_state_backend,
    fast_state_file,
    make_fast_state,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
