"""OIDC sign-in from start to session, back-channel logout, and RP-initiated logout.

The order of a sign-in is chosen so that a failure leaves nothing behind:

1. **start**: discovery first (a provider that is down fails here, before any state is stored), then
   the flow record (``state``/``nonce``/PKCE verifier, see :mod:`.flow`), then the redirect.
2. **callback**: the flow record is spent; the code is exchanged (with the verifier); the ID token is
   verified (:mod:`.tokens`); userinfo is read if configured. Only then is anything written: the
   account and its link (:mod:`.links`, one transaction), the session (by the caller), the logout
   index. A provider that fails at any earlier step leaves no account, no link and no session.

Factors: a provider sign-in is ``Factor.OIDC``, one factor, used when the gateway verified it. With
``trust_mfa``, an ``amr`` value from ``mfa_amr`` (or the ``acr`` from ``mfa_acr``) adds
``Factor.IDP_MFA`` at the provider's ``auth_time`` and makes the session two-factor; without it the gateway's own
second factor is asked for by every route that requires one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.crypto.keyring import Keyring
from gateway.identity.accounts import account_exists
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.oidc.flow import FlowInvalid, FlowRecord, FlowStore
from gateway.identity.oidc.links import AccountRefused, IdentityMapper, MappedIdentity
from gateway.identity.oidc.logout import OidcSignIn, OidcSignInIndex
from gateway.identity.oidc.provider import ProviderClient, ProviderRefused, ProviderUnavailable
from gateway.identity.oidc.tokens import (
    MAX_TOKEN_AGE,
    Check,
    IdToken,
    TokenRejected,
    verify_id_token,
    verify_logout_token,
)
from gateway.identity.sessions import SessionStore
from gateway.settings.schema import IdentityProvider
from gateway.store.db import Database
from gateway.store.fast.base import FastState

__all__ = [
    "CompletedSignIn",
    "OidcService",
    "mfa_proven",
    "provider_for_email",
    "provider_named",
    "unmet_claims",
]


@dataclass(frozen=True, slots=True)
class CompletedSignIn:
    """A verified provider sign-in, mapped to its account: everything a session needs."""

    provider: str
    identity: MappedIdentity
    level: AuthLevel
    factors: tuple[FactorUse, ...]
    token: IdToken
    id_token: str
    rd: str


def unmet_claims(idp: IdentityProvider, claims: Mapping[str, Any]) -> list[str]:
    """Names of ``required_claims`` the sign-in does not carry with the required value."""
    unmet: list[str] = []
    for name, wanted in idp.required_claims.items():
        value = claims.get(name)
        if not (value == wanted or (isinstance(value, list) and wanted in value)):
            unmet.append(name)
    return unmet


def mfa_proven(idp: IdentityProvider, token: IdToken) -> bool:
    """Whether the provider's claims prove MFA that this provider's operator chose to trust.

    Only with ``auth_time``: the MFA counts at that time (a route's ``max_age`` and the reauthentication
    limits measure from it), and without it the provider's MFA cannot be timed. Counting it as done
    now would make every silent provider sign-in a fresh second factor for removing factors, new
    recovery codes and the privacy rights; instead the gateway asks for its own factor.
    """
    if not idp.trust_mfa or token.auth_time is None:
        return False
    return bool(set(token.amr) & set(idp.mfa_amr)) or (token.acr is not None and token.acr in idp.mfa_acr)


class OidcService:
    """The OIDC side of sign-in for one worker: provider clients, flows, identity mapping, logout."""

    def __init__(
        self,
        *,
        db: Database,
        fast: FastState,
        audit: AuditLog,
        sessions: SessionStore,
        clock: Clock,
        keyring: Keyring | None = None,
    ) -> None:
        """Wire the service.

        Args:
            db: The relational store (identity links, accounts).
            fast: The fast state (flows, logout index).
            audit: The audit trail.
            sessions: The session store (back-channel logout ends sessions through it).
            clock: Unix time.
            keyring: For the names of deleted accounts, never given to a new person.
        """
        self._audit = audit
        self._sessions = sessions
        self._clock = clock
        self.flows = FlowStore(fast, clock)
        self.mapper = IdentityMapper(db, audit, clock, keyring=keyring)
        # Entries live as long as the sessions they find: the lifetime a reload leaves, read per write.
        self.index = OidcSignInIndex(fast, ttl=lambda: sessions.lifetime)
        self._clients: dict[str, ProviderClient] = {}

    def client(self, idp: IdentityProvider) -> ProviderClient:
        """The worker's client for this provider (a reloaded config with other settings gets a new one)."""
        client = self._clients.get(idp.name)
        if client is None or client.idp != idp:
            client = ProviderClient(idp, self._clock)
            self._clients[idp.name] = client
        return client

    # -- sign-in -----------------------------------------------------------------------------------

    async def authorization_url(
        self,
        idp: IdentityProvider,
        *,
        binding: str,
        rd: str,
        redirect_uri: str,
        login_hint: str | None = None,
    ) -> str:
        """Start a sign-in; return the provider URL to send the browser to.

        Raises:
            ProviderUnavailable: the provider's discovery document cannot be had (nothing is stored).
            StateUnavailable: the fast state cannot answer.
        """
        metadata = await self.client(idp).metadata()
        flow = await self.flows.begin(provider=idp.name, binding=binding, rd=rd)
        params = {
            **idp.extra_params,
            "nonce": flow.nonce,
            "code_challenge": flow.code_challenge,
            "code_challenge_method": "S256",
            "login_hint": login_hint[:254] if login_hint else None,  # authlib leaves out None
        }
        for name in ("response_type", "client_id", "redirect_uri", "scope", "state"):
            params.pop(name, None)  # authlib's own arguments (the config check refuses them too)
        uri = metadata.authorization_endpoint
        return str(
            prepare_grant_uri(
                uri, idp.client_id, "code", redirect_uri, list(idp.scopes), flow.state, **params
            )
        )

    async def complete(
        self,
        idp: IdentityProvider,
        *,
        record: FlowRecord,
        code: str,
        redirect_uri: str,
        ip: str,
    ) -> CompletedSignIn:
        """Finish a sign-in from the provider's callback, once its flow record was spent (``flows.finish``).

        Raises:
            FlowInvalid: no code.
            ProviderRefused: the token endpoint refused the code (replayed, wrong verifier…).
            ProviderUnavailable: the provider is down, slow or answered nonsense.
            TokenRejected: the ID token failed a check.
            AccountRefused: the person may not sign in here (required_claims unmet, no account…).
        """
        if not code:
            raise FlowInvalid("The identity provider sent no authorization code.", reason="oidc-code-missing")
        client = self.client(idp)
        try:
            tokens = await client.exchange_code(
                code=code[:2048], verifier=record.verifier, redirect_uri=redirect_uri
            )
            token = await verify_id_token(
                tokens.id_token,
                issuer=idp.issuer,
                client_id=idp.client_id,
                nonce=record.nonce,
                algorithms=idp.allowed_algorithms,
                find_keys=client.keys,
                now=self._clock.time(),
                skew=float(idp.clock_skew),
                access_token=tokens.access_token,
            )
            claims: dict[str, Any] = dict(token.claims)
            if idp.userinfo and tokens.access_token:
                claims = self._merge_userinfo(token, claims, await client.userinfo(tokens.access_token))
        except TokenRejected as err:
            await self._failed(idp, ip, {"check": err.check.value, "detail": err.detail})
            raise
        except ProviderRefused as err:
            await self._failed(idp, ip, {"token_endpoint": err.error})
            raise
        except ProviderUnavailable as err:
            await self._failed(idp, ip, {"unavailable": err.detail[:200]})
            raise
        missing = unmet_claims(idp, claims)
        if missing:
            await self._failed(idp, ip, {"required_claims": missing})
            raise AccountRefused(
                f"Your {idp.label} account may not sign in here. Use your organisation's account.",
                why="required-claims",
            )
        identity = await self.mapper.map(idp, subject=token.subject, claims=claims, ip=ip)
        now = self._clock.time()
        # The sign-in is used now (the gateway verified it now); the provider's MFA happened at its
        # auth_time, which is what a route's max_age must measure (a long-lived provider session
        # does not make old MFA fresh).
        factors = [FactorUse(Factor.OIDC, now)]
        level = AuthLevel.ONE_FACTOR
        trusted = mfa_proven(idp, token)
        if trusted:
            assert token.auth_time is not None  # mfa_proven says so
            factors.append(FactorUse(Factor.IDP_MFA, min(token.auth_time, now)))
            level = AuthLevel.TWO_FACTOR
        user = identity.user
        if not await self._audit.record_if(
            account_exists(user.id, user.username, created_at=user.created_at),
            "signin.oidc",
            actor=f"user:{user.username}",
            subject=user.username,
            ip=ip,
            details={
                "provider": idp.name,
                "created": identity.created,
                "linked": identity.linked,
                "amr": list(token.amr),
                "acr": token.acr or "",
                "provider_mfa_trusted": trusted,
                "groups": list(identity.groups),
            },
        ):
            # Erased while the provider's answer was checked: no record naming the person after the
            # erasure tombstoned the others (account_exists), and the answer of a disabled account.
            raise AccountRefused("This account is disabled. Contact your administrator.", why="disabled")
        return CompletedSignIn(
            provider=idp.name,
            identity=identity,
            level=level,
            factors=tuple(factors),
            token=token,
            id_token=tokens.id_token,
            rd=record.rd,
        )

    @staticmethod
    def _merge_userinfo(token: IdToken, claims: dict[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
        # OIDC Core §5.3.2: userinfo of another subject must not be used (token substitution).
        if info.get("sub") != token.subject:
            raise TokenRejected(Check.SUBJECT, "userinfo is about another subject")
        merged = dict(info)
        merged.update(claims)  # what the signed ID token says wins
        # An address and its verified flag come from one answer: the token's address with userinfo's
        # flag for another address was taken as verified (an attack run), and so would be userinfo's
        # address with the token's flag about no address (a later run's reading).
        if "email" in claims:
            if "email_verified" not in claims and info.get("email") != claims["email"]:
                merged.pop("email_verified", None)
        elif "email_verified" in info:
            merged["email_verified"] = info["email_verified"]
        else:
            merged.pop("email_verified", None)
        return merged

    async def _failed(self, idp: IdentityProvider, ip: str, details: Mapping[str, object]) -> None:
        await self._audit.record(
            "signin.oidc",
            actor=f"oidc:{idp.name}",
            ip=ip,
            outcome="failure",
            details={"provider": idp.name, **details},
        )

    async def remember(self, completed: CompletedSignIn, *, family: str) -> None:
        """Index the new session family for logout (by provider ``sid`` and ``sub``), and end the
        oldest sign-ins of that subject or provider session that the index can no longer hold: a
        sign-in a logout cannot find must not outlive it."""
        sign_in = OidcSignIn(
            provider=completed.provider,
            sub=completed.token.subject,
            sid=completed.token.sid,
            id_token=completed.id_token,
        )
        await self._index(family, sign_in)

    async def carry(self, old_family: str, new_family: str) -> None:
        """Move a sign-in's provider record to the family its session moved to (``SessionStore.renew``,
        after a change of credentials): a logout finds sessions only through it, and an attack run's
        session, renewed by "sign out everywhere else", outlived the provider's back-channel logout."""
        sign_in = await self.index.forget(old_family)
        if sign_in is not None:
            await self._index(new_family, sign_in)

    async def _index(self, family: str, sign_in: OidcSignIn) -> None:
        for old in await self.index.remember(family=family, sign_in=sign_in):
            await self._sessions.revoke_family(old)
            await self.index.forget(old)

    # -- logout ------------------------------------------------------------------------------------

    async def backchannel_logout(self, idp: IdentityProvider, logout_token: str, *, ip: str) -> int:
        """End every session of the sign-ins a provider's logout token names, on every replica.

        Returns:
            How many sessions were ended.

        Raises:
            TokenRejected: the logout token failed a check, or was used before.
            ProviderUnavailable: the provider's keys cannot be fetched.
        """
        client = self.client(idp)
        now = self._clock.time()
        try:
            token = await verify_logout_token(
                logout_token,
                issuer=idp.issuer,
                client_id=idp.client_id,
                algorithms=idp.allowed_algorithms,
                find_keys=client.keys,
                now=now,
                skew=float(idp.clock_skew),
            )
            # Kept until the token could no longer pass the iat/exp checks anyway.
            until = token.issued_at + MAX_TOKEN_AGE + 2 * float(idp.clock_skew)
            if not await self.index.claim_token_id(provider=idp.name, jti=token.jti, ttl=until - now):
                raise TokenRejected(Check.TOKEN_ID, "this logout token was already used")
        except TokenRejected as err:
            await self._audit.record(
                "signout.backchannel",
                actor=f"oidc:{idp.name}",
                ip=ip,
                outcome="failure",
                details={"provider": idp.name, "check": err.check.value, "detail": err.detail},
            )
            raise
        families = await self.index.families(provider=idp.name, sub=token.subject, sid=token.sid)
        ended = 0
        for family in families:
            ended += await self._sessions.revoke_family(family)
            await self.index.forget(family)
        await self._audit.record(
            "signout.backchannel",
            actor=f"oidc:{idp.name}",
            ip=ip,
            details={"provider": idp.name, "by": "sid" if token.sid else "sub", "sessions_ended": ended},
        )
        return ended

    async def end_session_url(
        self, idp: IdentityProvider, sign_in: OidcSignIn, *, post_logout_redirect_uri: str
    ) -> str | None:
        """The provider's end-session URL for RP-initiated logout, or None (not wanted, not offered, down)."""
        if not idp.rp_logout:
            return None
        try:
            metadata = await self.client(idp).metadata()
        except ProviderUnavailable:
            return None
        endpoint = metadata.end_session_endpoint
        if endpoint is None:
            return None
        params = [
            ("id_token_hint", sign_in.id_token),
            ("client_id", idp.client_id),
            ("post_logout_redirect_uri", post_logout_redirect_uri),
        ]
        return str(add_params_to_uri(endpoint, params))


def provider_named(providers: Sequence[IdentityProvider], name: str) -> IdentityProvider | None:
    """The configured provider called ``name``."""
    return next((idp for idp in providers if idp.name == name), None)


def provider_for_email(providers: Sequence[IdentityProvider], login: str) -> IdentityProvider | None:
    """The provider whose ``email_domains`` contain the domain of ``login`` (an email), if any."""
    local, at, domain = login.strip().rpartition("@")
    if not at or not local or not domain:
        return None
    domain = domain.lower().rstrip(".")
    for idp in providers:
        if any(domain == d.strip().lower().rstrip(".") for d in idp.email_domains):
            return idp
    return None
