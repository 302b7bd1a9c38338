"""Everything the gateway holds about one person, as one JSON document (access and portability).

The document follows ``export.schema.json`` next to this module (JSON Schema 2020-12; the tests
validate every export against it). It carries the account, second factors as metadata only (never a
TOTP seed, a public key or a code hash), live sessions, identity-provider links, consent records,
privacy requests, the decision-sample rows naming the person and their own audit events. It is built
from the stores directly, so it is also what an erasure archives before it deletes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import and_, not_, or_, select

from gateway.audit.erase import NOT_ABOUT_PEOPLE, actor_spellings
from gateway.audit.models import AuditEvent
from gateway.authz.models import DecisionSampleRow
from gateway.identity.models import RecoveryCode, TotpCredential, User, WebAuthnCredential
from gateway.identity.names import RESERVED_USERNAMES, is_gateway_id
from gateway.identity.oidc.models import IdentityLink
from gateway.identity.sessions import Session, SessionStore, browser_label
from gateway.privacy.models import ConsentRecord, PrivacyRequest
from gateway.privacy.ownership import owned_by
from gateway.privacy.register import RequestView, mine
from gateway.store.db import Database, store_errors
from gateway.store.fast import StateUnavailable

__all__ = ["EXPORT_FORMAT", "SCHEMA_PATH", "audit_filter", "export_person"]

#: Bumped when the document's shape changes incompatibly (the schema's ``format`` const).
EXPORT_FORMAT: Final = "gateway.personal-data/1"
SCHEMA_PATH: Final = Path(__file__).with_name("export.schema.json")


def _iso(at: datetime | float | None) -> str | None:
    if at is None:
        return None
    if isinstance(at, float | int):
        return datetime.fromtimestamp(at, UTC).isoformat()
    return at.isoformat()


def audit_filter(username: str, since: datetime) -> Any:
    """The audit events about or by ``username`` (as subject, or as the acting user or admin) since
    ``since`` (the account's creation: records under the name before it are someone else's)."""
    about = and_(
        AuditEvent.subject == username,
        *(not_(AuditEvent.kind.startswith(kind, autoescape=True)) for kind in NOT_ABOUT_PEOPLE),
    )
    by_name = or_(about, AuditEvent.actor.in_(sorted(actor_spellings(username))))
    return and_(by_name, AuditEvent.at >= since)


def _account(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "display_name": user.display_name,
        "roles": user.roles.split(),
        "has_password": user.password_hash is not None,
        "must_change_password": user.must_change_password,
        "disabled": user.disabled,
        "restricted": user.restricted,
        "closed_at": _iso(user.closed_at),
        "objections": user.objections.split(),
        "created_at": _iso(user.created_at),
        "updated_at": _iso(user.updated_at),
        "password_changed_at": _iso(user.password_changed_at),
    }


def _factors(
    totp: Sequence[TotpCredential], webauthn: Sequence[WebAuthnCredential], codes: Sequence[RecoveryCode]
) -> dict[str, Any]:
    return {
        "totp": [
            {
                "id": t.id,
                "name": t.name,
                "confirmed": t.confirmed,
                "created_at": _iso(t.created_at),
                "last_used_at": _iso(t.last_used_at),
            }
            for t in totp
        ],
        "webauthn": [
            {
                "id": w.id,
                "name": w.name,
                "transports": w.transports.split(),
                "aaguid": w.aaguid,
                "discoverable": w.discoverable,
                "backed_up": w.backed_up,
                "user_verified": w.user_verified,
                "created_at": _iso(w.created_at),
                "last_used_at": _iso(w.last_used_at),
            }
            for w in webauthn
        ],
        "recovery_codes": {
            "issued": len(codes),
            "used": sum(1 for c in codes if c.used_at is not None),
            "issued_at": _iso(min((c.created_at for c in codes), default=None)),
        },
    }


def _session(s: Session) -> dict[str, Any]:
    return {
        "created_at": _iso(s.created_at),
        "last_seen": _iso(s.last_seen),
        "ip": s.ip,
        "browser": browser_label(s.user_agent),
        "user_agent": s.user_agent,
        "host": s.host,
        "level": s.level.name.lower(),
    }


# What a text in the details of a record about someone else reads as in the person's export.
LEFT_OUT: Final = "[left out: about someone else]"


# The prefixes of subjects that name a thing, never a person: a username cannot hold ':'.
_THING_PREFIXES: Final = ("hold:", "client:", "route:", "key:")


def _shown_subject(subject: str) -> str:
    """A record's subject in someone else's export: left out when it may be a person (a re-attack run
    read in an admin's export who had withdrawn a consent and who had objected). The gateway's own
    words and ids (an incident, a privacy request) and prefixed things (a hold, a service account) stay."""
    if not subject or subject in RESERVED_USERNAMES or is_gateway_id(subject):
        return subject
    return subject if subject.startswith(_THING_PREFIXES) else LEFT_OUT


def _left_out(details: Any) -> Any:
    """The details of what the person did to someone else: flags and counts stay, texts are not theirs."""
    if isinstance(details, dict):
        return {
            k: v if v is None or isinstance(v, bool | int | float) else LEFT_OUT for k, v in details.items()
        }
    return LEFT_OUT if details else details


_EMAIL: Final = re.compile(r"[^\s@<>\"'(),;]+@[^\s@<>\"'(),;]+\.[A-Za-z]{2,}")


def _others_addresses_left_out(value: Any, own: str) -> Any:
    """``value`` (parsed details) with every email address but ``own`` left out: a reason an admin
    typed about the person may name someone else (a re-attack run found "fraud report by carol@…" in
    alice's export)."""
    if isinstance(value, str):
        return _EMAIL.sub(lambda m: m.group() if m.group().lower() == own else LEFT_OUT, value)
    if isinstance(value, list):
        return [_others_addresses_left_out(v, own) for v in value]
    if isinstance(value, dict):
        return {k: _others_addresses_left_out(v, own) for k, v in value.items()}
    return value


# What the person's copy of an audit event leaves out: a legal hold's reference and reason are for admins
# only (docs/privacy.md, table legal_holds). An order may be confidential, and attack runs read its case
# number in the held person's export, through the hold's own records and the console's
# (``admin.privacy.hold.place``). That a hold applies is still said (the request's status).
_HOLD_DETAILS: Final = ("reference", "reason")


def _withheld(kind: str, details: dict[str, Any]) -> dict[str, Any]:
    """``details`` without what names a legal hold: ``hold`` (an erasure a hold suspended) in any
    record, and ``reference`` and ``reason`` in the records of a hold placed or released."""
    of_a_hold = ".hold." in f".{kind}."
    return {k: v for k, v in details.items() if k != "hold" and not (of_a_hold and k in _HOLD_DETAILS)}


def _event(e: AuditEvent, actors: frozenset[str], username: str, email: str) -> dict[str, Any]:
    details: Any = json.loads(e.details) if e.details.startswith("{") else e.details
    details = _others_addresses_left_out(details, email.lower())
    if isinstance(details, dict):
        details = _withheld(e.kind, details)
    subject = e.subject
    if e.subject.lower() != username.lower():
        subject = _shown_subject(e.subject)
        # What the person did to someone else (an admin creating an account): the act is theirs, the
        # texts in it (the other person's email, a reason naming them) are not (GDPR Art. 15(4); an
        # attack run found another person's address in an admin's export).
        details = _left_out(details)
    return {
        "seq": e.seq,
        "at": _iso(e.at),
        "kind": e.kind,
        "actor": e.actor,
        "subject": subject,
        # The address is the actor's: the person's own, or (an admin acting on the account) not theirs.
        "ip": e.ip if e.actor in actors else "",
        "outcome": e.outcome,
        "details": details,
    }


async def export_person(
    db: Database, user: User, *, sessions: SessionStore | None, now: datetime
) -> dict[str, Any]:
    """The person's data as one JSON-ready document (see the module docstring).

    Sessions come from the fast state; when it cannot answer, ``sessions_unavailable`` says so and
    the rest of the export still goes out (the person is told, not refused).

    Raises:
        StoreUnavailable: The database cannot be read.
    """
    uid = user.id
    with store_errors("cannot read the person's data"):
        async with db.session() as s:
            totp = (await s.scalars(select(TotpCredential).where(TotpCredential.user_id == uid))).all()
            keys = (
                await s.scalars(select(WebAuthnCredential).where(WebAuthnCredential.user_id == uid))
            ).all()
            codes = (await s.scalars(select(RecoveryCode).where(RecoveryCode.user_id == uid))).all()
            links = (await s.scalars(select(IdentityLink).where(IdentityLink.user_id == uid))).all()
            consents = (
                await s.scalars(
                    select(ConsentRecord).where(ConsentRecord.user_id == uid).order_by(ConsentRecord.id)
                )
            ).all()
            requests = (
                await s.scalars(select(PrivacyRequest).where(mine(user)).order_by(PrivacyRequest.id))
            ).all()
            events = (
                await s.scalars(
                    select(AuditEvent)
                    .where(audit_filter(user.username, user.created_at))
                    .order_by(AuditEvent.seq)
                )
            ).all()
            principal = f" user:{user.username} "
            samples = (
                await s.scalars(
                    select(DecisionSampleRow)
                    .where((" " + DecisionSampleRow.principals + " ").contains(principal, autoescape=True))
                    .order_by(DecisionSampleRow.bucket)
                )
            ).all()
    owned = await owned_by(db, user.username, user.email)
    actors = actor_spellings(user.username)
    live: list[dict[str, Any]] = []
    unavailable = False
    if sessions is not None:
        try:
            live = [_session(x) for x in await sessions.list_user(uid)]
        except StateUnavailable:
            unavailable = True
    return {
        "format": EXPORT_FORMAT,
        "generated_at": now.isoformat(),
        "account": _account(user),
        "factors": _factors(totp, keys, codes),
        "sessions": live,
        "sessions_unavailable": unavailable,
        "identity_links": [
            {
                "provider": link.provider,
                "subject": link.subject,
                "created_at": _iso(link.created_at),
                "last_used_at": _iso(link.last_used_at),
            }
            for link in links
        ],
        "consents": [
            {
                "purpose": c.purpose,
                "version": c.version,
                "decision": c.decision,
                "at": _iso(c.at),
                "method": c.method,
            }
            for c in consents
        ],
        "privacy_requests": [_request(RequestView.of(r)) for r in requests],
        "access_sample": [
            {"hour": _iso(r.bucket), "route": r.route, "method": r.method, "path": r.path, "count": r.count}
            for r in samples
        ],
        "audit_events": [_event(e, actors, user.username, user.email or "") for e in events],
        "service_accounts_owned": owned,
    }


def _request(view: RequestView) -> dict[str, Any]:
    doc = view.to_json()
    doc.pop("subject", None)
    doc["hold_ref"] = ""  # a legal hold is for admins only (see _withheld)
    return doc
