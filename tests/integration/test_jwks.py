"""The assertion keys over real HTTP: ``/.gateway/jwks.json``, ``gateway keys rotate|list``, and the
upstream verifier of ``examples/verify_assertion.py`` against a live gateway.

One gateway process (SQLite, in-process state) in front of the echo app. The example verifier is
loaded from its file, exactly as a user would copy it, and fetches the JWKS from the gateway over
HTTP. Its tokens come from the gateway itself (a signed-in request through the proxy, when the data
plane sends ``X-Gateway-Assertion``) and from an :class:`AssertionSigner` on the gateway's own
database and keyring, so they are signed with the very key the running gateway publishes.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from gateway.clock import SYSTEM_CLOCK
from gateway.crypto.keyring import Keyring
from gateway.crypto.signing import SigningKeys
from gateway.identity.assertion import AssertionSigner
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.sessions import Session
from gateway.settings.schema import AssertionSettings
from gateway.store.db import Database, default_sqlite_url
from tests.integration.harness import (
    ROOT,
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)

PASSWORD = "amber quarry lantern voyage"
ROUTE = "wiki"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "verify_assertion", ROOT / "examples" / "verify_assertion.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("jwks")
    port = free_port()
    with run_echo() as echo:
        routes = [{"name": ROUTE, "host": "127.0.0.1", "path": "/", "upstreams": [echo.url], "mfa": "none"}]
        config = gateway_config(tmp, port, routes, session={"insecure_cookies": True})
        with run_gateway(tmp, config) as gw:
            yield gw


def _jwks(gw: Gateway) -> httpx.Response:
    return httpx.get(f"{gw.url}/.gateway/jwks.json", timeout=10)


def _kids(gw: Gateway) -> set[str]:
    return {k["kid"] for k in _jwks(gw).json()["keys"]}


def _header(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def _session(username: str = "alice") -> Session:
    now = time.time()
    return Session(
        id_hash="c" * 64,
        family="fam",
        user_id=1,
        username=username,
        level=AuthLevel.TWO_FACTOR,
        factors=(FactorUse(Factor.PASSWORD, now - 10), FactorUse(Factor.TOTP, now - 5)),
        roles=("staff",),
        created_at=now - 10,
        last_seen=now,
        ip="127.0.0.1",
        user_agent="pytest",
        host="127.0.0.1",
    )


def _sign_with_the_gateways_keys(gw: Gateway, *, route: str = ROUTE, ttl: float = 300) -> str:
    """A token from the gateway's own keys: its database and keyring, as a worker loads them."""
    data_dir = Path(gw.config["data_dir"])

    async def sign() -> str:
        db = Database.open(default_sqlite_url(data_dir), pool_size=1)
        try:
            keyring = Keyring.load(data_dir / "keys" / "keyring.json")
            keys = SigningKeys(db, keyring, SYSTEM_CLOCK, AssertionSettings())
            await keys.load()
            signer = AssertionSigner(
                keys.current, issuer=gw.config["public_url"], ttl=ttl, clock=SYSTEM_CLOCK
            )
            return signer.assertion_for(_session(), route, "alice@example.com", ["staff"])
        finally:
            await db.close()

    return asyncio.run(sign())


# -- the endpoint -----------------------------------------------------------------------------------


def test_jwks_is_served_with_a_cacheable_public_key(gateway: Gateway) -> None:
    resp = _jwks(gateway)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["cache-control"] == "public, max-age=60"
    keys = resp.json()["keys"]
    assert len(keys) >= 1
    for key in keys:
        assert set(key) == {"kid", "kty", "crv", "x", "y", "alg", "use"}  # never "d"
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")


