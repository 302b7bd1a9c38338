"""The audit events behind an incident: what raised it, and what was done about it since.

An incident keeps counts (``evidence``), not the events it counted: those are in the audit trail,
which is the durable record. This module finds them again from what the incident knows, so an admin
sees the failed sign-ins themselves (time, account, address, kind) before lifting a block:

* **raised it** — the signals its rule counts, within the rule's window before the incident opened:
  failed sign-in and second-factor steps of the account (``brute_force``, ``mfa_failures``) or from
  the address (``spraying``), the account's sign-ins (``impossible_travel``). Policy denials
  (``reconnaissance``) and session use (``session_hijack``) are requests, not audit events: they are
  in the access log, and the incident's evidence says what was seen;
* **about it** — every event that names the incident: the ``threat.<rule>`` record of its detection,
  an admin's manual block, its lift, and the admin console's own ``admin.*`` records.

Both are read with bounded queries (a time range and ``limit``), newest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import ColumnElement, and_, or_, select

from gateway.audit.models import AuditEvent
from gateway.store.db import Database
from gateway.threat.incidents import Incident

__all__ = ["IncidentEvents", "incident_events"]

# Rules whose signals are failed sign-in steps, and whose they are: the account's or the address's.
_BY_SUBJECT: Final = frozenset({"brute_force", "mfa_failures"})
_BY_ADDRESS: Final = frozenset({"spraying"})
_FAILURE_KINDS: Final = ("signin.%", "mfa.%")
# When the incident does not say its window (older records), look this far back.
_DEFAULT_WINDOW: Final = 600.0
# Audit records are written a moment after the signal is counted: allow for that after ``at``.
_SLACK: Final = 5.0


@dataclass(frozen=True, slots=True)
class IncidentEvents:
    """``raised``: the signals that raised the incident; ``related``: the events that name it."""

    raised: Sequence[AuditEvent]
    related: Sequence[AuditEvent]


def _window(incident: Incident) -> float:
    value = incident.evidence.get("window")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 86400 * 7:
        return float(value)
    return 86400.0 if incident.rule == "impossible_travel" else _DEFAULT_WINDOW


def _trigger(incident: Incident) -> ColumnElement[bool] | None:
    kinds = or_(*(AuditEvent.kind.like(pattern) for pattern in _FAILURE_KINDS))
    if incident.rule in _BY_SUBJECT and incident.subject:
        return and_(kinds, AuditEvent.outcome == "failure", AuditEvent.subject == incident.subject)
    if incident.rule in _BY_ADDRESS and incident.ip:
        return and_(kinds, AuditEvent.outcome == "failure", AuditEvent.ip == incident.ip)
    if incident.rule == "impossible_travel" and incident.subject:
        return and_(
            AuditEvent.kind.like("signin.%"),
            AuditEvent.outcome == "success",
            AuditEvent.subject == incident.subject,
        )
    return None


async def incident_events(db: Database, incident: Incident, *, limit: int = 50) -> IncidentEvents:
    """The audit events that raised ``incident`` and those that name it, newest first, ``limit`` each.

    Raises:
        StoreUnavailable: the database cannot answer.
    """
    opened = datetime.fromtimestamp(incident.at, UTC)
    raised: list[AuditEvent] = []
    trigger = _trigger(incident)
    async with db.session() as session:
        if trigger is not None:
            start = opened - timedelta(seconds=_window(incident))
            query = (
                select(AuditEvent)
                .where(trigger, AuditEvent.at >= start, AuditEvent.at <= opened + timedelta(seconds=_SLACK))
                .order_by(AuditEvent.id.desc())
                .limit(limit)
            )
            raised = list((await session.scalars(query)).all())
        # Every writer stores details as sorted JSON with the default separators: '"incident": "<id>"'.
        # Ids are checked to be inc-<hex> (parse_incident_id), so they hold no LIKE wildcards.
        named = (
            select(AuditEvent)
            .where(
                AuditEvent.at >= opened - timedelta(seconds=_SLACK),
                AuditEvent.details.like(f'%"incident": "{incident.id}"%'),
            )
            .order_by(AuditEvent.id.desc())
            .limit(limit)
        )
        related = list((await session.scalars(named)).all())
    return IncidentEvents(raised=raised, related=related)
