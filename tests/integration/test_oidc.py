"""Sign-in through OpenID providers over real HTTP, against a real OpenID provider.

The provider is panva/oidc-provider (OpenID Certified) run by Node (``tests/support/oidc_provider``);
the gateways are real ``python -m gateway serve`` processes: A (where browsers sign in) and B (a
second replica sharing A's database and Redis, which the provider calls for back-channel logout).
httpx plays the browser and drives the provider's own sign-in form. Tokens with one thing wrong are
signed in Python with the provider's own key and handed out by the provider's token endpoint (its
test switch), so each negative case differs from a real sign-in in exactly one respect.

Identity providers configured on both gateways (all but ``down`` and ``flaky`` are the one provider,
under different policies):

* ``corp``  just-in-time accounts, groups → roles, the gateway's own second factor required
* ``mfa``   just-in-time, the provider's MFA trusted when ``amr`` proves it
* ``pre``   pre-provisioned accounts only (found by verified email)
* ``info``  just-in-time, claims also read from the userinfo endpoint
* ``down``  nothing listens at its issuer
* ``slow``  accepts connections at its issuer and never answers
* ``flaky`` a second provider process that tests start, slow down and stop

Routes: ``127.0.0.1`` → echo, ``mfa: required`` (the auth host); ``localhost`` → echo, ``mfa: none``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from joserfc.jwk import RSAKey

from tests.integration.harness import (
    Gateway,
    add_user,
    dead_port,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    run_tripwire,
    wait_until,
)
from tests.integration.http_client import SESSION_COOKIE, browser, cookie, post_form
from tests.support.oidc_peer import (
    CLIENT_ID,
    Account,
    Provider,
    provider_client,
    query_of,
    run_provider,
    sign_in_at_provider,
)
from tests.support.totp import oathtool, previous_step_code

pytestmark = pytest.mark.peer

REDIS_URL = "redis://127.0.0.1:6379/10"
SECRET_RE = re.compile(r'<code class="key" id="totp-secret">\s*([A-Z2-7=]+)\s*</code>')
CREDENTIAL_RE = re.compile(r'name="credential_id" value="(\d+)"')
PASSWORD = "provider password 42"
PROVIDERS = ("corp", "mfa", "pre", "info", "down", "slow", "flaky")


def person(name: str, *, amr: tuple[str, ...] = ("pwd",), verified: bool = True, **claims: Any) -> Account:
    """A provider account with a unique email (Redis and the database outlive one test)."""
    base: dict[str, Any] = {
        "email": f"{name}@corp.test",
        "email_verified": verified,
        "preferred_username": name,
        "name": name.title(),
        "groups": ["staff"],
    }
    base.update(claims)
    return Account(name, PASSWORD, base, amr=amr)


@dataclass
class Site:
    a: Gateway
    b: Gateway
    op: Provider
    flaky_port: int
    tmp: Path
    db_path: Path

    def account(self, prefix: str, **options: Any) -> Account:
        """A new account, added to the running provider's table (the provider reads it per sign-in)."""
        name = f"{prefix}{secrets.token_hex(3)}"
        return self.op.add(person(name, **options))

    def rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, args).fetchall()

    def audit(self, kind: str) -> list[dict[str, Any]]:
        rows = self.rows("SELECT * FROM audit_events WHERE kind = ? ORDER BY id", kind)
        return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


def _gateway_providers(
    op_issuer: str, flaky_issuer: str, down_issuer: str, slow_issuer: str
) -> list[dict[str, Any]]:
    common: dict[str, Any] = {
        "issuer": op_issuer,
        "client_id": CLIENT_ID,
        "client_secret": "${env:OIDC_TEST_SECRET}",
        "scopes": ["openid", "email", "profile", "groups"],
    }
    providers = [
        {
            **common,
            "name": "corp",
            "display_name": "Corp SSO",
            "provisioning": "jit",
            "role_map": {"admins": "admin", "staff": ["staff", "reader"]},
            "email_domains": ["corp.test"],
        },
        {
            **common,
            "name": "mfa",
            "display_name": "Corp SSO with MFA",
            "provisioning": "jit",
            "trust_mfa": True,
        },
        {**common, "name": "pre", "provisioning": "preprovisioned"},
        {**common, "name": "info", "provisioning": "jit", "userinfo": True, "role_map": {"staff": "staff"}},
        {**common, "name": "down", "issuer": down_issuer, "timeout": "2s"},
        {**common, "name": "slow", "issuer": slow_issuer, "timeout": "2s"},
        {**common, "name": "flaky", "issuer": flaky_issuer, "provisioning": "jit", "timeout": "1s"},
    ]
    # Separate copies: YAML would write a shared list as an alias, which the config loader refuses.
    copied: list[dict[str, Any]] = json.loads(json.dumps(providers))
    return copied


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("oidc")
    from tests.support.oidc_peer import CLIENT_SECRET

    monkeypatch_module.setenv("OIDC_TEST_SECRET", CLIENT_SECRET)
    port_a, port_b, op_port, flaky_port = free_port(), free_port(), free_port(), free_port()
    auth = f"http://127.0.0.1:{port_a}"
    callbacks = [f"{auth}/.gateway/oidc/{name}/callback" for name in PROVIDERS]
    post_logout = [f"{auth}/.gateway/oidc/{name}/logged-out" for name in PROVIDERS]
    # The provider ends sessions through replica B: A must learn of it through the shared Redis.
    backchannel = f"http://127.0.0.1:{port_b}/.gateway/oidc/corp/backchannel-logout"
    client = provider_client(callbacks, post_logout, backchannel)
    with (
        dead_port() as down,
        run_tripwire() as slow,
        run_provider(tmp / "op", clients=[client], accounts=[], port=op_port) as op,
        run_echo() as echo,
    ):
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "required"},
            {"name": "wiki", "host": "localhost", "upstreams": [echo.url], "mfa": "none"},
        ]
        common: dict[str, Any] = {
            "public_url": auth,
            "data_dir": str(tmp / "shared-data"),
            "session": {"insecure_cookies": True},
            # A namespace per run: session indexes are keyed by user id, which restarts at 1 per database.
            "state": {"redis_url": REDIS_URL, "namespace": f"oidc{secrets.token_hex(4)}:"},
            "identity_providers": _gateway_providers(
                op.issuer, f"http://127.0.0.1:{flaky_port}", f"http://127.0.0.1:{down}", slow.url
            ),
        }
        config_a = gateway_config(tmp / "a", port_a, routes, **common)
        config_b = gateway_config(tmp / "b", port_b, routes, **common)
        with run_gateway(tmp / "a", config_a) as gw_a, run_gateway(tmp / "b", config_b) as gw_b:
            yield Site(gw_a, gw_b, op, flaky_port, tmp, tmp / "shared-data" / "gateway.db")


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


