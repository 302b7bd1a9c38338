"""gateway.names: what a reader cannot see in a role name or a policy field."""

from __future__ import annotations

import re
import sys
import unicodedata

import pytest

from gateway.names import HIDDEN_CHARACTER_CLASS, hidden_character


@pytest.mark.parametrize(
    "text",
    [
        "admin\u200b",  # zero-width space (Cf)
        "admin\u034f",  # combining grapheme joiner (Mn, default ignorable)
        "admin\ufe0f",  # variation selector (Mn, default ignorable)
        "admin\U000e0100",  # variation selector supplement
        "admin\u3164",  # Hangul filler (Lo, default ignorable)
        "admin\u115f",  # Hangul choseong filler
        "admin\uffa0",  # halfwidth Hangul filler
        "admin\u2800",  # braille pattern blank (So)
        "admin\ue000",  # private use (Co)
        "admin\U000e0041",  # tag letter (Cf)
        "admin\u00ad",  # soft hyphen
        "admin\u0378",  # unassigned (Cn)
        "admin\x00",
        "admin\x7f",
        "admin\x1b[31m",
        "admin\u2028priv",  # line separator (Zl): a field shown as two lines (an attack run)
        "admin\u2029",  # paragraph separator (Zp)
    ],
)
def test_what_a_reader_cannot_see_is_found(text: str) -> None:
    assert hidden_character(text) == text[5]


@pytest.mark.parametrize(
    "text",
    [
        "admin",
        "group:oidc:Développeurs",  # composed
        "group:oidc:De\u0301veloppeurs",  # decomposed: a combining accent is seen
        "role:運用",
        "user:zoë@example.com",
        "group:oidc:Ingeniería y Datos",
        "देवनागरी",  # spacing and non-spacing vowel signs
        "",
    ],
)
def test_honest_names_in_any_script_pass(text: str) -> None:
    assert hidden_character(text) is None


def test_the_pattern_class_finds_every_assigned_character_hidden_character_finds() -> None:
    # The class is written out as ranges (a pattern cannot ask for a category); a Unicode update that
    # assigns a new format character would otherwise slip past every reason pattern unnoticed.
    found = re.compile(f"[{HIDDEN_CHARACTER_CLASS}]")
    differ = [
        f"U+{point:04X}"
        for point in range(sys.maxunicode + 1)
        if unicodedata.category(chr(point)) != "Cn"
        and (found.match(chr(point)) is not None) != (hidden_character(chr(point)) is not None)
    ]
    assert differ == []
