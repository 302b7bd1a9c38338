"""The provider client against a small provider served in-process over real HTTP (aiohttp.web).

Discovery (issuer must match, endpoints must be https or loopback, S256 needed), the JWKS cache
(re-fetched on an unknown kid, at most once per cooldown: the clock is moved, never slept), the
token endpoint (client authentication, OAuth errors vs outages), and outages (refused, slow,
oversized) all becoming ``ProviderUnavailable``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from joserfc.jwk import ECKey, RSAKey

from gateway.clock import FakeClock
from gateway.identity.oidc.provider import ProviderClient, ProviderRefused, ProviderUnavailable
from gateway.settings.schema import Duration, IdentityProvider


@dataclass
class FakeProvider:
    """Serves discovery, JWKS and a token endpoint; counts requests; its answers are test-controlled."""

    keys: list[Any]
    url: str = ""
    discovery_overrides: dict[str, Any] = field(default_factory=dict)
    token_status: int = 200
    jwks_status: int = 200
    token_body: dict[str, Any] = field(default_factory=lambda: {"id_token": "a.b.c", "access_token": "at"})
    delay: float = 0.0
    hits: dict[str, int] = field(default_factory=dict)
    token_requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_post("/token", self.token)
        app.router.add_get("/big", self.big)
        return app

    def _hit(self, name: str) -> None:
        self.hits[name] = self.hits.get(name, 0) + 1

    async def discovery(self, request: web.Request) -> web.Response:
        self._hit("discovery")
        await asyncio.sleep(self.delay)
        doc = {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/auth",
            "token_endpoint": f"{self.url}/token",
            "jwks_uri": f"{self.url}/jwks",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "end_session_endpoint": f"{self.url}/logout",
            "code_challenge_methods_supported": ["S256"],
            **self.discovery_overrides,
        }
        return web.json_response(doc)

    async def jwks(self, request: web.Request) -> web.Response:
        self._hit("jwks")
        return web.json_response({"keys": self.keys}, status=self.jwks_status)

    async def token(self, request: web.Request) -> web.Response:
        self._hit("token")
        form = dict(await request.post())
        self.token_requests.append(
            (request.headers.get("Authorization", ""), {k: str(v) for k, v in form.items()})
        )
        return web.json_response(self.token_body, status=self.token_status)

    async def big(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [], "pad": "x" * (2 * 1024 * 1024)})


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider(keys=[])
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


def settings(fake: FakeProvider, **options: Any) -> IdentityProvider:
    base: dict[str, Any] = {
        "name": "corp",
        "issuer": fake.url,
        "client_id": "gateway",
        "client_secret": "s3cr3t:/&",
        "jwks_cooldown": Duration(30),
        "timeout": Duration(2),
    }
    base.update(options)
    return IdentityProvider(**base)


def rsa(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid})


async def test_discovery_is_cached_and_checked(provider: FakeProvider) -> None:
    clock = FakeClock()
    client = ProviderClient(settings(provider), clock)
    meta = await client.metadata()
    assert (meta.token_endpoint, meta.end_session_endpoint) == (
        f"{provider.url}/token",
        f"{provider.url}/logout",
    )
    await client.metadata()
    assert provider.hits["discovery"] == 1
    clock.advance(3601)
    await client.metadata()
    assert provider.hits["discovery"] == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"issuer": "http://127.0.0.1:1"}, "not the configured"),
        ({"token_endpoint": "ftp://example.com/token"}, "token_endpoint"),
        ({"jwks_uri": "http://idp.example.com/jwks"}, "jwks_uri"),  # plain http off loopback
        ({"authorization_endpoint": None}, "authorization_endpoint"),
        ({"code_challenge_methods_supported": ["plain"]}, "PKCE"),
    ],
    ids=["issuer-mismatch", "bad-scheme", "http-off-loopback", "missing", "no-s256"],
)
async def test_a_discovery_document_that_cannot_be_trusted_is_refused(
    provider: FakeProvider, overrides: dict[str, Any], message: str
) -> None:
    provider.discovery_overrides = overrides
    with pytest.raises(ProviderUnavailable, match=message):
        await ProviderClient(settings(provider), FakeClock()).metadata()


async def test_the_last_good_discovery_serves_through_an_outage(provider: FakeProvider) -> None:
    clock = FakeClock()
    client = ProviderClient(settings(provider), clock)
    await client.metadata()
    provider.discovery_overrides = {"issuer": "http://elsewhere"}
    clock.advance(3601)
    assert (await client.metadata()).issuer == provider.url
    clock.advance(86400)
    with pytest.raises(ProviderUnavailable):
        await client.metadata()


async def test_unknown_kid_refetches_the_keys_at_most_once_per_cooldown(provider: FakeProvider) -> None:
    clock = FakeClock()
    old, new = rsa("old"), rsa("new")
    provider.keys = [old.as_dict(private=False)]
    client = ProviderClient(settings(provider), clock)
    assert [k.kid for k in await client.keys("old", "RS256")] == ["old"]
    assert provider.hits["jwks"] == 1
    assert [k.kid for k in await client.keys("old", "RS256")] == ["old"]  # cached
    provider.keys = [old.as_dict(private=False), new.as_dict(private=False)]
    # Rotated within the cooldown: not fetched yet (a flood of made-up kids costs nothing).
    clock.advance(10)
    assert await client.keys("new", "RS256") == []
    assert await client.keys("made-up", "RS256") == []
    assert provider.hits["jwks"] == 1
    clock.advance(21)
    assert [k.kid for k in await client.keys("new", "RS256")] == ["new"]
    assert provider.hits["jwks"] == 2
    assert await client.keys("made-up", "RS256") == []
    assert provider.hits["jwks"] == 2


async def test_a_key_the_provider_removed_stops_verifying(provider: FakeProvider) -> None:
    """An attack run: a leaked key the provider dropped from its JWKS kept verifying tokens that named
    it (a known kid never asked for a fetch) until the gateway restarted. Keys are fetched again once
    older than jwks_max_age; while the provider cannot answer, the cached ones serve for a day."""
    clock = FakeClock()
    kept, leaked = rsa("kept"), rsa("leaked")
    provider.keys = [kept.as_dict(private=False), leaked.as_dict(private=False)]
    client = ProviderClient(settings(provider, jwks_max_age=Duration(300)), clock)
    assert [k.kid for k in await client.keys("leaked", "RS256")] == ["leaked"]
    provider.keys = [kept.as_dict(private=False)]
    clock.advance(299)
    assert [k.kid for k in await client.keys("leaked", "RS256")] == ["leaked"]  # still fresh
    assert provider.hits["jwks"] == 1
    clock.advance(2)
    assert await client.keys("leaked", "RS256") == []
    assert [k.kid for k in await client.keys("kept", "RS256")] == ["kept"]
    assert provider.hits["jwks"] == 2
    # The provider down: stale keys keep serving (once per cooldown it is asked again), for a day.
    provider.keys = [kept.as_dict(private=False)]
    clock.advance(301)
    provider.jwks_status = 503
    assert [k.kid for k in await client.keys("kept", "RS256")] == ["kept"]
    clock.advance(86_400)
    with pytest.raises(ProviderUnavailable):
        await client.keys("kept", "RS256")


async def test_unusable_keys_in_the_jwks_are_skipped(provider: FakeProvider) -> None:
    good = ECKey.generate_key("P-256", parameters={"kid": "ec"})
    provider.keys = [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {
            "kty": "RSA",
            "kid": "weak",
            "n": base64.urlsafe_b64encode(b"\x01" * 64).decode().rstrip("="),
            "e": "AQAB",
        },
        {"kty": "XYZ", "kid": "alien"},
        "not an object",
        good.as_dict(private=False),
    ]
    client = ProviderClient(settings(provider), FakeClock())
    assert [k.kid for k in await client.keys(None, "ES256")] == ["ec"]
    assert await client.keys("hmac", "HS256") == []


async def test_a_private_key_published_by_mistake_is_used_as_public_only(provider: FakeProvider) -> None:
    key = rsa("k")
    provider.keys = [key.as_dict(private=True)]
    (found,) = await ProviderClient(settings(provider), FakeClock()).keys("k", "RS256")
    assert not found.is_private


async def test_the_code_exchange_authenticates_the_client_and_sends_the_verifier(
    provider: FakeProvider,
) -> None:
    client = ProviderClient(settings(provider), FakeClock())
    tokens = await client.exchange_code(code="c1", verifier="v" * 43, redirect_uri="https://gw/cb")
    assert (tokens.id_token, tokens.access_token) == ("a.b.c", "at")
    auth, form = provider.token_requests[-1]
    # RFC 6749 §2.3.1: form-urlencoded before Basic.
    assert base64.b64decode(auth.removeprefix("Basic ")).decode() == "gateway:s3cr3t%3A%2F%26"
    assert form == {
        "grant_type": "authorization_code",
        "code": "c1",
        "redirect_uri": "https://gw/cb",
        "code_verifier": "v" * 43,
    }
    post = ProviderClient(settings(provider, token_endpoint_auth="client_secret_post"), FakeClock())
    await post.exchange_code(code="c2", verifier="v" * 43, redirect_uri="https://gw/cb")
    auth, form = provider.token_requests[-1]
    assert auth == ""
    assert (form["client_id"], form["client_secret"]) == ("gateway", "s3cr3t:/&")
    public = ProviderClient(settings(provider, client_secret=None), FakeClock())
    await public.exchange_code(code="c3", verifier="v" * 43, redirect_uri="https://gw/cb")
    auth, form = provider.token_requests[-1]
    assert auth == ""
    assert form["client_id"] == "gateway"
    assert "client_secret" not in form


async def test_introspection_authenticates_with_basic_and_sends_the_token(provider: FakeProvider) -> None:
    # The token endpoint's recorder stands in as the introspection endpoint (RFC 7662 §2.1).
    provider.discovery_overrides = {"introspection_endpoint": f"{provider.url}/token"}
    provider.token_body = {"active": True, "sub": "svc"}
    client = ProviderClient(settings(provider), FakeClock())
    answer = await client.introspect("tok en/+=", client_id="intro:spect", client_secret="p&ss word")
    assert answer == {"active": True, "sub": "svc"}
    auth, form = provider.token_requests[-1]
    assert base64.b64decode(auth.removeprefix("Basic ")).decode() == "intro%3Aspect:p%26ss%20word"
    assert form == {"token": "tok en/+=", "token_type_hint": "access_token"}
    provider.token_body = {"sub": "svc"}
    with pytest.raises(ProviderUnavailable, match="without active"):
        await client.introspect("t", client_id="c", client_secret="s")


@pytest.mark.parametrize("error", ["unsupported_token_type", "invalid_request", "invalid_token"])
async def test_introspection_refusing_the_token_is_an_answer_not_an_outage(
    provider: FakeProvider, error: str
) -> None:
    """An attack run bent tokens so the provider answered 400 ``unsupported_token_type``: read as an
    outage, each was a 503 and a provider call that was never cached nor counted against the address.
    A 400 about the token is "inactive"; one about the gateway's client, or a 5xx, stays an outage."""
    provider.discovery_overrides = {"introspection_endpoint": f"{provider.url}/token"}
    client = ProviderClient(settings(provider), FakeClock())
    provider.token_status, provider.token_body = 400, {"error": error}
    assert await client.introspect("t", client_id="c", client_secret="s") == {"active": False}
    for status, body in ((400, {"error": "invalid_client"}), (401, {"error": "invalid_token"}), (500, {})):
        provider.token_status, provider.token_body = status, body
        with pytest.raises(ProviderUnavailable, match="without active"):
            await client.introspect("t", client_id="c", client_secret="s")


