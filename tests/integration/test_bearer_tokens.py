"""Bearer authentication with the gateway's API tokens, against real gateway processes.

On the embedded default with two workers (SQLite, the node's state file), service accounts and tokens
made with the real CLI:

* a token works on its route (200; the echo app sees ``X-Gateway-User``, ``X-Gateway-Auth: bearer``,
  the roles and a signed assertion, and never the token), not on a route it is not scoped to (403
  ``insufficient_scope``), and the policy decides with the ``client:`` principal and the roles;
* malformed, unknown and expired tokens are 401 with the RFC 6750 challenge; a token-only route
  without a token gets the bare challenge; a token-only route ignores a valid session cookie; with a
  cookie and a token the token alone decides;
* a revoked token is refused by both workers, and on a second replica sharing PostgreSQL and Redis;
* creation, use, refusal and revocation are in the audit trail; bad CLI input is exit 2;
* the admin API (``/api/service-accounts``, ``/api/tokens``) with a real signed-in admin: the token
  once, bad input 400 and audited, revocation effective, no access without the admin role.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from admin.console.render import CONSOLE_CSP
from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    request_on_fresh_connection,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import SESSION_COOKIE, browser, cookie, login
from tests.integration.test_admin_api import wait_admin_healthy
from tests.integration.test_signin_http import enroll_totp
from tests.support.pg import fresh_database

JSON = {"Accept": "application/json"}
POLICY = """\
p, authenticated, *, /*, *, allow
p, client:ci, both, /*, GET, allow
p, client:ci, api, /*, GET, allow
p, client:ci, other, /*, GET, allow
p, deployers, api, /api/deploy, POST, allow
"""


@dataclass
class Site:
    gw: Gateway
    tmp: Path
    session: str
    ci_token: str
    ci_id: str
    admin_port: int = 0

    def cli(self, *args: str) -> tuple[int, str, str]:
        done = run_cli(*args, "--config", str(self.gw.config_path))
        return done.returncode, done.stdout, done.stderr

    def token(self, account: str, *routes: str, expires: str = "30d") -> tuple[str, str]:
        flags = [arg for route in routes for arg in ("--route", route)]
        code, out, err = self.cli("token", "create", account, *flags, "--expires", expires)
        assert code == 0, out + err
        token = out.strip()
        return token, token[:12]

    def rows(self) -> tuple[int, int]:
        with sqlite3.connect(self.tmp / "data" / "gateway.db") as conn:
            accounts = conn.execute("SELECT count(*) FROM service_accounts").fetchone()[0]
            tokens = conn.execute("SELECT count(*) FROM api_tokens").fetchone()[0]
        return accounts, tokens

    def audit(self, kind: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.tmp / "data" / "gateway.db") as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM audit_events WHERE kind = ? ORDER BY id", (kind,)).fetchall()
        return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


def routes(echo_url: str) -> list[dict[str, Any]]:
    def route(name: str, path: str, auth: list[str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "host": "127.0.0.1", "path": path, "upstreams": [echo_url]}
        out["mfa"] = "none"
        if auth is not None:
            out["auth"] = auth
        return out

    return [
        route("api", "/api", ["bearer"]),
        route("both", "/both", ["session", "bearer"]),
        route("other", "/other", ["session", "bearer"]),
        route("web", "/", None),
    ]


def config(tmp: Path, port: int, echo_url: str, **extra: Any) -> dict[str, Any]:
    (tmp / "policy.csv").parent.mkdir(parents=True, exist_ok=True)
    (tmp / "policy.csv").write_text(POLICY)
    base = gateway_config(
        tmp,
        port,
        routes(echo_url),
        session={"insecure_cookies": True},
        trusted_proxies=["127.0.0.1/32"],  # the forward-auth test is its own proxy
        policy={"file": str(tmp / "policy.csv")},
        threat={"enabled": False},
        tokens={"max_lifetime": "365d"},
    )
    return {**base, **extra}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("bearer")
    port, admin_port = free_port(), free_port()
    extra = {
        "server": {"workers": 2},
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "logging": {"sinks": [{"type": "file", "path": str(tmp / "access.log")}], "flush_timeout": "1s"},
    }
    with run_echo() as echo, run_gateway(tmp, config(tmp, port, echo.url, **extra)) as gw:
        wait_admin_healthy(admin_port, gw.proc)
        add_user(gw.config_path, "alice", "amber quarry lantern voyage")
        add_user(gw.config_path, "boss", "amber quarry lantern voyage", "--role", "admin")
        with browser(gw) as client:
            assert login(client, "alice").status_code in (302, 303)
            session = cookie(client)
        assert session
        done = run_cli(
            "service-account", "create", "ci", "--role", "deployers", "--description", "the CI pipeline",
            "--config", str(gw.config_path),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        site = Site(gw, tmp, session, "", "", admin_port)
        site.ci_token, site.ci_id = site.token("ci", "api", "both")
        yield site


def call(
    site: Site, path: str, *, token: str | None = None, session: str | None = None, method: str = "GET"
) -> httpx.Response:
    headers = {"Host": "127.0.0.1", **JSON}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if session is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={session}"
    return httpx.request(method, f"{site.gw.url}{path}", headers=headers, follow_redirects=False, timeout=30)


def seen(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 200, resp.text
    return {k.lower(): v for k, v in resp.json()["headers"]}


def challenge(resp: httpx.Response) -> str:
    value = str(resp.headers.get("www-authenticate", ""))
    assert value.startswith('Bearer realm="gateway"'), resp.headers
    return value


def test_a_token_works_on_its_route_and_the_app_sees_the_client(site: Site) -> None:
    assert site.ci_token.startswith("gwt_")
    assert len(site.ci_token) == 47
    headers = seen(call(site, "/api/things", token=site.ci_token))
    assert headers["x-gateway-user"] == "ci"
    assert headers["x-gateway-auth"] == "bearer"
    assert headers["x-gateway-roles"] == "deployers"
    claims = json.loads(_b64(headers["x-gateway-assertion"].split(".")[1]))
    assert (claims["sub"], claims["client_id"], claims["aud"], claims["amr"]) == ("ci", "ci", "api", [])
    # The token is for the gateway only: the application never receives it.
    assert "authorization" not in headers
    assert site.ci_token not in call(site, "/api/things", token=site.ci_token).text


def test_the_policy_decides_with_the_client_principal_and_its_roles(site: Site) -> None:
    # POST /api/deploy: allowed through the role; POST elsewhere: no rule allows it.
    assert call(site, "/api/deploy", token=site.ci_token, method="POST").status_code == 200
    denied = call(site, "/api/other", token=site.ci_token, method="POST")
    assert denied.status_code == 403
    assert denied.json()["error"] == "no-matching-rule"
    assert 'error="insufficient_scope"' in challenge(denied)
    # A client with no rule of its own: the "authenticated" rule of people does not apply to it.
    code, out, err = site.cli("service-account", "create", "stranger")
    assert code == 0, out + err
    token, _ = site.token("stranger", "api", "both")
    assert call(site, "/both/x", token=token).status_code == 403
    assert call(site, "/both/x", session=site.session).status_code == 200


@pytest.mark.parametrize("query", ["_method=DELETE", "_method=delete", "%5Fmethod=PUT", "a=1&_method=PATCH"])
def test_a_post_the_app_would_run_as_another_method_needs_that_method_too(site: Site, query: str) -> None:
    """A re-attack run: Laravel, Symfony and Rails run a POST as the method `_method` names, so
    `POST ...?_method=DELETE` deleted where the policy allowed only POST. The named method is decided
    too (the client may POST /api/deploy, nothing else there)."""
    assert call(site, "/api/deploy", token=site.ci_token, method="POST").status_code == 200
    refused = call(site, f"/api/deploy?{query}", token=site.ci_token, method="POST")
    assert refused.status_code == 403, refused.text
    assert "asks the app to run it as" in refused.json()["message"]
    # Naming POST itself changes nothing; GET with _method is not overridden by those frameworks.
    assert call(site, "/api/deploy?_method=POST", token=site.ci_token, method="POST").status_code == 200
    assert call(site, "/api/x?_method=DELETE", token=site.ci_token).status_code == 200


def test_a_token_is_refused_on_a_route_it_is_not_scoped_to(site: Site) -> None:
    resp = call(site, "/other/x", token=site.ci_token)
    assert resp.status_code == 403
    assert resp.json()["error"] == "insufficient-scope"
    assert 'error="insufficient_scope"' in challenge(resp)
    refused = wait_until(
        lambda: [
            r for r in site.audit("token.refused") if r["details"].get("reason") == "route-out-of-scope"
        ],
        timeout=10,
        what="the refusal audited",
    )
    assert all(r["details"]["token"] == site.ci_id for r in refused)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Bearer  two  spaces",
        "Bearer a b",
        "Bearer gwt_short",
        "Bearer gwt_" + "A" * 43,
        "bearer to$ken",
    ],
)
def test_malformed_and_unknown_tokens_are_401_with_the_challenge(site: Site, authorization: str) -> None:
    headers = {"Host": "127.0.0.1", **JSON, "Authorization": authorization}
    resp = httpx.get(f"{site.gw.url}/api/x", headers=headers, timeout=30)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid-token"
    assert 'error="invalid_token"' in challenge(resp)


def test_no_token_on_a_token_only_route_is_the_bare_challenge(site: Site) -> None:
    resp = call(site, "/api/x")
    assert resp.status_code == 401
    assert challenge(resp) == 'Bearer realm="gateway"'
    two = httpx.get(
        f"{site.gw.url}/api/x",
        headers=[
            ("Host", "127.0.0.1"),
            ("Authorization", f"Bearer {site.ci_token}"),
            ("Authorization", "Basic eA=="),
        ],
        timeout=30,
    )
    assert two.status_code == 400
    assert 'error="invalid_request"' in challenge(two)


def test_a_token_only_route_ignores_a_valid_session_cookie(site: Site) -> None:
    assert call(site, "/both/x", session=site.session).status_code == 200
    resp = call(site, "/api/x", session=site.session)
    assert resp.status_code == 401
    assert "x-gateway-user" not in resp.text


def test_with_a_cookie_and_a_token_the_token_alone_decides(site: Site) -> None:
    headers = seen(call(site, "/both/x", token=site.ci_token, session=site.session))
    assert headers["x-gateway-user"] == "ci"
    assert headers["x-gateway-auth"] == "bearer"
    # A bad token with a good cookie: refused, the cookie is not a fallback.
    bad = call(site, "/both/x", token="gwt_" + "B" * 43, session=site.session)
    assert bad.status_code == 401
    # A session request on a session route: today's identity headers, no bearer marker.
    people = seen(call(site, "/both/x", session=site.session))
    assert people["x-gateway-user"] == "alice"
    assert "x-gateway-auth" not in people


def test_a_token_sent_along_with_a_session_never_reaches_the_app(site: Site) -> None:
    """An attack run: a client that sends its token with every request to the host handed it to the
    app of the route it browsed with a session; that app replayed it on the token's route."""
    headers = seen(call(site, "/web/page", token=site.ci_token, session=site.session))
    assert headers["x-gateway-user"] == "alice"  # the session decided
    assert "authorization" not in headers


def test_an_expired_token_is_401(site: Site) -> None:
    token, _ = site.token("ci", "api", expires="2s")
    wait_until(lambda: call(site, "/api/x", token=token).status_code == 401, timeout=15, what="expiry")
    resp = call(site, "/api/x", token=token)
    assert "expired" in challenge(resp)


def _both_workers(site: Site, token: str, want: int) -> None:
    seen_pids: set[int] = set()

    def both() -> bool:
        status, _, _, pid = request_on_fresh_connection(
            site.gw.port, "GET", "/api/x", headers={**JSON, "Authorization": f"Bearer {token}"}
        )
        if status == want:
            seen_pids.add(pid)
        return len(seen_pids) >= 2

    # The cache trusts an entry for 1 s and the revocation broadcast empties it at once; the
    # deadline only bounds a broken test run.
    wait_until(both, timeout=10, interval=0.02, what=f"both workers answering {want}")


def test_a_revoked_token_is_refused_by_both_workers(site: Site) -> None:
    assert len(site.gw.worker_pids()) == 3  # two workers and the admin listener
    token, token_id = site.token("ci", "api")
    _both_workers(site, token, 200)  # both workers have it cached now
    code, out, err = site.cli("token", "revoke", token_id)
    assert code == 0, out + err
    _both_workers(site, token, 401)
    listed = json.loads(site.cli("token", "list", "ci", "--json")[1])
    assert {t["id"]: t["state"] for t in listed}[token_id] == "revoked"
    revoked = site.audit("token.revoked")
    assert revoked[-1]["details"]["token"] == token_id
    assert revoked[-1]["actor"].startswith("cli")


def test_creation_and_use_are_audited_without_the_token(site: Site) -> None:
    assert call(site, "/api/x", token=site.ci_token).status_code == 200
    created = site.audit("token.created")
    assert created
    assert created[0]["subject"] == "client:ci"
    # Written in the background; other tests' tokens may have been used first.
    wait_until(
        lambda: any(u["details"]["token"] == site.ci_id for u in site.audit("token.used")),
        timeout=10,
        what="token.used of ci's token",
    )
    with sqlite3.connect(site.tmp / "data" / "gateway.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert site.ci_token not in dump
    assert site.ci_token not in site.gw.log_path.read_text(errors="replace")


def test_forward_auth_decides_bearer_requests_too(site: Site) -> None:
    def ask(**extra: str) -> httpx.Response:
        headers = {
            "Host": "127.0.0.1", "X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "127.0.0.1", "X-Forwarded-Uri": "/api/x", **JSON, **extra,
        }  # fmt: skip
        return httpx.get(f"{site.gw.url}/.gateway/auth", headers=headers, timeout=30)

    allowed = ask(Authorization=f"Bearer {site.ci_token}")
    assert allowed.status_code == 200
    assert (allowed.headers["x-gateway-user"], allowed.headers["x-gateway-auth"]) == ("ci", "bearer")
    refused = ask(Authorization="Bearer gwt_" + "C" * 43)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in challenge(refused)
    assert ask(Cookie=f"{SESSION_COOKIE}={site.session}").status_code == 401


def test_the_access_log_tells_tokens_from_sessions(site: Site) -> None:
    assert call(site, "/both/log-probe", token=site.ci_token).status_code == 200
    assert call(site, "/both/log-probe", session=site.session).status_code == 200

    def probes() -> dict[str, str] | None:
        path = site.tmp / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        docs = [json.loads(line) for line in lines if "log-probe" in line]
        found = {d["gateway"]["auth"]: d.get("user", {}).get("name", "") for d in docs}
        return found if {"bearer", "session"} <= found.keys() else None

    found = wait_until(probes, timeout=15, what="both requests in the access log")
    # The client is named as one: never mistaken for a person called "ci".
    assert found == {"bearer": "client:ci", "session": "alice"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("token", "create", "ci", "--route", "nope", "--expires", "1d"), "no route"),
        (("token", "create", "ci", "--route", "api", "--expires", "400d"), "max_lifetime"),
        (("token", "create", "ghost", "--route", "api", "--expires", "1d"), "No service account"),
        (("token", "revoke", "not-an-id"), "neither a token id"),
        (("service-account", "create", "Bad Name!"), "not a valid"),
        (("service-account", "create", "ci"), "exists"),
    ],
)
def test_bad_cli_input_is_exit_2_and_changes_nothing(site: Site, args: tuple[str, ...], needle: str) -> None:
    before = site.rows()
    code, out, err = site.cli(*args)
    assert code == 2, out + err
    assert needle in err
    assert site.rows() == before


# -- the admin API ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def boss(site: Site) -> Iterator[httpx.Client]:
    client = browser(site.gw)
    assert login(client, "boss").status_code in (302, 303)
    enroll_totp(client)  # a fresh second factor: revoking is destructive
    yield client
    client.close()


def admin_api(
    site: Site, client: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    origin = f"http://127.0.0.1:{site.admin_port}"
    headers = {"Origin": origin, "Sec-Fetch-Site": "same-origin", **JSON}
    if body is None and method != "GET":
        body = {}  # the admin API takes JSON bodies only (415 otherwise)
    return client.request(method, f"{origin}{path}", json=body, headers=headers)


def test_the_admin_api_manages_accounts_and_tokens(site: Site, boss: httpx.Client) -> None:
    made = admin_api(
        site, boss, "POST", "/api/service-accounts", {"name": "deploy-bot", "roles": ["deployers"]}
    )
    assert made.status_code == 201, made.text
    assert made.json()["roles"] == ["deployers"]
    assert admin_api(site, boss, "POST", "/api/service-accounts", {"name": "deploy-bot"}).status_code == 409
    bad = admin_api(site, boss, "POST", "/api/service-accounts", {"name": "Bad Name!"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "machine-invalid"
    for body in (
        {"account": "deploy-bot", "routes": ["nope"], "expires": "1d"},
        {"account": "deploy-bot", "routes": ["api"], "expires": "400d"},
        {"account": "deploy-bot", "routes": ["api"], "expires": "soon"},
    ):
        refused = admin_api(site, boss, "POST", "/api/tokens", body)
        assert refused.status_code == 400, refused.text
    assert admin_api(site, boss, "GET", "/api/tokens?account=deploy-bot").json() == []
    issued = admin_api(
        site, boss, "POST", "/api/tokens", {"account": "deploy-bot", "routes": ["api"], "expires": "1d"}
    )
    assert issued.status_code == 201, issued.text
    token, token_id = issued.json()["token"], issued.json()["details"]["id"]
    listed = admin_api(site, boss, "GET", "/api/tokens?account=deploy-bot")
    assert [t["id"] for t in listed.json()] == [token_id]
    assert token not in listed.text
    # Its role allows POST /api/deploy (the policy's deployers rule).
    assert seen(call(site, "/api/deploy", token=token, method="POST"))["x-gateway-user"] == "deploy-bot"
    revoked = admin_api(site, boss, "POST", f"/api/tokens/{token_id}/revoke")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked"
    wait_until(
        lambda: call(site, "/api/x", token=token).status_code == 401,
        timeout=10,
        interval=0.02,
        what="revoked",
    )
    deleted = admin_api(site, boss, "DELETE", "/api/service-accounts/deploy-bot")
    assert deleted.status_code == 200, deleted.text
    assert "deploy-bot" not in [
        a["name"] for a in admin_api(site, boss, "GET", "/api/service-accounts").json()
    ]
    assert any(r["actor"] == "user:boss" for r in site.audit("token.created"))
    assert any(r["actor"] == "user:boss" for r in site.audit("token.revoked"))
    assert site.audit("admin.token.create")[0]["outcome"] == "failure"
    assert site.audit("service_account.deleted")[-1]["subject"] == "client:deploy-bot"


def test_the_admin_api_needs_an_admin(site: Site) -> None:
    with browser(site.gw) as alice:
        alice.cookies.set(SESSION_COOKIE, site.session)
        assert admin_api(site, alice, "GET", "/api/tokens").status_code == 403
        refused = admin_api(site, alice, "POST", f"/api/tokens/{site.ci_id}/revoke")
        assert refused.status_code == 403
    with httpx.Client() as anonymous:
        assert admin_api(site, anonymous, "GET", "/api/service-accounts").status_code == 401
    assert call(site, "/api/x", token=site.ci_token).status_code == 200


def test_the_machine_clients_page_needs_an_admin_and_never_shows_a_token(
    site: Site, boss: httpx.Client
) -> None:
    """The console's page (``/machine-clients``): a person without the admin role gets 403, no session
    a sign-in redirect; the admin sees the accounts and token ids under the console's CSP, never a token."""
    page = f"http://127.0.0.1:{site.admin_port}/machine-clients"
    html = {"Accept": "text/html"}
    with httpx.Client() as anonymous:
        answer = anonymous.get(page, headers=html, follow_redirects=False)
        assert answer.status_code == 303
        assert "/.gateway/login" in answer.headers["location"]
    with browser(site.gw) as alice:
        alice.cookies.set(SESSION_COOKIE, site.session)
        assert alice.get(page, headers=html, follow_redirects=False).status_code == 403
    shown = boss.get(page, headers=html)
    assert shown.status_code == 200, shown.text
    assert shown.headers["content-security-policy"] == CONSOLE_CSP.decode()
    assert '<a href="/machine-clients" aria-current="page">Machine clients</a>' in shown.text
    assert f"<code>{site.ci_id}</code>" in shown.text
    assert site.ci_token not in shown.text
    # Which routes take tokens is said where a token is issued.
    assert "(takes no tokens yet)" in shown.text
    assert "<script>" not in shown.text
    assert " style=" not in shown.text


def _b64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.mark.peer
def test_a_token_revoked_on_one_replica_is_refused_by_the_other(tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    with fresh_database("gw_bearer") as name, run_echo() as echo:
        common: dict[str, Any] = {
            "storage": {"url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"},
            "state": {"redis_url": "redis://127.0.0.1:6379/0", "namespace": f"bearer{port_a}:"},
            "keyring": str(tmp_path / "keyring.json"),
        }
        config_a = config(tmp_path / "a", port_a, echo.url, **common)
        config_b = config(tmp_path / "b", port_b, echo.url, **common)
        (tmp_path / "a" / "gateway.yaml").write_text(yaml.safe_dump(config_a, sort_keys=False))
        for step in (("migrate",), ("keys", "init")):
            done = run_cli(*step, "--config", str(tmp_path / "a" / "gateway.yaml"))
            assert done.returncode == 0, done.stdout + done.stderr
        with run_gateway(tmp_path / "a", config_a) as gw_a, run_gateway(tmp_path / "b", config_b) as gw_b:
            done = run_cli("service-account", "create", "ci", "--config", str(gw_a.config_path))
            assert done.returncode == 0, done.stdout + done.stderr
            done = run_cli(
                "token",
                "create",
                "ci",
                "--route",
                "api",
                "--expires",
                "1d",
                "--config",
                str(gw_a.config_path),
            )
            assert done.returncode == 0, done.stdout + done.stderr
            token = done.stdout.strip()

            def on_b() -> int:
                headers = {"Host": "127.0.0.1", "Authorization": f"Bearer {token}", **JSON}
                return httpx.get(f"{gw_b.url}/api/x", headers=headers, timeout=10).status_code

            assert on_b() == 200
            done = run_cli("token", "revoke", token[:12], "--config", str(gw_a.config_path))
            assert done.returncode == 0, done.stdout + done.stderr
            wait_until(lambda: on_b() == 401, timeout=10, interval=0.02, what="replica b refusing")
