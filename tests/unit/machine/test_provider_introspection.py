"""Opaque provider tokens through introspection (RFC 7662): the answer's checks and the cache's bounds.

The provider is a stub with the real client's ``introspect`` contract whose answers the test sets and
whose calls it counts; the clock is the fake one, so the cache's lifetimes are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.identity.oidc.provider import ProviderClient, ProviderUnavailable
from gateway.machine.provider_accounts import LinkedAccounts
from gateway.machine.provider_audit import ProviderAudit
from gateway.machine.provider_introspection import (
    AddressLimit,
    Answer,
    IntrospectionCache,
    ProviderIntrospection,
    check_answer,
)
from gateway.machine.verifier import TokenRefused
from gateway.settings.schema import AccessTokens, IdentityProvider, TokenIntrospection
from gateway.store.db import Database

ISSUER = "https://idp.example.com"
AUDIENCE = "https://gateway.example.com"


class StubClient:
    """The provider's introspection endpoint: answers by token, every call counted."""

    def __init__(self) -> None:
        self.answers: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.down = False
        self.gate: asyncio.Event | None = None

    async def introspect(self, token: str, *, client_id: str, client_secret: str) -> dict[str, Any]:
        self.calls.append((token, client_id, client_secret))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ProviderUnavailable("corp: introspection failed")
        return self.answers.get(token, {"active": False})


def provider(name: str = "corp", **tokens: Any) -> IdentityProvider:
    settings: dict[str, Any] = {
        "introspection": TokenIntrospection(client_id="rs", client_secret="rs-secret")
    }
    settings.update(tokens)
    return IdentityProvider(
        name=name, issuer=ISSUER, client_id="gateway", client_secret="gateway-secret",
        access_tokens=AccessTokens(audience=AUDIENCE, **settings),
    )  # fmt: skip


class Site:
    def __init__(self, db: Database, clock: FakeClock, asking: AddressLimit | None = None) -> None:
        self.clock = clock
        self.idp = provider()
        self.client = StubClient()
        self.audit = ProviderAudit(AuditLog(db, clock=clock), clock)
        self.verifier = ProviderIntrospection(
            lambda: (self.idp,),
            lambda _idp: cast(ProviderClient, self.client),
            LinkedAccounts(db, clock),
            self.audit,
            clock,
            asking=asking,
        )

    def active(self, token: str, **claims: Any) -> None:
        now = int(self.clock.time())
        answer: dict[str, Any] = {
            "active": True, "iss": ISSUER, "aud": AUDIENCE, "client_id": "reporter", "token_type": "Bearer",
            "iat": now, "exp": now + 600, "scope": "reports.read",
        }  # fmt: skip
        answer.update(claims)
        self.client.answers[token] = {k: v for k, v in answer.items() if v is not None}

    async def verify(self, token: str) -> str:
        return (await self.verifier.verify(token, route="api", ip="192.0.2.1")).subject

    async def refusal(self, token: str) -> str:
        with pytest.raises(TokenRefused) as err:
            await self.verifier.verify(token, route="api", ip="192.0.2.1")
        return err.value.reason


@pytest.fixture
async def site(audit_db: Database, clock: FakeClock) -> AsyncIterator[Site]:
    made = Site(audit_db, clock)
    yield made
    await made.audit.close()


async def test_an_active_token_is_its_client_with_its_scopes(site: Site) -> None:
    site.active("opaque-1")
    verified = await site.verifier.verify("opaque-1", route="api", ip="192.0.2.1")
    assert verified.principals == {"client:corp:reporter", "scope:corp:reports.read"}
    assert verified.expires_at == site.clock.time() + 600
    # Asked as the configured client, not the sign-in client.
    assert site.client.calls == [("opaque-1", "rs", "rs-secret")]


async def test_the_sign_in_client_is_used_when_introspection_names_none(site: Site) -> None:
    site.idp = provider(introspection=TokenIntrospection())
    site.active("opaque-1")
    await site.verify("opaque-1")
    assert site.client.calls == [("opaque-1", "gateway", "gateway-secret")]


