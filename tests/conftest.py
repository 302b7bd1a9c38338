"""Suite-wide rules.

In CI (``CI`` set), a test that needs a real protocol peer (marked ``peer``) must run: if any such
test is skipped, the session fails. A skipped peer test would otherwise turn a missing install step
into a silently green run.
"""

from __future__ import annotations

import os

import pytest

_skipped_peers: list[str] = []


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
