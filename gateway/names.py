"""Names that must read as what they are: role names, and every field of a policy line.

A role is compared as text and shown as text, so a character a reader cannot see makes a look-alike:
``admin`` followed by a zero-width space, a combining grapheme joiner or a Hangul filler reads as
``admin`` in every table, and is another role (a fuzzing run, then a re-attack run, stored such names
through the policy and the local-roles APIs and the CLI). An allow-list of ASCII would refuse honest
names in other scripts (an identity provider's group ``Développeurs``), so the check refuses what
cannot be seen instead:

* control, format, private-use, surrogate and unassigned code points (Unicode Cc, Cf, Co, Cs, Cn);
* every Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties: the variation selectors, the
  Hangul fillers, U+034F, the tag characters, ...), which renderers are told to draw as nothing;
* the blanks that are letters or symbols, not spaces (U+2800 BRAILLE PATTERN BLANK);
* the line and paragraph separators (Zl, Zp: U+2028, U+2029), which break a field into two lines of a
  table or a diff (an attack run's ``p, user:low\u2028priv, ..., deny`` read as two lines, and as a
  deny for ``lowpriv`` that matches nobody).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = ["HIDDEN_CHARACTER_CLASS", "hidden_character", "visible"]

# Default_Ignorable_Code_Point, Unicode 15.1 (DerivedCoreProperties.txt), as inclusive ranges; the
# ones that are Cf or Cn are also caught by their category.
_IGNORABLE: Final = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_BLANK_SYMBOLS: Final = frozenset({0x2800})
_UNSEEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})
_ASCII_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

# Every assigned code point hidden_character finds (Unicode 14, Python 3.11's unicodedata), as
# inclusive ranges, for a regular expression: msgspec checks a request body's field by pattern before
# any code runs, and a pattern cannot ask for a Unicode category. tests/unit/test_names.py compares
# it with hidden_character over every code point. Unassigned ones (Cn) are left out of it: a font
# draws them as a box, which a reader sees.
_HIDDEN_ASSIGNED: Final = (
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x034F, 0x034F), (0x0600, 0x0605),
    (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2),
    (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x2028, 0x202E),
    (0x2060, 0x2064), (0x2066, 0x206F), (0x2800, 0x2800), (0x3164, 0x3164), (0xD800, 0xF8FF),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
    (0x110CD, 0x110CD), (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001), (0xE0020, 0xE007F), (0xE0100, 0xE01EF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD),
)  # fmt: skip
#: The characters :func:`hidden_character` finds, as the inside of a regular expression's ``[...]``
#: (every assigned one; see above).
HIDDEN_CHARACTER_CLASS: Final = "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in _HIDDEN_ASSIGNED)


def hidden_character(text: str) -> str | None:
    """The first character of ``text`` a reader would not see (see the module docstring), if any."""
    if text.isascii():
        # The usual case, and a policy of 100,000 lines is checked field by field: only C0 and DEL,
        # found by one regular expression rather than a Python loop over the characters.
        found = _ASCII_CONTROL.search(text)
        return found.group() if found else None
    for char in text:
        point = ord(char)
        if (
            unicodedata.category(char) in _UNSEEN_CATEGORIES
            or point in _BLANK_SYMBOLS
            or any(low <= point <= high for low, high in _IGNORABLE)
        ):
            return char
    return None


def visible(text: str) -> str:
    """``text`` with every character :func:`hidden_character` finds written as its ``\\uXXXX`` escape.

    For text a record keeps as it was sent, such as the subject of a refused console action: a
    right-to-left override or a terminal control sequence in it must not make the audit trail show a
    look-alike of another name, or drive the terminal that lists it (an attack run).
    """
    if hidden_character(text) is None:
        return text
    return "".join(f"\\u{ord(c):04x}" if hidden_character(c) is not None else c for c in text)
