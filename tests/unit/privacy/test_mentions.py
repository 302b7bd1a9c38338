"""A person's mentions in free text and JSON (``gateway.privacy.mentions``), table-driven: the whole name
is replaced, in any case, with its actor prefix; a longer name that contains it is left alone."""

from __future__ import annotations

import pytest

from gateway.privacy.mentions import Mentions

T = "[erased:0a1b2c3d4e5f]"
ALICE = Mentions(["alice", "alice@example.com"], T, emails=["alice@example.com"])

CASES = [
    ("brute force: alice", f"brute force: {T}"),
    ("user:alice", T),
    ("admin:alice", T),
    ("cli:alice", f"cli:{T}"),
    ("Called alice@example.com today.", f"Called {T} today."),
    ("ALICE said so", f"{T} said so"),
    ("Reported by alice.", f"Reported by {T}."),
    ("alice, bob and carol", f"{T}, bob and carol"),
    ("(alice)", f"({T})"),
    ('"alice"', f'"{T}"'),
    ("alice2 is someone else", "alice2 is someone else"),
    ("malice is not a name", "malice is not a name"),
    ("bob.alice and alice.bob", "bob.alice and alice.bob"),
    ("alice_b and b-alice", "alice_b and b-alice"),
    ("alice@other.org", "alice@other.org"),
    ("alice+tag", "alice+tag"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_a_mention_is_the_whole_name(text: str, expected: str) -> None:
    assert ALICE.text(text) == expected


def test_json_documents_are_replaced_in_values_and_in_keys_by_person() -> None:
    doc = {"sent": ["alice", "bob"], "failed": {"alice": "mailbox of alice@example.com full"}, "n": 2}
    replaced = ALICE.document(doc, people_keyed=frozenset({"failed"}))
    assert replaced == {"sent": [T, "bob"], "failed": {T: f"mailbox of {T} full"}, "n": 2}


def test_keys_are_replaced_only_whole_and_structural_members_never() -> None:
    detection = Mentions(["detection"], T)
    doc = {"detection": "inc-1", "phase": "detection", "note": "detection ran", "failed": {"detection": "x"}}
    people = frozenset({"failed"})
    assert detection.document(doc, structural=frozenset({"detection", "phase"}), people_keyed=people) == {
        "detection": "inc-1",
        "phase": "detection",
        "note": f"{T} ran",
        "failed": {T: "x"},
    }
    assert ALICE.document({"alice-x": 1, "about alice": 2}) == {"alice-x": 1, "about alice": 2}
    # A key is structure: a person named "owner" does not take the key of someone else's owner.
    assert Mentions(["owner"], T).document({"owner": "erin"}) == {"owner": "erin"}
    # Unambiguously: a value wholly the person goes, though only addresses are looked for in text.
    assert ALICE.unambiguous().document({"owner": "alice", "note": "alice went"}) == {
        "owner": T,
        "note": "alice went",
    }


def test_whole_values_and_unambiguous_mentions() -> None:
    assert (ALICE.whole("user:alice"), ALICE.whole("alice and bob")) == (T, "alice and bob")
    assert ALICE.about(["bob", "mailed alice@example.com"])
    assert not ALICE.about(["bob", "alice went home"])
    assert ALICE.unambiguous().text("alice wrote from alice@example.com") == f"alice wrote from {T}"
    assert ALICE.unambiguous().text("user:alice") == T


def test_a_list_of_names_keeps_its_order_without_repeats() -> None:
    assert ALICE.names(["bob", "alice", "ALICE", "carol"]) == ["bob", T, "carol"]


def test_no_names_changes_nothing() -> None:
    assert Mentions(["", "  "], T).text("alice") == "alice"


def test_a_non_ascii_name() -> None:
    assert Mentions(["józef"], T).text("Józef and józefa") == f"{T} and józefa"


def _wide(text: str) -> str:
    """``text`` in full-width letters (U+FF01..U+FF5E are ASCII 0x21..0x7E moved by 0xFEE0)."""
    return "".join(chr(ord(c) + 0xFEE0) for c in text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # An attack run's finding: the account is "strasse" (usernames are NFKC case-folded), the
        # note wrote it as the person does; full-width letters fold to the plain ones.
        ("called Straße today", f"called {T} today"),
        ("STRASSE", T),
        (f"user:{_wide('STRASSE')}.", f"{T}."),
        (f"{_wide('alice@example.com')} wrote", f"{T} wrote"),
        ("Straßen is a longer word", "Straßen is a longer word"),
        ("strasse\u0301 carries a mark", "strasse\u0301 carries a mark"),
    ],
)
def test_a_name_written_in_another_unicode_spelling(text: str, expected: str) -> None:
    mentions = Mentions(["strasse", "alice@example.com"], T)
    assert mentions.text(text) == expected


def test_a_combining_mark_is_folded_with_its_letter() -> None:
    # "józef" as the account holds it (composed), written with a combining acute in the note.
    assert Mentions(["józef"], T).text("Jo\u0301zef called") == f"{T} called"
    assert Mentions(["józef"], T).whole(" JÓZEF ") == T


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        # A re-attack run's finds. The dotless i is another letter: "al\u0131" is not "ali".
        ("ali", "al\u0131 wrote", "al\u0131 wrote"),
        ("al\u0131", "ali wrote", "ali wrote"),
        # A vowel sign (a mark of combining class 0) continues a Devanagari name, before or after.
        ("\u0930\u093e\u092e", "\u0930\u093e\u092e\u0940 called", "\u0930\u093e\u092e\u0940 called"),
        ("\u0930\u093e", "\u0915\u093f\u0930\u093e called", "\u0915\u093f\u0930\u093e called"),
        ("\u0930\u093e\u092e", "\u0930\u093e\u092e called", f"{T} called"),
        # Conjoining jamo compose into the syllables the account holds.
        ("\ud55c\uc218", "called \u1112\u1161\u11ab\u1109\u116e today", f"called {T} today"),
        # A Bengali vowel written in two parts composes into the one the account holds.
        ("\u0995\u09cb", "x \u0995\u09c7\u09be y", f"x {T} y"),
    ],
)
def test_scripts_whose_letters_join_or_compose(name: str, text: str, expected: str) -> None:
    mentions = Mentions([name], T)
    assert mentions.text(text) == expected
    assert mentions.whole(text) == (T if expected == T else text)
