"""Identity-provider JWT access tokens (RFC 9068): every check refuses what it should, with its reason.

The provider's keys come from a stub with the real client's ``keys(kid, alg)`` contract; tokens are
signed by joserfc as a provider would, and the attacks are built by hand: ``alg: none``, an HS256 token
whose HMAC key is the provider's public key, another issuer's token, a token signed by a stranger's
key under the provider's kid, an ID token (typ JWT) passed off as an access token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, Key, RSAKey
from sqlalchemy import select

from gateway.audit.models import AuditEvent
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.identity.models import User
from gateway.identity.oidc.models import IdentityLink
from gateway.identity.oidc.provider import ProviderClient
from gateway.machine.provider_accounts import LinkedAccounts
from gateway.machine.provider_audit import ProviderAudit
from gateway.machine.provider_jwt import ProviderJwtTokens, looks_like_jwt
from gateway.machine.verifier import TokenRefused, Verifiers
from gateway.privacy.consent import Consents
from gateway.privacy.purposes import POLICY_ANALYTICS
from gateway.settings.schema import DEFAULT_PURPOSES, AccessTokens, IdentityProvider
from gateway.store.db import Database

ISSUER = "https://idp.example.com"
AUDIENCE = "https://gateway.example.com"
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig", "alg": "RS256"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig"})
STRANGER = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


class StubClient:
    """The provider's published keys, with the JWKS fetches counted (the real client's contract)."""

    def __init__(self, keys: Sequence[Key]) -> None:
        self.published = list(keys)
        self.asked: list[tuple[str | None, str]] = []

    async def keys(self, kid: str | None, alg: str) -> Sequence[Key]:
        self.asked.append((kid, alg))
        public = [type(k).import_key(k.as_dict(private=False)) for k in self.published]
        return [k for k in public if kid is None or k.kid == kid]


def provider(**tokens: Any) -> IdentityProvider:
    return IdentityProvider(
        name="corp",
        issuer=ISSUER,
        client_id="gateway",
        client_secret="s",
        access_tokens=AccessTokens(audience=AUDIENCE, **tokens),
    )


class Site:
    def __init__(self, db: Database, clock: FakeClock, idp: IdentityProvider) -> None:
        self.clock = clock
        self.idp = idp
        self.client = StubClient([RSA, EC])
        self.accounts = LinkedAccounts(db, clock)
        self.audit = ProviderAudit(AuditLog(db, clock=clock), clock)
        self.verifier = ProviderJwtTokens(
            lambda: (self.idp,),
            lambda _idp: cast(ProviderClient, self.client),
            self.accounts,
            self.audit,
            clock,
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock.time())
        base: dict[str, Any] = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": "reporter", "client_id": "reporter",
            "iat": now, "exp": now + 300, "jti": "j1", "scope": "reports.read reports.write",
        }  # fmt: skip
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def token(self, key: Key = RSA, alg: str = "RS256", typ: str | None = "at+jwt", **claims: Any) -> str:
        header: dict[str, Any] = {"alg": alg, "kid": key.kid}
        if typ is not None:
            header["typ"] = typ
        return jwt.encode(header, self.claims(**claims), key, algorithms=[alg])

    async def refusal(self, token: str) -> str:
        with pytest.raises(TokenRefused) as err:
            await self.verifier.verify(token, route="api", ip="192.0.2.1")
        return err.value.reason


@pytest.fixture
async def site(audit_db: Database, clock: FakeClock) -> AsyncIterator[Site]:
    made = Site(audit_db, clock, provider())
    yield made
    await made.audit.close()


def _b64(data: Mapping[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_a_client_credentials_token_is_the_client_of_that_provider_with_its_scopes(site: Site) -> None:
    verified = await site.verifier.verify(site.token(), route="api", ip="192.0.2.1")
    assert verified.subject == "corp:reporter"
    assert not verified.person
    assert verified.principals == {
        "client:corp:reporter",
        "scope:corp:reports.read",
        "scope:corp:reports.write",
    }
    assert verified.routes is None
    assert verified.roles == ()
    assert verified.expires_at == site.clock.time() + 300
    assert verified.issuer == "corp"
    # The public id is a hash prefix: nothing of the token itself.
    assert verified.token_id.startswith("sha256:")
    assert verified.token_id[7:] not in site.token()
    # Never the gateway's own service account of the same name (client:reporter).
    assert "client:reporter" not in verified.principals


async def test_ec_keys_and_a_token_without_sub_work_too(site: Site) -> None:
    verified = await site.verifier.verify(site.token(EC, "ES256", sub=None), route="api", ip="192.0.2.1")
    assert verified.principals == {
        "client:corp:reporter",
        "scope:corp:reports.read",
        "scope:corp:reports.write",
    }


async def test_audience_may_be_one_of_several(site: Site) -> None:
    token = site.token(aud=["https://other.example.com", AUDIENCE])
    assert (await site.verifier.verify(token, route="api", ip="192.0.2.1")).subject == "corp:reporter"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "https://other.example.com"}, "audience"),
        ({"aud": ["https://a.example.com", "https://b.example.com"]}, "audience"),
        ({"aud": None}, "claims"),
        ({"exp": None}, "claims"),
        ({"client_id": None, "sub": None}, "claims"),
        ({"iat": None}, "claims"),
        ({"scope": "reports.read bad,scope"}, "claims"),
        ({"scope": ["a", "b"]}, "claims"),
    ],
)
async def test_claims_that_do_not_hold_are_refused(site: Site, claims: dict[str, Any], reason: str) -> None:
    assert await site.refusal(site.token(**claims)) == reason


async def test_expiry_and_not_before_have_the_configured_small_leeway(site: Site) -> None:
    token = site.token()
    site.clock.advance(300 + 4)  # exp passed 4 s ago: within the 5 s clock_skew
    assert (await site.verifier.verify(token, route="api", ip="192.0.2.1")).subject == "corp:reporter"
    site.clock.advance(2)
    assert await site.refusal(token) == "expired"
    now = int(site.clock.time())
    assert await site.refusal(site.token(nbf=now + 30)) == "not-yet-valid"
    assert (await site.verifier.verify(site.token(nbf=now + 3), route="api", ip="192.0.2.1")).issuer == "corp"


async def test_only_at_jwt_unless_the_setting_allows_plain_jwt(site: Site) -> None:
    # An ID token of the same provider (typ JWT, aud = some client) must not pass as an access token.
    assert await site.refusal(site.token(typ="JWT")) == "type"
    assert await site.refusal(site.token(typ=None)) == "type"
    assert await site.refusal(site.token(typ="logout+jwt")) == "type"
    site.idp = provider(allow_jwt_typ=True)
    assert (await site.verifier.verify(site.token(typ="JWT"), route="api", ip="192.0.2.1")).issuer == "corp"
    assert (await site.verifier.verify(site.token(typ=None), route="api", ip="192.0.2.1")).issuer == "corp"
    assert await site.refusal(site.token(typ="logout+jwt")) == "type"


async def test_the_algorithm_allow_list_is_read_before_any_key(site: Site) -> None:
    site.idp = provider(algorithms=("ES256",))
    assert await site.refusal(site.token()) == "algorithm"
    assert site.client.asked == []  # refused before the keys were even asked for
    assert (await site.verifier.verify(site.token(EC, "ES256"), route="api", ip="192.0.2.1")).issuer == "corp"


async def test_attack_alg_none(site: Site) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": "rsa-1"}
    token = f"{_b64(header)}.{_b64(site.claims())}."
    assert looks_like_jwt(token)
    assert await site.refusal(token) == "algorithm"
    # Even a configuration naming it cannot let it in (the settings check refuses it too).
    site.idp = msgspec.structs.replace(
        site.idp, access_tokens=AccessTokens(audience=AUDIENCE, algorithms=("none", "HS256", "RS256"))
    )
    assert await site.refusal(token) == "algorithm"


async def test_attack_hs256_keyed_with_the_providers_public_key(site: Site) -> None:
    public_pem = RSA.as_pem(private=False)
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"}
    signing_input = f"{_b64(header)}.{_b64(site.claims())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{_b64(mac)}"
    site.idp = msgspec.structs.replace(
        site.idp, access_tokens=AccessTokens(audience=AUDIENCE, algorithms=("HS256", "RS256"))
    )
    assert await site.refusal(token) == "algorithm"


async def test_attack_a_strangers_key_under_the_providers_kid(site: Site) -> None:
    assert await site.refusal(site.token(STRANGER)) == "signature"


async def test_attack_another_issuer_and_an_unknown_kid(site: Site) -> None:
    assert await site.refusal(site.token(STRANGER, iss="https://evil.example.com")) == "unknown-issuer"
    assert site.client.asked == []  # another issuer's token never makes the gateway fetch anything
    unknown_kid = RSAKey.generate_key(2048, parameters={"kid": "rsa-9"})
    assert await site.refusal(site.token(unknown_kid)) == "key"
    assert site.client.asked == [("rsa-9", "RS256")]


async def test_malformed_tokens(site: Site) -> None:
    good = site.token()
    head, _payload, sig = good.split(".")
    assert await site.refusal(f"{head}.!!!.{sig}") == "malformed"
    assert await site.refusal(f"{head}.{_b64(b'[1]')}.{sig}") == "unknown-issuer"
    # Refused before the signature is looked at, so a made-up one does.
    crit = {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1", "crit": ["exp"], "exp": 1}
    assert await site.refusal(f"{_b64(crit)}.{_b64(site.claims())}.{sig}") == "malformed"
    assert not looks_like_jwt("opaque-token-value")
    assert not looks_like_jwt("a.b.c")
    assert not looks_like_jwt("gwt_abc")


async def test_not_recognised_without_a_provider_that_accepts_tokens(site: Site) -> None:
    token = site.token()
    assert site.verifier.recognises(token)
    site.idp = msgspec.structs.replace(site.idp, access_tokens=None)
    assert not site.verifier.recognises(token)
    with pytest.raises(TokenRefused) as err:
        await Verifiers([site.verifier]).verify(token, route="api", ip="192.0.2.1")
    assert err.value.reason == "unrecognised"


async def _link(db: Database, username: str, subject: str, *, disabled: bool = False) -> None:
    now = datetime.now(UTC)
    async with db.session(write=True) as session:
        user = User(username=username, email=None, password_hash=None, disabled=disabled,
                    created_at=now, updated_at=now)  # fmt: skip
        session.add(user)
        await session.flush()
        session.add(IdentityLink(provider="corp", subject=subject, user_id=user.id, created_at=now))
        await session.commit()


async def test_a_persons_token_is_the_linked_account_without_its_roles(
    site: Site, audit_db: Database
) -> None:
    await _link(audit_db, "alice", "sub-alice")
    await _link(audit_db, "bob", "sub-bob", disabled=True)
    assert await site.refusal(site.token(sub="sub-alice")) == "user-tokens-refused"  # the default
    site.idp = provider(users="linked")
    verified = await site.verifier.verify(site.token(sub="sub-alice"), route="api", ip="192.0.2.1")
    assert verified.subject == "alice"
    assert verified.principals == {"user:alice", "scope:corp:reports.read", "scope:corp:reports.write"}
    # A person's request, made through the application the token was issued to: the access log and
    # the assertion name alice, and the assertion's client_id the application.
    assert verified.person
    assert verified.client_id == "corp:reporter"
    # Unlinked, disabled, or the same subject at another provider: no account.
    assert await site.refusal(site.token(sub="sub-nobody")) == "user-not-linked"
    assert await site.refusal(site.token(sub="sub-bob")) == "user-not-linked"
    site.idp = provider(users="refuse")
    assert await site.refusal(site.token(sub="sub-alice")) == "user-tokens-refused"


async def test_a_disabled_account_is_refused_within_the_cache_second(site: Site, audit_db: Database) -> None:
    await _link(audit_db, "carol", "sub-carol")
    site.idp = provider(users="linked")
    token = site.token(sub="sub-carol")
    assert (await site.verifier.verify(token, route="api", ip="192.0.2.1")).subject == "carol"
    async with audit_db.session(write=True) as session:
        user = (await session.execute(select(User).where(User.username == "carol"))).scalar_one()
        user.disabled = True
        await session.commit()
    queries = site.accounts.queries
    assert (await site.verifier.verify(token, route="api", ip="192.0.2.1")).subject == "carol"  # cached
    assert site.accounts.queries == queries
    site.clock.advance(1.5)
    assert await site.refusal(token) == "user-not-linked"


async def test_a_persons_token_carries_what_they_opted_out_of_within_the_cache_second(
    site: Site, audit_db: Database
) -> None:
    """An attack run: the assertion of an objecting person's provider token had no ``optout``, which
    the app reads as "nothing opted out"; their session's had it."""
    consents = Consents(
        audit_db, AuditLog(audit_db, clock=site.clock), None, purposes=lambda: DEFAULT_PURPOSES
    )
    site.accounts = LinkedAccounts(audit_db, site.clock, optout_of=consents.optout_of)
    site.verifier = ProviderJwtTokens(
        lambda: (site.idp,),
        lambda _idp: cast(ProviderClient, site.client),
        site.accounts,
        site.audit,
        site.clock,
    )
    site.idp = provider(users="linked")
    await _link(audit_db, "dora", "sub-dora")
    token = site.token(sub="sub-dora")
    assert (await site.verifier.verify(token, route="api", ip="192.0.2.1")).optout == ()
    async with audit_db.session() as session:
        dora = (await session.execute(select(User).where(User.username == "dora"))).scalar_one()
    analytics = next(p for p in DEFAULT_PURPOSES if p.name == POLICY_ANALYTICS)
    assert await consents.object(dora.id, analytics, method="portal", actor="dora")
    site.clock.advance(1.5)
    verified = await site.verifier.verify(token, route="api", ip="192.0.2.1")
    assert verified.optout == (POLICY_ANALYTICS,)
    # A client's own token speaks for no one: nothing to opt out of.
    assert (await site.verifier.verify(site.token(), route="api", ip="192.0.2.1")).optout == ()


