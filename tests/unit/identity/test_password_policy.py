"""The password policy (NIST SP 800-63B §5.1.1.2), table-driven: what is refused, why, and what is not.

Every refused password is also checked for the message: it names the rule and never repeats the
password. The tables are the attack inputs (``password1234`` was accepted by the outside attack run)
and the trivial variants a guesser's first rules produce from a listed word.
"""

from __future__ import annotations

import importlib.util
import random
import string
from collections.abc import Iterator

import pytest

from gateway.identity import password_policy
from gateway.identity.password_policy import (
    MAX_PASSWORD_CHARS,
    Refusal,
    Rule,
    check_password,
    load_lists,
)
from gateway.identity.passwords import PasswordHasher
from gateway.settings.schema import PasswordSettings

MIN = 12
# What the account in these tests is known by: username, email address, display name.
ALICE = ("alice.smith", "alice.smith@acme.example", "Alice Smith")

COMMON = [
    "password1234",  # the attack run's input, verbatim in the list
    "iloveyou1234",
    "123456789012",
    "987654321098",
    "1qaz2wsx3edc",
    "letmein12345",
    "welcome12345",
]
VARIANTS = [
    "PASSWORD1234",  # case
    "Password1234!",  # case + symbol appended
    "P@ssw0rd1234",  # look-alike substitutions
    "p@$$w0rd2024",
    "1234password",  # digits in front
    "!!!!password",  # symbols in front
    "password!2024",  # symbol and a year
    "password19871987",  # a year twice
    "password123456789",  # a sequence appended
    "monkey!@#$%^&*()",  # a keyboard walk appended
    "drowssap1234",  # reversed
    "passwordpassword",  # repeated
    "letmein!letmein!",  # repeated, with a symbol
    "Monkey2024Monkey2024",
    "p a s s w o r d 1 2 3 4",  # spaced out
    "pass-word-1234",  # separators
    "pässwörd1234",  # accents
    "".join(chr(ord(c) + 0xFEE0) for c in "password1234"),  # full-width (NFKC)
]
DICTIONARY = ["Constantinople", "Christopher99", "Relationships!", "1987Washington", "administrator1"]
PATTERN = [
    "aaaaaaaaaaaa",
    "abababababab",
    "abcdefghijkl",
    "zyxwvutsrqpo",
    "mnbvcxzlkjhg",  # two keyboard-row walks
    "1111222233334444",
    "!@#$%^&*()_+",
    "1234qzjx!!!!",  # a short core between trivial affixes
]
PERSONAL = [
    "alice.smith2024",
    "AliceSmith!!!!",
    "Smith, Alice 1990",
    "htims.ecila12",  # reversed
    "@l1c3$m1th99",  # look-alikes
    "alicealicealice",
    "smithwonderland",  # a name and a dictionary word
    "alice.smith@acme.example",
    "acme.example2024",  # the email's domain
]
GOOD = [
    "amber quarry lantern voyage",
    "an entirely different passphrase",
    "alice likes green tea",  # contains the name, but more than that
    "malice aforethought",  # contains "alice" inside another word
    "dragon 4829 1735 6620",  # a listed word, then real randomness: not a trivial variant
    "839201746352",  # twelve random digits
    "Tr0ub4dor&3 horse",
    "ﬁsh & chips",  # eleven characters typed, twelve after NFKC
    "sunshine dragon",
]


def _refused(password: str, *, min_length: int = MIN, personal: tuple[str, ...] = ()) -> Refusal:
    refusal = check_password(password, min_length=min_length, personal=personal)
    assert refusal is not None, f"{password!r} was accepted"
    return refusal


def _random_password(length: int) -> str:
    return "".join(random.Random(length).choices(string.ascii_letters + string.digits, k=length))


@pytest.mark.parametrize(
    ("password", "rule"),
    [(p, Rule.COMMON) for p in COMMON + VARIANTS]
    + [(p, Rule.DICTIONARY) for p in DICTIONARY]
    + [(p, Rule.PATTERN) for p in PATTERN]
    + [(p, Rule.PERSONAL) for p in PERSONAL],
)
def test_refused_with_the_rule_and_without_echoing_the_password(password: str, rule: Rule) -> None:
    refusal = _refused(password, personal=ALICE)
    assert refusal.rule is rule
    assert password.casefold() not in refusal.message.casefold()
    assert "password1234" not in refusal.message


@pytest.mark.parametrize("password", [*GOOD, _random_password(MIN), _random_password(MAX_PASSWORD_CHARS)])
def test_good_passwords_are_accepted(password: str) -> None:
    assert check_password(password, min_length=MIN, personal=ALICE) is None


@pytest.mark.parametrize("password", PERSONAL)
def test_personal_rule_is_about_this_account_only(password: str) -> None:
    # For someone else, "alice.smith2024" is just a weak-ish password, not "your username": whatever
    # else it is refused for, it is not the personal rule.
    refusal = check_password(password, min_length=MIN, personal=("bob", "bob@jones.org", "Bob Jones"))
    assert refusal is None or refusal.rule is not Rule.PERSONAL


@pytest.mark.parametrize(
    ("personal", "password"),
    [
        (("alice", "", ""), "alice1234567"),
        (("", "carol.d@example.org", ""), "carol.d.example"),
        (("", "", "Zoë Quist"), "zoequist2024!"),  # accents folded in the name as in the password
        (("mallory99", "", ""), "mallory99mallory99"),
    ],
)
def test_each_kind_of_personal_information_counts(personal: tuple[str, str, str], password: str) -> None:
    assert _refused(password, personal=personal).rule is Rule.PERSONAL


