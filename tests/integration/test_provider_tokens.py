"""An identity provider's access tokens on bearer routes, against the real oidc-provider and a real gateway.

The provider (panva/oidc-provider) issues client-credentials tokens for several resource servers: RFC
9068 JWTs for the gateway's audience, opaque ones (checked by RFC 7662 introspection), JWTs and opaque
tokens for another audience, JWTs HMAC-signed with a secret (an algorithm outside the allow-list), and
JWTs that live one second. The gateway (one worker, embedded stores) has the provider with
``access_tokens`` and a policy that names the client and a scope:

* JWT and opaque tokens reach the route they are allowed on; the app sees the client, never the token;
* a token without the scope a rule requires is 403 ``insufficient_scope``;
* expired, wrong audience, wrong algorithm, revoked at the provider (introspection): 401
  ``invalid_token`` with a description naming the reason, and ``token.refused`` audited with it;
* attacks: ``alg: none``, HS256 keyed with the provider's public key, another issuer's token, a
  stranger's key under the provider's kid; none of them gets in;
* the gateway's own ``gwt_`` tokens are still theirs (an unknown one never goes to the provider).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.integration.harness import Gateway, free_port, gateway_config, run_echo, run_gateway
from tests.support.oidc_peer import CLIENT_SECRET, Provider, machine_client, provider_client, run_provider
from tests.support.wait import wait_until

pytestmark = pytest.mark.peer

AUDIENCE = "https://gateway.test"
REPORTER, REPORTER_SECRET = "reporter", "reporter-secret-0123456789abcdef"
SCOPES = ["reports.read", "reports.write"]
HS_SECRET = "an-hmac-secret-the-provider-shares-with-nobody-0123"
RESOURCES: dict[str, dict[str, Any]] = {
    "https://gateway.test/jwt": {"accessTokenFormat": "jwt", "audience": AUDIENCE},
    "https://gateway.test/opaque": {"accessTokenFormat": "opaque", "audience": AUDIENCE},
    "https://gateway.test/short": {"accessTokenFormat": "jwt", "audience": AUDIENCE, "accessTokenTTL": 1},
    "https://other.test/jwt": {"accessTokenFormat": "jwt", "audience": "https://other.test"},
    "https://other.test/opaque": {"accessTokenFormat": "opaque", "audience": "https://other.test"},
    "https://gateway.test/hs256": {
        "accessTokenFormat": "jwt", "audience": AUDIENCE, "jwt": {"sign": {"alg": "HS256", "key": HS_SECRET}},
    },
}  # fmt: skip
POLICY = """\
p, client:corp:reporter, api, /api/*, GET, allow
p, scope:corp:reports.write, api, /api/reports/*, POST, allow
"""


@dataclass
class Site:
    gw: Gateway
    idp: Provider
    tmp: Path

    def token(self, resource: str, scope: str = "reports.read") -> str:
        answer = self.idp.client_credentials(REPORTER, REPORTER_SECRET, resource=resource, scope=scope)
        token: str = answer["access_token"]
        return token

    def audit(self, kind: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.tmp / "data" / "gateway.db") as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM audit_events WHERE kind = ? ORDER BY id", (kind,)).fetchall()
        return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("provider-tokens")
    resources = {uri: {"scope": " ".join(SCOPES), **server} for uri, server in RESOURCES.items()}
    clients = [
        provider_client(["http://127.0.0.1/unused"], [], None),
        machine_client(REPORTER, REPORTER_SECRET, SCOPES),
    ]
    (tmp / "policy.csv").write_text(POLICY)
    with (
        run_provider(
            tmp, clients=clients, accounts=[], resource_servers=resources, extra_scopes=SCOPES
        ) as idp,
        run_echo() as echo,
    ):
        port = free_port()
        route = {
            "name": "api",
            "host": "127.0.0.1",
            "path": "/api",
            "upstreams": [echo.url],
            "auth": ["bearer"],
        }
        # A route of the same host with a public path: the app behind it must never see the token.
        public = {
            "name": "pub", "host": "127.0.0.1", "path": "/pub", "upstreams": [echo.url], "public_paths": ["/*"],
        }  # fmt: skip
        config = gateway_config(
            tmp,
            port,
            [route, public],
            policy={"file": str(tmp / "policy.csv")},
            threat={"enabled": False},
            identity_providers=[
                {
                    "name": "corp", "issuer": idp.issuer, "client_id": "gateway", "client_secret": CLIENT_SECRET,
                    "access_tokens": {
                        "audience": AUDIENCE, "clock_skew": "0s", "introspection": {},
                        "cache_ttl": "1s", "negative_ttl": "1s",
                    },
                }
            ],
        )  # fmt: skip
        with run_gateway(tmp, config) as gw:
            yield Site(gw, idp, tmp)


def call(site: Site, path: str, token: str, *, method: str = "GET") -> httpx.Response:
    headers = {"Host": "127.0.0.1", "Accept": "application/json", "Authorization": f"Bearer {token}"}
    return httpx.request(method, f"{site.gw.url}{path}", headers=headers, timeout=30)


def refused(resp: httpx.Response, description: str) -> None:
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="gateway", error="invalid_token"'), challenge
    assert description in challenge, challenge


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


@pytest.mark.parametrize("resource", ["https://gateway.test/jwt", "https://gateway.test/opaque"])
def test_a_client_credentials_token_reaches_the_route(site: Site, resource: str) -> None:
    token = site.token(resource)
    assert (token.count(".") == 2) == resource.endswith("jwt")
    resp = call(site, "/api/things", token)
    assert resp.status_code == 200, resp.text
    headers = {k.lower(): v for k, v in resp.json()["headers"]}
    assert headers["x-gateway-user"] == "corp:reporter"
    assert headers["x-gateway-auth"] == "bearer"
    assert "authorization" not in headers
    assert token not in resp.text


def test_a_token_for_the_gateway_never_reaches_the_app_of_a_public_path(site: Site) -> None:
    """The last note's open item: a client that sends its provider token with every request to the host
    handed it to the app of a public path, which could replay it on the bearer route as the client.
    A token of the same provider for another audience is the app's, and goes through."""
    for resource, reaches in (("https://gateway.test/jwt", False), ("https://other.test/jwt", True)):
        token = site.token(resource)
        resp = call(site, "/pub/page", token)
        assert resp.status_code == 200, resp.text
        headers = {k.lower(): v for k, v in resp.json()["headers"]}
        assert ("authorization" in headers) is reaches, resource
        assert (token in resp.text) is reaches, resource


@pytest.mark.parametrize("resource", ["https://gateway.test/jwt", "https://gateway.test/opaque"])
def test_a_scope_the_policy_requires(site: Site, resource: str) -> None:
    reader = call(site, "/api/reports/q3", site.token(resource, "reports.read"), method="POST")
    assert reader.status_code == 403, reader.text
    assert 'error="insufficient_scope"' in reader.headers["www-authenticate"]
    writer = call(site, "/api/reports/q3", site.token(resource, "reports.read reports.write"), method="POST")
    assert writer.status_code == 200, writer.text


def test_an_expired_jwt(site: Site) -> None:
    token = site.token("https://gateway.test/short")
    exp = _payload(token)["exp"]
    # The token lives a second; once the gateway's clock is past exp it is refused (no clock skew set).
    wait_until(lambda: call(site, "/api/things", token).status_code == 401, timeout=15, what="expiry")
    refused(call(site, "/api/things", token), "has expired")
    assert exp - _payload(token)["iat"] == 1


@pytest.mark.parametrize("resource", ["https://other.test/jwt", "https://other.test/opaque"])
def test_a_token_for_another_audience(site: Site, resource: str) -> None:
    refused(call(site, "/api/things", site.token(resource)), "another audience")


def test_a_jwt_with_an_algorithm_outside_the_allow_list(site: Site) -> None:
    token = site.token("https://gateway.test/hs256")
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"] == "HS256"
    refused(call(site, "/api/things", token), "algorithm is not allowed")


def test_a_revoked_opaque_token_stops_working(site: Site) -> None:
    token = site.token("https://gateway.test/opaque")
    assert call(site, "/api/things", token).status_code == 200
    site.idp.revoke(token, REPORTER, REPORTER_SECRET)
    # Within the cache_ttl (1 s here) the next introspection says inactive.
    wait_until(lambda: call(site, "/api/things", token).status_code == 401, timeout=15, what="revocation")
    refused(call(site, "/api/things", token), "not active")


def test_attacks_none_hmac_with_the_public_key_another_issuer_a_strangers_key(site: Site) -> None:
    claims = _payload(site.token("https://gateway.test/jwt"))
    none = f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64(claims)}."
    refused(call(site, "/api/things", none), "algorithm is not allowed")
    header = {"alg": "HS256", "typ": "at+jwt", "kid": site.idp.key.kid}
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    for public in (
        site.idp.key.as_pem(private=False),
        json.dumps(site.idp.key.as_dict(private=False)).encode(),
    ):
        mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
        refused(call(site, "/api/things", f"{signing_input}.{_b64(mac)}"), "algorithm is not allowed")
    stranger = RSAKey.generate_key(2048, parameters={"kid": str(site.idp.key.kid)})
    forged = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": site.idp.key.kid}, claims, stranger)
    refused(call(site, "/api/things", forged), "signature does not verify")
    elsewhere = jwt.encode(
        {"alg": "RS256", "typ": "at+jwt", "kid": "x"}, {**claims, "iss": "https://evil.test"}, stranger
    )
    refused(call(site, "/api/things", elsewhere), "issuer is not trusted")
    # An ID-token-shaped JWT signed by the provider's own key is not an access token (typ).
    id_like = site.idp.sign(claims, header={"typ": "JWT"})
    refused(call(site, "/api/things", id_like), "type is not at+jwt")


def test_the_gateways_own_token_shape_is_never_sent_to_the_provider(site: Site) -> None:
    refused(call(site, "/api/things", "gwt_" + "A" * 43), "not valid")


def test_refusals_are_audited_with_their_reason_and_never_the_token(site: Site) -> None:
    token = site.token("https://other.test/jwt")
    assert call(site, "/api/things", token).status_code == 401

    def reasons() -> set[str]:
        return {row["details"]["reason"] for row in site.audit("token.refused")}

    # Both written in the background (the algorithm refusal by an earlier test's request): waited for.
    wait_until(
        lambda: {"audience", "algorithm"} <= reasons(), timeout=15, what="token.refused audience, algorithm"
    )
    used = wait_until(lambda: site.audit("token.used"), timeout=15, what="token.used")
    assert used[0]["actor"] == "client:corp:reporter"
    everything = json.dumps(site.audit("token.refused") + used) + site.gw.log()
    assert token not in everything
    assert token.split(".")[2] not in everything
