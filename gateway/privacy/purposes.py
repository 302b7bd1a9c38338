"""What a person's choices mean for the optional processing: pure functions over the configured purposes.

A purpose's ``basis`` decides what counts (``gateway.settings.schema.Purpose``)::

    basis                 processed unless
    consent               the newest answer for the purpose's current version is not "granted"
                          (refused, withdrawn, never answered, or answered for another version)
    legitimate_interest   the purpose is objectable and the person objected to it
    contract              never stopped by a choice (a restriction does not stop it either)
    legal_obligation      never stopped by a choice (a restriction does not stop it either)

and a restriction of processing stops every purpose that is neither contract nor legal obligation.
The result, :func:`optout`, is what a session carries (``Session.optout``): the data plane only tests
membership in it, so every rule above is decided here, once per sign-in or change.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, get_args

from gateway.settings.schema import Purpose

__all__ = [
    "DECISIONS",
    "GEOLOCATION",
    "POLICY_ANALYTICS",
    "ConsentView",
    "Decision",
    "format_objections",
    "is_current",
    "notice_paragraphs",
    "optout",
    "parse_objections",
    "pending",
]

#: The gateway's own optional processing (``DEFAULT_PURPOSES``): the sign-in address looked up for
#: impossible-travel detection, and the request shapes the policy what-if replays.
GEOLOCATION: Final = "geolocation"
POLICY_ANALYTICS: Final = "policy_analytics"

Decision = Literal["granted", "refused", "withdrawn"]
#: Every answer a consent record can hold.
DECISIONS: Final[tuple[str, ...]] = get_args(Decision)

# Never stopped by an objection or a restriction: the service cannot be given, or the law requires it.
_ALWAYS: Final = frozenset({"contract", "legal_obligation"})


@dataclass(frozen=True, slots=True)
class ConsentView:
    """One answer to one version of one purpose's notice (a ``consent_records`` row, detached)."""

    purpose: str
    version: int
    decision: Decision
    at: datetime
    # How it was given: "sign-in prompt", "api", "account page", "admin:<name>".
    method: str


def notice_paragraphs(notice: str) -> list[str]:
    """A notice's paragraphs, as the pages show them: ``Purpose.notice`` is plain text whose paragraphs
    are separated by blank lines."""
    return [part.strip() for part in notice.replace("\r\n", "\n").split("\n\n") if part.strip()]


def is_current(purpose: Purpose, answer: ConsentView | None) -> bool:
    """Whether ``answer`` answers the notice the person would be shown now.

    Only an answer to exactly the configured version counts: a consent given to an older notice does
    not cover a changed one, and after a roll-back to an older version the person has not seen that
    text as their answer's version numbered it either.
    """
    return answer is not None and answer.version == purpose.version


def pending(purposes: Iterable[Purpose], consents: Mapping[str, ConsentView]) -> tuple[Purpose, ...]:
    """The consent purposes the person still has to answer: no answer yet, or one for another version.

    Args:
        purposes: The configured purposes (``privacy.purposes``), in the order they are shown.
        consents: The person's newest answer per purpose name.
    """
    return tuple(p for p in purposes if p.basis == "consent" and not is_current(p, consents.get(p.name)))


def optout(
    purposes: Iterable[Purpose],
    *,
    restricted: bool,
    objections: Collection[str],
    consents: Mapping[str, ConsentView],
) -> frozenset[str]:
    """The names of the purposes NOT to process for this person (the table in the module docstring).

    An objection to a name no purpose is configured under any more is kept in the answer: the person
    objected, and no notice says otherwise now.

    Args:
        purposes: The configured purposes.
        restricted: Processing of the person's data is restricted (``User.restricted``).
        objections: The purposes the person objected to (``User.objections``, parsed).
        consents: The person's newest answer per purpose name.
    """
    out: set[str] = set()
    known: set[str] = set()
    for purpose in purposes:
        known.add(purpose.name)
        if purpose.basis in _ALWAYS:
            continue
        if restricted:
            out.add(purpose.name)
        elif purpose.basis == "consent":
            answer = consents.get(purpose.name)
            if not (is_current(purpose, answer) and answer is not None and answer.decision == "granted"):
                out.add(purpose.name)
        elif purpose.objectable and purpose.name in objections:
            out.add(purpose.name)
    out.update(name for name in objections if name not in known)
    return frozenset(out)


def parse_objections(stored: str) -> frozenset[str]:
    """``User.objections`` (space-separated purpose names) as a set."""
    return frozenset(stored.split())


def format_objections(names: Iterable[str]) -> str:
    """The stored form of a set of objections: sorted, space-separated (one spelling per set)."""
    return " ".join(sorted(set(names)))
