"""`gateway policy`: a reason is one line, and its tables print every stored value on one row."""

from __future__ import annotations

import argparse

import pytest

from gateway.cli.policy import _reason, _table


@pytest.mark.parametrize("text", ["tidy\n99  2026-12-05 20:41:00 UTC  cli:root  +0 -0", "   ", "a\tb"])
def test_a_reason_with_a_line_break_or_nothing_in_it_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _reason(text)


def test_a_reason_is_kept_as_given_but_trimmed() -> None:
    assert _reason("  quarterly review  ") == "quarterly review"


def test_a_stored_line_break_stays_in_its_row() -> None:
    # Versions stored before reasons were checked, or written to the database by hand.
    table = _table(["VERSION", "REASON"], [["2", "tidy\n99  forged row"]])
    assert table.splitlines() == ["VERSION  REASON", "2        tidy\\n99  forged row"]
