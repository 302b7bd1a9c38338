"""The admin app in process: the admin role's real services (SQLite file, in-process fast state) behind
Litestar's client.

The integration tests drive the same app through the real gateway; these check the answers in detail
(error shape, what a 400 says, the schema) without processes or TOTP, by creating the admin's session
directly in the services' session store.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.services import Services
from tests.unit.admin.console_app import ORIGIN, Start

POLICY = """\
p, authenticated, app, /docs/*, GET, allow
p, admin, *, /*, *, allow
g, user:boss, admin
"""


class Admin:
    def __init__(self, client: httpx.AsyncClient, services: Services, session_id: str) -> None:
        self.client = client
        self.services = services
        self.cookie = f"gateway_session={session_id}"

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Origin": ORIGIN, "Cookie": self.cookie, **kwargs.pop("headers", {})}
        response: httpx.Response = await self.client.request(method, path, headers=headers, **kwargs)
        return response


@pytest.fixture
async def admin(console: Start) -> Admin:
    """The console (conftest.py) on this file's policy, and boss's fresh two-factor session."""
    site = await console(policy=POLICY)
    return Admin(site.client, site.services, await site.session("boss"))


async def test_health_and_schema(admin: Admin) -> None:
    assert (await admin.client.get("/health")).json() == {"status": "ok"}
    schema = (await admin.call("GET", "/api/schema/openapi.json")).json()
    assert set(schema["paths"]) >= {
        "/api/policy",
        "/api/policy/history",
        "/api/policy/versions/{version}",
        "/api/policy/rules",
        "/api/policy/restore/{version}",
        "/api/policy/roles",
        "/api/policy/explain",
    }
    assert "/health" not in schema["paths"]


async def test_errors_have_the_gateway_shape(admin: Admin) -> None:
    resp = await admin.call("GET", "/api/nothing-here")
    assert resp.status_code == 404
    assert set(resp.json()) == {"error", "message", "status", "request_id"}
    assert resp.json()["request_id"] == resp.headers["x-request-id"]
    resp = await admin.client.get("/api/policy")  # no cookie
    assert resp.status_code == 401
    # Back to the console after signing in (a first-day run landed on the portal).
    location = resp.json()["location"]
    assert location.startswith("http://gw.test:8080/.gateway/login?rd=http%3A%2F%2Fgw.test%3A")
    assert location.endswith("%2F")


async def test_a_rule_is_added_and_audited(admin: Admin) -> None:
    rule = {
        "ptype": "p",
        "subject": "role:x",
        "route": "app",
        "path": "/x/*",
        "methods": "GET",
        "effect": "deny",
    }
    resp = await admin.call("POST", "/api/policy/rules", json={"rules": [rule], "reason": "test"})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert {k: result[k] for k in ("version", "previous", "changed")} == {
        "version": 2,
        "previous": 1,
        "changed": True,
    }
    # Stored, with what validation still says about it: nobody holds the role.
    assert [w["code"] for w in result["warnings"]] == ["unheld-role"]
    policy = (await admin.call("GET", "/api/policy")).json()
    assert {**rule, "line": 3, "csv": "p, role:x, app, /x/*, GET, deny"} in policy["rules"]
    events = await admin.services.identity.audit.events(kind="admin.policy.add")
    assert [(e.actor, e.outcome) for e in events] == [("user:boss", "success")]
    changed = await admin.services.identity.audit.events(kind="policy.changed")
    assert changed[0].actor == "user:boss"  # newest first


async def test_a_change_that_fails_validation_is_422_and_warnings_come_with_a_stored_change(
    admin: Admin,
) -> None:
    bad = {
        "ptype": "p",
        "subject": "user:x",
        "route": "app",
        "path": "/a:/b",
        "methods": "GET",
        "effect": "allow",
    }
    resp = await admin.call("POST", "/api/policy/rules", json={"rules": [bad], "reason": "r"})
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["error"] == "policy-rejected"
    assert {
        "severity": "error",
        "code": "empty-param",
        "line": None,
        "rule": "p, user:x, app, /a:/b, GET, allow",
    }.items() <= body["findings"][0].items()
    assert (await admin.call("GET", "/api/policy")).json()["version"] == 1

    # A duplicate is only a warning: stored, and reported.
    resp = await admin.call(
        "PUT",
        "/api/policy",
        json={"csv": POLICY + "p, authenticated, app, /docs/*, GET, allow\n", "reason": "r"},
    )
    assert resp.status_code == 200, resp.text
    assert [w["code"] for w in resp.json()["warnings"]] == ["duplicate-rule"]


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"rules": [{"ptype": "p", "subject": "a"}], "reason": "r"}, "missing required field `route`"),
        ({"rules": [{"ptype": "g", "member": " a", "role": "b"}], "reason": "r"}, "padded with spaces"),
        ({"rules": [{"ptype": "g", "member": "a", "role": "b"}], "reason": "r", "force": True}, "force"),
        ({"rules": "p, a, b", "reason": "r"}, "Expected `array`"),
    ],
)
async def test_a_400_says_what_to_fix(admin: Admin, body: dict[str, Any], phrase: str) -> None:
    resp = await admin.call("POST", "/api/policy/rules", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "bad-request"
    assert phrase in resp.json()["message"]
    assert (await admin.call("GET", "/api/policy")).json()["version"] == 1


async def test_explain_answers_with_the_deciding_rule(admin: Admin) -> None:
    resp = await admin.call(
        "POST",
        "/api/policy/explain",
        json={"principals": ["user:boss"], "route": "app", "method": "PATCH", "path": "/a/./b//c"},
    )
    body = resp.json()
    assert body["allowed"] is True
    assert body["path"] == "/a/b/c"
    assert body["principal"] == "admin"
    assert body["rule"]["csv"] == "p, admin, *, /*, *, allow"


SECOND_ADMIN = POLICY + "g, user:ann, admin\n"


@pytest.mark.parametrize(
    ("method", "path", "body", "action"),
    [
        ("DELETE", "/api/policy/roles", {"member": "user:boss", "role": "admin"}, "role.remove"),
        (
            "DELETE",
            "/api/policy/rules",
            {"rules": [{"ptype": "g", "member": "user:boss", "role": "admin"}]},
            "policy.remove",
        ),
        ("PUT", "/api/policy", {"csv": "p, admin, *, /*, *, allow\ng, user:ann, admin\n"}, "policy.replace"),
        ("POST", "/api/policy/restore/2", {}, "policy.restore"),  # version 2: ann's removal of boss
    ],
)
async def test_an_admin_cannot_take_their_own_admin_role(
    console: Start, method: str, path: str, body: dict[str, Any], action: str
) -> None:
    """An attack run: the last two admins each removed their own admin line (200, a warning), and
    every console call was 403 after. Each way of changing the policy refuses it: nothing is stored,
    and the refusal is audited."""
    site = await console(policy=SECOND_ADMIN)
    boss = Admin(site.client, site.services, await site.session("boss"))
    ann = Admin(site.client, site.services, await site.session("ann"))
    link = {"member": "user:boss", "role": "admin"}
    assert (
        await ann.call("DELETE", "/api/policy/roles", json={**link, "reason": "rotation"})
    ).status_code == 200
    assert (await ann.call("POST", "/api/policy/roles", json={**link, "reason": "back"})).status_code == 200
    before = (await boss.call("GET", "/api/policy")).json()
    resp = await boss.call(method, path, json={**body, "reason": "leaving the admins"})
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"] == "own-admin-role"
    assert (await boss.call("GET", "/api/policy")).json() == before
    refused = await site.services.identity.audit.events(kind=f"admin.{action}")
    assert (refused[0].actor, refused[0].outcome) == ("user:boss", "failure")


async def test_another_admin_may_take_it(console: Start) -> None:
    site = await console(policy=SECOND_ADMIN)
    ann = Admin(site.client, site.services, await site.session("ann"))
    resp = await ann.call(
        "DELETE", "/api/policy/roles", json={"member": "user:boss", "role": "admin", "reason": "left"}
    )
    assert resp.status_code == 200, resp.text


async def test_changes_refused_before_their_handler_are_in_the_trail(admin: Admin) -> None:
    """An attack run found no record of a forged (cross-origin) change, nor of one whose body was
    refused (a reason of spaces). Both are recorded as admin.refused, naming the admin whose cookie
    the request carried."""
    link = {"member": "user:x", "role": "viewer"}
    forged = await admin.call(
        "POST", "/api/policy/roles", json={**link, "reason": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert forged.status_code == 403
    blank = await admin.call("POST", "/api/policy/roles", json={**link, "reason": "   "})
    assert blank.status_code == 400
    events = await admin.services.identity.audit.events(kind="admin.refused")
    seen = {(e.actor, e.subject, e.outcome, json.loads(e.details or "{}").get("error")) for e in events}
    # The subject is what was asked for (a first-day run found "policy" on every refusal).
    assert ("user:boss", "/api/policy/roles", "failure", "cross-origin-refused") in seen
    assert ("user:boss", "/api/policy/roles", "failure", "bad-request") in seen
    assert await admin.services.identity.audit.events(kind="admin.role.add") == []


async def test_a_browser_asking_for_no_such_console_page_gets_a_page(admin: Admin) -> None:
    """A first-day run found raw JSON in the browser for a mistyped console address."""
    page = await admin.call("GET", "/nope", headers={"Accept": "text/html"})
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "Page not found" in page.text
    api = await admin.call("GET", "/api/nope", headers={"Accept": "text/html"})
    assert (api.status_code, api.json()["error"]) == (404, "not-found")
