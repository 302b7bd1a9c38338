"""The authorization benchmark runs end to end in its quick mode and writes the JSON it promises."""

from __future__ import annotations

import json
from pathlib import Path

from loadtests.authz_bench import QUICK_SIZES, main


def test_quick_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "authz.json"
    assert main(["--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert {"generated_at", "python", "quick", "requests", "sizes", "goal"} <= report.keys()
    assert report["quick"] is True
    assert [row["lines"] for row in report["sizes"]] == list(QUICK_SIZES)
    for row in report["sizes"]:
        assert row["build_ms"] > 0
        for kind in ("casbin", "index_miss", "index_hit"):
            assert row[kind]["samples"] > 0
            assert 0 < row[kind]["p50_us"] <= row[kind]["p99_us"] <= row[kind]["max_us"]
        assert row["index_miss"]["samples"] == report["requests"]
    assert {"index_miss_p99_us_below", "at_lines", "met"} <= report["goal"].keys()


def test_bad_sizes_are_a_usage_error(tmp_path: Path) -> None:
    assert main(["--sizes", "lots", "--json", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()
