"""The five phases an incident goes through, and which moves between them are allowed.

The order is the policy's: detection and analysis; containment (immediate isolation, prevention of
further damage, evidence preservation); eradication (root cause, removal of the threat, hardening);
recovery (restoration, validation, resumption); post-incident (report, lessons learned, improvement,
user notification). Then ``closed``.

A phase may be skipped forward (a false positive goes from detection straight to post-incident), and
a team may step back one phase (the threat came back during recovery); ``closed`` is reached only from
post-incident, and only when the recovery checks pass (:mod:`gateway.response.recovery`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from gateway.errors import BadRequest, GatewayError

__all__ = [
    "ORDER",
    "TITLES",
    "BadPhase",
    "Phase",
    "PhaseRefused",
    "check_move",
    "parse_phase",
    "refuse_closed",
]


class Phase(StrEnum):
    """Where an incident stands."""

    DETECTION = "detection"
    CONTAINMENT = "containment"
    ERADICATION = "eradication"
    RECOVERY = "recovery"
    POST_INCIDENT = "post_incident"
    CLOSED = "closed"


ORDER: Final = tuple(Phase)
TITLES: Final = {
    Phase.DETECTION: "Detection and analysis",
    Phase.CONTAINMENT: "Containment",
    Phase.ERADICATION: "Eradication",
    Phase.RECOVERY: "Recovery",
    Phase.POST_INCIDENT: "Post-incident",
    Phase.CLOSED: "Closed",
}


class BadPhase(BadRequest):
    """Not a phase name: 400."""

    reason = "bad-phase"
    title = "Unknown incident phase"


class PhaseRefused(GatewayError):
    """A move the workflow does not allow from where the incident stands: 409."""

    status = 409
    reason = "phase-refused"
    title = "Phase change refused"


def parse_phase(text: str) -> Phase:
    """The phase named ``text`` (``post-incident`` is accepted for ``post_incident``).

    Raises:
        BadPhase: no such phase.
    """
    try:
        return Phase(text.strip().lower().replace("-", "_"))
    except ValueError:
        names = ", ".join(p.value for p in Phase)
        raise BadPhase(f"{text[:30]!r} is not a phase; use one of {names}.") from None


def refuse_closed(phase: Phase, what: str) -> None:
    """Refuse changing a closed record (``what``: the change, for the message): its report is final,
    and no action runs in its name (an attack run rewrote a closed record's root cause and ended
    sessions, sealed evidence and sent notices under it).

    Raises:
        PhaseRefused: the record is closed.
    """
    if phase is Phase.CLOSED:
        raise PhaseRefused(
            f"The incident is closed: {what} is refused. Open a new one if the threat is back."
        )


def check_move(current: Phase, target: Phase) -> None:
    """Refuse a move the workflow does not allow (see the module docstring).

    Raises:
        PhaseRefused: the incident is closed, the move goes back more than one phase, or it closes
            from anywhere but post-incident.
    """
    refuse_closed(current, "a phase change")
    if target is current:
        raise PhaseRefused(f"The incident is already in {TITLES[current].lower()}.")
    if target is Phase.CLOSED and current is not Phase.POST_INCIDENT:
        raise PhaseRefused("An incident closes from post-incident, after its report and the recovery checks.")
    if ORDER.index(target) < ORDER.index(current) - 1:
        raise PhaseRefused(
            f"From {TITLES[current].lower()} an incident steps back one phase at most "
            f"(to {TITLES[ORDER[ORDER.index(current) - 1]].lower()})."
        )