async def _refusal_records(audit_db: Database) -> list[dict[str, Any]]:
    async with audit_db.session() as session:
        rows = (await session.scalars(select(AuditEvent).where(AuditEvent.kind == "token.refused"))).all()
    return [{"actor": r.actor, "ip": r.ip, **json.loads(r.details)} for r in rows]


async def test_refusals_are_audited_by_reason_and_rate_limited_without_the_token(
    site: Site, audit_db: Database
) -> None:
    expired = site.token(exp=int(site.clock.time()) - 60)
    for _ in range(5):
        assert await site.refusal(expired) == "expired"
    assert await site.refusal(site.token(aud="https://other.example.com")) == "audience"
    await site.verifier.verify(site.token(), route="api", ip="192.0.2.1")
    await asyncio.gather(*site.audit._writes.pending)
    async with audit_db.session() as session:
        rows = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
    # The first of each reason at once; written in the background, so in any order.
    kinds = sorted((r.kind, json.loads(r.details).get("reason") or "") for r in rows)
    assert kinds == [("token.refused", "audience"), ("token.refused", "expired"), ("token.used", "")]
    assert all(expired.split(".")[2] not in r.details and expired not in r.details for r in rows)
    # The rest of the minute's expired ones are summed when the minute ends (here: a stop).
    await site.audit.close()
    summaries = [r for r in await _refusal_records(audit_db) if "refused_since_last_record" in r]
    assert [(r["reason"], r["refused_since_last_record"]) for r in summaries] == [("expired", 4)]