def test_short_personal_tokens_are_not_removed() -> None:
    # A two-letter name occurs inside too many words to take out: "al" does not make this personal.
    assert check_password("crystal ball gazing", min_length=MIN, personal=("al", "", "Al")) is None


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("", Rule.TOO_SHORT),
        ("monkey2", Rule.TOO_SHORT),  # listed AND short: the length is what to fix first
        ("ﬁsh & chip", Rule.TOO_SHORT),  # eleven after NFKC
        ("x" * (MAX_PASSWORD_CHARS + 1), Rule.TOO_LONG),
    ],
)
def test_length_rules_come_first(password: str, rule: Rule) -> None:
    refusal = _refused(password)
    assert refusal.rule is rule
    assert str(MIN if rule is Rule.TOO_SHORT else MAX_PASSWORD_CHARS) in refusal.message


def test_the_configured_minimum_is_kept() -> None:
    passphrase = "purple monkey dishes"  # 20 characters
    assert check_password(passphrase, min_length=20) is None
    assert _refused(passphrase, min_length=21).rule is Rule.TOO_SHORT


def test_messages_name_different_rules() -> None:
    messages = {
        rule: _refused(password, personal=ALICE).message
        for rule, password in [
            (Rule.COMMON, "password1234"),
            (Rule.DICTIONARY, "Constantinople"),
            (Rule.PATTERN, "aaaaaaaaaaaa"),
            (Rule.PERSONAL, "alice.smith2024"),
        ]
    }
    assert len(set(messages.values())) == 4
    assert "breached" in messages[Rule.COMMON]
    assert "dictionary" in messages[Rule.DICTIONARY]
    assert "repeated or sequential" in messages[Rule.PATTERN]
    assert "username, email address or name" in messages[Rule.PERSONAL]


def test_lists_come_from_the_package_whole_and_once() -> None:
    lists = load_lists()
    assert load_lists() is lists
    assert len(lists.common) >= 30_000
    assert len(lists.words) >= 60_000
    assert {"password", "password1234", "123456", "qwerty"} <= lists.common
    assert {"constantinople", "christopher"} <= lists.words
    assert lists.longest == max(len(entry) for entry in lists.common | lists.words)


@pytest.fixture
def fresh_lists() -> Iterator[None]:
    """Forget the loaded lists for one test, and reload the real ones afterwards."""
    load_lists.cache_clear()
    try:
        yield
    finally:
        load_lists.cache_clear()
        load_lists()


@pytest.mark.usefixtures("fresh_lists")
def test_a_missing_list_package_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the lists the policy would accept what it promises to refuse: no password is accepted.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(RuntimeError, match="not installed"):
        check_password("amber quarry lantern voyage", min_length=MIN)


@pytest.mark.usefixtures("fresh_lists")
def test_a_truncated_list_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    short = {name: ["password"] for name in ("passwords", *password_policy._WORD_LISTS)}
    monkeypatch.setattr(password_policy, "_read_frequency_lists", lambda: short)
    with pytest.raises(RuntimeError, match="only 1 entries"):
        check_password("amber quarry lantern voyage", min_length=MIN)


async def test_the_hasher_applies_the_policy_with_its_minimum_off_the_loop() -> None:
    hasher = PasswordHasher(PasswordSettings(min_length=14))
    assert await hasher.check_new("password1234!!") == _refused("password1234!!").message
    assert hasher.check_policy("twelve chars") == _refused("twelve chars", min_length=14).message
    assert await hasher.check_new("alice likes tea", personal=ALICE) is None
    assert (
        await hasher.check_new("alice.smith2024", personal=ALICE)
        == _refused("alice.smith2024", personal=ALICE).message
    )


async def test_a_password_longer_than_any_can_be_is_refused_before_it_is_normalised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attack run: NFKC makes U+FDFA 18 characters, and a megabyte of it held the event loop a
    second at sign-in (verify) before anything looked at its length."""
    hasher = PasswordHasher(PasswordSettings())
    stored = await hasher.hash("amber quarry lantern voyage")
    huge = "\ufdfa" * (4 * MAX_PASSWORD_CHARS + 1)

    def never(form: str, text: str) -> str:
        raise AssertionError("normalised")

    monkeypatch.setattr("unicodedata.normalize", never)
    assert await hasher.verify(stored, huge) is False
    assert await hasher.verify(None, huge) is False
    refusal = check_password(huge, min_length=MIN)
    assert refusal is not None
    assert refusal.rule is Rule.TOO_LONG
    monkeypatch.undo()
    # A long typed password that composes to fewer characters is still the one it was.
    composed = "e\u0301" * 1000  # 2,000 typed, 1,000 once composed
    kept = check_password(composed, min_length=MIN)
    assert kept is None or kept.rule is not Rule.TOO_LONG
    assert await hasher.verify(await hasher.hash(composed), composed) is True


@pytest.mark.parametrize(
    "password",
    ["correct horse battery staple", "Correct-Horse-Battery-Staple!", "correcthorsebatterystaple 2026",
     "the quick brown fox jumps over the lazy dog"],
)  # fmt: skip
def test_a_famous_example_passphrase_is_refused(password: str) -> None:
    """An attack run set xkcd 936's passphrase as an invitation's password: every cracking wordlist has it."""
    refusal = check_password(password, min_length=12)
    assert refusal is not None
    assert refusal.rule is Rule.COMMON
