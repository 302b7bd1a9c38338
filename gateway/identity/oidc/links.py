"""Who a verified ID token is here: identity links, provisioning, email, groups and roles.

The rules, in the order they are applied:

1. ``(provider, sub)`` is the identity. A linked account is found by it and by nothing else.
2. An email is used only when the provider says it is verified (``email_verified: true``). An
   unverified email is never stored, never matched, never shown to upstreams.
3. No link yet:

   * ``provisioning: preprovisioned``: the account an administrator created with that verified
     email is linked; without one the sign-in is refused.
   * Only an account's *email* is matched, never its username: usernames of accounts created just
     in time come from a claim the person may edit at the provider. An account whose username is
     the verified email but whose email is not refuses the sign-in (an administrator decides).
   * ``provisioning: jit``: an account is created (no password: it signs in through the provider).
     If the verified email already belongs to an account, that account is linked only with
     ``link_by_email: true``; otherwise the sign-in is refused (an administrator decides).
   * An account already linked to *another* subject at the same provider is never linked again (a
     provider that reassigned an email to someone else must not hand them the old owner's account).

4. The account and its link are written in one transaction: nothing is half-created. Two replicas
   racing to create the same person end with one account (the unique link decides; the loser reads
   the winner's).
5. Groups come from ``groups_claim`` (a list of strings, or one string); roles are the account's
   local roles plus ``role_map`` of those groups. The session keeps them as ``<provider>:<group>``
   (principal ``group:<provider>:<group>``).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.crypto.keyring import Keyring
from gateway.errors import GatewayError
from gateway.identity.accounts import account_exists, look_alikes
from gateway.identity.confusables import look_alike_shape, skeleton
from gateway.identity.machine_names import hold_names, policy_names, service_account_names
from gateway.identity.models import User
from gateway.identity.names import (
    AUTHORITY_USERNAMES,
    RESERVED_USERNAMES,
    canonical_email,
    canonical_username,
    mixed_script,
    system_shaped,
)
from gateway.identity.oidc.models import IdentityLink
from gateway.identity.retired import retired_among
from gateway.identity.sessions import provider_mark
from gateway.names import hidden_character
from gateway.settings.schema import IdentityProvider
from gateway.store.db import Database, store_errors

__all__ = ["AccountRefused", "IdentityMapper", "MappedIdentity", "groups_of", "verified_email"]

MAX_GROUPS: Final = 256
MAX_GROUP_LENGTH: Final = 256
_MAX_DISPLAY_NAME: Final = 128
# Fallback usernames at the end of _username_candidates' list.
_FALLBACKS: Final = 2


class AccountRefused(GatewayError):
    """The provider vouched for the person, but they may not sign in here (shown to them plainly)."""

    status = 403
    reason = "oidc-account-refused"
    title = "You cannot sign in here with this account"

    def __init__(self, detail: str, *, why: str) -> None:
        super().__init__(detail)
        self.why = why


@dataclass(frozen=True, slots=True)
class MappedIdentity:
    """The local account of a provider sign-in, and what happened to find it."""

    user: User
    created: bool
    linked: bool
    email: str | None
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    # What decided ``groups`` and ``roles`` (gateway.identity.sessions.provider_mark): the session keeps
    # it, and is refused once the provider's configuration no longer gives it.
    mark: str = ""


# The shape of a fallback username (``<provider>-<digest of the subject>``, 16 or 32 hex digits), of any
# provider, configured now or later.
_FALLBACK_SHAPE: Final = re.compile(r"[a-z0-9][a-z0-9_-]*-(?:[0-9a-f]{16}|[0-9a-f]{32})")

_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def verified_email(claims: Mapping[str, Any]) -> str | None:
    """The canonical email if the provider verified it, else None.

    Only an address the canonical form leaves as the provider verified it, but for ASCII case: NFKC folds
    compatibility characters into other letters, so the provider's ``boss@corp.test`` written in
    full-width letters (U+FF42...), or with a long s (U+017F), would become ``boss@corp.test``, an
    address it never verified (an attack run linked a local admin's account that way).
    """
    email = claims.get("email")
    flag = claims.get("email_verified")
    # Some providers (Cognito, older Okta) send the flag as the string "true".
    if not isinstance(email, str) or not (flag is True or flag == "true"):
        return None
    try:
        canonical = canonical_email(email)
    except ValueError:
        return None
    # As sent, but for ASCII case. Not even NFC: it maps the Kelvin sign (U+212A) to K, which a
    # re-attack run used to link a Kelvin-sign spelling of kate@ to kate's account.
    # ASCII white space only: str.strip also drops NBSP, U+3000 and control characters (a re-attack
    # run linked "kate@corp.test" padded with them).
    return canonical if canonical == email.strip(" \t\r\n").translate(_ASCII_LOWER) else None


def groups_of(claims: Mapping[str, Any], claim: str) -> tuple[str, ...]:
    """The groups the provider asserted: strings only, none with a character a reader cannot see
    (controls, bidi overrides, line separators: :func:`gateway.names.hidden_character`; an attack run
    put U+2028 and U+202E into the audit trail and the sinks through a group), bounded in number and
    size. Such a group is left out, as if not asserted: it could not match a policy line either."""
    value = claims.get(claim)
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    groups: list[str] = []
    for item in items:
        if (
            isinstance(item, str)
            and 0 < len(item) <= MAX_GROUP_LENGTH
            and hidden_character(item) is None
            and item not in groups
        ):
            groups.append(item)
        if len(groups) >= MAX_GROUPS:
            break
    return tuple(groups)


def _display_name(claims: Mapping[str, Any]) -> str:
    name = claims.get("name")
    if not isinstance(name, str):
        return ""
    # Control characters, bidi overrides and line separators would make an admin list read differently
    # than stored (or break it into lines).
    cleaned = "".join(c for c in name if hidden_character(c) is None)
    return cleaned.strip()[:_MAX_DISPLAY_NAME]


def _username_candidates(
    idp: IdentityProvider, subject: str, claims: Mapping[str, Any], email: str | None
) -> list[str]:
    proposed: list[str] = []
    wanted = claims.get(idp.username_claim)
    own_address = _folded(email) if email is not None else None
    for raw in (wanted if isinstance(wanted, str) else None, email):
        if raw is None:
            continue
        name = _folded(raw)
        if name is None or mixed_script(name) is not None or look_alike_shape(name) is not None:
            continue
        read = skeleton(name)  # "adm\u0131\u0307n" reads as admin (an attack run): checked as that
        if name in RESERVED_USERNAMES or read in RESERVED_USERNAMES:
            continue  # the gateway's own name in the audit trail: never a person's (names.py)
        if name in AUTHORITY_USERNAMES or read in AUTHORITY_USERNAMES or system_shaped(read) is not None:
            continue  # "admin", "root", "gateway", "203.0.113.7": chosen by the person at most providers
        if _FALLBACK_SHAPE.fullmatch(name):
            # Another person's fallback name, computable from their subject: taken first, it left
            # them no name at their first sign-in (an attack run).
            continue
        if "@" in name and name != own_address:
            # Most providers let people edit the username claim: an address-shaped name that is not
            # their own verified email would be someone else's address (as a login, in the apps'
            # X-Gateway-User, and as the username an email look-up finds).
            continue
        if name not in proposed:
            proposed.append(name)
    # Always available: the provider's name and a digest of the subject (never the raw sub, which may
    # be long or contain characters a username may not). The longer one if the short one is taken
    # (an account created before claims of this shape were skipped, or a rare collision).
    digest = hashlib.sha256(subject.encode()).hexdigest()
    proposed.extend((f"{idp.name}-{digest[:16]}", f"{idp.name}-{digest[:32]}"))
    return proposed


def _folded(raw: str) -> str | None:
    try:
        return canonical_username(raw)
    except ValueError:
        return None


class IdentityMapper:
    """Find, link or create the account of a verified provider identity."""

    def __init__(
        self, db: Database, audit: AuditLog, clock: Clock, *, keyring: Keyring | None = None
    ) -> None:
        """Create the mapper.

        Args:
            db: The relational store.
            audit: Account creation and linking are recorded here.
            clock: Timestamps.
            keyring: Reads which names belonged to deleted accounts (identity.retired); every
                gateway passes it.
        """
        self._db = db
        self._audit = audit
        self._clock = clock
        self._keyring = keyring

    async def map(
        self, idp: IdentityProvider, *, subject: str, claims: Mapping[str, Any], ip: str = ""
    ) -> MappedIdentity:
        """The account for ``(idp.name, subject)``; link or create it as the provider's rules say.

        Args:
            idp: The provider's settings (provisioning, link_by_email, groups_claim, role_map).
            subject: The verified ``sub``.
            claims: The verified ID token claims (and userinfo, if configured).
            ip: The client address, for the audit trail.

        Raises:
            AccountRefused: no account may be used (pre-provisioned only, email taken, disabled…).
            StoreUnavailable: the database cannot answer.
        """
        email = verified_email(claims)
        groups = groups_of(claims, idp.groups_claim)
        for attempt in range(2):
            user, created, linked = await self._find_or_make(idp, subject, claims, email, ip)
            if user is not None:
                break
            # Lost a race with another replica creating the same link: read theirs.
            if attempt == 1:  # pragma: no cover - needs two lost races in a row
                raise AccountRefused("Please try again.", why="contended")
        assert user is not None
        if not user.can_sign_in:
            # Not written once the account is gone: an erasure racing this sign-in has tombstoned
            # the person's records already (gateway.identity.accounts.account_exists).
            await self._audit.record_if(
                account_exists(user.id, user.username, created_at=user.created_at),
                "signin.oidc",
                actor=f"oidc:{idp.name}",
                subject=user.username,
                ip=ip,
                outcome="failure",
                details={"reason": "disabled"},
            )
            raise AccountRefused("This account is disabled. Contact your administrator.", why="disabled")
        roles = tuple(dict.fromkeys((*user.roles.split(), *idp.roles_for(groups))))
        # The session's groups carry their provider (principal group:<provider>:<group>), as scopes
        # and clients do: a group name is only as trustworthy as the provider that asserts it, so a
        # second provider's "eng" must not grant what rules written about the first one's give.
        groups = tuple(f"{idp.name}:{group}" for group in groups)
        return MappedIdentity(
            user=user,
            created=created,
            linked=linked,
            email=user.email,
            groups=groups,
            roles=roles,
            mark=provider_mark(idp),
        )

    async def _find_or_make(
        self,
        idp: IdentityProvider,
        subject: str,
        claims: Mapping[str, Any],
        email: str | None,
        ip: str,
    ) -> tuple[User | None, bool, bool]:
        now = self._clock.now()
        async with self._db.session(write=True) as session:
            with store_errors("cannot read identity links"):
                link = (
                    await session.scalars(
                        select(IdentityLink).where(
                            IdentityLink.provider == idp.name, IdentityLink.subject == subject
                        )
                    )
                ).first()
                if link is not None:
                    user = await session.get(User, link.user_id)
                    await session.execute(
                        update(IdentityLink).where(IdentityLink.id == link.id).values(last_used_at=now)
                    )
                    await session.commit()
                    if user is not None:
                        return user, False, False
                owner = None
                holders: list[User] = []
                if email is not None:
                    holders = list(
                        await session.scalars(
                            select(User).where(or_(User.email == email, User.username == email))
                        )
                    )
                    owner = next((user for user in holders if user.email == email), None)
        if owner is None and holders:
            # Usernames and emails are one namespace (either is a login), so the address cannot go
            # to a new account either; and linking by a username would hand this person to whoever
            # chose that name (a just-in-time account named after someone else's address).
            await self._refuse(idp, subject, ip, "email-is-a-username")
            raise AccountRefused(
                "An account named after your email address already exists here. Contact your administrator.",
                why="email-is-a-username",
            )
        if owner is not None:
            if idp.provisioning == "jit" and not idp.link_by_email:
                await self._refuse(idp, subject, ip, "email-taken")
                raise AccountRefused(
                    "An account with your email address already exists here. An administrator can link it to "
                    "your identity provider account.",
                    why="email-taken",
                )
            return await self._link(idp, subject, owner, ip), False, True
        if idp.provisioning != "jit":
            await self._refuse(idp, subject, ip, "not-provisioned")
            raise AccountRefused(
                "There is no account for you here yet. Ask an administrator to create one with your email address.",
                why="not-provisioned",
            )
        created = await self._create(idp, subject, claims, email, ip)
        return created, created is not None, created is not None

    async def _refuse(self, idp: IdentityProvider, subject: str, ip: str, why: str) -> None:
        await self._audit.record(
            "signin.oidc",
            actor=f"oidc:{idp.name}",
            subject="",
            ip=ip,
            outcome="failure",
            details={
                "reason": why,
                "provider": idp.name,
                "sub_sha256": hashlib.sha256(subject.encode()).hexdigest(),
            },
        )

    async def _link(self, idp: IdentityProvider, subject: str, user: User, ip: str) -> User:
        now = self._clock.now()
        async with self._db.session() as session:
            with store_errors("cannot link the account"):
                session.add(
                    IdentityLink(
                        provider=idp.name, subject=subject, user_id=user.id, created_at=now, last_used_at=now
                    )
                )
                try:
                    await session.commit()
                except IntegrityError as exc:
                    await self._refuse(idp, subject, ip, "linked-to-another-subject")
                    raise AccountRefused(
                        "Your account here is already linked to another account at this identity provider. "
                        "Contact your administrator.",
                        why="linked-to-another-subject",
                    ) from exc
        await self._audit.record(
            "oidc.linked",
            actor=f"oidc:{idp.name}",
            subject=user.username,
            ip=ip,
            details={"provider": idp.name, "by": "verified-email"},
        )
        return user

    async def _create(
        self, idp: IdentityProvider, subject: str, claims: Mapping[str, Any], email: str | None, ip: str
    ) -> User | None:
        """Create the account and its link in one transaction; None if another replica won the link."""
        now = self._clock.now()
        candidates = _username_candidates(idp, subject, claims, email)
        async with self._db.session(write=True) as session:
            with store_errors("cannot create the account"):
                await hold_names(session)  # against a service account taking a candidate meanwhile
                rows = (
                    await session.execute(
                        select(User.username, User.email).where(
                            or_(User.username.in_(candidates), User.email.in_(candidates))
                        )
                    )
                ).all()
                # Usernames and emails are one namespace (either may be typed as a login).
                taken = {value for row in rows for value in row if value is not None}
                # And a name that reads as one in use (an attack run's Cyrillic "\u0458\u043e\u0435" beside joe).
                taken |= (await look_alikes(session, candidates)).keys()
                # A service account's name too: the apps would take the person for the machine.
                taken |= await service_account_names(session, candidates)
                # A name the policy already grants to a person, chosen here by whoever signs in. Not
                # the person's own verified email (the only address a candidate can be), nor the last
                # candidates, made from this very subject.
                chosen = candidates[:-_FALLBACKS]
                taken |= await policy_names(session, [n for n in chosen if "@" not in n])
                if self._keyring is not None:
                    # A deleted account's name is never handed to someone else; the last candidates
                    # are made from this very subject, so only its own person can have had them.
                    taken |= await retired_among(session, self._keyring, chosen)
                username = next((name for name in candidates if name not in taken), None)
                if username is None:
                    raise AccountRefused(
                        "No free username could be found for you. Contact your administrator.", why="username"
                    )
                user = User(
                    username=username,
                    email=email,
                    display_name=_display_name(claims),
                    password_hash=None,
                    disabled=False,
                    must_change_password=False,
                    roles="",
                    created_at=now,
                    updated_at=now,
                    password_changed_at=None,
                )
                session.add(user)
                try:
                    await session.flush()
                    session.add(
                        IdentityLink(
                            provider=idp.name,
                            subject=subject,
                            user_id=user.id,
                            created_at=now,
                            last_used_at=now,
                        )
                    )
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    return None
        await self._audit.record(
            "user.created",
            actor=f"oidc:{idp.name}",
            subject=username,
            ip=ip,
            details={"email": email or "", "roles": "", "has_password": False, "provisioning": "jit"},
        )
        await self._audit.record(
            "oidc.linked",
            actor=f"oidc:{idp.name}",
            subject=username,
            ip=ip,
            details={"provider": idp.name, "by": "jit"},
        )
        return user
