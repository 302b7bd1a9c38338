"""Incidents: what a rule detected and every automatic action taken, kept so an admin can lift them.

An incident is stored in the fast state (``threat:inc:<id>``, kept ``RETENTION`` seconds; the index
``threat:incidents`` lists the newest ``MAX_INCIDENTS`` ids), so every replica and the
``gateway incident`` command see the same list. The durable record is the audit trail: each
incident is also a ``threat.<rule>`` event, each lift an ``incident.lifted`` event.

Actions and how they are lifted::

    block_ip          the address is refused on every replica until ``until``   lift: unblocked
    lock_account      the account is disabled (sessions ended)                   lift: re-enabled
    revoke_session(s) the session / all the user's sessions are ended            not undoable: sign in again
    step_up           the session must show a fresh second factor                not undoable: already asked
    lockdown          every route is locked down (gateway/threat/lockdown.py)    lift: off, if still this one's
    alert, webhook    notifications                                              nothing to lift

Severity is the rule's by nature (:func:`severity`): a session or an account that is likely in someone
else's hands is ``high``; attempts that have not (yet) succeeded are ``medium``; an admin's own block
is ``low``. The console sorts and colours by it; it never changes what a rule does.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection
from typing import Final

import msgspec

from gateway.errors import BadRequest, GatewayError
from gateway.store.fast.base import FastState, StateUnavailable

__all__ = [
    "MAX_INCIDENTS",
    "RETENTION",
    "Action",
    "BadIncidentId",
    "Incident",
    "IncidentNotFound",
    "IncidentStore",
    "new_incident_id",
    "parse_incident_id",
    "severity",
]

RETENTION: Final = 30 * 86400.0
MAX_INCIDENTS: Final = 1000
_INDEX: Final = "threat:incidents"
_CAS_ROUNDS: Final = 32
_ID = re.compile(r"inc-[0-9a-f]{8}")
# How urgent a rule's finding is by nature (see the module docstring); other rules are "medium".
_SEVERITY: Final = {
    "session_hijack": "high",
    "impossible_travel": "high",
    "mfa_failures": "high",
    "manual": "low",
}


class IncidentNotFound(GatewayError):
    """No incident has this id (never had, or it expired after ``RETENTION``): 404."""

    status = 404
    reason = "incident-not-found"
    title = "No such incident"


class BadIncidentId(BadRequest):
    """Text that no incident id can be (ids look like ``inc-3f9a1c2b``): 400, nothing looked up."""

    reason = "bad-incident-id"
    title = "Malformed incident id"


def parse_incident_id(text: str) -> str:
    """``text`` if it has the shape of an incident id, checked before it becomes part of a key.

    Raises:
        BadIncidentId: anything else.
    """
    if not _ID.fullmatch(text):
        raise BadIncidentId(f"{text[:40]!r} is not an incident id; ids look like inc-3f9a1c2b.")
    return text


class Action(msgspec.Struct, frozen=True):
    """One automatic (or admin) action of an incident."""

    kind: str
    target: str
    ok: bool = True
    note: str = ""
    until: float | None = None
    lifted: bool = False

    @property
    def liftable(self) -> bool:
        return self.ok and not self.lifted and self.kind in ("block_ip", "lock_account", "lockdown")


class Incident(msgspec.Struct, frozen=True):
    """What a rule saw and what was done. Times are Unix seconds."""

    id: str
    rule: str
    at: float
    subject: str = ""
    ip: str = ""
    session: str = ""
    summary: str = ""
    evidence: dict[str, str | int | float] = msgspec.field(default_factory=dict)
    actions: tuple[Action, ...] = ()
    status: str = "open"
    lifted_by: str = ""
    lifted_at: float | None = None
    # Who opened it: an admin for a manual block ("user:alice", "operator:root"); "" for a rule.
    actor: str = ""


def severity(incident: Incident) -> str:
    """``high``, ``medium`` or ``low``: how urgent the incident's rule is by nature."""
    return _SEVERITY.get(incident.rule, "medium")


_encode = msgspec.json.Encoder().encode
_decode_incident = msgspec.json.Decoder(Incident).decode
_decode_ids = msgspec.json.Decoder(list[str]).decode


def new_incident_id() -> str:
    """A short random id an admin can type (``inc-3f9a1c2b``)."""
    return "inc-" + secrets.token_hex(4)


def _key(incident_id: str) -> str:
    return f"threat:inc:{incident_id}"


class IncidentStore:
    """Incidents in the fast state."""

    def __init__(self, state: FastState) -> None:
        self._state = state

    async def save(self, incident: Incident, *, new: bool = False) -> None:
        """Store ``incident``; ``new`` also adds it to the index.

        Raises:
            StateUnavailable: the fast state cannot answer.
        """
        await self._state.set(_key(incident.id), _encode(incident), ttl=RETENTION)
        if not new:
            return
        for _ in range(_CAS_ROUNDS):
            raw = await self._state.get(_INDEX)
            ids = self._ids(raw)
            updated = [*ids, incident.id][-MAX_INCIDENTS:]
            if await self._state.compare_and_set(_INDEX, raw, _encode(updated), ttl=RETENTION):
                return
        raise StateUnavailable("the incident index kept changing; giving up")

    async def get(self, incident_id: str) -> Incident | None:
        """The incident, or None if unknown or expired."""
        raw = await self._state.get(_key(incident_id))
        if raw is None:
            return None
        try:
            return _decode_incident(raw)
        except msgspec.DecodeError:
            return None

    async def require(self, incident_id: str) -> Incident:
        """The incident with this id.

        Raises:
            IncidentNotFound: unknown or expired.
            StateUnavailable: the fast state cannot answer.
        """
        incident = await self.get(incident_id)
        if incident is None:
            raise IncidentNotFound(f"There is no incident {incident_id!r} (it may have expired).")
        return incident

    async def remove(self, incident_ids: Collection[str]) -> int:
        """Delete these incidents and take them out of the index (the privacy retention engine).

        Returns:
            How many of them were still stored.

        Raises:
            StateUnavailable: the fast state cannot answer.
        """
        gone = set(incident_ids)
        if not gone:
            return 0
        for _ in range(_CAS_ROUNDS):
            raw = await self._state.get(_INDEX)
            ids = self._ids(raw)
            kept = [i for i in ids if i not in gone]
            # Compared and set, like save: an incident opened meanwhile on another replica stays listed.
            if len(kept) == len(ids) or await self._state.compare_and_set(
                _INDEX, raw, _encode(kept), ttl=RETENTION
            ):
                return await self._state.delete(*(_key(i) for i in sorted(gone)))
        raise StateUnavailable("the incident index kept changing; giving up")

    async def latest(self, limit: int = 50) -> list[Incident]:
        """The newest incidents first."""
        ids = self._ids(await self._state.get(_INDEX))[::-1][:limit]
        found = [await self.get(i) for i in ids]
        return [i for i in found if i is not None]

    @staticmethod
    def _ids(raw: bytes | None) -> list[str]:
        if raw is None:
            return []
        try:
            return _decode_ids(raw)
        except msgspec.DecodeError:
            return []
