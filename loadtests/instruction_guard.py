"""The CI guard that load cannot fool: instructions per request of the hot path against a baseline.

::

    python -m loadtests.instruction_guard [--slow-stage STAGE] [--budget loadtests/budget.yaml]

Counts the signed-in hot path's instructions per request in-process under callgrind
(:func:`loadtests.inprocess.instructions_per_request`: the same request as the benchmark, start-up
cancelled by a run of twice as many) and compares the count with the ``instructions`` baseline of
``budget.yaml``. The count is the program's own: another process hogging both cores changes the wall
time of the run, not the number. A slower pipeline (a stage doing twice its work, a new per-request
feature without its own budget line) raises it; the tolerance is the spread between identical runs.
A change that costs instructions on purpose records the new baseline in the same commit, with why.

Exit codes: 0 within tolerance; 1 the measurement failed; 3 over the baseline by more than the
tolerance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from loadtests.inprocess import SLOWABLE, instructions_per_request

__all__ = ["main", "verdict"]

BUDGET = Path(__file__).resolve().parent / "budget.yaml"


def verdict(measured_k: float, instructions: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``measured_k`` (thousand instructions per request) is within the budget's tolerance."""
    baseline = float(instructions["baseline_k"])
    tolerance = float(instructions["tolerance"])
    limit = baseline * (1 + tolerance)
    change = measured_k / baseline - 1
    line = (
        f"hot path: {measured_k:.1f} k instructions per request; baseline {baseline:.1f} k "
        f"({change:+.1%}), limit {limit:.1f} k (+{tolerance:.0%})"
    )
    return measured_k <= limit, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.instruction_guard",
        description="Instructions per request of the signed-in hot path (callgrind) against budget.yaml.",
        epilog="Exit codes: 0 within tolerance; 1 the measurement failed; 3 over the baseline.",
    )
    parser.add_argument("--budget", type=Path, default=BUDGET)
    parser.add_argument(
        "--slow-stage", choices=SLOWABLE, help="double one stage (shows the guard catches it)"
    )
    args = parser.parse_args(argv)
    instructions = yaml.safe_load(args.budget.read_text())["instructions"]
    requests = int(instructions.get("requests", 1500))
    try:
        measured = instructions_per_request(requests, slow_stage=args.slow_stage) / 1000
    except (OSError, RuntimeError) as exc:
        print(f"error: the measurement failed: {exc}", file=sys.stderr)
        return 1
    ok, line = verdict(measured, instructions)
    print(line + ("" if ok else "  EXCEEDED"))
    return 0 if ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
