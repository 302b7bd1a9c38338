"""Record ids in request data (paths, forms, JSON, CLI arguments), checked before any query.

Every id column is ``INTEGER``: 32-bit signed on PostgreSQL. An id outside that range reached the
driver, which refused it (asyncpg: ``value out of int32 range``; SQLite: ``Python int too large``),
and the refusal came back as a 503 ``store-unavailable`` carrying the driver's text: bad input
reported as an outage, and the database's words shown to whoever typed the URL. Each handler that
takes an id parses it here instead; anything that is not a stored id's shape is a 400.
"""

from __future__ import annotations

from typing import Final

from gateway.errors import BadRequest

__all__ = ["MAX_ID", "BadId", "parse_id"]

#: The largest value an id column holds on every backend (PostgreSQL ``INTEGER``).
MAX_ID: Final = 2**31 - 1
_MAX_DIGITS: Final = len(str(MAX_ID))


class BadId(BadRequest):
    """An id that no record can have: not a plain decimal, zero or negative, or beyond ``MAX_ID``."""

    reason = "bad-id"
    title = "Malformed id"


def parse_id(text: str | int, *, what: str = "id") -> int:
    """The id in ``text``: a decimal number from 1 to :data:`MAX_ID`.

    Args:
        text: The value as the client sent it (an ``int`` from a typed field is checked too).
        what: Names the value in the error message (``"version"``, ``"factor id"``).

    Raises:
        BadId: anything else; signs, spaces, non-ASCII digits (Arabic-Indic, superscripts) and exponents included.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str) and 0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit():
        value = int(text)
    else:
        value = 0
    if not 1 <= value <= MAX_ID:
        raise BadId(f"The {what} must be a whole number from 1 to {MAX_ID}.")
    return value
