r"""Usernames that read as another one: a new name's skeleton against the names already given.

:func:`gateway.identity.names.mixed_script` refuses a name that mixes Latin, Cyrillic and Greek
letters; a name written wholly in letters that look like another script's, or with a look-alike
letter of its own script, passed it. Attack runs made ``\u0458\u043e\u0435`` (Cyrillic) beside ``joe``,
``ali\u0307ce`` (``al\u0130ce`` case-folded: an ``i`` and a combining dot drawn as its own dot)
beside ``alice``, ``ro\u0585t`` (an Armenian o) through an identity provider's username claim, and
``alice.`` beside ``alice``; each listed as the other in the console, the audit trail and the apps'
``X-Gateway-User``.

The :func:`skeleton` of a name maps every character that Unicode's confusables data (UTS #39, as the
``confusable_homoglyphs`` package ships it) says looks like an ASCII letter or digit to that character,
drops the combining dot above after ``i`` and ``j`` (a reader sees one dot) and trailing dots. A new
name whose skeleton differs from itself and equals a name in use is refused
(:func:`gateway.identity.accounts.look_alikes`).
ASCII is left as it is (``1`` and ``l`` stay apart): the names people type are compared as typed.
"""

from __future__ import annotations

import json
import unicodedata
from functools import cache
from importlib import resources
from typing import Final

__all__ = ["look_alike_shape", "skeleton"]

_DOT_ABOVE: Final = "\u0307"


@cache
def _prototypes() -> dict[str, str]:
    """Each non-ASCII character that looks like an ASCII letter or digit, and that character (a letter
    preferred, lower case: names are case-folded). Read once, at the first account created."""
    raw = json.loads(resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8"))
    out: dict[str, str] = {}
    for char, glyphs in raw.items():
        if len(char) != 1 or char.isascii():
            continue
        ascii_like = sorted(
            {g["c"].lower() for g in glyphs if len(g["c"]) == 1 and g["c"].isascii() and g["c"].isalnum()},
            key=lambda c: (not c.isalpha(), c),
        )
        if ascii_like:
            out[char] = ascii_like[0]
    return out


def skeleton(name: str) -> str:
    """What ``name`` reads as (see the module docstring)."""
    if name.isascii():
        return name.rstrip(".")
    prototypes = _prototypes()
    out: list[str] = []
    for char in unicodedata.normalize("NFD", name):
        if char == _DOT_ABOVE and out and out[-1] in "ij":
            continue
        out.append(prototypes.get(char, char))
    return unicodedata.normalize("NFC", "".join(out)).rstrip(".")


def look_alike_shape(name: str) -> str | None:
    """Why ``name`` may not be a new username by its shape alone, or None: a trailing dot, or a digit
    of another script (an Arabic-Indic one reads as ``l``)."""
    if name.endswith("."):
        return "The username ends with a dot, which a reader does not see as part of it: choose another."
    if any(unicodedata.category(c) == "Nd" and not c.isascii() for c in name):
        return "The username has a digit of another script, which reads as a letter: use the digits 0-9."
    return None
