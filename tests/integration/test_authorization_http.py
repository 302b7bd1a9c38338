"""Authorization over real HTTP: every proxied request is decided by the stored casbin policy.

Two gateway processes share one data directory (SQLite: users and the policy store) and one Redis (the
policy broadcast), as replicas do. Users sign in with a password (``mfa: none`` routes, so no TOTP);
the policy is imported from a file at the first start and changed through the real ``gateway policy``
CLI. A tripwire upstream proves that refused requests never leave the gateway: path tricks, and every
spelling of an area's own path (``/admin`` under a deny on ``/admin/*``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    Gateway,
    Tripwire,
    add_user,
    free_port,
    gateway_config,
    raw_request,
    run_cli,
    run_echo,
    run_gateway,
    run_tripwire,
    wait_until,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, cookie, login

REDIS_URL = "redis://127.0.0.1:6379/8"

POLICY = """\
p, authenticated, app, /docs/*, GET|HEAD, allow
p, editor, app, /docs/*, PUT|POST, allow
p, admin, app, /admin/*, *, allow
p, authenticated, app, /items/:id, GET, allow
p, user:mallory, app, /*, *, deny
g, user:alice, editor
p, authenticated, trip, /open/*, GET, allow
p, authenticated, guard, /*, *, allow
p, dev, guard, /admin/*, *, deny
p, dev, guard, /reports/*, DELETE, deny
p, dev, guard, /export/*, GET, deny
p, authenticated, winapp, /*, *, allow
p, dev, winapp, /admin/*, *, deny
p, authenticated, winvault, /*, *, allow
g, user:dave, dev
"""


@dataclass
class Site:
    a: Gateway
    b: Gateway
    wire: Tripwire
    guard_wire: Tripwire
    tmp: Path
    sessions: dict[str, str]

    def cli(self, *args: str) -> str:
        result = run_cli(*args, "--config", str(self.a.config_path))
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def import_policy(self, text: str, reason: str) -> None:
        path = self.tmp / f"policy-{time.monotonic_ns()}.csv"
        path.write_text(text)
        self.cli("policy", "import", str(path), "--reason", reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("authz")
    (tmp / "policy.csv").write_text(POLICY)
    port_a, port_b = free_port(), free_port()
    with run_echo() as echo, run_tripwire() as wire, run_tripwire() as guard_wire:
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "none"},
            {"name": "trip", "host": "trip.localhost", "upstreams": [wire.url], "mfa": "none"},
            # Open to everyone but an admin area denied to developers, in front of its own tripwire;
            # the short response timeout ends an allowed request (the control) as a 504, and no
            # number of those ejects the target.
            {
                "name": "guard",
                "host": "guard.localhost",
                "upstreams": [guard_wire.url],
                "mfa": "none",
                "timeouts": {"response": "1s"},
                "passive_health_check": {"consecutive_failures": 1000},
            },
            # An app that reads /Admin as /admin (IIS, Express): routed, decided and sent in lower case.
            {
                "name": "winvault",
                "host": "iis.localhost",
                "path": "/vault",
                "upstreams": [echo.url],
                "mfa": "webauthn",
                "case_insensitive_paths": True,
            },
            {
                "name": "winapp",
                "host": "iis.localhost",
                "upstreams": [echo.url],
                "mfa": "none",
                "case_insensitive_paths": True,
            },
        ]
        common: dict[str, Any] = {
            "public_url": f"http://127.0.0.1:{port_a}",
            "data_dir": str(tmp / "data"),
            "session": {"insecure_cookies": True},
            "state": {"redis_url": REDIS_URL, "namespace": f"authz{port_a}:"},
            "policy": {"file": str(tmp / "policy.csv")},
        }
        config_a = gateway_config(tmp / "a", port_a, routes, **common)
        with run_gateway(tmp / "a", config_a) as gw_a:
            for user, extra in (
                ("alice", ("--email", "alice@example.com")),
                ("bob", ("--role", "admin")),
                ("mallory", ()),
                ("dave", ()),
            ):
                add_user(gw_a.config_path, user, PASSWORD, *extra)
            sessions = {}
            for user in ("alice", "bob", "mallory", "dave"):
                with browser(gw_a) as client:
                    assert login(client, user).status_code == 302
                    session = cookie(client, SESSION_COOKIE)
                    assert session
                    sessions[user] = session
            config_b = gateway_config(tmp / "b", port_b, routes, **common)
            with run_gateway(tmp / "b", config_b) as gw_b:
                yield Site(gw_a, gw_b, wire, guard_wire, tmp, sessions)


def call(
    gw: Gateway,
    session: str | None,
    path: str,
    *,
    method: str = "GET",
    host: str = "127.0.0.1",
    html: bool = False,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {"Host": host, "Accept": "text/html" if html else "application/json", **(headers or {})}
    if session:
        sent["Cookie"] = f"{SESSION_COOKIE}={session}"
    return httpx.request(method, f"{gw.url}{path}", headers=sent, follow_redirects=False, timeout=30.0)


def seen_headers(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 200, resp.text
    return {k.lower(): v for k, v in resp.json()["headers"]}


def test_an_allowed_request_reaches_the_app_with_the_verified_identity(site: Site) -> None:
    seen = seen_headers(call(site.a, site.sessions["alice"], "/docs/readme"))
    assert seen["x-gateway-user"] == "alice"
    assert seen["x-gateway-email"] == "alice@example.com"
    assert "x-gateway-assertion" in seen


def test_no_matching_rule_is_a_403_with_the_reason_and_request_id(site: Site) -> None:
    resp = call(site.a, site.sessions["alice"], "/admin/users")
    assert resp.status_code == 403
    body = resp.json()
    assert body["error"] == "no-matching-rule"
    assert body["request_id"] == resp.headers["x-request-id"]
    page = call(site.a, site.sessions["alice"], "/admin/users", html=True)
    assert page.status_code == 403
    assert "text/html" in page.headers["content-type"]
    assert "no-matching-rule" in page.text
    # The answer names the reason, never the policy.
    assert "/admin/*" not in page.text
    assert "editor" not in page.text


def test_methods_and_roles_decide_together(site: Site) -> None:
    alice, bob = site.sessions["alice"], site.sessions["bob"]
    assert call(site.a, alice, "/docs/x", method="PUT").status_code == 200  # editor through g
    assert call(site.a, alice, "/docs/x", method="DELETE").status_code == 403
    assert call(site.a, bob, "/docs/x", method="PUT").status_code == 403  # admin is not an editor
    assert call(site.a, bob, "/admin/x", method="DELETE").status_code == 200  # local role admin
    assert call(site.a, alice, "/items/42").status_code == 200
    assert call(site.a, alice, "/items/42/parts").status_code == 403  # ':id' is one segment


def test_an_explicit_deny_wins_over_allows(site: Site) -> None:
    resp = call(site.a, site.sessions["mallory"], "/docs/readme")
    assert resp.status_code == 403
    assert resp.json()["error"] == "policy-deny"


def test_spoofed_identity_and_overrides_never_change_the_decision(site: Site) -> None:
    spoof = {
        "X-Gateway-User": "bob",
        "X_Gateway_Roles": "admin",
        "x-gateway-assertion": "forged",
        "X-Original-URL": "/docs/readme",
        "X-Rewrite-URL": "/docs/readme",
        "X-HTTP-Method-Override": "GET",
        # Forwarding headers from a client that is not a trusted proxy are not believed.
        "X-Forwarded-Host": "trip.localhost",
        "X-Forwarded-Uri": "/docs/readme",
        "X-Forwarded-Method": "GET",
        "X-Forwarded-For": "10.9.9.9",
        "Forwarded": "for=10.9.9.9;host=trip.localhost",
    }
    assert call(site.a, site.sessions["mallory"], "/docs/readme", headers=spoof).status_code == 403
    assert call(site.a, site.sessions["alice"], "/admin/x", headers=spoof).status_code == 403
    seen = seen_headers(call(site.a, site.sessions["alice"], "/docs/a", headers=spoof))
    assert seen["x-gateway-user"] == "alice"
    assert seen["x-gateway-assertion"] != "forged"
    for name in ("x-original-url", "x-rewrite-url", "x-http-method-override"):
        assert name not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "x-forwarded-uri" not in seen
    # Connection cannot strip what the gateway sets.
    hop = call(
        site.a,
        site.sessions["alice"],
        "/docs/a",
        headers={"Connection": "X-Gateway-User, X-Gateway-Assertion"},
    )
    seen = seen_headers(hop)
    assert seen["x-gateway-user"] == "alice"
    assert seen["x-gateway-assertion"]


BYPASSES = [
    "/open/../secret",
    "/open/%2e%2e/secret",
    "/open/%2E%2E/secret",
    "/open/.%2e/secret",
    "/open/..%2fsecret",
    "/open%2f..%2fsecret",
    "/open/..%5csecret",
    "/open/..;/secret",
    "/open;x/../secret",
    "//open/../secret",
    "/open/./../secret",
    "/OPEN/x",
    "/Open/x",
    "/secret",
    "/secret/",
    "/secret;/open/x",
    "/open/x/../../secret",
    "/open/%c0%ae%c0%ae/secret",
    "/open/x%00/../../secret",
]


@pytest.mark.parametrize("path", BYPASSES)
def test_path_tricks_never_reach_a_denied_path(site: Site, path: str) -> None:
    site.wire.connections()
    resp = call(site.a, site.sessions["alice"], path, host="trip.localhost")
    assert resp.status_code in (400, 403), resp.text
    assert site.wire.connections() == 0, f"{path} reached the upstream"


def test_double_encoding_stays_data_the_upstream_sees_the_same_path(site: Site) -> None:
    # '%252e%252e' is the literal text '%2e%2e' (RFC 3986): allowed under /docs/*, and what the app
    # receives is exactly that spelling, never '/secret'.
    resp = call(site.a, site.sessions["alice"], "/docs/%252e%252e/secret")
    assert resp.status_code == 200
    assert resp.json()["target"] == "/docs/%252e%252e/secret"


def test_anonymous_requests_are_sent_to_sign_in_not_to_the_policy(site: Site) -> None:
    assert call(site.a, None, "/docs/readme").status_code == 401
    page = call(site.a, None, "/docs/readme", html=True)
    assert page.status_code == 302
    assert "/.gateway/login" in page.headers["location"]


# Every spelling of the admin area itself, its entrance included. "/admin/*" used to leave "/admin" to
# the route's "/*" allow: the query and "%61" are the same canonical path, so all of these reached the app.
ADMIN_AREA = [
    ("GET", "/admin"),
    ("GET", "/admin?x=1"),
    ("GET", "/%61dmin"),
    ("GET", "/%61%64%6D%69%6E?next=/"),
    ("HEAD", "/admin"),
    ("POST", "/admin"),
    ("GET", "/admin/"),
    ("GET", "/admin/."),
    ("GET", "/x/../admin"),
    ("GET", "//admin"),
    ("GET", "/admin/users"),
    ("GET", "/%61dmin/users"),
]


def raw_call(site: Site, user: str, method: str, target: str) -> tuple[int, bytes]:
    """Send the request line exactly as written (httpx would resolve "." and ".." itself)."""
    return raw_call_on(site, user, method, target, host="guard.localhost")


def raw_call_on(site: Site, user: str, method: str, target: str, *, host: str) -> tuple[int, bytes]:
    """:func:`raw_call` to another host."""
    request = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
        f"Cookie: {SESSION_COOKIE}={site.sessions[user]}\r\nConnection: close\r\n\r\n"
    )
    answer = raw_request(site.a.port, request.encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(("method", "path"), ADMIN_AREA)
def test_a_denied_area_includes_its_own_path(site: Site, method: str, path: str) -> None:
    site.guard_wire.connections()
    status, body = raw_call(site, "dave", method, path)
    assert status == 403, body
    if method != "HEAD":
        assert b'"policy-deny"' in body
    assert site.guard_wire.connections() == 0, f"{method} {path} reached the upstream"


@pytest.mark.parametrize("method", ["delete", "Delete", "DeLeTe", "dELETE"])
def test_a_method_in_any_other_case_never_passes_a_rule_about_the_method(site: Site, method: str) -> None:
    """A deny of DELETE does not match "delete" (methods are case-sensitive), but Flask, Django and
    Rails upper-case the method and would run the delete: such a request is refused before the policy."""
    site.guard_wire.connections()
    status, body = raw_call(site, "dave", method, "/reports/q3")
    assert status == 400, body
    assert b'"bad-method"' in body
    assert site.guard_wire.connections() == 0, f"{method} reached the upstream"
    status, body = raw_call(site, "dave", "DELETE", "/reports/q3")
    assert (status, b'"policy-deny"' in body) == (403, True)


@pytest.mark.parametrize("target", ["/reports/q3", "/", "guard.localhost:443"])
def test_connect_never_reaches_an_app_even_where_every_method_is_allowed(site: Site, target: str) -> None:
    """An attack run: CONNECT on a route whose policy allows every method was forwarded; an app's 2xx
    made the pooled upstream connection a tunnel the next person's request would have gone into, and
    the client got no answer. CONNECT is refused before any stage, whoever sends it."""
    site.guard_wire.connections()
    status, body = raw_call(site, "dave", "CONNECT", target)
    assert status == 400, body
    assert site.guard_wire.connections() == 0, f"CONNECT {target} reached the upstream"
    if not target.endswith(":443"):  # the authority form is refused earlier, as a bad path
        assert b'"bad-method"' in body
    # The control: the same path with a method the policy allows reaches it (the tripwire counts the
    # connection and never answers).
    raw_call(site, "dave", "PUT", "/reports/q3")
    assert site.guard_wire.connections() >= 1


def test_a_head_request_is_refused_where_a_get_is(site: Site) -> None:
    """Servers answer HEAD with their GET handler: a deny of GET let HEAD run it (an attack run)."""
    site.guard_wire.connections()
    status, body = raw_call(site, "dave", "HEAD", "/export/payroll")
    assert status == 403, body
    assert site.guard_wire.connections() == 0
    # The control: someone GET is not denied to reaches the app (the tripwire never answers: 504).
    assert (
        call(
            site.a, site.sessions["bob"], "/export/payroll", method="HEAD", host="guard.localhost"
        ).status_code
        == 504
    )
    assert site.guard_wire.connections() == 1


@pytest.mark.parametrize(
    "path", ["/ADMIN/users", "/Admin", "/aDmIn/x/../users", "/%41dmin/users", "/VAULT/secret", "/Vault"]
)
def test_on_a_case_insensitive_route_no_spelling_of_a_denied_area_passes(site: Site, path: str) -> None:
    """An attack run found /ADMIN/users and /VAULT/secret forwarded to an app that reads them as
    /admin/users and /vault/secret (IIS, Express): past a deny, or through the weaker route."""
    resp = call(site.a, site.sessions["dave"], path, host="iis.localhost")
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] in ("policy-deny", "mfa-required")


@pytest.mark.parametrize(
    "path",
    [
        "/admin./users",
        "/admin%20/users",
        "/admin%2e/users",
        "/ok/x.",
        "/x%20",
        "/adm%C4%B0n/users",
        "/%E2%84%AAeys/x",
        "/secret.txt::$DATA",
        "/ADMINI~1/users",
    ],
)
def test_on_a_case_insensitive_route_a_segment_ending_in_a_dot_or_space_is_400(site: Site, path: str) -> None:
    """IIS drops a segment's trailing dots and spaces (/admin. is /admin): ambiguous, so refused."""
    status, body = raw_call_on(site, "alice", "GET", path, host="iis.localhost")
    assert status == 400, body
    assert b'"bad-path"' in body


def test_on_a_case_insensitive_route_the_app_gets_the_lower_case_path(site: Site) -> None:
    resp = call(site.a, site.sessions["alice"], "/Docs/ReadMe?Q=Keep", host="iis.localhost")
    assert resp.status_code == 200, resp.text
    assert resp.json()["target"] == "/docs/readme?Q=Keep"  # the query is the app's business
    # The control: another host keeps the path as sent.
    assert call(site.a, site.sessions["alice"], "/docs/ReadMe").json()["target"] == "/docs/ReadMe"
    # What folds into the gateway's reserved prefix is never an app's path (a re-attack run's note).
    reserved = call(site.a, site.sessions["alice"], "/.GATEWAY/x", host="iis.localhost")
    assert reserved.status_code == 404, reserved.text


@pytest.mark.parametrize(("user", "path"), [("dave", "/administrator"), ("dave", "/adm"), ("bob", "/admin")])
def test_the_denied_area_ends_at_its_segment_boundary(site: Site, user: str, path: str) -> None:
    # The control: the same route forwards what the deny does not cover (the tripwire never answers,
    # so the gateway gives up after the route's 1 s response timeout).
    site.guard_wire.connections()
    resp = call(site.a, site.sessions[user], path, host="guard.localhost")
    assert resp.status_code == 504, resp.text
    assert site.guard_wire.connections() == 1


def test_an_allowed_area_includes_its_own_path(site: Site) -> None:
    bob, alice = site.sessions["bob"], site.sessions["alice"]
    # "p, admin, app, /admin/*, *, allow": the area's own page, with and without the slash.
    assert seen_headers(call(site.a, bob, "/admin"))["x-gateway-user"] == "bob"
    assert call(site.a, bob, "/admin/").status_code == 200
    assert call(site.a, bob, "/administrator").status_code == 403
    assert call(site.a, alice, "/admin").status_code == 403


def test_a_policy_change_on_one_replica_is_enforced_by_another_within_a_second(site: Site) -> None:
    alice = site.sessions["alice"]
    assert call(site.b, alice, "/admin/reports").status_code == 403
    site.import_policy(POLICY + "p, editor, app, /admin/reports, GET, allow\n", "give editors the reports")
    started = time.monotonic()
    wait_until(lambda: call(site.b, alice, "/admin/reports").status_code == 200, timeout=1.0, interval=0.02)
    assert time.monotonic() - started < 1.0
    # Removing alice's role takes effect on the next request, on both replicas.
    without_role = POLICY.replace("g, user:alice, editor\n", "")
    site.import_policy(without_role, "alice leaves the editors")
    wait_until(
        lambda: call(site.b, alice, "/docs/x", method="PUT").status_code == 403, timeout=1.0, interval=0.02
    )
    wait_until(
        lambda: call(site.a, alice, "/docs/x", method="PUT").status_code == 403, timeout=1.0, interval=0.02
    )
    site.import_policy(POLICY, "back to the original policy")
    wait_until(
        lambda: call(site.b, alice, "/docs/x", method="PUT").status_code == 200, timeout=1.0, interval=0.02
    )
    assert call(site.b, alice, "/admin/reports").status_code == 403
    history = site.cli("policy", "history")
    assert "alice leaves the editors" in history


def test_readiness_reports_the_policy_version(site: Site) -> None:
    ready = httpx.get(f"{site.a.url}/.gateway/ready", timeout=10).json()
    assert ready["checks"]["policy"]["ok"] is True
    assert ready["checks"]["policy"]["version"] >= 1
