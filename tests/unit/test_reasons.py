"""What an administrator's reason may be: one line of printable text with something in it."""

from __future__ import annotations

import re

import pytest

from gateway.reasons import OPTIONAL_REASON_PATTERN, REASON_PATTERN, reason_problem


@pytest.mark.parametrize("text", ["ticket 4711", "départ de l'employé", "  padded  ", "a", "引き継ぎ"])
def test_a_line_of_text_is_a_reason(text: str) -> None:
    assert reason_problem(text) is None
    assert re.search(REASON_PATTERN, text)
    assert re.search(OPTIONAL_REASON_PATTERN, text)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("", "required"),
        ("   ", "required"),
        ("\n\t", "required"),
        ("routine\n2026-12-05T19:53:00Z  admin.lockdown  user:boss2", "one line"),
        ("x\r\ny", "one line"),
        ("tab\there", "one line"),
        ("esc \x1b[2J", "one line"),
        ("c1 \x9b31m", "one line"),
        ("line\u2028separator", "one line"),
        ("bidi \u202egnp.exe", "one line"),
        ("routine\u200b", "reader cannot see"),  # zero-width space (an attack run's reasons took these)
        ("soft\u00adhyphen", "reader cannot see"),
        ("eve\u3164", "reader cannot see"),  # Hangul filler
        ("tag \U000e0041", "reader cannot see"),
        ("credential stuffing\n", "one line"),  # "$" matches before a final line break (an attack run)
    ],
)
def test_blank_or_multi_line_text_is_refused(text: str, phrase: str) -> None:
    problem = reason_problem(text)
    assert problem is not None
    assert phrase in problem
    assert re.search(REASON_PATTERN, text) is None


def test_an_optional_reason_may_be_empty_but_not_blank() -> None:
    assert re.search(OPTIONAL_REASON_PATTERN, "")
    assert re.search(OPTIONAL_REASON_PATTERN, "   ") is None
    assert re.search(OPTIONAL_REASON_PATTERN, "a\nb") is None
