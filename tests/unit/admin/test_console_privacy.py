"""The Privacy section's pure parts: how a list masks a person's name, how a retention period and a
request's due date read, and its timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from admin.console.masking import mask_person
from admin.console.privacy import _span, _timeline, _timing
from gateway.privacy.register import RequestView

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("alice", "a•••e"),
        ("alice@example.com", "a•••@example.com"),
        ("bob", "b•••"),
        ("bo", "b•••"),
        ("x", "x•••"),
        ("", ""),
        ("[erased:0a1b2c3d4e5f]", "[erased:0a1b2c3d4e5f]"),
        ("[erased:x", "[•••x"),
        # Only a real tombstone (hex pseudonym) is shown whole: anything else may carry a name.
        ("[erased:alice]", "[•••]"),
    ],
)
def test_a_list_shows_a_name_masked(name: str, shown: str) -> None:
    assert mask_person(name) == shown
    if name and not name.startswith("[erased:0"):
        assert name not in mask_person(name) or len(name) <= 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (180 * 86400, "180 days"),
        (3 * 365 * 86400, "3 years"),
        (365 * 86400, "1 year"),
        (86400, "1 day"),
        (12 * 3600, "12 hours"),
        (90 * 60, "90 minutes"),
        (45, "45 seconds"),
        (86400 + 1, "86401 seconds"),
    ],
)
def test_a_period_in_words(seconds: float, text: str) -> None:
    assert _span(seconds) == text


def _request(
    status: str, *, received_days_ago: float, verified: bool = False, completed: bool = False
) -> RequestView:
    received = NOW - timedelta(days=received_days_ago)
    return RequestView(
        ref="PR-ABCDEFGHIJ", kind="access", law="gdpr", subject="alice", user_id=7, channel="portal",
        status=status, received_at=received, verified_at=received if verified else None,
        verified_by="video call" if verified else "", due_at=received + timedelta(days=30),
        completed_at=NOW if completed else None, details={}, outcome="", hold_ref="",
    )  # fmt: skip


def test_an_open_request_past_its_date_is_overdue_by_whole_days() -> None:
    assert _timing(_request("received", received_days_ago=40.5), NOW) == (True, 10, None)
    assert _timing(_request("received", received_days_ago=30.1), NOW) == (True, 0, None)
    # Not yet due: the days left are counted up, as a person counts them to a date.
    assert _timing(_request("verified", received_days_ago=3.5, verified=True), NOW) == (False, 0, 27)
    # Closed requests are never overdue, however late they were closed.
    assert _timing(_request("completed", received_days_ago=40, completed=True), NOW) == (False, 0, None)


def test_the_timeline_says_what_happened_and_what_is_ahead() -> None:
    waiting = _timeline(_request("received", received_days_ago=40), NOW, overdue=True)
    assert [(e.what, e.state) for e in waiting] == [
        ("Received", "done"), ("Identity verified", "waiting"), ("Due", "overdue"),
    ]  # fmt: skip
    done = _timeline(
        _request("completed", received_days_ago=40, verified=True, completed=True), NOW, overdue=False
    )
    assert [(e.what, e.state, e.note) for e in done] == [
        ("Received", "done", "via portal"),
        ("Identity verified", "done", "video call"),
        ("Due", "done", ""),
        ("Completed", "done", "after the due date"),
    ]
