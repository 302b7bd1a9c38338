"""Lengths of time in sentences the gateway shows: an attack run saw "within the last 1 minute(s)"
for a 20-second re-authentication window."""

from __future__ import annotations

import pytest

from gateway.clock import span_words
from gateway.web.rights import RecentFactorRequired


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1, "a second"),
        (0.2, "a second"),
        (20, "20 seconds"),
        (59, "59 seconds"),
        (60, "a minute"),
        (90, "2 minutes"),
        (300, "5 minutes"),
        (3600, "an hour"),
        (5400, "90 minutes"),
        (7200, "2 hours"),
    ],
)
def test_span_words(seconds: float, words: str) -> None:
    assert span_words(seconds) == words


def test_a_step_up_under_a_minute_says_its_seconds() -> None:
    assert "within the last 20 seconds." in RecentFactorRequired(20).detail
    assert "within the last 5 minutes." in RecentFactorRequired(300).detail
