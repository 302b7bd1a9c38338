"""Smoke run of the side-by-side measurement (``python -m loadtests.measure --quick``).

This asserts only that every target starts, serves the echo app correctly and is measured; it never
asserts on speed (the quality bars are checked by full runs of ``loadtests.measure``, not by tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("direct", "bare", "gateway", "nginx")


@pytest.mark.peer
@pytest.mark.timeout(240)
def test_quick_measurement_covers_all_targets(tmp_path: Path) -> None:
    missing = [
        f"{tool} ({path} missing: apt-get install -y {tool})"
        for tool, path in (("nginx", "/usr/sbin/nginx"), ("wrk", "/usr/bin/wrk"))
        if not Path(path).exists() and shutil.which(tool) is None
    ]
    if missing:
        pytest.fail("the measurement smoke test needs " + " and ".join(missing), pytrace=False)

    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.measure", "--quick", "--duration", "2", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(out.read_text())
    assert report["settings"]["client"] == "wrk"
    assert not report["unavailable"], report["unavailable"]
    assert not report["errors"], report["errors"]
    for name in TARGETS:
        row = report["closed_loop"].get(name)
        assert row is not None, f"no result for {name}"
        assert row["rps"] > 0, f"{name}: {row}"
        assert row["p50_ms"] > 0, f"{name}: {row}"
    for key in ("cpu_model", "nproc", "python", "date"):
        assert report["machine"][key], key
