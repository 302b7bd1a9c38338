"""A person's name in free text and JSON, replaced by their erasure tombstone.

Records that are not the audit trail (incident records above all) keep a person's name in text a
human wrote or a rule composed: a title ("brute force: alice"), a note ("called alice@example.com"),
an actor ("user:alice"), a list of affected users, a JSON document of an entry. An erasure replaces
each mention by the tombstone the audit erasure writes (``[erased:<pseudonym>]``), so one person's
records still read as one person's, and no name is left.

A mention is the name as a whole token: not inside a longer name (``al`` is not found in ``alice``,
nor ``alice`` in ``alice2`` or ``bob.alice``), case-insensitive (a note may capitalise it), with the
actor prefixes ``user:`` and ``admin:`` taken with it (``user:alice`` becomes the tombstone, as the
audit erasure makes the whole actor field one). A sentence's full stop after a name still ends it.
An email address is looked for before the username, so ``alice@example.com`` is one mention, not a
username with a domain left behind.

A username can be a common word (``detection``, ``phishing``): as a token in someone else's record it
may be that word, not the person. So a record that is not about the person (the caller decides:
:meth:`Mentions.about`) has only the person's email address replaced in its free text, and a field
that holds a name alone (an actor, an owner) replaced only when it is wholly the person's
(:meth:`Mentions.whole`); and a JSON document's keys and structural members are never rewritten (an
attack run erased an account named ``detection`` and every incident's ``{"detection": id}`` lost its
key, which broke lifting the incident's blocks).

Text is compared as usernames are (``gateway.identity.names``: NFKC, then case folding), so a note that
writes ``Straße`` finds the account ``strasse``, and ``alice`` written in full-width letters is found (an attack
run's finding: both survived an erasure); what is replaced is the span of the text as written.

What it cannot find: a name spelled otherwise (a nickname, a display name, a typo), which erasure
cannot know about, nor a bare username in a record that is not about the person (``docs/privacy.md``,
"Known gaps").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from gateway.identity.names import fold

__all__ = ["Mentions"]

# Characters that continue a username (gateway.identity.names: letters, digits, marks, and . _ - @ +):
# a mention is not preceded by one, nor followed by one (a "." followed by a letter or digit continues
# the name; one followed by a space or the end is the end of a sentence).
_BEFORE = r"(?<![\w.@+\-])"
_AFTER = r"(?![\w@+\-]|\.\w)"


def _folded(text: str) -> tuple[str, list[int]]:
    """``text`` folded, and for each folded character the index in ``text`` it came from (one more
    entry, ``len(text)``, for a match that ends the text).

    Characters are folded in groups that folding cannot join across: a mark stays with the letter
    before it (``e`` + U+0301 is the ``é`` a canonical username holds; a Devanagari vowel sign is part
    of its syllable), and so does any character that composes with the group (conjoining Hangul jamo
    make one syllable). A re-attack run found both: ``राम`` replaced inside ``रामी``, and ``한수``
    written in jamo missed."""
    if text.isascii():
        # Most text: NFKC leaves ASCII as it is and folding is lower case, one character for one.
        return text.lower(), list(range(len(text) + 1))
    parts: list[str] = []
    origin: list[int] = []
    start = 0
    for end in range(1, len(text) + 1):
        if end < len(text) and _joins(text[start:end], text[end]):
            continue
        piece = fold(text[start:end])
        parts.append(piece)
        origin.extend([start] * len(piece))
        start = end
    origin.append(len(text))
    return "".join(parts), origin


def _joins(group: str, char: str) -> bool:
    """Whether ``char`` belongs to the group before it: a mark, or it folds differently together."""
    return _is_mark(char) or fold(group + char) != fold(group) + fold(char)


def _is_mark(char: str) -> bool:
    return unicodedata.category(char).startswith("M")


def _longest_first(names: Iterable[str]) -> list[str]:
    return sorted({fold(n.strip()) for n in names if n.strip()}, key=len, reverse=True)


def _alternatives(names: list[str]) -> str:
    return r"(?:(?:user|admin):)?(?:" + "|".join(re.escape(n) for n in names) + ")"


class Mentions:
    """Finds the mentions of one person (their username and email) and replaces them by ``tombstone``."""

    def __init__(
        self, names: Iterable[str], tombstone: str, *, whole: Iterable[str] = (), emails: Iterable[str] = ()
    ) -> None:
        """Args:
        names: The person's username and email address (empty ones are ignored).
        tombstone: What replaces each mention (``[erased:<pseudonym>]``).
        whole: Names a value is replaced for only when it is wholly one of them (see
            :meth:`unambiguous`); ``names`` count so too.
        emails: Which of ``names`` are the person's email addresses (found in any record, see
            :meth:`unambiguous`). Told, never guessed from an ``@``: a username may hold one, and an
            account named after someone else's former address was erased as that person in every
            incident record (an attack run).
        """
        # Longest first: an email address before the username it may start with.
        wanted = _longest_first(names)
        whole_names = _longest_first([*wanted, *whole])
        self._emails = tuple(_longest_first(emails))
        self._names = tuple(whole_names)
        self._tombstone = tombstone
        self._pattern = (
            # Case-sensitive: text and names are both folded already, and IGNORECASE would take the
            # dotless i (U+0131) for i: "al\u0131" is another account than "ali" (a re-attack run).
            re.compile(_BEFORE + _alternatives(wanted) + _AFTER) if wanted else None
        )
        self._whole = re.compile(_alternatives(whole_names)) if whole_names else None

    def unambiguous(self) -> Mentions:
        """The person's mentions as any record may hold them: their email address anywhere, and a
        value that is wholly one of their names (an actor, an owner). A username alone in text can be
        a common word (``detection``, ``phishing``) in a record that is not about them."""
        return Mentions(self._emails, self._tombstone, whole=self._names, emails=self._emails)

    def about(self, values: Iterable[str]) -> bool:
        """Whether any of ``values`` is wholly the person, or mentions their email address."""
        unambiguous = self.unambiguous()
        return any(unambiguous.text(v) != v for v in values)

    def whole(self, value: str) -> str:
        """``value`` replaced if it is, as a whole, the person; else unchanged."""
        if self._whole is not None and self._whole.fullmatch(fold(value.strip())) is not None:
            return self._tombstone
        return value

    def text(self, value: str) -> str:
        """``value`` with every mention replaced (and replaced whole if it is wholly the person)."""
        if self._pattern is not None and value:
            folded, origin = _folded(value)
            # The spans found in the folded text, replaced in the text as written (from the end, so
            # the earlier spans' indexes still hold).
            for match in reversed(list(self._pattern.finditer(folded))):
                first, last = match.start(), match.end()
                start, end = origin[first], origin[last]
                if (first and origin[first - 1] == start) or origin[last - 1] == end:
                    # The match starts or ends inside one written character's folding (``ß`` is
                    # ``ss``): no whole name starts or ends there.
                    continue
                if (first and _is_mark(folded[first - 1])) or (last < len(folded) and _is_mark(folded[last])):
                    # A mark continues a name as a letter does (``\w`` does not cover them all).
                    continue
                value = value[:start] + self._tombstone + value[end:]
        return self.whole(value)

    def document(
        self,
        value: Any,
        *,
        structural: frozenset[str] = frozenset(),
        people_keyed: frozenset[str] = frozenset(),
    ) -> Any:
        """A parsed JSON value with every mention replaced in its strings. Object keys are structure,
        never rewritten, but for those of the top object's members named in ``people_keyed``
        (``{"failed": {"alice": ...}}``), replaced when wholly the person; the top object's members
        named in ``structural`` (ids, phases, rule names) are left as they are (a re-attack run erased
        an account named ``owner``, and the key of "owner" in other people's records went)."""

        def walk(item: Any) -> Any:
            if isinstance(item, str):
                return self.text(item)
            if isinstance(item, list):
                return [walk(i) for i in item]
            if isinstance(item, dict):
                return {key: walk(i) for key, i in item.items()}
            return item

        if not isinstance(value, dict):
            return walk(value)
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in structural:
                out[key] = item
            elif key in people_keyed and isinstance(item, dict):
                out[key] = {self.whole(str(k)): walk(i) for k, i in item.items()}
            else:
                out[key] = walk(item)
        return out

    def names(self, values: Iterable[str]) -> list[str]:
        """A list of names (``affected_users``) with the person's replaced, in order, without repeats."""
        out: list[str] = []
        for value in values:
            replaced = self.text(value)
            if replaced not in out:
                out.append(replaced)
        return out
