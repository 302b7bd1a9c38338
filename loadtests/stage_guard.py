"""The per-stage CI guard: each stage's bytecodes per request, and each feature's cost, against budget.yaml.

::

    python -m loadtests.stage_guard [--slow-stage STAGE] [--budget loadtests/budget.yaml]

Counts the signed-in hot path's Python bytecode instructions per request by stage
(:mod:`loadtests.stages`) and compares every stage with its baseline in the ``stages`` section of
``budget.yaml``: a stage over its baseline by more than the tolerance fails the guard, named. Then it
switches each feature of the ``features`` section on or off (:data:`loadtests.stages.VARIANTS`) and
checks what the feature adds to the request's own stages against its budget.

Counts, not times: a second process hogging both cores changes how long this takes, not one number
in it, and a stage doing twice its work doubles its own line (``--slow-stage`` shows it). Only the
request's stages are gated; the event loop, background tasks (the access log's entries are built by
the sink's task) and the driver are reported, because their share per request follows the wall time
of the run. A change that costs instructions on purpose records the new baseline here in the same
commit, with why.

Exit codes: 0 within budget; 1 the measurement failed; 3 a stage or feature over its budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from loadtests.inprocess import SLOWABLE
from loadtests.stages import STAGE_NAMES

__all__ = ["REQUEST_STAGES", "feature_verdict", "main", "stage_verdicts"]

BUDGET = Path(__file__).resolve().parent / "budget.yaml"

# The stages a request runs itself, in order; the rest of the count is shared work.
REQUEST_STAGES = STAGE_NAMES


def stage_verdicts(measured: dict[str, float], budget: dict[str, Any]) -> list[tuple[bool, str]]:
    """One (within budget, line) per stage of ``budget["baseline"]``, and a failing line for each request
    stage without a baseline or a baseline stage that was not measured (a renamed stage must not pass
    unchecked)."""
    tolerance, slack = float(budget["tolerance"]), float(budget["slack"])
    out = [
        (False, f"{stage}: no baseline in the budget")
        for stage in REQUEST_STAGES
        if stage not in budget["baseline"]
    ]
    for stage, baseline in budget["baseline"].items():
        if stage not in measured:
            out.append((False, f"{stage}: not measured (no such stage in loadtests.stages)"))
            continue
        value = measured[stage]
        limit = baseline * (1 + tolerance) + slack
        ok = value <= limit
        line = f"{stage}: {value:,.0f} bytecodes per request; baseline {baseline:,} ({value / baseline - 1:+.1%}), limit {limit:,.0f}"
        out.append((ok, line if ok else f"{line}  <-- over budget"))
    return out


def feature_verdict(
    name: str, on: dict[str, float], off: dict[str, float], budget: dict[str, Any]
) -> tuple[bool, str]:
    """Whether what a feature adds to the request's own stages is within ``budget["max"]``."""
    base = sum(off.get(stage, 0.0) for stage in REQUEST_STAGES)
    added = sum(on.get(stage, 0.0) for stage in REQUEST_STAGES) - base
    shared = sum(on.values()) - sum(off.values()) - added
    ok = added <= float(budget["max"])
    line = (
        f"feature {name}: {added:+,.0f} bytecodes per request in the request's stages ({added / base:+.1%}), "
        f"budget {budget['max']:,}; shared work {shared:+,.0f} (reported)"
    )
    return ok, line if ok else f"{line}  <-- over budget"


def _count(variant: str, requests: int, slow_stage: str | None) -> dict[str, float]:
    """One count in a process of its own (a slowed stage must not leak into the next count)."""
    extra = ["--slow-stage", slow_stage] if slow_stage is not None else []
    with tempfile.TemporaryDirectory(prefix="stage-guard-") as tmp:
        out = Path(tmp) / "stages.json"
        command = [
            sys.executable,
            "-m",
            "loadtests.stages",
            "--requests",
            str(requests),
            "--variant",
            variant,
        ]
        proc = subprocess.run(
            [*command, "--json", str(out), *extra], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"counting {variant} failed: {proc.stderr[-2000:]}")
        stages: dict[str, float] = json.loads(out.read_text())["stages"]
    return stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.stage_guard",
        description="Bytecodes per request of each hot-path stage and feature against budget.yaml.",
        epilog="Exit codes: 0 within budget; 1 the measurement failed; 3 a stage or feature over budget.",
    )
    parser.add_argument("--budget", type=Path, default=BUDGET)
    parser.add_argument(
        "--slow-stage", choices=SLOWABLE, help="double one stage (shows the guard catches it)"
    )
    parser.add_argument("--no-features", action="store_true", help="check the stages only (one count)")
    args = parser.parse_args(argv)
    budget = yaml.safe_load(args.budget.read_text())
    stages, features = budget["stages"], {} if args.no_features else budget.get("features", {})
    requests = int(stages.get("requests", 300))
    try:
        baseline = _count("baseline", requests, args.slow_stage)
        verdicts = stage_verdicts(baseline, stages)
        for name, feature in features.items():
            # YAML reads a bare "on"/"off" key as a boolean: the variants are "with" and "without".
            on, off = (
                baseline if feature[key] == "baseline" else _count(feature[key], requests, args.slow_stage)
                for key in ("with", "without")
            )
            verdicts.append(feature_verdict(name, on, off, feature))
    except RuntimeError as exc:
        print(f"stage guard: {exc}", file=sys.stderr)
        return 1
    for _, line in verdicts:
        print(line)
    failed = [line for ok, line in verdicts if not ok]
    print(f"stage guard: {len(verdicts) - len(failed)} within budget, {len(failed)} over")
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
