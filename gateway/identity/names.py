"""Canonical usernames and email addresses: what people type, folded to the one form that is stored.

Two spellings that look alike to a person must reach the same account, and so share one failed-attempt
counter; otherwise ``ALICE``, a full-width ``alice`` (U+FF41...) and ``alice`` would be three accounts to guess, or
three counters to spread a password-guessing attack over. Both functions therefore apply Unicode NFKC
(compatibility forms such as full-width letters, ligatures and the Kelvin sign become plain letters),
fold case and trim surrounding white space.

Characters that do not look like anything are refused rather than removed: a zero-width joiner or a
right-to-left override inside a name makes two different stored names render identically in an admin
list or an audit log, which is exactly the confusion an impersonator wants. Refusing keeps "what you
see is what is stored".

Not handled (yet): confusables *across* scripts (Latin ``a`` U+0061 and Cyrillic ``a`` U+0430 are different letters;
UTS #39 skeletons would be needed to treat them as one).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import unicodedata
from typing import Final

from gateway.names import hidden_character

__all__ = [
    "AUTHORITY_USERNAMES",
    "MAX_EMAIL_LENGTH",
    "MAX_MARKS_PER_LETTER",
    "MAX_USERNAME_LENGTH",
    "RESERVED_USERNAMES",
    "canonical_email",
    "canonical_username",
    "fold",
    "is_gateway_id",
    "system_shaped",
]

MAX_USERNAME_LENGTH: Final = 64
#: Combining marks allowed after one letter (Devanagari, Vietnamese need a few; more is decoration).
MAX_MARKS_PER_LETTER: Final = 3
#: RFC 5321 limits a forward path to 256 octets including the angle brackets.
MAX_EMAIL_LENGTH: Final = 254
#: The bare words the gateway writes as an audit record's actor or subject for itself (``system`` locks
#: an account, ``anonymous`` fails a sign-in for an unknown login, ``policy``, ``keys`` and ``lockdown``
#: are the subjects of their changes, ``audit`` and ``incident`` of the console's audit exports and
#: incident cases). A person's records are found by their name (export, erasure),
#: so no account may be given one of these: its owner would download other people's records and erase
#: them. Other actors carry a ``kind:`` prefix, which a username cannot contain.
#: ``tests/unit/identity/test_names.py`` checks the list against the literals in the code.
RESERVED_USERNAMES: Final = frozenset(
    {"system", "anonymous", "policy", "keys", "lockdown", "audit", "incident"}
)

#: Names that claim an authority, to a person reading a list or to an app reading ``X-Gateway-User``
#: (RFC 2142's role mailboxes, the usual administrator names, the gateway's own). An operator may give
#: a local account one; an account an identity provider's sign-in creates never gets one, because
#: most providers let people choose their own username claim (an attack run signed in as ``admin``).
AUTHORITY_USERNAMES: Final = frozenset(
    {
        "admin",
        "administrator",
        "root",
        "superuser",
        "sysadmin",
        "operator",
        "gateway",
        "security",
        "abuse",
        "postmaster",
        "hostmaster",
        "webmaster",
    }
)

# The ids the gateway makes and writes as an audit record's subject: an incident case (``inc-3f9a1c2b``)
# and a privacy request (``PR-`` and ten base32 characters, folded as a username folds it).
_SYSTEM_IDS: Final = re.compile(r"inc-[0-9a-f]{8}|pr-[a-z2-7]{10}")


def system_shaped(name: str) -> str | None:
    """What a canonical username would be mistaken for in the audit trail, or None.

    A person's records are found by their name as a record's subject (export, erasure); an address
    (a block's subject), an incident case id or a privacy request's reference there is not theirs: an
    attack run created an account named ``203.0.113.7``, whose export held an admin's block of that
    address with its reason, and whose erasure tombstoned it.
    """
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name)
        return "an IP address"
    if is_gateway_id(name):
        return "an id the gateway gives incidents and privacy requests"
    return None


def is_gateway_id(value: str) -> bool:
    """Whether ``value`` is, in any case, an id the gateway makes: an incident's or a privacy request's."""
    return _SYSTEM_IDS.fullmatch(value.lower()) is not None


_USERNAME_PUNCTUATION: Final = frozenset("._-@+")
_LETTER_CATEGORIES: Final = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo"})
_MARK_CATEGORIES: Final = frozenset({"Mn", "Mc"})


def _describe(char: str) -> str:
    name = unicodedata.name(char, "")
    code = f"U+{ord(char):04X}"
    return f"{code} {name}" if name else code


def fold(text: str) -> str:
    """``text`` as usernames are compared: NFKC before case folding (full-width and compatibility
    letters fold like their plain forms) and again after it, because folding can produce sequences
    that are no longer normalized. Erasure finds names in free text folded so
    (``gateway.privacy.mentions``)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _invisible(char: str) -> bool:
    # What gateway.names finds a reader cannot see (controls, format characters, private use,
    # unassigned, separators, and the default-ignorable letters: a Hangul filler after "eve" listed as
    # eve beside the admin eve, an attack run), and every space.
    return char.isspace() or unicodedata.category(char) == "Zs" or hidden_character(char) is not None


# Scripts whose letters imitate each other (U+0430 Cyrillic a, U+03BF Greek o): a name mixing them
# reads as another name (an attack run made the account "alice" with a Cyrillic a beside "alice", and
# its admin role read as alice's in a proposal). Mixing other scripts (Han with Kana, say) is how names are written.
_LOOK_ALIKE_SCRIPTS: Final = frozenset({"LATIN", "CYRILLIC", "GREEK"})


def mixed_script(name: str) -> str | None:
    """Why ``name`` may not be a new username because it mixes Latin, Cyrillic or Greek letters (the
    scripts whose letters look alike), or ``None``. Existing accounts keep signing in: only a new
    account's name is checked."""
    scripts = {
        script
        for char in name
        if unicodedata.category(char)[0] == "L"
        and (script := unicodedata.name(char, "").split(" ")[0]) in _LOOK_ALIKE_SCRIPTS
    }
    if len(scripts) < 2:
        return None
    return (
        f"The username mixes {' and '.join(sorted(s.title() for s in scripts))} letters, which look alike: "
        "choose a name in one of them."
    )


def canonical_username(raw: str) -> str:
    """Fold a username to its stored form.

    NFKC, case-folded (so ``ß`` becomes ``ss`` and the Kelvin sign ``K`` becomes ``k``) and stripped of
    surrounding white space. Letters of any script, decimal digits and ``. _ - @ +`` are allowed;
    combining marks only after a letter (scripts such as Devanagari need them).

    Args:
        raw: What was typed.

    Returns:
        The canonical username.

    Raises:
        ValueError: The name is empty, longer than :data:`MAX_USERNAME_LENGTH` characters, contains
            an invisible, space or disallowed character, or has no letter or digit; the message says
            which, for a human.
    """
    name = fold(raw).strip()
    if not name:
        raise ValueError("The username is empty.")
    if len(name) > MAX_USERNAME_LENGTH:
        raise ValueError(f"The username is longer than {MAX_USERNAME_LENGTH} characters.")
    marks = -1  # combining marks since the last letter; -1: not after a letter
    for char in name:
        category = unicodedata.category(char)
        if _invisible(char):
            raise ValueError(f"The username contains an invisible or space character ({_describe(char)}).")
        if category in _MARK_CATEGORIES:
            # A lone mark would decorate punctuation or nothing; a long stack of them ("Zalgo" text)
            # hides what is underneath. Real scripts need a few after a letter.
            marks = marks + 1 if marks >= 0 else MAX_MARKS_PER_LETTER + 1
            if marks > MAX_MARKS_PER_LETTER:
                raise ValueError(
                    f"The username has a combining mark that is not allowed there ({_describe(char)})."
                )
            continue
        if not (category in _LETTER_CATEGORIES or category == "Nd" or char in _USERNAME_PUNCTUATION):
            raise ValueError(
                f"The username contains a character that is not allowed ({_describe(char)}); "
                "use letters, digits and . _ - @ +"
            )
        marks = 0 if category in _LETTER_CATEGORIES else -1
    if not any(unicodedata.category(char)[0] in "LN" for char in name):  # the loop let only L* and Nd in
        # "." and ".." are path segments to every browser and proxy: the console's /users/.. is its
        # overview page, so such an account could not be opened, disabled or reset there (an attack run).
        raise ValueError("The username needs a letter or a digit.")
    return name


def canonical_email(raw: str) -> str:
    """Fold an email address to its stored form.

    NFKC, stripped, and lower-cased in full: RFC 5321 lets the local part be case-sensitive, but no
    mail system in use treats ``Alice@`` and ``alice@`` as two people, and one account (one failure
    counter) per person matters more here. ``str.lower`` rather than case folding, so the stored
    address stays deliverable (``ß`` is not rewritten to ``ss``).

    Args:
        raw: What was typed.

    Returns:
        The canonical address.

    Raises:
        ValueError: Empty, too long, white space or invisible characters inside, not exactly one ``@``,
            an empty local part, or a domain without a dot.
    """
    address = unicodedata.normalize("NFKC", raw).strip().lower()
    if not address:
        raise ValueError("The email address is empty.")
    if len(address) > MAX_EMAIL_LENGTH:
        raise ValueError(f"The email address is longer than {MAX_EMAIL_LENGTH} characters.")
    for char in address:
        if _invisible(char):
            raise ValueError(
                f"The email address contains an invisible or space character ({_describe(char)})."
            )
    if address.count("@") != 1:
        raise ValueError("The email address must contain exactly one @.")
    local, domain = address.split("@")
    if not local:
        raise ValueError("The email address has nothing before the @.")
    labels = domain.split(".")
    if len(labels) < 2 or not all(labels):
        raise ValueError("The email domain must be a name with a dot, such as example.com.")
    return address