def test_what_it_recognises(site: Site) -> None:
    assert site.verifier.recognises("Ax4GLDNoN9zbLl8s4kEbPHNMDHV3IAmWIgMDTTBF0qT")
    # A JOSE object with more or fewer parts than a JWT's three (a JWE, or a JWT bent with ".." to
    # draw a provider call per request: an attack run) is never introspected either.
    jose = "eyJhbGciOiJFUzI1NiJ9"
    for bent in (f"{jose}.e30.c2ln..", f"{jose}.e30.c2ln.", f"{jose}.a.b.c.d", f"{jose}.e30"):
        assert not site.verifier.recognises(bent), bent
    # The gateway's own tokens and JWTs never go to the provider's introspection endpoint.
    assert not site.verifier.recognises("gwt_" + "A" * 43)
    # A gateway token spoiled (a character added, padding, the prefix upper-cased, cut short) still
    # holds its secret: an attack run saw these introspected.
    spoilt = [
        *(c + "gwt_" + "A" * 43 for c in ".-~+/x"),
        "gwt-" + "A" * 43,
        "gwt." + "A" * 43,
        "gwt" + "A" * 43,
    ]
    spoilt += ["eyJgwt_" + "A" * 43, "xGWT_" + "A" * 43, "x.GWT_" + "A" * 43, "a.gwt_" + "A" * 43 + ".b"]
    for spoiled in (
        "gwt_" + "A" * 43 + "=",
        "GWT_" + "A" * 43,
        "gwt_" + "A" * 45,
        "Gwt_" + "A" * 40,
        *spoilt,
    ):
        assert not site.verifier.recognises(spoiled), spoiled
    assert not site.verifier.recognises("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln")
    site.idp = provider(introspection=None)
    assert not site.verifier.recognises("Ax4GLDNoN9zbLl8s4kEbPHNMDHV3IAmWIgMDTTBF0qT")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"active": False}, "inactive"),
        ({"active": "true"}, "inactive"),
        ({"iss": "https://evil.example.com"}, "issuer"),
        ({"aud": None}, "audience"),
        ({"aud": "https://other.example.com"}, "audience"),
        ({"aud": ["https://other.example.com"]}, "audience"),
        ({"exp": 1_800_000_000 - 10}, "expired"),
        ({"nbf": 1_800_000_000 + 60}, "not-yet-valid"),
        ({"exp": "soon"}, "claims"),
        ({"token_type": "DPoP"}, "claims"),
        ({"cnf": {"jkt": "x"}}, "claims"),
        ({"client_id": None}, "claims"),
        ({"scope": "a,b"}, "claims"),
    ],
)
def test_answers_that_do_not_hold(claims: dict[str, Any], reason: str) -> None:
    answer: dict[str, Any] = {
        "active": True, "iss": ISSUER, "aud": AUDIENCE, "client_id": "c", "exp": 1_800_000_600,
    }  # fmt: skip
    answer.update(claims)
    idp = provider()
    assert idp.access_tokens is not None
    body = {k: v for k, v in answer.items() if v is not None}
    judged = check_answer(body, idp=idp, tokens=idp.access_tokens, now=1_800_000_000)
    assert (judged.claims, judged.reason) == (None, reason)


def test_an_accepted_answer_keeps_only_the_claims_principals_come_from() -> None:
    idp = provider()
    assert idp.access_tokens is not None
    body = {"active": True, "aud": [AUDIENCE], "client_id": "c", "sub": "c", "scope": "s", "exp": 1_800_000_600,
            "username": "someone", "ext": {"email": "x@example.com"}}  # fmt: skip
    judged = check_answer(body, idp=idp, tokens=idp.access_tokens, now=1_800_000_000)
    assert judged.claims == {"client_id": "c", "sub": "c", "scope": "s", "exp": 1_800_000_600}


async def test_a_revoked_token_stops_working_within_cache_ttl(site: Site) -> None:
    site.idp = provider(cache_ttl=30.0)
    site.active("opaque-1")
    assert await site.verify("opaque-1") == "corp:reporter"
    site.client.answers["opaque-1"] = {"active": False}  # revoked at the provider
    site.clock.advance(29)
    assert await site.verify("opaque-1") == "corp:reporter"  # the cached answer, one call so far
    assert len(site.client.calls) == 1
    site.clock.advance(1)
    assert await site.refusal("opaque-1") == "inactive"
    assert len(site.client.calls) == 2


async def test_an_entry_never_outlives_the_tokens_exp(site: Site) -> None:
    site.active("short", exp=int(site.clock.time()) + 10)
    assert await site.verify("short") == "corp:reporter"
    site.client.answers["short"] = {"active": False}  # what the provider says of an expired token
    site.clock.advance(10)
    assert await site.refusal("short") == "inactive"
    assert len(site.client.calls) == 2


async def test_refusals_are_cached_briefly(site: Site) -> None:
    for _ in range(5):
        assert await site.refusal("unknown-1") == "inactive"
    assert len(site.client.calls) == 1
    site.clock.advance(5)  # negative_ttl
    site.active("unknown-1")
    assert await site.verify("unknown-1") == "corp:reporter"
    assert len(site.client.calls) == 2


