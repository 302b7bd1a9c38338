"""The reason an administrator or operator gives for an action.

A reason is kept in the audit trail and shown by the console and the CLI's tables, one line each. A
reason of only spaces says nothing, which defeats asking for one; a line break or a control character
in it forged whole lines in `gateway lockdown status` and `gateway incident list` (an attack run
printed a fake "incident lifted by" line that way). So a reason is one line of printable text with
something in it: no C0 or C1 control character (tab and line breaks included), no Unicode line or
paragraph separator, no bidirectional override, which could make a line read as another, and nothing
else a reader cannot see (:func:`gateway.names.hidden_character`).
"""

from __future__ import annotations

import re
from typing import Final

from gateway.names import HIDDEN_CHARACTER_CLASS

__all__ = ["LINE_RULE", "OPTIONAL_REASON_PATTERN", "REASON_PATTERN", "is_one_line", "reason_problem"]

# Nothing a reader cannot see either (a zero-width space, a soft hyphen, a Hangul filler: an attack
# run's reasons carried them where notes refused them): the class gateway.names checks names with.
_CHAR: Final = rf"[^{HIDDEN_CHARACTER_CLASS}]"
#: One line of printable text with at least one character that is not a space (for msgspec.Meta).
REASON_PATTERN: Final = rf"^(?=.*\S){_CHAR}+\Z"
#: The same, or nothing at all (where a reason is optional).
OPTIONAL_REASON_PATTERN: Final = rf"^(?:(?=.*\S){_CHAR}+)?\Z"
# \Z, not $: "$" also matches before a final line break, and an attack run's reason "...\n" broke
# a row of `gateway incident list`.
_LINE: Final = re.compile(rf"^{_CHAR}*\Z")
#: What a reason that is not one line is told (the patterns' character class is no sentence).
LINE_RULE: Final = (
    "a reason is one line of text: no line breaks, tabs, control characters or characters a reader cannot see"
)


def is_one_line(text: str) -> bool:
    """Whether ``text`` is one line of printable text (empty included): the rule for a reason, and for
    other short text a table prints on one line (an incident's title)."""
    return _LINE.search(text) is not None


def reason_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a required reason, or None if it will do."""
    if not text.strip():
        return "a reason is required: say why, in words"
    if not is_one_line(text):
        return LINE_RULE
    return None