# -- helpers ---------------------------------------------------------------------------------------


def start(client: httpx.Client, idp: str = "corp", rd: str = "") -> httpx.Response:
    """Press "Sign in with …": the gateway's redirect to the provider."""
    resp = client.get(f"/.gateway/oidc/{idp}/start", params={"rd": rd} if rd else None)
    assert resp.status_code == 302, resp.text
    return resp


def provider_answer(
    site: Site, client: httpx.Client, account: Account, idp: str = "corp", rd: str = ""
) -> str:
    """Start a sign-in and sign in at the provider; return the callback URL (not yet visited)."""
    authorize = start(client, idp, rd).headers["location"]
    callback = f"{site.a.url}/.gateway/oidc/{idp}/callback"
    return str(sign_in_at_provider(client, authorize, account, stop_at=callback).headers["location"])


def sign_in(
    site: Site, client: httpx.Client, account: Account, idp: str = "corp", rd: str = ""
) -> httpx.Response:
    """A whole provider sign-in; returns the gateway's answer to the callback."""
    return client.get(provider_answer(site, client, account, idp, rd))


def echo_headers(gw: Gateway, session_id: str, host: str = "127.0.0.1") -> dict[str, str] | None:
    """The identity headers the echo app saw for a request with this session (None if refused)."""
    resp = httpx.get(
        f"{gw.url}/probe",
        headers={"Host": host, "Accept": "application/json", "Cookie": f"{SESSION_COOKIE}={session_id}"},
        timeout=30,
    )
    if resp.status_code != 200:
        return None
    return {k: v for k, v in resp.json()["headers"] if k.startswith("x-gateway-")}


def refused(gw: Gateway, session_id: str, host: str = "localhost") -> bool:
    resp = httpx.get(
        f"{gw.url}/probe",
        headers={"Host": host, "Accept": "application/json", "Cookie": f"{SESSION_COOKIE}={session_id}"},
        timeout=30,
    )
    return resp.status_code == 401


def enroll_totp(client: httpx.Client) -> str:
    page = client.get("/.gateway/account/enroll")
    assert page.status_code == 200, page.text
    secret_match, credential_match = SECRET_RE.search(page.text), CREDENTIAL_RE.search(page.text)
    assert secret_match, page.text
    assert credential_match, page.text
    secret = secret_match.group(1)
    done = post_form(
        client,
        "/.gateway/account/totp/confirm",
        {"credential_id": credential_match.group(1), "code": previous_step_code(secret)},
    )
    assert done.status_code == 200, done.text
    return secret


# -- the whole flow --------------------------------------------------------------------------------