@pytest.mark.parametrize(
    "path", ["/.gateway/jwks.json", "/.gateway/static/gateway.css", "/.gateway/health", "/.gateway/ready"]
)
def test_a_public_resource_sets_no_cookie(gateway: Gateway, path: str) -> None:
    """An attack run: the key set (and the static files) answered `Cache-Control: public` with a CSRF
    cookie, which a shared cache would hand every visitor as the same token. Only pages set it."""
    resp = httpx.get(f"{gateway.url}{path}", timeout=10)
    assert resp.status_code == 200, resp.text
    assert "set-cookie" not in resp.headers, resp.headers
    page = httpx.get(f"{gateway.url}/.gateway/login", timeout=10)
    assert "gateway_csrf" in page.headers.get("set-cookie", ""), page.headers  # pages still set it


def test_jwks_is_the_same_on_every_host(gateway: Gateway) -> None:
    # /.gateway/ answers on every host, never proxied: an upstream may fetch it through its own name.
    resp = httpx.get(f"{gateway.url}/.gateway/jwks.json", headers={"Host": "localhost"}, timeout=10)
    assert resp.status_code == 200
    assert {k["kid"] for k in resp.json()["keys"]} == _kids(gateway)


# -- the example verifier against the live gateway --------------------------------------------------


def test_example_verifies_a_token_signed_with_the_gateways_key(gateway: Gateway) -> None:
    token = _sign_with_the_gateways_keys(gateway)
    assert _header(token)["kid"] in _kids(gateway)
    verifier = example.AssertionVerifier(gateway.config["public_url"], audience=ROUTE)
    claims = verifier.verify(token)
    assert claims["sub"] == "alice"
    assert claims["aud"] == ROUTE
    assert claims["amr"] == ["pwd", "otp", "mfa"]


def test_example_refuses_other_routes_forgeries_and_expired_tokens(gateway: Gateway) -> None:
    verifier = example.AssertionVerifier(gateway.config["public_url"], audience=ROUTE, leeway=0)
    other_route = _sign_with_the_gateways_keys(gateway, route="payroll")
    header, claims, _signature = _sign_with_the_gateways_keys(gateway).split(".")
    none_header = base64.urlsafe_b64encode(
        json.dumps({"alg": "none", "typ": "JWT", "kid": _header(other_route)["kid"]}).encode()
    )
    forged = [
        other_route,
        f"{none_header.rstrip(b'=').decode()}.{claims}.",
        f"{header}.{other_route.split('.')[1]}.{_signature}",  # the signature of another token
        "",
        "not.a.token",
    ]
    for token in forged:
        with pytest.raises(example.InvalidAssertion):
            verifier.verify(token)
    wrong_issuer = example.AssertionVerifier("http://127.0.0.1:1", audience=ROUTE)
    wrong_issuer.jwks_url = f"{gateway.url}/.gateway/jwks.json"  # same keys, different expected issuer
    with pytest.raises(example.InvalidAssertion):
        wrong_issuer.verify(_sign_with_the_gateways_keys(gateway))

    short = _sign_with_the_gateways_keys(gateway, ttl=1)
    assert verifier.verify(short)["sub"] == "alice"

    def refused() -> str | None:
        try:
            verifier.verify(short)
        except example.InvalidAssertion as exc:
            return str(exc)
        return None

    # The example verifies against the real clock: poll until the one second has run out.
    error = wait_until(refused, timeout=10, interval=0.1, what="the one-second assertion refused")
    assert re.search(r"[Ee]xpired", error), error


