"""The latency guard's budget logic (``loadtests.guard``): what passes, what the smoke factor loosens."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.guard import BUDGET, check_budget, load_budget
from loadtests.measure import MeasureError

BUDGET_DATA = {"goals": {"ratio": {"min": 0.8}, "latency_ms": {"max": 3.0}}}


@pytest.mark.parametrize(
    ("values", "factor", "expected"),
    [
        ({"ratio": 0.8, "latency_ms": 3.0}, 1.0, {"ratio": True, "latency_ms": True}),
        ({"ratio": 0.79, "latency_ms": 3.01}, 1.0, {"ratio": False, "latency_ms": False}),
        # The smoke run fails only far outside the goal: below goal / 3, above goal x 3.
        ({"ratio": 0.27, "latency_ms": 9.0}, 3.0, {"ratio": True, "latency_ms": True}),
        ({"ratio": 0.26, "latency_ms": 9.1}, 3.0, {"ratio": False, "latency_ms": False}),
        ({"ratio": None, "latency_ms": float("nan")}, 1.0, {"ratio": None, "latency_ms": None}),
    ],
)
def test_check_budget(
    values: dict[str, float | None], factor: float, expected: dict[str, bool | None]
) -> None:
    assert check_budget(values, BUDGET_DATA, factor=factor) == expected


def test_the_shipped_budget_has_every_quality_bar() -> None:
    goals = load_budget(BUDGET)["goals"]
    assert goals["gateway_vs_bare"]["min"] == 0.8
    assert goals["gateway_vs_bare_http1"]["min"] == 0.8
    assert goals["gateway_vs_nginx"]["min"] == 0.3
    assert goals["added_p50_ms"]["max"] == 1.0
    assert goals["added_p99_ms"]["max"] == 3.0
    assert goals["signin_p99_ratio"]["max"] == 1.25
    assert goals["access_log_ratio"]["min"] == 0.95
    assert goals["shared_state_ratio"]["min"] == 0.95


def test_a_goal_needs_exactly_one_bound(tmp_path: Path) -> None:
    bad = tmp_path / "budget.yaml"
    bad.write_text("goals:\n  ratio: {min: 0.8, max: 1.0}\n")
    with pytest.raises(MeasureError, match="exactly one of min / max"):
        load_budget(bad)


def test_a_goal_marked_smoke_false_is_only_checked_by_full_runs() -> None:
    budget = {"goals": {"p99_ratio": {"max": 1.25, "smoke": False}}}
    assert check_budget({"p99_ratio": 9.0}, budget, factor=3.0) == {"p99_ratio": None}
    assert check_budget({"p99_ratio": 9.0}, budget) == {"p99_ratio": False}