async def test_the_cache_is_bounded_in_entries_and_keyed_by_hash(site: Site) -> None:
    site.idp = provider(cache_size=2)
    for name in ("t-one", "t-two", "t-three"):
        site.active(name)
        await site.verify(name)
    assert site.idp.access_tokens is not None
    cache = site.verifier.cache(site.idp, site.idp.access_tokens)
    assert len(cache) == 2
    keys = list(cache._entries)
    assert all(len(k) == 64 and "t-" not in k for k in keys)
    await site.verify("t-three")
    await site.verify("t-two")
    assert len(site.client.calls) == 3
    await site.verify("t-one")  # evicted first (least recently used): asked again
    assert len(site.client.calls) == 4


def test_lru_cache_unit() -> None:
    cache = IntrospectionCache(2)
    a, b, c = Answer({"client_id": "a"}), Answer({"client_id": "b"}), Answer(None, "inactive")
    cache.put("a", a, until=100)
    cache.put("b", b, until=100)
    assert cache.get("a", now=50) is a  # a is now the most recent
    cache.put("c", c, until=60)
    assert cache.get("b", now=50) is None
    assert cache.get("a", now=50) is a
    assert cache.get("c", now=59) is c
    assert cache.get("c", now=60) is None
    assert len(cache) == 1
    assert IntrospectionCache(0).get("x", 0) is None


async def test_a_provider_that_cannot_answer_is_unavailable_and_nothing_is_cached(site: Site) -> None:
    site.client.down = True
    with pytest.raises(ProviderUnavailable):
        await site.verify("opaque-1")
    site.client.down = False
    site.active("opaque-1")
    assert await site.verify("opaque-1") == "corp:reporter"
    assert len(site.client.calls) == 2


async def test_concurrent_first_uses_share_one_call(site: Site) -> None:
    site.active("opaque-1")
    site.client.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(site.verify("opaque-1")) for _ in range(5)]
    await asyncio.sleep(0)
    site.client.gate.set()
    assert await asyncio.gather(*waiting) == ["corp:reporter"] * 5
    assert len(site.client.calls) == 1


async def test_a_reload_with_other_settings_starts_an_empty_cache(site: Site) -> None:
    site.active("opaque-1")
    await site.verify("opaque-1")
    site.idp = provider(cache_ttl=120.0)
    await site.verify("opaque-1")
    assert len(site.client.calls) == 2


async def test_another_provider_introspecting_after_a_reload_starts_an_empty_cache(site: Site) -> None:
    """The same access_tokens block moved to another provider: corp's cached answer is not read as
    partner's (it would name the client partner:… without partner ever having said so)."""
    site.active("opaque-1")
    assert await site.verify("opaque-1") == "corp:reporter"
    site.idp = provider("partner")
    assert await site.verify("opaque-1") == "partner:reporter"
    assert len(site.client.calls) == 2


async def test_one_address_may_make_the_provider_answer_only_so_many_unknown_tokens(
    audit_db: Database, clock: FakeClock
) -> None:
    """An attack run sent random bearer values: each one a call to the provider, which a provider that
    rate-limits the gateway would answer by refusing everyone's tokens. Past
    regulation.address_introspections unknown tokens an address gets a 429 before any call; an active
    token is taken back, a repeated one is answered from the cache, and another address is counted
    apart."""
    from gateway.settings.schema import RegulationSettings
    from gateway.store.fast import MemoryFastState
    from gateway.threat.attempts import AddressAttempts, TooManyAttempts

    fast = MemoryFastState(clock=clock)
    made = Site(audit_db, clock, AddressAttempts(fast, lambda: RegulationSettings(address_introspections=3)))
    try:
        for good in range(5):  # active tokens never count
            made.active(f"good-{good}")
            await made.verify(f"good-{good}")
        for junk in range(3):
            assert await made.refusal(f"junk-{junk}") == "inactive"
        calls = len(made.client.calls)
        with pytest.raises(TooManyAttempts):
            await made.verifier.verify("junk-3", route="api", ip="192.0.2.1")
        assert len(made.client.calls) == calls  # refused before asking
        assert await made.refusal("junk-0") == "inactive"  # the cache answers, no call, no count
        with pytest.raises(TokenRefused) as elsewhere:  # another address is counted apart
            await made.verifier.verify("junk-4", route="api", ip="198.51.100.9")
        assert elsewhere.value.reason == "inactive"
        # A provider that does not answer counts nothing (a re-attack run: an outage and a client's
        # retries locked its address out after the provider was back).
        made.client.down = True
        for attempt in range(5):
            with pytest.raises(ProviderUnavailable):
                await made.verifier.verify(f"retry-{attempt}", route="api", ip="203.0.113.50")
        made.client.down = False
        made.active("back")
        assert (await made.verifier.verify("back", route="api", ip="203.0.113.50")).subject
    finally:
        await made.audit.close()
        await fast.close()