def test_example_command_line(gateway: Gateway) -> None:
    token = _sign_with_the_gateways_keys(gateway)
    script = str(ROOT / "examples" / "verify_assertion.py")
    ok = subprocess.run(
        [sys.executable, script, gateway.config["public_url"], ROUTE, token],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sub"] == "alice"
    bad = subprocess.run(
        [sys.executable, script, gateway.config["public_url"], "payroll", token],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("invalid:")


def test_example_verifies_the_assertion_the_upstream_receives(gateway: Gateway) -> None:
    user = "jwksuser"
    add_user(gateway.config_path, user, PASSWORD, "--email", "jwks@example.com")
    with httpx.Client(base_url=gateway.url, follow_redirects=False, timeout=30) as client:
        client.get("/.gateway/login")
        csrf = client.cookies.get("gateway_csrf")
        assert csrf
        done = client.post(
            "/.gateway/login", data={"username": user, "password": PASSWORD, "rd": "", "_csrf_token": csrf}
        )
        assert done.status_code in (302, 303), done.text
        resp = client.get("/probe", headers={"Accept": "application/json"})
    assert resp.status_code == 200, resp.text
    seen = dict(resp.json()["headers"])
    token = seen["x-gateway-assertion"]
    claims = example.AssertionVerifier(gateway.config["public_url"], audience=ROUTE).verify(token)
    assert claims["sub"] == user
    assert claims["email"] == "jwks@example.com"
    assert claims["aud"] == ROUTE
    assert "pwd" in claims["amr"]


# -- rotation through the CLI (last: it changes the key set) ---------------------------------------


def test_keys_rotate_publishes_a_second_key_and_keys_list_shows_states(gateway: Gateway) -> None:
    before = _kids(gateway)
    assert len(before) == 1
    result = run_cli("keys", "rotate", "--config", str(gateway.config_path))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (old,) = before
    match = re.search(r"signing key: new key (\S+) is published now", result.stdout)
    assert match, result.stdout
    new = match.group(1)
    assert f"{old} signs until" in result.stdout
    assert "keyring" in result.stdout

    # Published by the running gateway without a restart (the JWKS re-reads at most every 5 s).
    wait_until(lambda: _kids(gateway) == {old, new}, timeout=30, what="the new key in jwks.json")

    listing = run_cli("keys", "list", "--config", str(gateway.config_path), "--json")
    assert listing.returncode == 0, listing.stderr
    states = {k["kid"]: k["state"] for k in json.loads(listing.stdout)["signing_keys"]}
    assert states == {old: "active", new: "next"}
    text = run_cli("keys", "list", "--config", str(gateway.config_path))
    assert text.returncode == 0, text.stderr
    assert "next" in text.stdout
    assert "active" in text.stdout

    # The old key still signs until the new one's time: a token from the gateway's keys names it.
    assert _header(_sign_with_the_gateways_keys(gateway))["kid"] == old
    # And the gateway still serves after the keyring rotated underneath it.
    assert httpx.get(f"{gateway.url}/.gateway/health", timeout=10).status_code == 200


def test_keys_rotate_only_the_signing_key(gateway: Gateway) -> None:
    result = run_cli("keys", "rotate", "--signing", "--config", str(gateway.config_path))
    assert result.returncode == 0, result.stderr
    assert "keyring" not in result.stdout
    assert "signing key: new key" in result.stdout
    wait_until(lambda: len(_kids(gateway)) == 3, timeout=30, what="the third key in jwks.json")


def test_a_verifier_copied_from_the_example_stops_trusting_a_leaked_key_after_the_jwks_max_age(
    gateway: Gateway,
) -> None:
    """Last in the module (it deletes the keys). An attack run forged tokens with a leaked key for five
    minutes after `keys rotate --compromised`: the example cached the JWKS for 300 s whatever the
    gateway's `max-age=60` said. It now takes the shorter of the two."""
    forged = _sign_with_the_gateways_keys(gateway)  # stands in for a token made with the leaked key
    verifier = example.AssertionVerifier(gateway.config["public_url"], audience=ROUTE, jwks_max_age=300)
    assert verifier.verify(forged)["sub"] == "alice"
    assert verifier._max_age == 60  # the gateway's Cache-Control, not the 300 asked for

    leaked = _header(forged)["kid"]
    done = run_cli("keys", "rotate", "--signing", "--compromised", "--config", str(gateway.config_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deleted as compromised: " in done.stdout
    assert leaked in done.stdout.split("deleted as compromised: ")[1]
    wait_until(lambda: leaked not in _kids(gateway), timeout=20, what="the leaked key gone from the JWKS")
    assert verifier.verify(forged)["sub"] == "alice"  # still cached: the exposure the docs name
    verifier._fetched_at -= 61  # a minute later
    with pytest.raises(example.InvalidAssertion, match="unknown key id"):
        verifier.verify(forged)
