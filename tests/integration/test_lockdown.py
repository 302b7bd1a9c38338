"""Emergency lockdown against real gateway processes: switched by the CLI, the admin API and on replicas.

On the embedded default with two workers (SQLite, the node's state file) and an admin listener:

* ``gateway lockdown on --route app`` reaches both workers: a plain signed-in user gets the maintenance
  page (503, ``Retry-After``), a script the JSON 503; the route not in the list is unaffected;
* a member of the break-glass group signed in with a passkey (a software WebAuthn authenticator doing
  the real ceremony) gets through; a member signed in with an authenticator app (TOTP) does not;
* the gateway's own pages keep working; ``off`` restores; the admin API switches it too (with a
  recent second factor; unknown routes are 400 and change nothing; off only with a recent passkey, as
  an admin session of a password and an authenticator code can be phished); the audit records exist;
* attacks: path tricks, encoded paths, another Host header, the forward-auth entry and a WebSocket
  upgrade do not get past it.

On two replicas sharing Redis and PostgreSQL: switched through one replica's config, enforced on the other.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.harness import (
    ALLOW_SIGNED_IN,
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
from tests.integration.http_client import SESSION_COOKIE, browser, cookie, csrf, login, post_form
from tests.integration.test_admin_api import wait_admin_healthy
from tests.integration.test_signin_http import enroll_totp
from tests.support.pg import fresh_database
from tests.support.soft_authenticator import SoftAuthenticator

GROUP = "break-glass"
MESSAGE = "Closed while we contain an incident. Please come back later."
JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html,application/xhtml+xml"}


@dataclass
class Site:
    gw: Gateway
    admin_port: int
    db_path: Path
    cookies: dict[str, str]

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def cli(self, *args: str) -> tuple[int, str]:
        done = run_cli("lockdown", *args, "--config", str(self.gw.config_path))
        return done.returncode, done.stdout + done.stderr

    def audit(self, kind: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM audit_events WHERE kind = ? ORDER BY id", (kind,)).fetchall()
        return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


def _api_post(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(path, json=body, headers={"x-csrftoken": csrf(client), **JSON})


def sign_in_with_passkey(gw: Gateway, user: str) -> str:
    """Register a passkey, sign out, sign in again with password + passkey; returns the session id."""
    key = SoftAuthenticator(origin=gw.url)
    with browser(gw) as client:
        assert login(client, user).status_code in (302, 303)
        options = _api_post(client, "/.gateway/api/webauthn/register/options", {"discoverable": True})
        assert options.status_code == 200, options.text
        done = _api_post(
            client,
            "/.gateway/api/webauthn/register/verify",
            {"credential": json.loads(key.create(options.text)), "name": "Key"},
        )
        assert done.status_code == 200, done.text
        assert post_form(client, "/.gateway/logout").status_code == 303
    with browser(gw) as client:
        assert login(client, user).status_code in (302, 303)
        options = _api_post(client, "/.gateway/api/mfa/webauthn/options", {})
        assert options.status_code == 200, options.text
        verified = _api_post(
            client, "/.gateway/api/mfa/webauthn/verify", {"credential": json.loads(key.get(options.text))}
        )
        assert verified.status_code == 200, verified.text
        session = cookie(client)
    assert session
    return session


def sign_in_with_totp(gw: Gateway, user: str) -> str:
    with browser(gw) as client:
        assert login(client, user).status_code in (302, 303)
        enroll_totp(client)  # enrolment proves possession: the session has a fresh TOTP factor
        session = cookie(client)
    assert session
    return session


def config(tmp: Path, port: int, admin_port: int, echo_url: str, **extra: Any) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        {"name": "app", "host": "127.0.0.1", "upstreams": [echo_url], "mfa": "none", "websockets": True},
        {"name": "wiki", "host": "localhost", "upstreams": [echo_url], "mfa": "none"},
        # People and the service account ci (its token decides when it brings one).
        {
            "name": "api",
            "host": "api.test",
            "upstreams": [echo_url],
            "mfa": "none",
            "auth": ["session", "bearer"],
        },
    ]
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "policy.csv").write_text(ALLOW_SIGNED_IN.read_text() + "p, client:ci, api, /*, GET, allow\n")
    return gateway_config(
        tmp,
        port,
        routes,
        policy={"file": str(tmp / "policy.csv")},
        session={"insecure_cookies": True},
        trusted_proxies=["127.0.0.1/32"],
        admin={"listen": f"127.0.0.1:{admin_port}"},
        lockdown={
            "break_glass_group": GROUP,
            "retry_after": "2m",
            "message": MESSAGE,
            "refresh_interval": "2s",
        },
        threat={"enabled": False},
        **extra,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("lockdown")
    port, admin_port = free_port(), free_port()
    with (
        run_echo() as echo,
        run_gateway(tmp, config(tmp, port, admin_port, echo.url, server={"workers": 2})) as gw,
    ):
        wait_admin_healthy(admin_port, gw.proc)
        for user, extra in (
            ("erin", ("--role", GROUP)),
            ("tom", ("--role", GROUP)),
            ("pat", ()),
            ("boss", ("--role", "admin")),
            ("chief", ("--role", "admin")),
        ):
            add_user(gw.config_path, user, "amber quarry lantern voyage", *extra)
        cookies = {
            "erin": sign_in_with_passkey(gw, "erin"),
            "tom": sign_in_with_totp(gw, "tom"),
            "pat": sign_in_with_totp(gw, "pat"),
        }
        yield Site(gw, admin_port, tmp / "data" / "gateway.db", cookies)


def get(
    site: Site, user: str | None, path: str = "/probe", *, host: str = "127.0.0.1", **headers: str
) -> httpx.Response:
    sent = {"Host": host, **JSON, **headers}
    if user:
        sent["Cookie"] = f"{SESSION_COOKIE}={site.cookies[user]}"
    return httpx.get(f"{site.gw.url}{path}", headers=sent, follow_redirects=False, timeout=30.0)


def locked(resp: httpx.Response) -> bool:
    return (
        resp.status_code == 503
        and resp.headers.get("retry-after") == "120"
        and resp.headers["content-type"].startswith("application/json")
        and resp.json()["error"] == "lockdown"
    )


def every_worker_answers(site: Site, user: str, want: int) -> None:
    """Poll fresh connections until each of the two workers has answered ``user`` with ``want``."""
    # The master's children are the two workers and the admin listener (which has its own port).
    assert len(site.gw.worker_pids()) == 3
    seen: set[int] = set()

    def both() -> bool:
        status, _, _, pid = request_on_fresh_connection(
            site.gw.port,
            "GET",
            "/probe",
            headers={**JSON, "Cookie": f"{SESSION_COOKIE}={site.cookies[user]}"},
        )
        if status == want:
            seen.add(pid)
        return len(seen) >= 2

    wait_until(both, timeout=30, interval=0.05, what=f"both workers answering {want}")


@pytest.fixture
def lockdown_off(site: Site) -> Iterator[None]:
    yield
    code, out = site.cli("off", "--reason", "test over")
    assert code == 0, out
    wait_until(lambda: get(site, "pat").status_code == 200, timeout=30, what="lockdown off")


# -- the CLI switch on two workers -----------------------------------------------------------------


@pytest.mark.peer
def test_the_cli_locks_one_route_on_both_workers_and_only_break_glass_passkeys_pass(
    site: Site, lockdown_off: None
) -> None:
    assert get(site, "pat").status_code == 200
    code, out = site.cli("on", "--route", "app", "--reason", "credential leak drill")
    assert code == 0, out
    assert "lockdown ON for routes app" in out
    every_worker_answers(site, "pat", 503)

    # A script gets the JSON error shape; a browser the maintenance page; both 503 with Retry-After.
    resp = get(site, "pat")
    assert locked(resp)
    assert resp.json()["message"] == MESSAGE
    assert set(resp.json()) == {"error", "message", "status", "request_id"}
    page = get(site, "pat", **HTML)
    assert page.status_code == 503
    assert page.headers["retry-after"] == "120"
    assert MESSAGE in page.text
    assert "/.gateway/mfa?need=webauthn" in page.text
    # Without a session: the same page, with the sign-in link (no redirect that would leak the app).
    anonymous = get(site, None, **HTML)
    assert anonymous.status_code == 503
    assert "/.gateway/login?rd=" in anonymous.text

    # The break-glass member with a passkey passes on both workers; with TOTP only, not.
    every_worker_answers(site, "erin", 200)
    assert dict(get(site, "erin").json()["headers"])["x-gateway-user"] == "erin"
    assert locked(get(site, "tom"))

    # The route not in the list is unaffected; the gateway's own pages keep working.
    wiki = get(site, "pat", host="localhost")
    assert wiki.status_code == 200
    assert httpx.get(f"{site.gw.url}/.gateway/health", timeout=10).status_code == 200
    assert httpx.get(f"{site.gw.url}/.gateway/login", timeout=10).status_code == 200

    code, out = site.cli("status", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert status["on"] is True
    assert status["routes"] == ["app"]
    assert status["reason"] == "credential leak drill"

    code, out = site.cli("off", "--reason", "contained")
    assert code == 0, out
    every_worker_answers(site, "pat", 200)
    [on_event] = [e for e in site.audit("lockdown.on") if e["details"]["reason"] == "credential leak drill"]
    assert on_event["actor"].startswith("cli")
    assert on_event["details"]["routes"] == ["app"]
    assert any(e["details"]["reason"] == "contained" for e in site.audit("lockdown.off"))


def test_bad_input_is_exit_2_and_changes_nothing(site: Site) -> None:
    before = site.cli("status", "--json")
    code, out = site.cli("on", "--route", "nope", "--reason", "x")
    assert code == 2
    assert "nope" in out
    assert "app, wiki" in out
    assert "Traceback" not in out
    code, out = site.cli("on", "--reason", "  ")
    assert code == 2
    assert "reason" in out
    assert site.cli("status", "--json") == before
    assert get(site, "pat").status_code == 200


# -- attacks ---------------------------------------------------------------------------------------


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


@pytest.mark.peer
def test_the_lockdown_cannot_be_bypassed(site: Site, lockdown_off: None) -> None:
    code, out = site.cli("on", "--reason", "attack drill")  # every route
    assert code == 0, out
    every_worker_answers(site, "pat", 503)
    pat = f"{SESSION_COOKIE}={site.cookies['pat']}"
    # Dot segments and encoded paths: canonicalized first, then the locked route is found.
    for path in ("/.gateway/../probe", "/.gateway/%2e%2e/probe", "/%2e%2e/probe", "/%70robe", "//probe"):
        resp = _raw(
            site.gw.port,
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\nCookie: {pat}\r\nConnection: close\r\n\r\n".encode(),
        )
        status = int(resp.split(b" ", 2)[1])
        assert status in (400, 404, 503), (path, resp[:200])
        assert status != 200
    # Another Host header: the other route is locked too (every route), an unknown host is no route.
    assert locked(get(site, "pat", host="localhost"))
    assert get(site, "pat", host="evil.example").status_code == 404
    assert locked(get(site, "pat", host="127.0.0.1:" + str(site.gw.port)))
    # Forward-auth: the original request it describes is locked: never a 2xx.
    fa = httpx.get(
        f"{site.gw.url}/.gateway/auth",
        headers={
            "Cookie": pat,
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "127.0.0.1",
            "X-Forwarded-Uri": "/probe",
        },
        timeout=10,
    )
    assert fa.status_code == 503
    assert fa.headers["x-gateway-reason"] == "lockdown"
    assert fa.headers["retry-after"] == "120"
    # A WebSocket upgrade on the locked route: the handshake is refused, never switched to 101.
    upgrade = _raw(
        site.gw.port,
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Cookie: {pat}\r\n\r\n"
        ).encode(),
    )
    assert not upgrade.startswith(b"HTTP/1.1 101"), upgrade[:200]
    assert upgrade.split(b" ", 2)[1] == b"403"
    # A break-glass passkey session still gets through the same entry points.
    erin = f"{SESSION_COOKIE}={site.cookies['erin']}"
    fa_erin = httpx.get(
        f"{site.gw.url}/.gateway/auth",
        headers={
            "Cookie": erin,
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "127.0.0.1",
            "X-Forwarded-Uri": "/probe",
        },
        timeout=10,
    )
    assert fa_erin.status_code == 200


def test_a_token_sent_with_a_break_glass_cookie_is_locked_out_like_any_token(
    site: Site, lockdown_off: None
) -> None:
    """An attack run (read in the code): under a lockdown the check read the request's cookie, a
    break-glass passkey session's, and then the route decided the request by the service account's
    token sent with it. The token is what the request is decided as: locked out, as its long
    exchanges are."""
    assert run_cli("service-account", "create", "ci", "--config", str(site.gw.config_path)).returncode == 0
    made = run_cli(
        "token", "create", "ci", "--route", "api", "--expires", "1d", "--config", str(site.gw.config_path)
    )
    assert made.returncode == 0, made.stdout + made.stderr
    token = made.stdout.strip()
    assert get(site, None, host="api.test", Authorization=f"Bearer {token}").status_code == 200
    code, out = site.cli("on", "--reason", "token drill")
    assert code == 0, out
    every_worker_answers(site, "pat", 503)
    for separator in (" ", "\t"):
        assert locked(get(site, "erin", host="api.test", Authorization=f"Bearer{separator}{token}"))
    assert locked(get(site, None, host="api.test", Authorization=f"Bearer {token}"))
    assert locked(get(site, "erin", host="api.test", Authorization="Bearer not*a*token"))
    # The break-glass session alone still passes on that route, and an app's own scheme with it.
    assert get(site, "erin", host="api.test").status_code == 200
    assert get(site, "erin", host="api.test", Authorization="Basic YWxpY2U6cHc=").status_code == 200


# -- the admin API ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def boss(site: Site) -> Iterator[httpx.Client]:
    client = browser(site.gw)
    assert login(client, "boss").status_code in (302, 303)
    enroll_totp(client)  # a fresh second factor: destructive admin actions need one
    yield client
    client.close()


def admin_api(
    site: Site, client: httpx.Client, method: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    origin = site.admin_url
    headers = {"Origin": origin, "Sec-Fetch-Site": "same-origin", **JSON}
    return client.request(method, f"{origin}/api/lockdown", json=body, headers=headers)


@pytest.mark.peer
def test_the_admin_api_switches_it(site: Site, boss: httpx.Client, lockdown_off: None) -> None:
    # Another admin, signed in with a passkey before the lockdown (during one, an admin adds a passkey
    # only from a session that used one); not in the break-glass group: the admin role is the
    # authority on the admin listener.
    chief_session = sign_in_with_passkey(site.gw, "chief")
    assert admin_api(site, boss, "GET").json()["on"] is False
    refused = admin_api(site, boss, "POST", {"on": True, "routes": ["nope"], "reason": "x"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "lockdown-refused"
    assert admin_api(site, boss, "POST", {"on": True, "reason": ""}).status_code == 400
    assert admin_api(site, boss, "GET").json()["on"] is False
    assert get(site, "pat").status_code == 200

    on = admin_api(site, boss, "POST", {"on": True, "routes": ["app"], "reason": "api drill"})
    assert on.status_code == 200, on.text
    assert on.json()["routes"] == ["app"]
    every_worker_answers(site, "pat", 503)
    status = admin_api(site, boss, "GET").json()
    assert (status["on"], status["actor"], status["reason"]) == (True, "user:boss", "api drill")
    # An attack run: an admin session of a password and an authenticator code (what phishing takes)
    # switched off the lockdown switched on against phishing. It needs a passkey now.
    refused = admin_api(site, boss, "POST", {"on": False, "reason": "api drill over"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "lockdown-passkey-required"
    assert "/.gateway/mfa?need=webauthn" in refused.json()["location"]
    assert admin_api(site, boss, "GET").json()["on"] is True
    assert get(site, "pat").status_code == 503
    with browser(site.gw) as chief:
        chief.cookies.set(SESSION_COOKIE, chief_session)
        off = admin_api(site, chief, "POST", {"on": False, "reason": "api drill over"})
    assert off.status_code == 200, off.text
    every_worker_answers(site, "pat", 200)
    assert any(
        e["actor"] == "user:boss" and e["details"]["reason"] == "api drill" for e in site.audit("lockdown.on")
    )
    assert any(e["actor"] == "user:chief" for e in site.audit("lockdown.off"))
    assert any(
        e["actor"] == "user:boss" and e["details"]["error"] == "lockdown-passkey-required"
        for e in site.audit("admin.refused")
    )
    outcomes = [e["outcome"] for e in site.audit("admin.lockdown")]
    assert "failure" in outcomes
    assert "success" in outcomes


def test_the_admin_api_needs_an_admin(site: Site) -> None:
    with browser(site.gw) as pat:
        pat.cookies.set(SESSION_COOKIE, site.cookies["pat"])
        refused = admin_api(site, pat, "POST", {"on": True, "reason": "x"})
    assert refused.status_code == 403
    with httpx.Client() as anonymous:
        assert admin_api(site, anonymous, "GET").status_code == 401
    assert get(site, "pat").status_code == 200


# -- two replicas on Redis and PostgreSQL ------------------------------------------------------------


@pytest.mark.peer
def test_switched_on_one_replica_it_is_enforced_on_the_other(tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    with fresh_database("gw_lockdown") as name, run_echo() as echo:
        common: dict[str, Any] = {
            "public_url": f"http://127.0.0.1:{port_a}",
            "storage": {"url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"},
            "state": {"redis_url": "redis://127.0.0.1:6379/0", "namespace": f"lockdown{port_a}:"},
            "keyring": str(tmp_path / "keyring.json"),
        }
        config_a = {**config(tmp_path / "a", port_a, free_port(), echo.url), **common}
        config_b = {
            **config(tmp_path / "b", port_b, free_port(), echo.url),
            **common,
            "admin": {"listen": None},
        }
        (tmp_path / "a" / "gateway.yaml").write_text(yaml.safe_dump(config_a, sort_keys=False))
        for step in (("migrate",), ("keys", "init")):
            done = run_cli(*step, "--config", str(tmp_path / "a" / "gateway.yaml"))
            assert done.returncode == 0, done.stdout + done.stderr
        with run_gateway(tmp_path / "a", config_a) as gw_a, run_gateway(tmp_path / "b", config_b) as gw_b:
            add_user(gw_a.config_path, "pat", "amber quarry lantern voyage")
            session = sign_in_with_totp(gw_b, "pat")
            cookie_header = {"Cookie": f"{SESSION_COOKIE}={session}", **JSON}

            def on_b() -> httpx.Response:
                return httpx.get(f"{gw_b.url}/probe", headers=cookie_header, timeout=10)

            assert on_b().status_code == 200
            done = run_cli("lockdown", "on", "--reason", "replica drill", "--config", str(gw_a.config_path))
            assert done.returncode == 0, done.stdout + done.stderr
            wait_until(lambda: on_b().status_code == 503, timeout=30, what="replica b locked")
            assert on_b().json()["error"] == "lockdown"
            status = run_cli("lockdown", "status", "--json", "--config", str(gw_b.config_path))
            assert json.loads(status.stdout)["on"] is True
            done = run_cli(
                "lockdown", "off", "--reason", "replica drill over", "--config", str(gw_b.config_path)
            )
            assert done.returncode == 0, done.stdout + done.stderr
            wait_until(lambda: on_b().status_code == 200, timeout=30, what="replica b open")
            wait_until(
                lambda: httpx.get(f"{gw_a.url}/probe", headers=cookie_header, timeout=10).status_code == 200,
                timeout=30,
                what="replica a open",
            )


@pytest.mark.peer
def test_a_failed_passkey_second_factor_is_in_the_trail_for_detection(site: Site) -> None:
    """An attack run: a failed WebAuthn second factor wrote no audit record, so the MFA-failure and
    brute-force rules (which read the trail) never saw it; passkey enrolments named no address."""
    add_user(site.gw.config_path, "kim", "amber quarry lantern voyage")
    owner = SoftAuthenticator(origin=site.gw.url)
    with browser(site.gw) as client:
        assert login(client, "kim", "amber quarry lantern voyage").status_code in (302, 303)
        options = _api_post(client, "/.gateway/api/webauthn/register/options", {"discoverable": True})
        done = _api_post(
            client,
            "/.gateway/api/webauthn/register/verify",
            {"credential": json.loads(owner.create(options.text)), "name": "Key"},
        )
        assert done.status_code == 200, done.text
        assert post_form(client, "/.gateway/logout").status_code == 303
    with browser(site.gw) as client:
        assert login(client, "kim", "amber quarry lantern voyage").status_code in (302, 303)
        options = _api_post(client, "/.gateway/api/mfa/webauthn/options", {})
        assert options.status_code == 200, options.text
        # The answer of a phishing page's ceremony: signed for another origin.
        refused = _api_post(
            client,
            "/.gateway/api/mfa/webauthn/verify",
            {"credential": json.loads(owner.get(options.text, origin="https://evil.test"))},
        )
        assert refused.status_code >= 400, refused.text
    failures = [e for e in site.audit("mfa.webauthn") if e["subject"] == "kim" and e["outcome"] == "failure"]
    assert len(failures) == 1, failures
    assert failures[0]["ip"] == "127.0.0.1"
    enrolled = [e for e in site.audit("factor.enrolled") if e["subject"] == "kim"]
    assert enrolled
    assert enrolled[0]["ip"] == "127.0.0.1"
