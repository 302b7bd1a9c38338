"""The admin API over real HTTP: a real gateway (``python -m gateway serve``) with its admin listener.

``gateway serve`` starts the admin listener as a child process on another port of the same host
(127.0.0.1), so the browser's session cookie from the gateway reaches it (cookies are not bound to a
port). httpx plays the browser: it signs in on the gateway's pages, enrols an authenticator app (the
code comes from Debian's ``oathtool``; tests that need it are marked ``peer``) and calls the admin API
with the same cookie jar. Policy changes are checked where they matter: on the data plane, whose
next requests are decided by the new version.

Users:

* ``boss``  — an admin through the policy (``g, user:boss, admin``), with a fresh TOTP factor;
* ``root``  — the local role ``admin`` (``gateway user add --role admin``), password only;
* ``carol`` — no role: the user whose access the admin changes; also the non-admin caller.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from gateway.settings.listen import claim_port
from tests.integration.harness import (
    ROOT,
    Gateway,
    add_user,
    free_port,
    gateway_config,
    port_is_open,
    run_cli,
    run_echo,
    run_gateway,
    stop,
    wait_for_port,
    wait_until,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, cookie, csrf, login
from tests.integration.test_signin_http import enroll_totp

# A Redis database of this module's own (see test_signin_http for why).
REDIS_URL = "redis://127.0.0.1:6379/9"

POLICY = """\
p, authenticated, app, /docs/*, GET, allow
p, auditor, app, /audit/*, GET, allow
p, admin, app, /*, *, allow
g, user:boss, admin
"""


@dataclass
class Site:
    gw: Gateway
    admin_port: int
    db_path: Path
    policy_path: Path

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def admin_origin(self) -> str:
        return self.admin_url

    def audit(self, kind: str) -> list[sqlite3.Row]:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute("SELECT * FROM audit_events WHERE kind = ? ORDER BY id", (kind,)).fetchall()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("admin")
    policy_path = tmp / "policy.csv"
    policy_path.write_text(POLICY)
    port, admin_port = free_port(), free_port()
    with run_echo() as echo:
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "none"},
        ]
        config = gateway_config(
            tmp,
            port,
            routes,
            session={"insecure_cookies": True},
            state={"redis_url": REDIS_URL, "namespace": f"admin{port}:"},
            policy={"file": str(policy_path)},
            admin={"listen": f"127.0.0.1:{admin_port}"},
        )
        with run_gateway(tmp, config) as gw:
            wait_admin_healthy(admin_port, gw.proc)
            for user, extra in (("boss", ()), ("root", ("--role", "admin")), ("carol", ())):
                add_user(gw.config_path, user, PASSWORD, *extra)
            yield Site(gw, admin_port, tmp / "data" / "gateway.db", policy_path)


def wait_admin_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    """The port opens before the worker has started its runtime: wait for /health to answer."""
    wait_for_port(port, proc=proc)

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, what="admin listener healthy")


def signed_in(site: Site, user: str) -> httpx.Client:
    client = browser(site.gw)
    assert login(client, user).status_code in (302, 303)
    assert cookie(client)
    return client


@pytest.fixture(scope="module")
def boss(site: Site) -> Iterator[httpx.Client]:
    """The admin's browser: signed in with a password, then a fresh authenticator-app factor."""
    client = signed_in(site, "boss")
    enroll_totp(client)  # enrolment proves possession: the session now has a fresh second factor
    yield client
    client.close()


@pytest.fixture(scope="module")
def carol(site: Site) -> Iterator[httpx.Client]:
    client = signed_in(site, "carol")
    yield client
    client.close()


def api(site: Site, client: httpx.Client | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One admin API call with the browser's cookies, sent as the admin page would (same origin, JSON)."""
    headers = {"Origin": site.admin_origin, "Sec-Fetch-Site": "same-origin", **kwargs.pop("headers", {})}
    url = f"{site.admin_url}{path}"
    if client is None:
        return httpx.request(method, url, headers=headers, timeout=30.0, **kwargs)
    return client.request(method, url, headers=headers, **kwargs)


def data_plane(site: Site, client: httpx.Client, path: str, method: str = "GET") -> int:
    resp = client.request(method, path, headers={"Accept": "application/json"})
    return resp.status_code


def current(site: Site, client: httpx.Client) -> dict[str, Any]:
    resp = api(site, client, "GET", "/api/policy")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def assert_error(resp: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert body["error"] == error, body
    assert body["status"] == status
    assert body["message"]
    assert body["request_id"] == resp.headers["x-request-id"]
    return body


# -- who may use it ---------------------------------------------------------------------------------


def test_health_needs_no_session(site: Site) -> None:
    resp = httpx.get(f"{site.admin_url}/health", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/api/policy", "/api/policy/history", "/api/schema/openapi.json"])
def test_without_a_session_every_api_route_is_401(site: Site, path: str) -> None:
    body = assert_error(api(site, None, "GET", path), 401, "authentication-required")
    # The sign-in page, and back to the console afterwards.
    assert body["location"] == f"{site.gw.url}/.gateway/login?rd={quote(site.admin_origin + '/', safe='')}"
    forged = api(site, None, "GET", path, headers={"Cookie": f"{SESSION_COOKIE}=forged-session-id"})
    assert_error(forged, 401, "authentication-required")


def test_a_signed_in_non_admin_is_403_and_the_attempt_is_audited(site: Site, carol: httpx.Client) -> None:
    assert_error(api(site, carol, "GET", "/api/policy"), 403, "admin-role-required")
    rows = [r for r in site.audit("admin.refused") if r["actor"] == "user:carol"]
    assert rows
    assert (rows[-1]["outcome"], rows[-1]["subject"]) == ("failure", "/api/policy")


def test_an_admin_without_a_fresh_second_factor_must_step_up(site: Site) -> None:
    # root holds the admin role as a local role (not through the policy) and signed in with a password.
    root = signed_in(site, "root")
    try:
        body = assert_error(api(site, root, "GET", "/api/policy"), 403, "step-up-required")
        assert body["location"].startswith(f"{site.gw.url}/.gateway/mfa?")
        # The step-up comes back to the console (a first-day run landed on the portal): the MFA page
        # carries the console's origin on as its return address.
        step_up = root.get(body["location"], headers={"Accept": "text/html"})
        # root has no second factor yet: the MFA page sends it to enrol, with the return address.
        assert step_up.status_code == 302, step_up.text
        assert quote(f"{site.admin_origin}/", safe="") in step_up.headers["location"]
        # Nor may it change anything.
        resp = api(
            site, root, "POST", "/api/policy/roles", json={"member": "user:root", "role": "x", "reason": "r"}
        )
        assert_error(resp, 403, "step-up-required")
    finally:
        root.close()


# -- reading ----------------------------------------------------------------------------------------


@pytest.mark.peer
def test_the_admin_reads_the_policy_its_history_and_the_schema(site: Site, boss: httpx.Client) -> None:
    policy = current(site, boss)
    assert policy["version"] >= 1
    assert {
        "ptype": "g",
        "member": "user:boss",
        "role": "admin",
        "line": 4,
        "csv": "g, user:boss, admin",
    } in policy["rules"]
    first = next(r for r in policy["rules"] if r["ptype"] == "p")
    assert set(first) == {"ptype", "subject", "route", "path", "methods", "effect", "line", "csv"}
    assert policy["csv"].endswith("\n")

    history = api(site, boss, "GET", "/api/policy/history", params={"limit": 50}).json()["versions"]
    assert history[-1]["version"] == 1
    assert history[-1]["actor"] == "system:bootstrap"

    one = api(site, boss, "GET", "/api/policy/versions/1")
    assert one.status_code == 200
    assert one.json()["csv"] == POLICY
    assert_error(api(site, boss, "GET", "/api/policy/versions/9999"), 404, "policy-version-not-found")

    schema = api(site, boss, "GET", "/api/schema/openapi.json")
    assert schema.status_code == 200
    assert "/api/policy/explain" in schema.json()["paths"]

    # Responses are not for caches or frames.
    assert one.headers["cache-control"] == "no-store"
    assert one.headers["x-frame-options"] == "DENY"


# -- changing ---------------------------------------------------------------------------------------


@pytest.mark.peer
def test_an_added_rule_is_enforced_by_the_gateway_and_a_removed_one_no_longer(
    site: Site, boss: httpx.Client, carol: httpx.Client
) -> None:
    assert data_plane(site, carol, "/reports/q3") == 403
    before = current(site, boss)["version"]
    rule = {
        "ptype": "p",
        "subject": "user:carol",
        "route": "app",
        "path": "/reports/*",
        "methods": "GET",
        "effect": "allow",
    }
    resp = api(
        site, boss, "POST", "/api/policy/rules", json={"rules": [rule], "reason": "carol does reports"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {**resp.json(), "version": before + 1, "previous": before, "changed": True}
    assert current(site, boss)["version"] == before + 1
    # Broadcast to the gateway's workers: live on the very next requests (well within a second).
    wait_until(lambda: data_plane(site, carol, "/reports/q3") == 200, timeout=1.0, interval=0.02)
    assert data_plane(site, carol, "/reports/q3", method="DELETE") == 403

    # Adding it again changes nothing and says so.
    again = api(site, boss, "POST", "/api/policy/rules", json={"rules": [rule], "reason": "twice"})
    assert_error(again, 400, "policy-rule-exists")

    resp = api(
        site, boss, "DELETE", "/api/policy/rules", json={"rules": [rule], "reason": "reports are done"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == before + 2
    wait_until(lambda: data_plane(site, carol, "/reports/q3") == 403, timeout=1.0, interval=0.02)
    gone = api(site, boss, "DELETE", "/api/policy/rules", json={"rules": [rule], "reason": "again"})
    assert_error(gone, 400, "policy-rule-not-found")

    # Both changes are in the audit trail twice: the store's policy.changed and the admin action.
    added = [r for r in site.audit("admin.policy.add") if "carol does reports" in r["details"]]
    assert [(r["actor"], r["outcome"]) for r in added] == [("user:boss", "success")]
    assert f'"version": {before + 1}' in added[0]["details"]
    changed = [r for r in site.audit("policy.changed") if r["actor"] == "user:boss"]
    assert any("reports are done" in r["details"] for r in changed)
    refused = [r for r in site.audit("admin.policy.add") if r["outcome"] == "failure"]
    assert any("policy-rule-exists" in r["details"] for r in refused)


INVALID_CHANGES: list[tuple[str, str, str, dict[str, Any], str]] = [
    # (what, method, path, body, a phrase the message must contain)
    (
        "a path without a leading slash",
        "POST",
        "/api/policy/rules",
        {
            "rules": [
                {
                    "ptype": "p",
                    "subject": "x",
                    "route": "app",
                    "path": "docs",
                    "methods": "GET",
                    "effect": "allow",
                }
            ],
            "reason": "r",
        },
        "must start with '/'",
    ),
    (
        "lower-case methods",
        "POST",
        "/api/policy/rules",
        {
            "rules": [
                {
                    "ptype": "p",
                    "subject": "x",
                    "route": "app",
                    "path": "/d",
                    "methods": "get",
                    "effect": "allow",
                }
            ],
            "reason": "r",
        },
        "GET|HEAD",
    ),
    (
        "an unknown effect",
        "POST",
        "/api/policy/rules",
        {
            "rules": [
                {
                    "ptype": "p",
                    "subject": "x",
                    "route": "app",
                    "path": "/d",
                    "methods": "GET",
                    "effect": "permit",
                }
            ],
            "reason": "r",
        },
        "rules[0].effect",
    ),
    (
        "a comma inside a field",
        "POST",
        "/api/policy/rules",
        {"rules": [{"ptype": "g", "member": "user:a, admin", "role": "x"}], "reason": "r"},
        "one CSV line",
    ),
    (
        "no reason",
        "POST",
        "/api/policy/rules",
        {"rules": [{"ptype": "g", "member": "a", "role": "b"}]},
        "reason",
    ),
    ("an empty reason", "POST", "/api/policy/roles", {"member": "a", "role": "b", "reason": ""}, "reason"),
    ("no rules", "DELETE", "/api/policy/rules", {"rules": [], "reason": "r"}, "rules"),
    (
        "an unknown rule type",
        "POST",
        "/api/policy/rules",
        {"rules": [{"ptype": "x"}], "reason": "r"},
        "ptype",
    ),
    ("a misspelt field", "POST", "/api/policy/roles", {"membr": "a", "role": "b", "reason": "r"}, "membr"),
    ("a malformed CSV line", "PUT", "/api/policy", {"csv": "p, a, app, /x, GET\n", "reason": "r"}, "csv:1"),
    (
        "a CSV line of an unknown type",
        "PUT",
        "/api/policy",
        {"csv": "q, a, b\n", "reason": "r"},
        "unknown rule type",
    ),
]


@pytest.mark.peer
@pytest.mark.parametrize(
    ("method", "path", "body", "phrase"),
    [case[1:] for case in INVALID_CHANGES],
    ids=[case[0] for case in INVALID_CHANGES],
)
def test_invalid_input_is_400_with_what_to_fix_and_nothing_changes(
    site: Site, boss: httpx.Client, method: str, path: str, body: dict[str, Any], phrase: str
) -> None:
    before = current(site, boss)
    resp = api(site, boss, method, path, json=body)
    error = assert_error(resp, 400, "bad-request")
    assert phrase in error["message"], error["message"]
    assert current(site, boss) == before


@pytest.mark.peer
def test_a_policy_that_fails_validation_is_422_with_the_findings_and_nothing_changes(
    site: Site, boss: httpx.Client, carol: httpx.Client
) -> None:
    before = current(site, boss)
    # keyMatch2 reads '/files*' as a regex ('/file' followed by any number of 's'): an error finding.
    rule = {
        "ptype": "p",
        "subject": "user:carol",
        "route": "app",
        "path": "/files*",
        "methods": "GET",
        "effect": "allow",
    }
    resp = api(site, boss, "POST", "/api/policy/rules", json={"rules": [rule], "reason": "files"})
    body = assert_error(resp, 422, "policy-rejected")
    assert [(f["severity"], f["code"]) for f in body["findings"] if f["severity"] == "error"] == [
        ("error", "star-mid-segment")
    ]
    finding = next(f for f in body["findings"] if f["code"] == "star-mid-segment")
    assert finding["rule"] == "p, user:carol, app, /files*, GET, allow"
    assert current(site, boss) == before
    assert data_plane(site, carol, "/files") == 403
    refused = [r for r in site.audit("admin.policy.add") if "policy-rejected" in r["details"]]
    assert [r["outcome"] for r in refused] == ["failure"]


@pytest.mark.peer
def test_a_body_nested_too_deeply_is_400_and_the_gateway_answers_on(site: Site, boss: httpx.Client) -> None:
    """100,000 nested brackets made the JSON decoder's recursion fail inside the framework: a 500."""
    before = current(site, boss)
    deep = '{"csv": ' + "[" * 100_000 + "]" * 100_000 + ', "reason": "r"}'
    for path in ("/api/policy/draft/validate", "/api/users"):
        resp = api(site, boss, "POST", path, content=deep, headers={"Content-Type": "application/json"})
        assert "nested too deeply" in assert_error(resp, 400, "bad-request")["message"]
    assert current(site, boss) == before
    # The portal's API decodes with the same framework, and reads at most 64 KiB: a body nested as
    # deeply as fits is a 400, the one above a 413 before it is read.
    fits = '{"credential": ' + "[" * 30_000 + "]" * 30_000 + "}"
    with browser(site.gw) as client:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "x-csrftoken": csrf(client),
        }
        portal = client.post("/.gateway/api/login/passkey/verify", content=fits, headers=headers)
        assert portal.status_code == 400, portal.text
        portal = client.post("/.gateway/api/login/passkey/verify", content=deep, headers=headers)
        assert (portal.status_code, portal.json()["error"]) == (413, "body-too-large"), portal.text


@pytest.mark.peer
def test_invalid_utf8_inside_a_json_string_is_400_recorded_and_changes_nothing(
    site: Site, boss: httpx.Client
) -> None:
    """msgspec's UnicodeDecodeError for a bad byte inside a string fell through to a 500 with a
    traceback, on every JSON endpoint, the passkey sign-in (no session needed) included."""
    before = current(site, boss)
    refused_before = len(site.audit("admin.refused"))
    for path, body in (
        ("/api/policy/draft/validate", b'{"policy": "\xff"}'),
        ("/api/users", b'{"username": "\xc3\x28", "reason": "r"}'),
    ):
        resp = api(site, boss, "POST", path, content=body, headers={"Content-Type": "application/json"})
        assert "not valid UTF-8" in assert_error(resp, 400, "bad-request")["message"]
    assert current(site, boss) == before
    wait_until(lambda: len(site.audit("admin.refused")) >= refused_before + 2, what="admin.refused records")
    with browser(site.gw) as client:
        portal = client.post(
            "/.gateway/api/login/passkey/verify",
            content=b'{"credential": {"id": "\xff"}}',
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "x-csrftoken": csrf(client),
            },
        )
    assert portal.status_code == 400, portal.text
    assert "Traceback" not in site.gw.log()


@pytest.mark.peer
def test_a_body_that_is_not_json_is_refused(site: Site, boss: httpx.Client) -> None:
    before = current(site, boss)
    resp = api(
        site,
        boss,
        "POST",
        "/api/policy/roles",
        content=b'{"member": "user:carol", "role": "auditor", "reason": "r"}',
        headers={"Content-Type": "text/plain"},
    )
    assert_error(resp, 415, "unsupported-media-type")
    assert current(site, boss) == before


CROSS_ORIGIN: list[tuple[str, dict[str, str]]] = [
    ("another site", {"Origin": "https://evil.example"}),
    # Same site (same host name) but another origin: an application published on the gateway's port.
    ("the gateway's own port", {"Origin": "{gateway}", "Sec-Fetch-Site": "same-site"}),
    ("a sandboxed page", {"Origin": "null"}),
    ("no Origin, but the browser says cross-site", {"Sec-Fetch-Site": "cross-site"}),
]


@pytest.mark.peer
@pytest.mark.parametrize(
    "headers", [case[1] for case in CROSS_ORIGIN], ids=[case[0] for case in CROSS_ORIGIN]
)
def test_a_cross_origin_change_is_403_and_nothing_changes(
    site: Site, boss: httpx.Client, headers: dict[str, str]
) -> None:
    sent = {k: v.format(gateway=site.gw.url) for k, v in headers.items()}
    before = current(site, boss)
    # Straight from the browser's jar: no Origin added unless the case has one.
    resp = boss.post(
        f"{site.admin_url}/api/policy/roles",
        json={"member": "user:carol", "role": "auditor", "reason": "csrf"},
        headers=sent,
    )
    assert_error(resp, 403, "cross-origin-refused")
    assert current(site, boss) == before


@pytest.mark.peer
def test_role_assignments_are_listed_added_and_removed(
    site: Site, boss: httpx.Client, carol: httpx.Client
) -> None:
    roles = api(site, boss, "GET", "/api/policy/roles").json()
    assert roles["admin_role"] == "admin"
    assert {"member": "user:boss", "role": "admin"} in [
        {"member": r["member"], "role": r["role"]} for r in roles["roles"]
    ]
    assert data_plane(site, carol, "/audit/log") == 403

    grant = {"member": "user:carol", "role": "auditor", "reason": "quarterly audit"}
    resp = api(site, boss, "POST", "/api/policy/roles", json=grant)
    assert resp.status_code == 200, resp.text
    version = resp.json()["version"]
    listed = api(site, boss, "GET", "/api/policy/roles").json()
    assert listed["version"] == version
    assert any(r["member"] == "user:carol" and r["role"] == "auditor" for r in listed["roles"])
    wait_until(lambda: data_plane(site, carol, "/audit/log") == 200, timeout=1.0, interval=0.02)

    resp = api(site, boss, "DELETE", "/api/policy/roles", json={**grant, "reason": "audit done"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == version + 1
    wait_until(lambda: data_plane(site, carol, "/audit/log") == 403, timeout=1.0, interval=0.02)
    kinds = [
        (r["kind"], r["outcome"]) for r in site.audit("admin.role.add") + site.audit("admin.role.remove")
    ]
    assert ("admin.role.add", "success") in kinds
    assert ("admin.role.remove", "success") in kinds


@pytest.mark.peer
def test_replace_then_restore(site: Site, boss: httpx.Client, carol: httpx.Client) -> None:
    start = current(site, boss)
    # The admin keeps their own role in the new policy: the API would otherwise lock them out.
    new_csv = POLICY.replace("g, ", "p, user:carol, app, /replaced/*, GET, allow\ng, ")
    resp = api(site, boss, "PUT", "/api/policy", json={"csv": new_csv, "reason": "new quarter"})
    assert resp.status_code == 200, resp.text
    replaced = resp.json()["version"]
    assert replaced == start["version"] + 1
    assert current(site, boss)["csv"] == new_csv
    wait_until(lambda: data_plane(site, carol, "/replaced/x") == 200, timeout=1.0, interval=0.02)

    # The same text again stores nothing.
    same = api(site, boss, "PUT", "/api/policy", json={"csv": new_csv, "reason": "again"}).json()
    assert same == {**same, "version": replaced, "previous": replaced, "changed": False}

    detail = api(site, boss, "GET", f"/api/policy/versions/{replaced}").json()
    assert detail["actor"] == "user:boss"
    assert detail["reason"] == "new quarter"
    assert "+p, user:carol, app, /replaced/*, GET, allow" in detail["diff"]

    resp = api(site, boss, "POST", f"/api/policy/restore/{start['version']}", json={"reason": "undo"})
    assert resp.status_code == 200, resp.text
    restored = resp.json()["version"]
    assert restored == replaced + 1
    assert current(site, boss)["csv"] == start["csv"]
    wait_until(lambda: data_plane(site, carol, "/replaced/x") == 403, timeout=1.0, interval=0.02)
    history = api(site, boss, "GET", "/api/policy/history", params={"limit": 1}).json()["versions"]
    assert history[0]["restored_from"] == start["version"]
    assert_error(
        api(site, boss, "POST", "/api/policy/restore/9999", json={"reason": "x"}),
        404,
        "policy-version-not-found",
    )
    assert [r["outcome"] for r in site.audit("admin.policy.restore")][-2:] == ["success", "failure"]
    assert site.audit("admin.policy.replace")


# -- explain ----------------------------------------------------------------------------------------


@pytest.mark.peer
def test_explain_names_the_deciding_rule_for_a_canonical_path(site: Site, boss: httpx.Client) -> None:
    resp = api(
        site,
        boss,
        "POST",
        "/api/policy/explain",
        json={"username": "carol", "route": "app", "method": "GET", "path": "/secret/../docs/%7Ereadme"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["allowed"] is True
    assert body["reason"] == "policy-allow"
    assert body["path"] == "/docs/~readme"
    assert body["principals"] == ["authenticated", "user:carol"]
    assert body["principal"] == "authenticated"
    assert body["rule"]["csv"] == "p, authenticated, app, /docs/*, GET, allow"
    assert body["rule"]["line"] == 1
    assert "allowed" in body["explanation"]

    # Through the role hierarchy: boss is an admin by a g line.
    body = api(
        site, boss, "POST", "/api/policy/explain",
        json={"principals": ["user:boss"], "route": "app", "method": "DELETE", "path": "/x"},
    ).json()  # fmt: skip
    assert body["allowed"] is True
    assert body["principal"] == "admin"

    body = api(
        site, boss, "POST", "/api/policy/explain",
        json={"principals": ["user:nobody"], "route": "app", "method": "GET", "path": "/docs/a"},
    ).json()  # fmt: skip
    assert body == {**body, "allowed": False, "reason": "no-matching-rule", "rule": None, "principal": None}


@pytest.mark.peer
@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        ({"route": "nope", "method": "GET", "path": "/", "principals": ["a"]}, 400, "routes: app"),
        (
            {"route": "app", "method": "GET", "path": "/", "principals": ["a"], "username": "carol"},
            400,
            "not both",
        ),
        ({"route": "app", "method": "GET", "path": "/"}, 400, "not both"),
        ({"route": "app", "method": "GET", "path": "/", "username": "ghost"}, 400, "no account"),
        ({"route": "app", "method": "get", "path": "/", "principals": ["a"]}, 400, "method"),
        ({"route": "app", "method": "GET", "path": "/a/%2e%2e%2fb%", "principals": ["a"]}, 400, ""),
        ({"route": "app", "method": "GET", "path": "/a;x/b", "principals": ["a"]}, 400, "path parameters"),
    ],
)
def test_explain_refuses_questions_it_cannot_answer(
    site: Site, boss: httpx.Client, body: dict[str, Any], status: int, phrase: str
) -> None:
    resp = api(site, boss, "POST", "/api/policy/explain", json=body)
    assert resp.status_code == status, resp.text
    assert phrase in resp.json()["message"]


# -- serving ----------------------------------------------------------------------------------------


def _config(tmp: Path, admin_port: int) -> Path:
    config = gateway_config(
        tmp,
        free_port(),
        [{"name": "app", "host": "127.0.0.1", "upstreams": ["http://127.0.0.1:9"], "public_paths": ["/*"]}],
        admin={"listen": f"127.0.0.1:{admin_port}"},
    )
    path = tmp / "gateway.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_busy_admin_port_is_a_clear_error_before_the_gateway_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("serve", "--config", str(_config(tmp_path, port)), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"admin.listen 127.0.0.1:{port}: the address is already in use" in result.stderr


def test_a_port_another_server_shares_is_a_clear_error_before_the_gateway_starts(tmp_path: Path) -> None:
    """A first-day run: a second gateway on a running one's port started without a word, since
    granian binds with SO_REUSEPORT, and the kernel then split the port's connections between two
    gateways with their own users and policies. The socket here holds the port as granian does."""
    admin_port = free_port()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = yaml.safe_load(_config(tmp_path, admin_port).read_text())
        config["listen"] = f"127.0.0.1:{port}"
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        result = run_cli("serve", "--config", str(tmp_path / "gateway.yaml"), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"listen 127.0.0.1:{port}: the address is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    with socket.socket() as probe:  # nothing was started: the admin port was never taken either
        probe.bind(("127.0.0.1", admin_port))


@pytest.mark.parametrize("which", ["listen", "admin"])
def test_a_gateway_starting_at_the_same_moment_is_refused(tmp_path: Path, which: str) -> None:
    """A re-attack run: two gateways started within a second or two of each other both passed the
    bind probe and shared the port. The first holds a claim on each of its ports from before the
    probe; the claim is held here as a starting gateway holds it."""
    admin_port = free_port()
    path = _config(tmp_path, admin_port)
    port = (
        admin_port if which == "admin" else int(yaml.safe_load(path.read_text())["listen"].rsplit(":", 1)[1])
    )
    claim = claim_port(port)
    assert claim is not None
    with claim:
        result = run_cli("serve", "--config", str(path), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"another gateway on this machine is starting or serving on port {port}" in result.stderr


def test_a_standalone_admin_listener_claims_its_port_too(tmp_path: Path) -> None:
    """A re-attack run: `gateway admin serve` beside a gateway started at the same moment on its port
    shared it. Standalone, it claims the port as `gateway serve` does."""
    admin_port = free_port()
    path = _config(tmp_path, admin_port)
    claim = claim_port(admin_port)
    assert claim is not None
    with claim:
        result = run_cli("admin", "serve", "--config", str(path), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"another gateway on this machine is starting or serving on port {admin_port}" in result.stderr


def test_two_gateways_started_together_on_one_port_leave_one_serving(tmp_path: Path) -> None:
    """The race itself: both started at once, one serves and the other says why it stopped."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("one", "two"):
            config = gateway_config(
                tmp_path / name,
                port,
                [
                    {
                        "name": "app",
                        "host": "127.0.0.1",
                        "upstreams": ["http://127.0.0.1:9"],
                        "public_paths": ["/*"],
                    }
                ],
            )
            (tmp_path / name).mkdir(parents=True)
            (tmp_path / name / "gateway.yaml").write_text(yaml.safe_dump(config))
        logs = {}
        for name in ("one", "two"):
            cmd = [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(tmp_path / name / "gateway.yaml"),
            ]
            with (tmp_path / f"{name}.log").open("wb") as log:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            procs.append(proc)
            logs[proc.pid] = tmp_path / f"{name}.log"
        wait_until(lambda: any(p.poll() is not None for p in procs), timeout=60, what="one gateway refused")
        refused = next(p for p in procs if p.poll() is not None)
        assert refused.returncode == 1
        said = logs[refused.pid].read_text()
        assert f"port {port}" in said or f"127.0.0.1:{port}: the address is already in use" in said, said
        serving = next(p for p in procs if p is not refused)
        wait_for_port(port, proc=serving)
        assert serving.poll() is None
    finally:
        for proc in procs:
            stop(proc)


def test_the_admin_listener_stops_with_the_gateway(tmp_path: Path) -> None:
    admin_port = free_port()
    config_path = _config(tmp_path, admin_port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)], cwd=ROOT
    )
    try:
        wait_admin_healthy(admin_port, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    wait_until(lambda: not port_is_open(admin_port), timeout=15, what="admin listener stopped")
