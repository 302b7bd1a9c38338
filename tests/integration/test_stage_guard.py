"""The per-stage guard (``loadtests.stage_guard``) passes beside a CPU hog and catches one doubled stage.

Issue 21's "a CI guard that load cannot fool": the guard counts bytecodes per request by stage, so
another process using both cores changes how long it runs, not what it counts; a stage doing twice
its work (``--slow-stage``) doubles its own line and fails the guard naming that stage, whichever
stage it is.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from loadtests.inprocess import SLOWABLE
from loadtests.stages import count_stages

# --slow-stage names the function; the guard's lines name the stage.
STAGE_LINE = {
    "canonicalize": "canonicalize",
    "route_request": "route",
    "identify": "identify",
    "require_mfa": "mfa",
    "authorize": "authorize",
}


def _guard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtests.stage_guard", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def cpu_hogs() -> Iterator[None]:
    """Two processes spinning on both cores for as long as the test runs (stopped also on failure)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_the_guard_passes_with_every_feature_beside_cpu_hogs(cpu_hogs: None) -> None:
    proc = _guard()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stage guard: 17 within budget, 0 over" in proc.stdout, proc.stdout
    for feature in (
        "access_log",
        "tracing_1pct",
        "embedded_file_state",
        "bearer_route",
        "bearer_request",
        "consent_optout",
        "cors_preflight_route",
    ):
        assert f"feature {feature}: " in proc.stdout


def test_the_credential_variants_take_the_paths_they_are_named_for() -> None:
    """The feature lines measure what they say: a token request skips the session stages, a route that
    takes tokens still identifies a cookie, an opted-out session is authorized with less work."""
    baseline = count_stages(100, variant="baseline")["stages"]
    token = count_stages(100, variant="bearer-request")["stages"]
    for skipped in ("identify", "mfa", "authorize"):
        assert skipped not in token, token
    route = count_stages(100, variant="bearer-route")["stages"]
    assert route["identify"] == pytest.approx(baseline["identify"], abs=6)
    assert route["pipeline (the stage sequence)"] > baseline["pipeline (the stage sequence)"]
    optout = count_stages(100, variant="consent-optout")["stages"]
    assert optout["authorize"] < baseline["authorize"]


@pytest.mark.parametrize("slow", SLOWABLE)
def test_a_doubled_stage_fails_the_guard_naming_it(slow: str) -> None:
    proc = _guard("--no-features", "--slow-stage", slow)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    over = [line for line in proc.stdout.splitlines() if line.endswith("<-- over budget")]
    assert [line.split(":")[0] for line in over] == [STAGE_LINE[slow]], proc.stdout
