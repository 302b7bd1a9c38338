"""`gateway retention plan`: how long each class is kept reads in the unit that says it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.cli.retention import _class_plan_lines
from gateway.privacy.retention import VERBS, ClassPlan
from gateway.privacy.retention_rules import Survey


@pytest.mark.parametrize(
    ("keep", "said"),
    [
        (timedelta(seconds=1), "kept a second"),
        (timedelta(minutes=10), "kept 10 minutes"),
        (timedelta(hours=2), "kept 2 hours"),
        (timedelta(hours=36), "kept 36 hours"),
        (timedelta(days=1), "kept a day"),
        (timedelta(days=180), "kept 180 days"),
        (timedelta(days=1, seconds=13600), "kept 1.2 days"),
        (timedelta(0), "kept 0 seconds"),
    ],
)
def test_the_time_a_class_is_kept_is_said_in_its_unit(keep: timedelta, said: str) -> None:
    """An attack run set a one-second retention: the plan said "kept 1.15741e-05 days"."""
    (head, *_rest) = _class_plan_lines(ClassPlan("audit_events", keep, Survey()))
    assert head == f"audit_events ({said}; {VERBS['audit_events']} when due)"
