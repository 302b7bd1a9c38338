"""Canonical usernames and emails: one table of spellings that must meet, one of spellings that must not.

Unicode tricks are written as escapes so the table reads unambiguously (the point of several rows is
that the characters look alike).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.identity.names import (
    MAX_EMAIL_LENGTH,
    MAX_MARKS_PER_LETTER,
    MAX_USERNAME_LENGTH,
    RESERVED_USERNAMES,
    canonical_email,
    canonical_username,
    mixed_script,
)

USERNAMES_FOLDED = [
    # (typed, stored, why)
    ("alice", "alice", "already canonical"),
    ("ALICE", "alice", "upper case"),
    ("  alice  ", "alice", "surrounding spaces"),
    ("\u00a0alice\u3000", "alice", "no-break and ideographic spaces around"),
    ("\t alice\n", "alice", "tab and newline around"),
    ("\uff41\uff4c\uff49\uff43\uff45", "alice", "full-width letters"),
    ("\uff21\uff2c\uff29\uff23\uff25", "alice", "full-width capitals"),
    ("\u212aelvin", "kelvin", "Kelvin sign U+212A folds to k"),
    ("\ufb01sh", "fish", "ligature fi U+FB01"),
    ("\ufb00", "ff", "ligature ff U+FB00"),
    ("stra\u00dfe", "strasse", "German sharp s folds to ss"),
    ("STRA\u1e9eE", "strasse", "capital sharp s folds to ss"),
    ("al\u0131ce", "al\u0131ce", "Turkish dotless i stays a letter of its own"),
    ("\u0130stanbul", "i\u0307stanbul", "Turkish dotted capital I folds to i + combining dot"),
    ("e\u0301", "\u00e9", "decomposed e + acute is composed"),
    ("\u2460", "1", "circled digit one (compatibility form)"),
    ("alice@example.com", "alice@example.com", "@ is allowed in a username"),
    ("a.b_c-d+e", "a.b_c-d+e", "the allowed punctuation"),
    ("a\uff20b\uff0ec", "a@b.c", "full-width @ and full stop"),
    ("\u0939\u093f\u0928\u094d\u0926\u0940", "\u0939\u093f\u0928\u094d\u0926\u0940", "Devanagari with marks"),
    ("\u0437\u043e\u044f", "\u0437\u043e\u044f", "Cyrillic letters"),
    ("\u7530\u4e2d", "\u7530\u4e2d", "CJK ideographs"),
    ("x" * MAX_USERNAME_LENGTH, "x" * MAX_USERNAME_LENGTH, "exactly the maximum length"),
]

USERNAMES_REFUSED = [
    # (typed, part of the message, why)
    ("", "empty", "empty"),
    ("   ", "empty", "only spaces"),
    ("\u3000", "empty", "only an ideographic space"),
    ("x" * (MAX_USERNAME_LENGTH + 1), "longer than 64", "too long"),
    ("stra\u00dfe" * 11, "longer than 64", "too long only after folding (ss)"),
    ("al\u200dice", "invisible", "zero-width joiner inside"),
    ("al\u200bice", "invisible", "zero-width space inside"),
    ("alice\u200b", "invisible", "zero-width space at the end (not white space to strip())"),
    ("\ufeffalice", "invisible", "byte order mark / zero-width no-break space"),
    ("al\u00adice", "invisible", "soft hyphen"),
    ("\u202eecila", "invisible", "right-to-left override"),
    ("al\u2066ice", "invisible", "left-to-right isolate"),
    ("al ice", "invisible or space", "space inside"),
    ("al\u00a0ice", "invisible or space", "no-break space inside"),
    ("al\tice", "invisible or space", "tab inside"),
    ("al\x00ice", "invisible", "NUL"),
    ("al\x1bice", "invisible", "escape"),
    ("a/b", "not allowed", "slash"),
    ("a\\b", "not allowed", "backslash"),
    ("a:b", "not allowed", "colon"),
    ("a,b", "not allowed", "comma"),
    ("<alice>", "not allowed", "angle brackets"),
    ("alice\U0001f600", "not allowed", "emoji"),
    ("\u0301alice", "combining mark", "leading combining mark"),
    ("a-\u0301", "combining mark", "combining mark on punctuation"),
    ("x" + "\u0300" * (MAX_MARKS_PER_LETTER + 1), "combining mark", "stacked marks"),
    ("\ue000", "invisible", "private use"),
    ("eve\u3164", "invisible", "Hangul filler: a letter that reads as eve (an attack run)"),
    ("ex\u115fy", "invisible", "Hangul choseong filler inside"),
    ("eve\uffa0", "invisible", "half-width Hangul filler"),
    ("al\u034fice", "invisible", "combining grapheme joiner after a letter"),
    ("al\u2800ice", "invisible", "Braille blank"),
    ("..", "letter or a digit", "a path segment: the console's /users/.. is its overview (an attack run)"),
    (".", "letter or a digit", "the current path segment"),
    ("-_@+.", "letter or a digit", "punctuation alone"),
]


@pytest.mark.parametrize(("typed", "stored", "why"), USERNAMES_FOLDED, ids=[r[2] for r in USERNAMES_FOLDED])
def test_username_folds(typed: str, stored: str, why: str) -> None:
    assert canonical_username(typed) == stored, why


@pytest.mark.parametrize(
    ("typed", "message", "why"), USERNAMES_REFUSED, ids=[r[2] for r in USERNAMES_REFUSED]
)
def test_username_refused(typed: str, message: str, why: str) -> None:
    with pytest.raises(ValueError, match=message):
        canonical_username(typed)


def test_roman_numeral_folds_to_letters() -> None:
    # U+2163 ROMAN NUMERAL FOUR is a compatibility character: NFKC spells it "IV", then folded.
    assert canonical_username("\u2163") == "iv"


def test_username_folding_is_idempotent() -> None:
    for typed, _stored, _why in USERNAMES_FOLDED:
        once = canonical_username(typed)
        assert canonical_username(once) == once


def test_lookalikes_meet() -> None:
    spellings = ["alice", "ALICE", " Alice ", "\uff41\uff4c\uff49\uff43\uff45", "AL\uff29CE"]
    assert {canonical_username(s) for s in spellings} == {"alice"}


def test_distinct_letters_stay_distinct() -> None:
    # Dotless i is a different letter (Turkish): folding it to "i" would merge two real names.
    assert canonical_username("al\u0131ce") != canonical_username("alice")
    # Cyrillic a is a different letter too (confusable, but not folded: see the module docstring).
    assert canonical_username("\u0430lice") != canonical_username("alice")


def test_error_messages_name_the_character() -> None:
    with pytest.raises(ValueError, match=r"U\+200D ZERO WIDTH JOINER"):
        canonical_username("al\u200dice")
    with pytest.raises(ValueError, match=r"U\+002F SOLIDUS.*letters, digits"):
        canonical_username("a/b")


EMAILS_FOLDED = [
    ("alice@example.com", "alice@example.com", "already canonical"),
    ("Alice@Example.COM", "alice@example.com", "both parts lower-cased"),
    ("  alice@example.com\n", "alice@example.com", "surrounding white space"),
    (
        "\uff41\uff4c\uff49\uff43\uff45\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d",
        "alice@example.com",
        "full-width everything",
    ),
    ("\u212a@example.com", "k@example.com", "Kelvin sign"),
    ("first.last+tag@sub.example.org", "first.last+tag@sub.example.org", "dots and plus kept"),
    ("STRA\u00dfE@example.de", "stra\u00dfe@example.de", "sharp s kept: the address must stay deliverable"),
]

EMAILS_REFUSED = [
    ("", "empty", "empty"),
    ("   ", "empty", "spaces only"),
    ("alice", "exactly one @", "no @"),
    ("a@b@example.com", "exactly one @", "two @"),
    ("@example.com", "nothing before", "empty local part"),
    ("alice@", "dot", "empty domain"),
    ("alice@localhost", "dot", "no dot in the domain"),
    ("alice@.example.com", "dot", "empty first label"),
    ("alice@example.com.", "dot", "trailing dot"),
    ("alice@example..com", "dot", "empty label"),
    ("al ice@example.com", "space", "space inside"),
    ("alice@exa mple.com", "space", "space in the domain"),
    ("al\u200dice@example.com", "invisible", "zero-width joiner"),
    ("alice@example.com\u202e", "invisible", "right-to-left override"),
    ("ax\u115fy@x.com", "invisible", "Hangul filler (an attack run)"),
    ("a" * MAX_EMAIL_LENGTH + "@example.com", "longer than", "too long"),
]


@pytest.mark.parametrize(("typed", "stored", "why"), EMAILS_FOLDED, ids=[r[2] for r in EMAILS_FOLDED])
def test_email_folds(typed: str, stored: str, why: str) -> None:
    assert canonical_email(typed) == stored, why


@pytest.mark.parametrize(("typed", "message", "why"), EMAILS_REFUSED, ids=[r[2] for r in EMAILS_REFUSED])
def test_email_refused(typed: str, message: str, why: str) -> None:
    with pytest.raises(ValueError, match=message):
        canonical_email(typed)


def test_every_bare_word_the_gateway_writes_in_the_audit_trail_is_a_reserved_username() -> None:
    """A person's records are found by their name; an account named like an actor or subject the
    gateway writes for itself would own those records. Every such literal in the code is reserved."""
    root = Path(__file__).resolve().parents[3]
    literal = re.compile(r'\b(?:actor|subject)="([^"]+)"')
    written = {
        word
        for package in ("gateway", "admin")  # the console writes records too
        for path in (root / package).rglob("*.py")
        for word in literal.findall(path.read_text(encoding="utf-8"))
        if ":" not in word and " " not in word and "$" not in word
    }
    # The scan finds what it looks for, in both packages.
    assert {"system", "anonymous", "policy", "incident"} <= written
    unreserved = {w for w in written if canonical_username(w) not in RESERVED_USERNAMES}
    # Test fixtures in the code base's docstrings name alice; real literals must all be reserved.
    assert unreserved <= {"alice"}, unreserved


@pytest.mark.parametrize(
    ("name", "mixed"),
    [
        ("\u0430lice", True),  # Cyrillic a + Latin
        ("b\u03bfss", True),  # Greek omicron + Latin
        ("\u0430\u043b\u0438\u0441\u0430", False),  # all Cyrillic
        ("\u03b1\u03bb\u03af\u03ba\u03b7", False),  # all Greek
        ("alice.smith@corp", False),
        ("\u5c71\u7530\u305f\u308d\u3046", False),  # Han and Hiragana: how Japanese names are written
        ("user42", False),
    ],
)
def test_a_new_username_mixing_look_alike_scripts_is_refused(name: str, mixed: bool) -> None:
    """An attack run made "alice" with a Cyrillic a beside alice; its admin role read as alice's."""
    assert (mixed_script(name) is not None) is mixed