async def test_every_refused_provider_token_is_counted_by_the_stop_or_the_minute(
    site: Site, audit_db: Database
) -> None:
    """An attack run: 50 bad JWTs, then SIGTERM, left one ``token.refused`` record per worker counting
    1 or 3 (the rest of the minute was written only if another refusal came after it, with the first
    address only, and never at a stop). Each (provider, reason, route) is now tallied as the gateway's
    own tokens' refusals are: the count and addresses of the rest of the minute, also at a stop."""
    forged = site.token(key=STRANGER)
    for n in range(50):
        with pytest.raises(TokenRefused):
            await site.verifier.verify(forged, route="api", ip=f"198.51.100.{n % 4 + 1}")
    with pytest.raises(TokenRefused):
        await site.verifier.verify(forged, route="reports", ip="198.51.100.9")  # another route: its own
    await site.audit.close()  # the worker's shutdown
    records = await _refusal_records(audit_db)
    assert sum(r.get("refused_since_last_record", 1) for r in records) == 51
    by_route = {
        (r["route"], "refused_since_last_record" in r): r for r in records if r["reason"] == "signature"
    }
    assert set(by_route) == {("api", False), ("api", True), ("reports", False)}
    assert by_route["api", False]["ip"] == "198.51.100.1"
    summary = by_route["api", True]
    assert summary["refused_since_last_record"] == 49
    assert sorted(summary["addresses"]) == [f"198.51.100.{n}" for n in range(1, 5)]
    assert {r["actor"] for r in records} == {"client:corp:unknown"}
    # A minute later, a refusal starts a new minute: recorded at once.
    site.clock.advance(61)
    with pytest.raises(TokenRefused):
        await site.verifier.verify(forged, route="api", ip="203.0.113.5")
    await asyncio.gather(*site.audit._writes.pending)
    assert len(await _refusal_records(audit_db)) == len(records) + 1


async def test_a_provider_client_called_unknown_is_refused(site: Site, audit_db: Database) -> None:
    """``client:<provider>:unknown`` is who the audit trail names for the provider's refused tokens:
    a real client of that id would have its records mixed with the forgeries (the gateway's own service
    accounts reserve ``unknown`` for the same reason)."""
    assert await site.refusal(site.token(client_id="unknown", sub=None)) == "client-id-reserved"
    assert await site.refusal(site.token(client_id="unknown", sub="unknown")) == "client-id-reserved"
    verified = await site.verifier.verify(
        site.token(client_id="Unknown", sub=None), route="api", ip="192.0.2.1"
    )
    assert verified.actor == "client:corp:Unknown"
