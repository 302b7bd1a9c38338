"""The scale driver (``loadtests.scale``) runs end to end on small numbers and reports what it promises.

The README's scale table comes from a full run (100,000 sessions and policy lines); this keeps the
driver working: both configurations start, every request is answered 200 (the generated policy's
refused rules are left out, the route's allow line wins), the sessions are really created (Redis
holds them during the run and none are left after it) and the numbers are in the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from loadtests.scale import main


@pytest.mark.parametrize("state", ["redis", "memory"])
def test_a_small_run_measures_both_configurations(tmp_path: Path, state: str) -> None:
    out = tmp_path / "scale.json"
    assert (
        main(
            [
                "--sessions",
                "300",
                "--policy-lines",
                "600",
                "--requests",
                "300",
                "--state",
                state,
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    small, large = report["rows"]
    assert (small["name"], small["policy_lines"], small["sessions"]) == ("small", 1, 1)
    assert (large["name"], large["policy_lines"], large["sessions"]) == ("large", 600, 300)
    for row in (small, large):
        assert row["state"] == state
        # Every session's first request, the warm-up and the measured requests, all allowed.
        assert row["answers"] == {"200": row["sessions"] + min(2_000, 300) + 300}
        assert 0 < row["rss_started_mib"] <= row["rss_after_requests_mib"] + 1
        assert row["cpu_us_per_request"] > 0
        assert row["first_cpu_us_per_request"] > 0
        # The sessions really lived in Redis (a run that silently kept them in the worker left none).
        assert (row.get("redis_keys", 0) >= row["sessions"]) is (state == "redis"), row
    assert report["cpu_ratio"] == pytest.approx(large["cpu_us_per_request"] / small["cpu_us_per_request"])


def test_a_redis_run_leaves_no_keys_behind(tmp_path: Path) -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/15")
    try:
        assert main(["--sessions", "50", "--policy-lines", "100", "--requests", "50"]) == 0
        assert list(client.scan_iter(match="scale*", count=1000)) == []
    finally:
        client.close()


def test_nonsense_sizes_are_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--sessions", "0"])
    assert exit_.value.code == 2
