"""The test OpenID provider: panva/oidc-provider (``tests/support/oidc_provider/``) run by Node on loopback.

:func:`run_provider` starts ``node server.mjs`` with a config written here: an RSA signing key made in
Python (so tests can sign tokens exactly as the provider would: a logout token, or an ID token with
one claim wrong), one confidential client per gateway redirect URI, and test accounts. For access tokens on bearer
routes: resource servers (audience, scopes, lifetime, opaque or JWT format), machine clients
(:func:`machine_client`), :meth:`Provider.client_credentials` and :meth:`Provider.revoke`.
:func:`sign_in_at_provider` drives the provider's own sign-in form with httpx, as a browser would.

``scripts/ensure-test-deps`` installs the package (``npm ci``); a missing install is a test failure,
not a skip, because the tests that use it are ``peer`` tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.integration.harness import free_port, wait_for_port

__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "PROVIDER_DIR",
    "Account",
    "Provider",
    "machine_client",
    "provider_client",
    "run_provider",
    "sign_in_at_provider",
]

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
CLIENT_ID = "gateway"
CLIENT_SECRET = "gateway-test-client-secret-0123456789"


@dataclass(frozen=True)
class Account:
    """A person at the test provider."""

    username: str
    password: str
    claims: Mapping[str, Any]
    amr: tuple[str, ...] = ()
    acr: str | None = None

    def as_config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"password": self.password, "claims": dict(self.claims)}
        if self.amr:
            entry["amr"] = list(self.amr)
        if self.acr:
            entry["acr"] = self.acr
        return entry


@dataclass
class Provider:
    """A running test provider."""

    port: int
    key: RSAKey
    proc: subprocess.Popen[bytes]
    log_path: Path
    accounts: dict[str, Account] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def add(self, account: Account) -> Account:
        """Add an account to the running provider."""
        httpx.post(
            f"{self.issuer}/__test/accounts", json={account.username: account.as_config()}, timeout=10
        ).raise_for_status()
        self.accounts[account.username] = account
        return account

    def next_id_token(self, token: str) -> None:
        """The provider's next token response carries ``token`` as its id_token (test switch)."""
        httpx.post(f"{self.issuer}/__test/next-id-token", content=token, timeout=10).raise_for_status()

    def delay(self, milliseconds: int) -> None:
        """Every later response of the provider waits this long (test switch; 0 turns it off)."""
        httpx.post(f"{self.issuer}/__test/delay", content=str(milliseconds), timeout=10).raise_for_status()

    def backchannel_deliveries(self) -> list[dict[str, Any]]:
        """The back-channel logout calls the provider made, with their outcome."""
        deliveries: list[dict[str, Any]] = httpx.get(f"{self.issuer}/__test/backchannel", timeout=10).json()
        return deliveries

    def sign(self, claims: Mapping[str, Any], *, header: Mapping[str, Any] | None = None) -> str:
        """A JWT signed with the provider's own key (RS256, its kid), as the provider would sign it."""
        head = {"alg": "RS256", "kid": self.key.kid, **(header or {})}
        return jwt.encode(head, dict(claims), self.key, algorithms=[head["alg"]])

    def client_credentials(
        self, client_id: str, secret: str, *, resource: str | None = None, scope: str | None = None
    ) -> dict[str, Any]:
        """The token response of a client credentials grant (RFC 6749 §4.4; ``resource`` is RFC 8707)."""
        form = {"grant_type": "client_credentials"}
        if resource is not None:
            form["resource"] = resource
        if scope is not None:
            form["scope"] = scope
        resp = httpx.post(f"{self.issuer}/token", data=form, auth=(client_id, secret), timeout=10)
        assert resp.status_code == 200, resp.text
        answer: dict[str, Any] = resp.json()
        return answer

    def revoke(self, token: str, client_id: str, secret: str) -> None:
        """Revoke a token at the provider's revocation endpoint (RFC 7009)."""
        resp = httpx.post(
            f"{self.issuer}/token/revocation",
            data={"token": token, "token_type_hint": "access_token"},
            auth=(client_id, secret),
            timeout=10,
        )
        assert resp.status_code == 200, resp.text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def provider_client(
    redirect_uris: list[str], post_logout: list[str], backchannel: str | None
) -> dict[str, Any]:
    """Client metadata for the gateway at the provider."""
    client: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": redirect_uris,
        "post_logout_redirect_uris": post_logout,
        "response_types": ["code"],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "client_secret_basic",
        "id_token_signed_response_alg": "RS256",
    }
    if backchannel:
        client["backchannel_logout_uri"] = backchannel
        client["backchannel_logout_session_required"] = True
    return client


def machine_client(client_id: str, secret: str, scopes: list[str]) -> dict[str, Any]:
    """Client metadata for a script or service using the client credentials grant (no browser)."""
    return {
        "client_id": client_id,
        "client_secret": secret,
        "redirect_uris": [],
        "response_types": [],
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": " ".join(scopes),
    }


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is missing: scripts/ensure-test-deps installs it")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(
            "oidc-provider is not installed: run `npm ci` in tests/support/oidc_provider (ensure-test-deps)"
        )
    return node


@contextmanager
def run_provider(
    tmp: Path,
    *,
    clients: list[dict[str, Any]],
    accounts: list[Account],
    port: int | None = None,
    key: RSAKey | None = None,
    resource_servers: Mapping[str, Mapping[str, Any]] | None = None,
    extra_scopes: list[str] | None = None,
) -> Iterator[Provider]:
    """Start the test provider on ``127.0.0.1:<port>``; stopped at the end of the block."""
    node = _node()
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    key = key or RSAKey.generate_key(2048, parameters={"kid": f"test-{port}", "use": "sig", "alg": "RS256"})
    config = {
        "port": port,
        "issuer": f"http://127.0.0.1:{port}",
        "jwks": {"keys": [key.as_dict(private=True)]},
        "clients": clients,
        "accounts": {a.username: a.as_config() for a in accounts},
        "testControl": True,
        "resourceServers": dict(resource_servers or {}),
        "extraScopes": list(extra_scopes or []),
    }
    config_path = tmp / f"provider-{port}.json"
    config_path.write_text(json.dumps(config))
    log_path = tmp / f"provider-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [node, str(PROVIDER_DIR / "server.mjs"), str(config_path)],
            cwd=PROVIDER_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    provider = Provider(port, key, proc, log_path, {a.username: a for a in accounts})
    try:
        wait_for_port(port, proc=proc)
        yield provider
    finally:
        provider.stop()


def sign_in_at_provider(
    client: httpx.Client, authorize_url: str, account: Account, *, stop_at: str
) -> httpx.Response:
    """Follow ``authorize_url`` through the provider's sign-in form until it redirects to ``stop_at``.

    Returns the provider's redirect response whose ``Location`` starts with ``stop_at`` (usually the
    gateway's callback URL), without following it.
    """
    resp = client.get(authorize_url)
    for _ in range(10):
        if resp.status_code in (302, 303):
            location = urljoin(str(resp.url), resp.headers["location"])
            if location.startswith(stop_at):
                return resp
            resp = client.get(location)
            continue
        assert resp.status_code == 200, resp.text
        action = urlsplit(str(resp.url)).path + "/login"
        resp = client.post(
            urljoin(str(resp.url), action), data={"username": account.username, "password": account.password}
        )
        assert resp.status_code in (302, 303), resp.text
    raise AssertionError(f"the provider never redirected to {stop_at}")


def query_of(url: str) -> dict[str, str]:
    """The query parameters of a URL (first value of each)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