async def test_token_endpoint_errors_and_outages_are_told_apart(provider: FakeProvider) -> None:
    client = ProviderClient(settings(provider), FakeClock())
    provider.token_status, provider.token_body = 400, {"error": "invalid_grant"}
    with pytest.raises(ProviderRefused) as refused:
        await client.exchange_code(code="c", verifier="v" * 43, redirect_uri="https://gw/cb")
    assert refused.value.error == "invalid_grant"
    provider.token_status, provider.token_body = 502, {"error": "bad_gateway"}
    with pytest.raises(ProviderUnavailable):
        await client.exchange_code(code="c", verifier="v" * 43, redirect_uri="https://gw/cb")
    provider.token_status, provider.token_body = 200, {"access_token": "only"}
    with pytest.raises(ProviderUnavailable, match="id_token"):
        await client.exchange_code(code="c", verifier="v" * 43, redirect_uri="https://gw/cb")


async def test_a_slow_provider_times_out(provider: FakeProvider) -> None:
    provider.delay = 2.0
    client = ProviderClient(settings(provider, timeout=Duration(0.2)), FakeClock())
    with pytest.raises(ProviderUnavailable, match="discovery failed"):
        await client.metadata()


async def test_a_provider_that_is_down_is_unavailable() -> None:
    idp = IdentityProvider(name="down", issuer="http://127.0.0.1:9", client_id="g", client_secret="s")
    with pytest.raises(ProviderUnavailable):
        await ProviderClient(idp, FakeClock()).metadata()


async def test_an_oversized_answer_is_refused(provider: FakeProvider) -> None:
    provider.discovery_overrides = {"jwks_uri": f"{provider.url}/big"}
    client = ProviderClient(settings(provider), FakeClock())
    with pytest.raises(ProviderUnavailable, match="1 MiB"):
        await client.keys("k", "RS256")