def test_sign_in_through_the_provider_then_the_gateways_second_factor(site: Site) -> None:
    account = site.account("ada", groups=["staff", "admins"])
    target = f"{site.a.url}/report?q=1"
    with browser(site.a) as client:
        # The app sends an unauthenticated browser to the sign-in page, which offers every provider.
        resp = client.get("/report?q=1", headers={"Accept": "text/html"})
        assert resp.status_code == 302
        login = client.get(resp.headers["location"])
        assert login.status_code == 200
        for label in ("Sign in with Corp SSO", "Sign in with Corp SSO with MFA", "Sign in with pre"):
            assert label in login.text
        authorize = start(client, "corp", target).headers["location"]
        params = query_of(authorize)
        assert authorize.startswith(f"{site.op.issuer}/auth?")
        assert params["code_challenge_method"] == "S256"
        assert len(params["code_challenge"]) == 43
        assert params["redirect_uri"] == f"{site.a.url}/.gateway/oidc/corp/callback"
        assert params["state"] != params["nonce"]
        assert "code_verifier" not in authorize

        callback = sign_in_at_provider(
            client, authorize, account, stop_at=f"{site.a.url}/.gateway/oidc/corp/callback"
        )
        resp = client.get(callback.headers["location"])
        # One factor so far: back to the app, which asks for the gateway's own second factor.
        assert resp.status_code == 302, resp.text
        assert resp.headers["location"] == target
        one_factor = cookie(client)
        assert one_factor is not None
        resp = client.get(target, headers={"Accept": "text/html"})
        assert resp.status_code == 302
        assert "/.gateway/mfa" in resp.headers["location"]
        # No factor enrolled yet: the MFA page sends to enrollment, which a fresh provider sign-in may do.
        resp = client.get(resp.headers["location"])
        assert resp.status_code == 302
        assert resp.headers["location"].startswith("/.gateway/account/enroll")
        secret = enroll_totp(client)
        two_factor = cookie(client)
        assert two_factor is not None
        assert two_factor != one_factor

    headers = echo_headers(site.a, two_factor)
    assert headers is not None
    assert headers["x-gateway-user"] == account.username
    assert headers["x-gateway-email"] == account.claims["email"]
    # Local roles (none) + role_map of the provider's groups.
    assert sorted(headers["x-gateway-roles"].split(",")) == ["admin", "reader", "staff"]

    user = site.rows("SELECT * FROM users WHERE username = ?", account.username)[0]
    assert user["password_hash"] is None
    (link,) = site.rows("SELECT * FROM identity_links WHERE user_id = ?", user["id"])
    assert (link["provider"], link["subject"]) == ("corp", account.username)
    assert [e["subject"] for e in site.audit("user.created") if e["actor"] == "oidc:corp"].count(
        account.username
    ) == 1
    sign_ins = [e for e in site.audit("signin.oidc") if e["subject"] == account.username]
    assert sign_ins[-1]["details"]["provider_mfa_trusted"] is False

    # Next time (a new browser), the provider sign-in is followed by the gateway's TOTP prompt.
    with browser(site.a) as client:
        resp = sign_in(site, client, account, rd=target)
        assert resp.status_code == 302
        assert urlsplit(resp.headers["location"]).path == "/.gateway/mfa"
        resp = post_form(client, "/.gateway/mfa/totp", {"code": oathtool(secret, time.time()), "rd": target})
        assert resp.status_code == 302, resp.text
        assert resp.headers["location"] == target
        sid = cookie(client)
    assert sid is not None
    headers = echo_headers(site.a, sid)
    assert headers is not None
    assert headers["x-gateway-user"] == account.username
    assert len(site.rows("SELECT * FROM users WHERE email = ?", account.claims["email"])) == 1


def test_trusted_provider_mfa_counts_only_when_amr_proves_it(site: Site) -> None:
    strong = site.account("mia", amr=("pwd", "otp"))
    weak = site.account("pia", amr=("pwd",))
    target = f"{site.a.url}/ledger"
    with browser(site.a) as client:
        resp = sign_in(site, client, strong, idp="mfa", rd=target)
        assert resp.status_code == 302
        assert resp.headers["location"] == target
        sid = cookie(client)
    assert sid is not None
    headers = echo_headers(site.a, sid)  # the route requires a second factor: the provider's counts
    assert headers is not None
    assert headers["x-gateway-user"] == strong.username
    event = [e for e in site.audit("signin.oidc") if e["subject"] == strong.username][-1]
    assert event["details"]["provider_mfa_trusted"] is True
    assert event["details"]["amr"] == ["pwd", "otp"]

    with browser(site.a) as client:
        resp = sign_in(site, client, weak, idp="mfa", rd=target)
        assert resp.status_code == 302
        sid = cookie(client)
        assert sid is not None
        assert echo_headers(site.a, sid) is None  # a password at the provider is one factor
        resp = client.get(target, headers={"Accept": "text/html"})
        assert "/.gateway/mfa" in resp.headers["location"]
    # The same strong account through a provider whose MFA is not trusted: one factor.
    with browser(site.a) as client:
        other = site.account("nia", amr=("pwd", "otp", "mfa"))
        assert sign_in(site, client, other, idp="corp").status_code == 302
        sid = cookie(client)
    assert sid is not None
    assert echo_headers(site.a, sid) is None
    assert echo_headers(site.a, sid, host="localhost") is not None


# -- state, code, PKCE -----------------------------------------------------------------------------


def _is_invalid_link_page(resp: httpx.Response) -> bool:
    return (
        resp.status_code == 400
        and "This sign-in link is not valid" in resp.text
        and resp.headers["content-type"].startswith("text/html")
    )


def test_missing_unknown_and_other_browsers_state_is_refused(site: Site) -> None:
    account = site.account("sam")
    with browser(site.a) as victim, browser(site.a) as attacker:
        callback = provider_answer(site, attacker, account)
        params = query_of(callback)
        path = "/.gateway/oidc/corp/callback"
        assert _is_invalid_link_page(victim.get(path, params={"code": params["code"]}))
        assert _is_invalid_link_page(victim.get(path, params={"code": params["code"], "state": "x" * 43}))
        # Login CSRF: the attacker's code and state, planted in the victim's browser, are refused...
        resp = victim.get(callback)
        assert _is_invalid_link_page(resp)
        assert "started in another browser" in resp.text
        assert cookie(victim) is None
        # ...and left alone: only the browser that started the sign-in spends its state (a callback
        # URL sent from elsewhere used to spend it, and the person's own sign-in failed). Here that is
        # the attacker, signing in as themselves: nothing of the victim's.
        assert attacker.get(callback).status_code == 302
        assert cookie(attacker) is not None
        assert cookie(victim) is None
        assert _is_invalid_link_page(attacker.get(callback))  # spent now


def test_a_callback_works_once_and_a_used_code_is_refused_by_the_provider(site: Site) -> None:
    account = site.account("rex")
    with browser(site.a) as client:
        callback = provider_answer(site, client, account)
        assert client.get(callback).status_code == 302
        first = cookie(client)
        assert first is not None
        # The same answer again (a reload, a replay from history): the state is spent.
        assert _is_invalid_link_page(client.get(callback))
        assert cookie(client) == first
        # The used code with a fresh state of this browser reaches the provider, which refuses it.
        used_code = query_of(callback)["code"]
        fresh = query_of(provider_answer(site, client, account))
        resp = client.get("/.gateway/oidc/corp/callback", params={"code": used_code, "state": fresh["state"]})
        assert resp.status_code == 401, resp.text
        assert "idp-refused" in resp.text
        assert "Try again" in resp.text
        assert cookie(client) == first  # the failed sign-in changed nothing
    failures = [e for e in site.audit("signin.oidc") if e["outcome"] == "failure"]
    assert failures[-1]["details"]["token_endpoint"] == "invalid_grant"


