"""The per-stage count (``loadtests.stages``) is deterministic and sees every stage of the hot path.

``loadtests/README.md`` lists each stage's share from it; a count that moved between two runs of the
same code, or a stage that counted nothing, would make that table meaningless. Run as the command
users run, in a process of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from loadtests.stages import STAGE_NAMES


def _stages(tmp_path: Path, name: str, *args: str) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.stages", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| **total** |" in proc.stdout
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_two_runs_of_the_same_code_count_the_same_per_stage(tmp_path: Path) -> None:
    first = _stages(tmp_path, "first", "--requests", "60")["stages"]
    second = _stages(tmp_path, "second", "--requests", "120")["stages"]
    for stage in STAGE_NAMES:
        assert first[stage] > 0, stage
        # The same per request, whatever the number of requests, up to work that runs by the clock
        # (a cached assertion re-signed, a session re-read after its second in the cache): runs of
        # 300 and 600 requests differed by at most 6 instructions per request in one stage (of 330).
        assert abs(first[stage] - second[stage]) <= max(3.0, 0.05 * first[stage]), (stage, first, second)


def test_the_report_lists_the_stages_and_the_costliest_functions(tmp_path: Path) -> None:
    report = _stages(tmp_path, "detail", "--requests", "50", "--detail", "5")
    assert set(STAGE_NAMES) <= report["stages"].keys()
    assert any(key.startswith("proxy | ") for key in report["functions"])


def test_the_pass_through_is_counted_with_the_same_driver(tmp_path: Path) -> None:
    """``--pass-through``: the request through loadtests/bare_proxy.py on the gateway's client, what
    ``gateway_vs_bare_http1`` compares with; none of the gateway's stages runs there."""
    bare = _stages(tmp_path, "bare", "--pass-through", "--requests", "60")["stages"]
    gateway = _stages(tmp_path, "gateway", "--requests", "60")["stages"]
    assert bare["pass-through (loadtests/bare_proxy.py)"] > 0
    assert not set(STAGE_NAMES) & bare.keys()
    assert bare["proxy: upstream connection callbacks"] > 0  # the same client as the gateway's
    assert sum(bare.values()) < sum(gateway.values())
