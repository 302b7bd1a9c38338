"""Suite-wide rules and the shared fixtures.

In CI (``CI`` set), a test that needs a real protocol peer (marked ``peer``) must run: if any such
test is skipped, the session fails. A skipped peer test would otherwise turn a missing install step
into a silently green run.

Fixtures more than one test module needs live in plugin modules under ``tests/support/`` and are
registered here, once for the whole tree (pytest accepts ``pytest_plugins`` only in the top-level
conftest): a test asks for ``clock``, ``fast_state`` or ``database`` by name and imports nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.clock import SystemClock

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.fast_state",
    "tests.support.database",
]

_skipped_peers: list[str] = []


# The measurement files run one after another in one worker (one xdist scope, below): two of them start
# CPU hogs on purpose, and a measurement taken beside another's hogs measures them. A CI run whose
# latency guard started beside the instruction guard's hogs saw load average 5 and one starved round.
_MEASUREMENTS = (
    "tests/integration/test_instruction_guard.py",
    "tests/integration/test_measure_smoke.py",
    "tests/integration/test_stage_guard.py",
)

# The longest files start first: with one file per process (pytest-xdist --dist loadfile), a long file
# scheduled last would run alone at the end of the suite.
_FIRST = (
    *_MEASUREMENTS,
    "tests/integration/test_incident_cases.py",
    "tests/integration/test_pgbackrest.py",
    "tests/e2e/",
)


# What the load harness's counted clock (loadtests.inprocess.CountedTime) replaces, as they were at start.
_REAL_CLOCK = (SystemClock.__dict__["time"], SystemClock.__dict__["monotonic"], asyncio.sleep)


@pytest.fixture(autouse=True)
def _the_real_clock_after_every_test() -> Iterator[None]:
    """Fail the test that leaves the process's clock or ``asyncio.sleep`` replaced, and put them back.

    A leaked counted clock does not fail the test that leaked it but later ones in the same worker,
    far from the cause: a signing key made at the real time is "not active yet" by the counted one.
    """
    yield
    clock_time, clock_monotonic, sleep = _REAL_CLOCK
    leaked = [
        name
        for name, now, real in (
            ("SystemClock.time", SystemClock.__dict__["time"], clock_time),
            ("SystemClock.monotonic", SystemClock.__dict__["monotonic"], clock_monotonic),
            ("asyncio.sleep", asyncio.sleep, sleep),
        )
        if now is not real
    ]
    if leaked:
        SystemClock.time, SystemClock.monotonic, asyncio.sleep = clock_time, clock_monotonic, sleep
        pytest.fail(f"the test left {', '.join(leaked)} replaced (restored now)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return next((i for i, first in enumerate(_FIRST) if path.startswith(first)), len(_FIRST))

    items.sort(key=rank)  # stable: the order within each file and among the rest is kept


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, except that the measurement files are one unit of work (see _MEASUREMENTS)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class MeasurementsTogether(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            scope: str = super()._split_scope(nodeid)
            return "measurements" if scope in _MEASUREMENTS else scope

    return MeasurementsTogether(config, log)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "peer" in report.keywords:
        _skipped_peers.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_peers and os.environ.get("CI"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped_peers:
        verdict = "FAILED (CI requires every peer test to run)" if os.environ.get("CI") else "warning"
        terminalreporter.section(f"skipped peer tests: {verdict}", sep="!", red=bool(os.environ.get("CI")))
        for nodeid in _skipped_peers:
            terminalreporter.line(nodeid)
