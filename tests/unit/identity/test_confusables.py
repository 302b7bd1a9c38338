"""gateway.identity.confusables: what a new username reads as."""

from __future__ import annotations

import pytest

from gateway.identity.confusables import look_alike_shape, skeleton
from gateway.identity.names import canonical_username


@pytest.mark.parametrize(
    ("typed", "reads_as"),
    [
        ("al\u0130ce", "alice"),  # folded to "ali" + U+0307: one dotted i on screen
        ("al\u0131\u0307ce", "alice"),  # dotless i + combining dot
        ("a\u01c0ice", "alice"),  # Latin letter dental click
        ("b\u0585b", "bob"),  # Armenian o
        ("\u0458\u043e\u0435", "joe"),  # wholly Cyrillic
        ("\u0440\u0430\u0441\u0435", "pace"),
        ("\u0251dmin", "admin"),  # Latin alpha
        ("alice.", "alice"),
        ("alice", "alice"),  # ASCII reads as itself
        ("a1ice", "a1ice"),  # ASCII is compared as typed: 1 and l stay apart
        ("jos\u00e9", "jos\u00e9"),  # an accent is seen
        ("\uae40\ucca0\uc218", "\uae40\ucca0\uc218"),  # Hangul reads as itself
    ],
)
def test_skeleton(typed: str, reads_as: str) -> None:
    assert skeleton(canonical_username(typed)) == reads_as


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("alice.", "dot"),
        ("b\u0966b", "digit"),  # Devanagari zero
        ("a\u0661ice", "digit"),  # Arabic-Indic one
        ("alice", None),
        ("alice.smith", None),
        ("r2d2", None),
    ],
)
def test_look_alike_shape(name: str, problem: str | None) -> None:
    found = look_alike_shape(name)
    assert (found is None) if problem is None else (found is not None and problem in found)
