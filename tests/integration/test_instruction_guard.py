"""The CI guard that load cannot fool (``python -m loadtests.instruction_guard``).

It gates on the hot path's instructions per request (callgrind, in-process) against the baseline in
``loadtests/budget.yaml``: here it passes on a loaded machine, and fails, also loaded, when the identify
stage does its work twice (``--slow-stage``: +8.4%, against +0.2% beside three CPU hogs and a disk
writer; the limit is +4%). Doubling the cheapest stages adds less than that margin; the per-stage guard
(test_stage_guard.py) is the one for those (loadtests/README.md).

The two runs go side by side, each the other's load (two callgrind processes on two cores, beside the
rest of the suite): as much load as the CPU hog each had before, without burning a core for four minutes
for it, and in half the wall time of one run after the other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loadtests.instruction_guard", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Run]]:
    """The plain guard and the one with identify doubled, run at the same time."""
    if shutil.which("valgrind") is None:
        pytest.fail("the instruction guard needs valgrind (apt-get install -y valgrind)", pytrace=False)
    started = {"plain": _start(), "doubled": _start("--slow-stage", "identify")}
    try:
        done = {}
        for name, process in started.items():
            stdout, stderr = process.communicate(timeout=900)
            done[name] = Run(process.returncode, stdout, stderr)
        yield done
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.mark.peer
@pytest.mark.timeout(1200)
def test_the_guard_passes_beside_another_run(runs: dict[str, Run]) -> None:
    run = runs["plain"]
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "k instructions per request; baseline" in run.stdout


@pytest.mark.peer
@pytest.mark.timeout(1200)
def test_the_guard_fails_on_a_doubled_stage_beside_another_run(runs: dict[str, Run]) -> None:
    run = runs["doubled"]
    print(run.stdout)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "EXCEEDED" in run.stdout
