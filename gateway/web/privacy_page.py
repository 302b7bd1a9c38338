"""The public privacy page, ``/.gateway/privacy``, and its JSON twin, ``/.gateway/api/privacy``.

Anyone may read it, signed in or not, on the auth host and every route's host (GDPR Art. 12-14, the
notice of DPDP Act s. 5 and its grievance officer of s. 8(10), the CCPA's notice at collection): who
the privacy contact is, what the gateway processes and why (the configured ``privacy.purposes``), the
rights and where each is exercised, and how long each class of data is kept (``privacy.retention``).
Every other gateway page links here (the footer of ``base.html`` and the error pages).

Everything shown comes from the configuration in force (read once per request), so a reload changes
the page at once. The page reads nothing else that can fail but the session, and only to say "you are
signed in, go here": if the session store is down, the page is still served, as to someone signed out
(a person must be able to find the contact especially when something is wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec
from litestar import Request, get
from litestar.response import Template

from gateway.privacy.purposes import notice_paragraphs
from gateway.settings.schema import PrivacyContact, PrivacySettings, Purpose, RetentionSettings
from gateway.store.fast.base import StateUnavailable
from gateway.web import flows
from gateway.web.deps import Config, Identity
from gateway.web.gate import PUBLIC
from gateway.web.pages import page
from gateway.web.rights import PAGE

__all__ = [
    "ACCOUNT_PRIVACY",
    "HANDLERS",
    "NO_CONTACT",
    "PRIVACY_PATH",
    "ContactFacts",
    "PrivacyFacts",
    "PurposeFacts",
    "RightFacts",
    "privacy_facts",
]

#: This page, as every other gateway page links to it.
PRIVACY_PATH: Final = "/.gateway/privacy"
#: Where a signed-in person exercises their rights themselves (the account portal's privacy page).
ACCOUNT_PRIVACY: Final = PAGE
#: What the page says instead of empty fields when ``privacy.contact`` is not configured.
NO_CONTACT: Final = "No privacy contact has been configured; ask your administrator."

_DAY: Final = 86400.0

# The lawful bases (GDPR Art. 6(1)) in words a person reads, and what they can do about each.
_BASIS_TEXT: Final = {
    "consent": "Your consent, asked when you sign in.",
    "contract": "Needed to give you the account and the access you signed up for.",
    "legal_obligation": "Required by law.",
    "legitimate_interest": "A legitimate interest of the operator (keeping accounts and applications safe), "
    "weighed against yours.",
}


@dataclass(frozen=True, slots=True)
class _Right:
    name: str
    title: str
    text: str
    # Whether the account portal's privacy page does it (otherwise: write to the contact).
    in_portal: bool


# The rights (GDPR Art. 15-22, CCPA §1798.100-125, DPDP Act s. 11-14) and what each gets a person.
_RIGHTS: Final = (
    _Right(
        "access",
        "See and take your data (access and portability)",
        "Download everything the gateway holds about you as one JSON file: your account, second factors "
        "(never their secrets), sessions, consents, privacy requests and your security records.",
        True,
    ),
    _Right(
        "rectification",
        "Correct your data (rectification)",
        "Correct your email address and display name. Details that come from your organisation's "
        "identity provider are corrected there.",
        True,
    ),
    _Right(
        "erasure",
        "Have your data erased (erasure)",
        "Erase your account and everything that names you. Your security records keep what happened "
        "and when, with your name and address removed; what the erasure removed is kept sealed for "
        "investigation for the period below, longer only under a legal hold.",
        True,
    ),
    _Right(
        "restriction",
        "Restrict processing (restriction)",
        "Stop all processing of your data except keeping it: you are signed out and cannot sign in "
        "until the restriction is lifted.",
        True,
    ),
    _Right(
        "objection",
        "Object to processing (objection)",
        "Object to a purpose based on a legitimate interest that says you can object (see the table "
        "above); the gateway stops it for you at once.",
        True,
    ),
    _Right(
        "consent_withdrawal",
        "Withdraw your consent",
        "Withdraw a consent you gave, as easily as you gave it; what was done before stays lawful.",
        True,
    ),
    _Right(
        "grievance",
        "Complain (grievance)",
        "Write to the privacy contact (the grievance officer) first. If you are not satisfied with the "
        "answer, you can complain to your data protection supervisory authority (GDPR Art. 77), in "
        "India to the Data Protection Board of India (DPDP Act s. 13), in California to the California "
        "Privacy Protection Agency.",
        False,
    ),
)

# What each retention rule of ``privacy.retention`` keeps, in the order the page lists them.
_RETENTION_TEXT: Final = {
    "registration": "Your account after you close it (then erased)",
    "removed_content": "What an erasure removed, or a correction replaced while a legal hold applied, "
    "kept sealed for investigation (then deleted unless a legal hold covers it)",
    "audit_events": "Names and addresses in security records (then erased; the record of what happened "
    "stays)",
    "incidents": "Security incidents, after each is closed (the security record of each stays)",
    "privacy_requests": "Your privacy requests, after they are completed or rejected",
}


class ContactFacts(msgspec.Struct):
    """The privacy contact / grievance officer (``privacy.contact``)."""

    name: str
    email: str
    address: list[str]
    # How long until a grievance or rights request is answered, seconds.
    response_time: float


class PurposeFacts(msgspec.Struct):
    """One configured purpose: what is processed, why, and what the person can do about it."""

    name: str
    title: str
    notice: str
    version: int
    basis: str
    # The basis in plain words, as the page shows it.
    basis_text: str
    # Whether a person can object to it (objectable legitimate interest) or withdraw it (consent).
    objectable: bool
    withdrawable: bool


class RightFacts(msgspec.Struct):
    """One right and where it is exercised."""

    name: str
    title: str
    text: str
    # The account portal's page that does it for a signed-in person, or None: write to the contact.
    portal: str | None
    # Whether the privacy contact takes it in writing (always, when one is configured).
    by_contact: bool


class PrivacyFacts(msgspec.Struct):
    """What ``/.gateway/privacy`` says, for scripts. ``contact`` is None when none is configured."""

    contact: ContactFacts | None
    purposes: list[PurposeFacts]
    rights: list[RightFacts]
    # How long each data class is kept, seconds: privacy.retention (the purge interval is not a
    # retention period); incidents: the incident records, counted from their closing.
    retention: dict[str, float]


def _contact(contact: PrivacyContact) -> ContactFacts | None:
    address = [line for line in contact.address if line.strip()]
    if not (contact.name.strip() or contact.email.strip() or address):
        return None
    return ContactFacts(
        name=contact.name.strip(),
        email=contact.email.strip(),
        address=address,
        response_time=float(contact.response_time),
    )


def _purpose(purpose: Purpose) -> PurposeFacts:
    return PurposeFacts(
        name=purpose.name,
        title=purpose.title,
        notice=purpose.notice,
        version=purpose.version,
        basis=purpose.basis,
        basis_text=_BASIS_TEXT[purpose.basis],
        objectable=purpose.objectable and purpose.basis == "legitimate_interest",
        withdrawable=purpose.basis == "consent",
    )


def _retention(retention: RetentionSettings) -> dict[str, float]:
    # Incidents: the rule is what keeps the incident records (the fast store's detections expire
    # sooner, but the record of a detection outlives them), so the rule is what the page says.
    return {name: float(getattr(retention, name)) for name in _RETENTION_TEXT}


def privacy_facts(settings: PrivacySettings) -> PrivacyFacts:
    """What the privacy page says under ``settings``: the contact, purposes, rights and retention."""
    contact = _contact(settings.contact)
    return PrivacyFacts(
        contact=contact,
        purposes=[_purpose(p) for p in settings.purposes],
        rights=[
            RightFacts(
                name=r.name,
                title=r.title,
                text=r.text,
                portal=ACCOUNT_PRIVACY if r.in_portal else None,
                by_contact=contact is not None,
            )
            for r in _RIGHTS
        ],
        retention=_retention(settings.retention),
    )


def _days(seconds: float) -> str:
    days = seconds / _DAY
    shown = f"{days:g}" if days >= 1 else f"{days:.2g}"
    return f"{shown} day" if shown == "1" else f"{shown} days"


async def _signed_in_as(request: Request[Any, Any, Any], config: Config, identity: Identity) -> str | None:
    try:
        signed = await flows.current(request, config, identity)
    except StateUnavailable:
        # The page names the contact; that must not depend on the session store (module docstring).
        return None
    return signed.session.username if signed.session is not None else None


@get(PRIVACY_PATH, cache=False, opt=PUBLIC)
async def privacy_page(request: Request[Any, Any, Any], config: Config, identity: Identity) -> Template:
    """Who the privacy contact is, what is processed and why, your rights, and how long data is kept."""
    facts = privacy_facts(config.settings.privacy)
    user = await _signed_in_as(request, config, identity)
    return page(
        request,
        "privacy.html",
        user=user,
        contact=facts.contact,
        response_days=_days(facts.contact.response_time) if facts.contact else "",
        no_contact=NO_CONTACT,
        purposes=[{"facts": p, "paragraphs": notice_paragraphs(p.notice)} for p in facts.purposes],
        rights=facts.rights,
        retention=[
            {"name": name, "text": _RETENTION_TEXT[name], "days": _days(seconds)}
            for name, seconds in facts.retention.items()
        ],
        session_hours=f"{float(config.settings.session.lifetime) / 3600:g}",
        account_privacy=ACCOUNT_PRIVACY,
    )


@get("/.gateway/api/privacy", cache=False, opt=PUBLIC)
async def privacy_api(config: Config) -> PrivacyFacts:
    """The privacy page's facts for scripts: the contact (null if none), purposes, rights, retention.

    Durations are seconds: ``contact.response_time`` and each ``retention`` period.
    """
    return privacy_facts(config.settings.privacy)


HANDLERS: Final = (privacy_page, privacy_api)