def test_an_intercepted_code_is_useless_without_the_gateways_pkce_verifier(site: Site) -> None:
    account = site.account("pat")
    with browser(site.a) as client:
        callback = provider_answer(site, client, account)
        code = query_of(callback)["code"]
        token_endpoint = f"{site.op.issuer}/token"
        redirect_uri = f"{site.a.url}/.gateway/oidc/corp/callback"
        from tests.support.oidc_peer import CLIENT_SECRET

        # Even with the client secret, the code alone (or with a guessed verifier) buys nothing.
        for extra in ({}, {"code_verifier": secrets.token_urlsafe(48)}):
            resp = httpx.post(
                token_endpoint,
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    **extra,
                },
                auth=(CLIENT_ID, CLIENT_SECRET),
            )
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"] == "invalid_grant"
        # The gateway, which kept the verifier server-side, redeems the same code.
        resp = client.get(callback)
        assert resp.status_code == 302, resp.text
        assert cookie(client) is not None


# -- ID token checks: one thing wrong at a time ----------------------------------------------------


def _claims(site: Site, nonce: str, sub: str, /, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": site.op.issuer,
        "aud": CLIENT_ID,
        "sub": sub,
        "nonce": nonce,
        "iat": now,
        "exp": now + 600,
        "email": f"{sub}@corp.test",
        "email_verified": True,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _hmac_with_public_key(site: Site, claims: dict[str, Any]) -> str:
    # The classic confusion: the provider's *public* key (PEM) used as an HMAC secret. (JOSE libraries
    # refuse to build such a key, so the token is put together by hand.)
    header = _b64(json.dumps({"alg": "HS256", "kid": site.op.key.kid}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    secret = site.op.key.as_pem(private=False)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _other_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


def _forged(site: Site, case: str, nonce: str, sub: str) -> str:
    now = int(time.time())
    sign = site.op.sign
    if case == "control":
        return sign(_claims(site, nonce, sub))
    if case == "nonce":
        return sign(_claims(site, nonce, sub, nonce="n" * 43))
    if case == "no-nonce":
        return sign(_claims(site, nonce, sub, nonce=None))
    if case == "iss":
        return sign(_claims(site, nonce, sub, iss="http://127.0.0.1:1"))
    if case == "aud":
        return sign(_claims(site, nonce, sub, aud="another-client"))
    if case == "azp":
        return sign(_claims(site, nonce, sub, aud=[CLIENT_ID, "another-client"]))
    if case == "azp-other":
        return sign(_claims(site, nonce, sub, aud=[CLIENT_ID, "another-client"], azp="another-client"))
    if case == "exp":
        return sign(_claims(site, nonce, sub, iat=now - 700, exp=now - 300))
    if case == "iat-future":
        return sign(_claims(site, nonce, sub, iat=now + 3600, exp=now + 7200))
    if case == "alg-none":
        return _unsigned(_claims(site, nonce, sub))
    if case == "hmac-public-key":
        return _hmac_with_public_key(site, _claims(site, nonce, sub))
    if case == "wrong-key":
        from joserfc import jwt

        key = _other_key(site.op.key.kid or "")
        return jwt.encode(
            {"alg": "RS256", "kid": key.kid}, _claims(site, nonce, sub), key, algorithms=["RS256"]
        )
    if case == "unknown-kid":
        from joserfc import jwt

        key = _other_key("rotated-away")
        return jwt.encode(
            {"alg": "RS256", "kid": key.kid}, _claims(site, nonce, sub), key, algorithms=["RS256"]
        )
    if case == "typ":
        return sign(_claims(site, nonce, sub), header={"typ": "at+jwt"})
    if case == "no-sub":
        return sign(_claims(site, nonce, sub, sub=None))
    raise AssertionError(case)


ID_TOKEN_CASES = [
    # (case, the check the audit trail names; None = accepted)
    ("control", None),
    ("nonce", "nonce"),
    ("no-nonce", "nonce"),
    ("iss", "iss"),
    ("aud", "aud"),
    ("azp", "azp"),
    ("azp-other", "azp"),
    ("exp", "exp"),
    ("iat-future", "iat"),
    ("alg-none", "alg"),
    ("hmac-public-key", "alg"),
    ("wrong-key", "signature"),
    ("unknown-kid", "key"),
    ("typ", "typ"),
    ("no-sub", "sub"),
]


@pytest.mark.parametrize(("case", "check"), ID_TOKEN_CASES, ids=[c for c, _ in ID_TOKEN_CASES])
def test_id_token_with_one_thing_wrong_is_refused(site: Site, case: str, check: str | None) -> None:
    account = site.account("tok")
    subject = f"forged-{case}-{secrets.token_hex(3)}"
    with browser(site.a) as client:
        authorize = start(client).headers["location"]
        nonce = query_of(authorize)["nonce"]
        callback = sign_in_at_provider(
            client, authorize, account, stop_at=f"{site.a.url}/.gateway/oidc/corp/callback"
        )
        # The provider's token endpoint hands out this token instead of its own (its test switch).
        site.op.next_id_token(_forged(site, case, nonce, subject))
        resp = client.get(callback.headers["location"])
        session = cookie(client)
    accounts = site.rows(
        "SELECT users.* FROM users JOIN identity_links ON identity_links.user_id = users.id "
        "WHERE identity_links.subject = ?",
        subject,
    )
    if check is None:
        assert resp.status_code == 302, resp.text
        assert session is not None
        assert len(accounts) == 1
        return
    assert resp.status_code == 401, resp.text
    assert "The sign-in could not be completed" in resp.text
    assert "oidc-token-invalid" in resp.text
    assert session is None
    assert accounts == []  # nothing half-created
    failure = [e for e in site.audit("signin.oidc") if e["outcome"] == "failure"][-1]
    assert failure["details"]["check"] == check, failure


# -- errors from the provider, and a provider that is down ------------------------------------------


def test_access_denied_at_the_provider_is_shown_plainly(site: Site) -> None:
    before = len([e for e in site.audit("signin.oidc") if e["outcome"] == "failure"])
    with browser(site.a) as client:
        authorize = start(client, rd="/after").headers["location"]
        page = client.get(authorize, follow_redirects=True)
        assert page.status_code == 200
        cancel = re.search(r'id="cancel" href="([^"]+)"', page.text)
        assert cancel
        resp = client.get(f"{site.op.issuer}{cancel.group(1)}")
        while resp.status_code in (302, 303) and not resp.headers["location"].startswith(site.a.url):
            resp = client.get(httpx.URL(str(resp.url)).join(resp.headers["location"]))
        assert query_of(resp.headers["location"])["error"] == "access_denied"
        resp = client.get(resp.headers["location"])
        assert resp.status_code == 403
        assert "You were not signed in" in resp.text
        assert "cancelled or refused" in resp.text
        assert "access_denied: End-User aborted interaction" in resp.text
        assert f'href="/.gateway/oidc/corp/start?rd={quote("/after", safe="")}"' in resp.text
        assert cookie(client) is None
        # Anyone can craft an error callback: without this browser's flow the provider's text is not shown.
        resp = client.get(
            "/.gateway/oidc/corp/callback",
            params={
                "error": "access_denied",
                "error_description": "Call 555-0100 to unlock",
                "state": "y" * 43,
            },
        )
        assert resp.status_code == 403
        assert "555-0100" not in resp.text
    # The refusal of this browser's own sign-in is recorded; the crafted callbacks are not (an attack
    # run: any page's <img> made its visitors' browsers write a chained record and a security event).
    recorded = [e for e in site.audit("signin.oidc") if e["outcome"] == "failure"]
    assert [e["details"]["flow_valid"] for e in recorded[before:]] == [True]
    with browser(site.a) as client:
        for attempt in range(5):
            crafted = client.get(
                "/.gateway/oidc/corp/callback", params={"error": "access_denied", "state": f"x{attempt}"}
            )
            assert crafted.status_code == 403
    assert [e for e in site.audit("signin.oidc") if e["outcome"] == "failure"] == recorded


def test_provider_down_at_sign_in_shows_a_retry_page_and_existing_sessions_keep_working(site: Site) -> None:
    account = site.account("eve")
    with browser(site.a) as client:
        assert sign_in(site, client, account).status_code == 302
        existing = cookie(client)
        assert existing is not None
        resp = client.get("/.gateway/oidc/down/start", params={"rd": "/x"})
        assert resp.status_code == 503
        assert resp.headers["content-type"].startswith("text/html")
        assert "is not answering" in resp.text
        assert 'href="/.gateway/oidc/down/start?rd=%2Fx"' in resp.text
        assert "Try again" in resp.text
        assert cookie(client) == existing
    assert echo_headers(site.a, existing, host="localhost") is not None


def test_another_site_cannot_start_a_provider_sign_in_over_a_signed_in_browser(site: Site) -> None:
    """Login CSRF, from an attack run: a link on another site to the start page signed the browser's
    own session out and signed it in as whoever was signed in at the provider (no token, no click).
    A signed-in browser sent here by another site goes on with its own session; the sign-in page's
    own button (same-origin) and a typed address still start one."""
    account = site.account("gus")
    with browser(site.a) as client:
        assert sign_in(site, client, account).status_code == 302
        existing = cookie(client)
        assert existing is not None
        for fetch_site in ("cross-site", "same-site"):
            resp = client.get("/.gateway/oidc/corp/start", headers={"Sec-Fetch-Site": fetch_site})
            assert resp.status_code == 302, resp.text
            assert resp.headers["location"].startswith("/.gateway/login"), resp.headers
            assert cookie(client) == existing
        assert echo_headers(site.a, existing, host="localhost") is not None
        for fetch_site in ("same-origin", "none"):
            resp = client.get("/.gateway/oidc/corp/start", headers={"Sec-Fetch-Site": fetch_site})
            assert resp.status_code == 302, resp.text
            assert resp.headers["location"].startswith(site.op.issuer), resp.headers
    with browser(site.a) as fresh:  # signed out: another site's link starts a sign-in as before
        resp = fresh.get("/.gateway/oidc/corp/start", headers={"Sec-Fetch-Site": "cross-site"})
        assert resp.status_code == 302, resp.text
        assert resp.headers["location"].startswith(site.op.issuer), resp.headers


def test_provider_failing_between_start_and_callback_creates_nothing(site: Site) -> None:
    account = person(f"fay{secrets.token_hex(3)}")
    clients = [provider_client([f"{site.a.url}/.gateway/oidc/flaky/callback"], [], None)]
    with browser(site.a) as client:
        with run_provider(
            site.tmp / "flaky", clients=clients, accounts=[account], port=site.flaky_port
        ) as flaky:
            # Just started, its first answers can take longer than its 1 s timeout on a loaded machine
            # (CI ran this beside the guard tests' CPU hogs, and the start was a 503): the gateway
            # reaches it before the test begins.
            wait_until(
                lambda: client.get("/.gateway/oidc/flaky/start").status_code == 302,
                timeout=60,
                interval=0.5,
                what="the flaky provider answering the gateway's discovery",
            )
            callback = provider_answer(site, client, account, idp="flaky", rd="/y")
            # Slower than the provider's 1 s timeout at the token endpoint: 503, nothing written.
            flaky.delay(3000)
            resp = client.get(callback)
            assert resp.status_code == 503, resp.text
            assert 'href="/.gateway/oidc/flaky/start?rd=%2Fy"' in resp.text
            flaky.delay(0)
            callback = provider_answer(site, client, account, idp="flaky")
        # Stopped now: the code exchange cannot connect.
        resp = client.get(callback)
        assert resp.status_code == 503
        assert "is not answering" in resp.text
        assert cookie(client) is None
    assert site.rows("SELECT * FROM users WHERE username = ?", account.username) == []
    assert site.rows("SELECT * FROM identity_links WHERE provider = 'flaky'") == []


def test_provider_too_slow_at_sign_in_is_a_retry_page(site: Site) -> None:
    with browser(site.a) as client:
        # The "slow" provider accepts connections and never answers: its 2 s timeout ends the wait.
        resp = client.get("/.gateway/oidc/slow/start")
        assert resp.status_code == 503
        assert "slow is not answering" in resp.text
        assert cookie(client, "gateway_oidc") is None  # nothing was started


# -- logout --------------------------------------------------------------------------------------------


def sign_out_at_provider(site: Site, client: httpx.Client) -> httpx.Response:
    """Sign out at the provider itself (its own end-session page, confirmed), as from another app."""
    page = client.get(f"{site.op.issuer}/session/end")
    assert page.status_code == 200, page.text
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text)
    assert xsrf, page.text
    return client.post(f"{site.op.issuer}/session/end/confirm", data={"xsrf": xsrf.group(1), "logout": "yes"})


def _signed_out_by_the_provider(site: Site, client: httpx.Client, account: Account, sid: str) -> None:
    """Sign out at the provider; its back-channel logout (one delivery, accepted) ends ``sid`` on A."""
    before = len(site.op.backchannel_deliveries())
    resp = sign_out_at_provider(site, client)
    assert resp.status_code in (302, 303), resp.text
    deliveries = site.op.backchannel_deliveries()[before:]
    assert [(d["accountId"], d["ok"]) for d in deliveries] == [(account.username, True)], str(deliveries)
    wait_until(lambda: refused(site.a, sid), timeout=5, interval=0.05, what="the session refused on A")


def test_back_channel_logout_through_one_replica_ends_the_session_on_every_replica(site: Site) -> None:
    account = site.account("bob")
    with browser(site.a) as client:
        assert sign_in(site, client, account).status_code == 302
        sid = cookie(client)
        assert sid is not None
        # Both replicas accept the session (shared Redis); B now also holds it in its cache.
        assert echo_headers(site.a, sid, host="localhost") is not None
        assert echo_headers(site.b, sid, host="localhost") is not None
        # The provider calls replica B (its back-channel URI) with a signed logout token for this sid.
        _signed_out_by_the_provider(site, client, account, sid)
    assert refused(site.b, sid)
    event = site.audit("signout.backchannel")[-1]
    assert event["outcome"] == "success"
    assert event["details"]["by"] == "sid"
    assert event["details"]["sessions_ended"] == 1


def test_a_session_renewed_by_signing_out_everywhere_else_is_still_ended_by_the_provider(site: Site) -> None:
    """A re-attack run: "sign out everywhere else" (also after a new password, a removed factor, new
    recovery codes) moves the session to a sign-in of its own, whose provider record stayed behind:
    the provider's back-channel logout ended nothing and the session went on."""
    account = site.account("rene")
    with browser(site.a) as client:
        assert sign_in(site, client, account).status_code == 302
        enroll_totp(client)  # a fresh second factor, which the page asks for
        resp = post_form(client, "/.gateway/account/sessions/revoke-others")
        assert resp.status_code == 303, resp.text
        sid = cookie(client)
        assert sid is not None
        assert echo_headers(site.a, sid, host="localhost") is not None
        _signed_out_by_the_provider(site, client, account, sid)
    assert site.audit("signout.backchannel")[-1]["details"]["sessions_ended"] == 1


def test_sign_out_also_signs_out_at_the_provider(site: Site) -> None:
    account = site.account("liv")
    with browser(site.a) as client:
        assert sign_in(site, client, account).status_code == 302
        sid = cookie(client)
        assert sid is not None
        resp = post_form(client, "/.gateway/logout")
        assert resp.status_code == 303
        end_session = resp.headers["location"]
        assert end_session.startswith(f"{site.op.issuer}/session/end?")
        params = query_of(end_session)
        assert params["post_logout_redirect_uri"] == f"{site.a.url}/.gateway/oidc/corp/logged-out"
        assert params["client_id"] == CLIENT_ID
        assert params["id_token_hint"].count(".") == 2
        assert refused(site.a, sid)  # signed out here before going to the provider
        # The provider asks for confirmation, then returns to the gateway's "signed out" page.
        page = client.get(end_session)
        xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text)
        assert xsrf, page.text
        resp = client.post(
            f"{site.op.issuer}/session/end/confirm", data={"xsrf": xsrf.group(1), "logout": "yes"}
        )
        while resp.status_code in (302, 303) and not resp.headers["location"].startswith(site.a.url):
            resp = client.get(httpx.URL(str(resp.url)).join(resp.headers["location"]))
        assert resp.headers["location"] == f"{site.a.url}/.gateway/oidc/corp/logged-out"
        done = client.get(resp.headers["location"])
        assert done.status_code == 200
        assert "You are signed out" in done.text
        # The provider session is gone too: the next sign-in asks for the password again.
        authorize = start(client).headers["location"]
        page = client.get(authorize, follow_redirects=True)
        assert 'name="password"' in page.text


def _logout_token(site: Site, **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": site.op.issuer,
        "aud": CLIENT_ID,
        "iat": int(time.time()),
        "jti": secrets.token_hex(16),
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


LOGOUT_CASES: list[tuple[str, dict[str, Any]]] = [
    ("nonce", {"nonce": "n"}),
    ("no-events", {"events": None}),
    ("wrong-event", {"events": {"http://schemas.openid.net/event/other": {}}}),
    ("aud", {"aud": "another-client"}),
    ("iss", {"iss": "http://127.0.0.1:1"}),
    ("no-jti", {"jti": None}),
    ("no-sub-or-sid", {"sub": None, "sid": None}),
    ("old", {"iat": int(time.time()) - 3600}),
]


def test_logout_tokens_are_checked_and_work_once(site: Site) -> None:
    account = site.account("kim")
    with browser(site.a) as client:
        assert sign_in(site, client, account).status_code == 302
        sid = cookie(client)
    assert sid is not None
    endpoint = f"{site.a.url}/.gateway/oidc/corp/backchannel-logout"

    def send(token: str) -> httpx.Response:
        return httpx.post(endpoint, data={"logout_token": token}, timeout=30)

    good = _logout_token(site, sub=account.username)
    header = {"typ": "logout+jwt"}
    refusals: dict[str, int] = {}
    for name, change in LOGOUT_CASES:
        resp = send(site.op.sign({**good, "jti": secrets.token_hex(8), **change}, header=header))
        refusals[name] = resp.status_code
    resp = send(_unsigned({**good, "jti": secrets.token_hex(8)}))
    refusals["alg-none"] = resp.status_code
    assert refusals == dict.fromkeys(refusals, 400)
    assert echo_headers(site.a, sid, host="localhost") is not None  # none of them ended anything

    token = site.op.sign(good, header=header)
    resp = send(token)
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    wait_until(lambda: refused(site.a, sid), timeout=5, interval=0.05, what="refusal")
    replay = send(token)
    assert replay.status_code == 400
    assert "already used" in replay.json()["error_description"]
    # Without a form body, or for a provider that is not configured.
    assert httpx.post(endpoint, data={}, timeout=30).status_code == 400
    assert (
        httpx.post(
            f"{site.a.url}/.gateway/oidc/nope/backchannel-logout", data={"logout_token": token}
        ).status_code
        == 404
    )


# -- identity mapping ----------------------------------------------------------------------------------


def test_unverified_email_is_never_used_to_find_or_create_an_account(site: Site) -> None:
    local = f"loc{secrets.token_hex(3)}"
    email = f"{local}@corp.test"
    add_user(site.a.config_path, local, "amber quarry lantern voyage", "--email", email)
    impostor = site.account("imp", verified=False, email=email)
    with browser(site.a) as client:
        assert sign_in(site, client, impostor).status_code == 302
        sid = cookie(client)
    assert sid is not None
    headers = echo_headers(site.a, sid, host="localhost")
    assert headers is not None
    assert headers["x-gateway-user"] == impostor.username  # a new account, not the local one
    assert headers["x-gateway-email"] == ""
    (created,) = site.rows("SELECT * FROM users WHERE username = ?", impostor.username)
    assert created["email"] is None
    assert (
        site.rows(
            "SELECT * FROM identity_links WHERE user_id = (SELECT id FROM users WHERE username = ?)", local
        )
        == []
    )


def test_a_verified_email_of_an_existing_account_is_not_linked_without_permission(site: Site) -> None:
    local = f"own{secrets.token_hex(3)}"
    email = f"{local}@corp.test"
    add_user(site.a.config_path, local, "amber quarry lantern voyage", "--email", email)
    namesake = site.account("nam", email=email)
    with browser(site.a) as client:
        resp = sign_in(site, client, namesake)
        assert resp.status_code == 403
        assert "An account with your email address already exists" in resp.text
        assert cookie(client) is None
    assert site.rows("SELECT * FROM users WHERE username = ?", namesake.username) == []


def test_pre_provisioned_accounts_are_linked_by_verified_email_and_others_refused(site: Site) -> None:
    local = f"pro{secrets.token_hex(3)}"
    add_user(
        site.a.config_path,
        local,
        "amber quarry lantern voyage",
        "--email",
        f"{local}@corp.test",
        "--role",
        "ops",
    )
    person_at_idp = site.account("idp", email=f"{local}@corp.test", groups=["admins"])
    for _ in range(2):  # linked the first time, found by the link the second
        with browser(site.a) as client:
            assert sign_in(site, client, person_at_idp, idp="pre").status_code == 302
            sid = cookie(client)
        assert sid is not None
        headers = echo_headers(site.a, sid, host="localhost")
        assert headers is not None
        assert headers["x-gateway-user"] == local
        assert headers["x-gateway-roles"] == "ops"  # no role_map on this provider
    links = site.rows(
        "SELECT * FROM identity_links WHERE provider = 'pre' AND subject = ?", person_at_idp.username
    )
    assert len(links) == 1
    stranger = site.account("str")
    with browser(site.a) as client:
        resp = sign_in(site, client, stranger, idp="pre")
        assert resp.status_code == 403
        assert "There is no account for you here yet" in resp.text
    assert site.rows("SELECT * FROM users WHERE username = ?", stranger.username) == []


def test_a_forced_password_change_holds_after_a_provider_sign_in(site: Site) -> None:
    """An administrator's one-time password is replaced first, whichever way the person signs in:
    left valid, whoever else read it could set the password later."""
    local = f"otp{secrets.token_hex(3)}"
    add_user(
        site.a.config_path,
        local,
        "amber quarry lantern voyage",
        "--email",
        f"{local}@corp.test",
        "--must-change-password",
    )
    person_at_idp = site.account("idp", email=f"{local}@corp.test")
    with browser(site.a) as client:
        resp = sign_in(site, client, person_at_idp, idp="pre")
        assert resp.status_code == 302
        assert resp.headers["location"].startswith("/.gateway/account/password")
        sid = cookie(client)
    assert sid is not None
    held = httpx.get(
        f"{site.a.url}/probe",
        headers={"Host": "localhost", "Accept": "application/json", "Cookie": f"{SESSION_COOKIE}={sid}"},
        timeout=30,
    )
    assert (held.status_code, held.json()["error"]) == (403, "password-change-required")


def test_a_provider_sign_in_names_no_known_device(site: Site) -> None:
    """An attack run: every provider round trip (silent, on the provider's single sign-on) gave the
    browser a new known-device cookie, each its own allowance of guesses at the local password. A
    provider's answer proves nothing of the account's own credentials: no device cookie from it."""
    account = site.account("sso")
    with browser(site.a) as client:
        for _ in range(2):
            client.cookies.clear()
            answer = sign_in(site, client, account)
            assert answer.status_code == 302, answer.text
            assert cookie(client) is not None
            assert "gateway_device" not in answer.headers.get("set-cookie", ""), answer.headers


def test_a_lost_device_reset_is_not_finished_through_the_provider(site: Site) -> None:
    """An attack run: after `gateway user reset-mfa NAME --invite` on an account linked to a provider,
    whoever could sign in at the provider (a phished provider password, the lost device's still-live
    provider session) signed in and enrolled an authenticator app of their own before the person
    opened the invitation. While the invitation is pending, a provider sign-in that needs a first
    factor is refused and says what to do; the invitation link still works."""
    account = site.account("lost")
    with browser(site.a) as client:
        assert sign_in(site, client, account).status_code == 302
        enroll_totp(client)
    name = site.rows("SELECT username FROM users WHERE email = ?", f"{account.username}@corp.test")[0][0]
    reset = run_cli("user", "reset-mfa", name, "--invite", "--config", str(site.a.config_path))
    assert reset.returncode == 0, reset.stdout + reset.stderr
    link = re.search(r"https?://\S+/\.gateway/invite/\S+", reset.stdout)
    assert link, reset.stdout

    with browser(site.a) as intruder:
        refused_at = sign_in(site, intruder, account)
        assert refused_at.status_code == 403, refused_at.text
        assert "invitation link" in refused_at.text
        assert cookie(intruder) is None
        enroll = intruder.get("/.gateway/account/enroll")
        assert enroll.status_code != 200
    assert site.audit("signin.oidc")[-1]["details"]["error"] == "invitation-pending"
    invite = httpx.get(link.group(0).replace("http://localhost", site.a.url), timeout=30)
    assert invite.status_code == 200, invite.text


def test_a_login_hint_in_a_providers_domain_goes_straight_to_it(site: Site) -> None:
    with browser(site.a) as client:
        resp = client.get("/.gateway/login", params={"login_hint": "zoe@corp.test", "rd": "/z"})
        assert resp.status_code == 302
        assert resp.headers["location"] == "/.gateway/oidc/corp/start?rd=%2Fz&login_hint=zoe%40corp.test"
        authorize = client.get(resp.headers["location"])
        assert query_of(authorize.headers["location"])["login_hint"] == "zoe@corp.test"
        # Typed into the sign-in form instead: the password is not looked at.
        resp = post_form(client, "/.gateway/login", {"username": "Zoe@Corp.Test", "password": "x", "rd": ""})
        assert resp.status_code == 302
        assert resp.headers["location"].startswith("/.gateway/oidc/corp/start?")
        # Another domain stays on the page.
        resp = client.get("/.gateway/login", params={"login_hint": "zoe@elsewhere.test"})
        assert resp.status_code == 200
        assert 'value="zoe@elsewhere.test"' in resp.text
        assert (
            client.get("/.gateway/login", params={"idp": "mfa"})
            .headers["location"]
            .startswith("/.gateway/oidc/mfa/start?")
        )


def test_claims_can_also_come_from_userinfo(site: Site) -> None:
    account = site.account("uma")
    with browser(site.a) as client:
        assert sign_in(site, client, account, idp="info").status_code == 302
        sid = cookie(client)
        # A binding cookie that is not one (tampered, or from elsewhere) is replaced, not trusted.
        client.cookies.set("gateway_oidc", "not a binding!", domain="127.0.0.1", path="/")
        assert start(client, "info").status_code == 302
        assert cookie(client, "gateway_oidc") != "not a binding!"
    assert sid is not None
    headers = echo_headers(site.a, sid, host="localhost")
    assert headers is not None
    assert (headers["x-gateway-user"], headers["x-gateway-roles"]) == (account.username, "staff")
