"""The incident records API (``/api/incident-cases``) over real HTTP, against a real gateway with its
admin listener, a real SMTP server for the notifications, on the embedded default.

A real brute-force detection (three wrong passwords from one address) raises the record; the signed-in
admin walks it through the five phases with the API alone: containment seals evidence that hashes to
what the record and the chain say, eradication ends the affected sessions, closing is refused while the
lock of the detection stands and passes once lifted, the report comes in both formats, the affected
people are previewed and then told by email. Refusals change nothing and are answered in the admin
API's JSON error shape.

Users (as in ``test_admin_api``, whose helpers this module reuses on its own site): ``boss`` an admin
with a fresh TOTP factor, ``root`` an admin by local role with a password only, ``carol`` no role;
``victim`` and ``bob`` the affected people, with email addresses.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from admin.console.render import CONSOLE_CSP
from tests.integration.harness import add_user, free_port, gateway_config, run_echo, run_gateway, wait_until
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, login, post_form
from tests.integration.test_admin_api import (
    POLICY,
    Site,
    api,
    assert_error,
    boss,
    carol,
    signed_in,
    wait_admin_healthy,
)
from tests.integration.test_signin_http import enroll_totp
from tests.support.smtp_server import SmtpServer, smtp_server
from tests.support.totp import oathtool
from tests.support.webhook_receiver import WebhookReceiver, webhook_receiver

__all__ = ["boss", "carol"]  # fixtures, used by name

ATTACKER = "198.51.100.77"
BASE = "/api/incident-cases"


def _config(
    tmp: Path,
    port: int,
    admin_port: int,
    echo_url: str,
    policy: Path,
    smtp_port: int,
    hook_url: str | None = None,
    **admin: Any,
) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        {"name": "app", "host": "127.0.0.1", "upstreams": [echo_url], "mfa": "none"}
    ]
    return gateway_config(
        tmp,
        port,
        routes,
        session={"insecure_cookies": True},
        trusted_proxies=["127.0.0.1/32"],
        policy={"file": str(policy)},
        admin={"listen": f"127.0.0.1:{admin_port}", **admin},
        threat={
            "brute_force": {"count": 3, "window": "10m", "responses": ["alert", "lock_account"]},
            # Far longer than any console call may take: a console that waited for the receiver shows.
            **({"webhook_url": hook_url, "webhook_timeout": "90s"} if hook_url else {}),
        },
        notify={
            "organisation": "Example Ltd",
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "sender": "sec@example.com"},
        },
    )


@pytest.fixture(scope="module")
def mail() -> Iterator[SmtpServer]:
    """The module gateway's mail server (a fixture of its own, so tests can read what it received)."""
    with smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def hook() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mail: SmtpServer, hook: WebhookReceiver) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("console-incident-cases")
    policy_path = tmp / "policy.csv"
    policy_path.write_text(POLICY)
    port, admin_port = free_port(), free_port()
    with (
        run_echo() as echo,
        run_gateway(tmp, _config(tmp, port, admin_port, echo.url, policy_path, mail.port, hook.url)) as gw,
    ):
        wait_admin_healthy(admin_port, gw.proc)
        for user, extra in (
            ("boss", ()),
            ("root", ("--role", "admin")),
            ("carol", ()),
            ("victim", ("--email", "victim@example.org")),
            ("bob", ("--email", "bob@example.org")),
        ):
            add_user(gw.config_path, user, PASSWORD, *extra)
        yield Site(gw, admin_port, tmp / "data" / "gateway.db", policy_path)


def audits(site: Site, kind: str) -> list[dict[str, Any]]:
    return [{**dict(r), "details": json.loads(r["details"])} for r in site.audit(kind)]


def audited_about(site: Site, subject: str) -> list[tuple[str, str, dict[str, Any]]]:
    with closing(sqlite3.connect(site.db_path)) as conn:
        rows = conn.execute(
            "SELECT kind, actor, details FROM audit_events WHERE subject = ? ORDER BY seq", (subject,)
        ).fetchall()
    return [(k, a, json.loads(d)) for k, a, d in rows]


def ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def still_signed_in(site: Site, client: httpx.Client) -> bool:
    """Whether the gateway lets the session through (the policy allows /docs/ to everyone signed in)."""
    session = client.cookies.get(SESSION_COOKIE)
    resp = httpx.get(
        f"{site.gw.url}/docs/probe",
        headers={"Cookie": f"{SESSION_COOKIE}={session}", "Accept": "application/json"},
        timeout=30,
    )
    return resp.status_code == 200


def case_of(site: Site, boss: httpx.Client, case_id: str) -> dict[str, Any]:
    return ok(api(site, boss, "GET", f"{BASE}/{case_id}"))


# -- the five phases ----------------------------------------------------------------------------------


@pytest.mark.peer
def test_a_brute_force_incident_walked_through_the_phases_with_the_api(
    site: Site, boss: httpx.Client, mail: SmtpServer
) -> None:
    bob = signed_in(site, "bob")
    try:
        _walk(site, boss, bob, mail)
    finally:
        bob.close()


def _walk(site: Site, boss: httpx.Client, bob: httpx.Client, mail: SmtpServer) -> None:
    assert still_signed_in(site, bob)
    # Detection: three wrong passwords for the victim from one address raise the record.
    with httpx.Client(
        base_url=site.gw.url, follow_redirects=False, timeout=30.0, headers={"X-Forwarded-For": ATTACKER}
    ) as attacker:
        for _ in range(3):
            login(attacker, "victim", "not the password")

    def raised() -> list[dict[str, Any]]:
        listing = ok(api(site, boss, "GET", BASE, params={"open": "true"}))["cases"]
        return [c for c in listing if c["rule"] == "brute_force"]

    [case] = wait_until(raised, timeout=30, what="a brute-force incident record")
    case_id = case["id"]
    assert (case["phase"], case["affected_users"], case["addresses"]) == ("detection", ["victim"], [ATTACKER])
    assert case["opened_by"] == "rule:brute_force"

    # Analysis: an owner, bob is affected too, a note.
    updated = ok(
        api(
            site, boss, "POST", f"{BASE}/{case_id}/update",
            json={"owner": "alice", "users": ["bob"], "severity": "high"},
        )
    )  # fmt: skip
    assert (updated["owner"], updated["severity"], updated["affected_users"]) == (
        "alice", "high", ["victim", "bob"],
    )  # fmt: skip
    noted = ok(api(site, boss, "POST", f"{BASE}/{case_id}/notes", json={"text": "a VPN exit node"}), 201)
    assert [(e["kind"], e["actor"], e["text"]) for e in noted["timeline"]][-1] == (
        "note", "user:boss", "a VPN exit node",
    )  # fmt: skip

    # The workflow refuses shortcuts and nonsense, and nothing changes.
    early = api(site, boss, "POST", f"{BASE}/{case_id}/phase", json={"phase": "closed"})
    assert "closes from post-incident" in assert_error(early, 409, "phase-refused")["message"]
    bad = api(site, boss, "POST", f"{BASE}/{case_id}/phase", json={"phase": "panic"})
    assert "not a phase" in assert_error(bad, 400, "bad-phase")["message"]
    assert case_of(site, boss, case_id)["phase"] == "detection"

    # Containment seals the evidence: the file hashes to the record's sha256, and the chain has it.
    moved = ok(
        api(site, boss, "POST", f"{BASE}/{case_id}/phase", json={"phase": "containment", "note": "go"})
    )
    sealed = moved["sealed"]
    assert moved["case"]["phase"] == "containment"
    assert moved["case"]["evidence"] == [sealed]
    assert hashlib.sha256(Path(sealed["file"]).read_bytes()).hexdigest() == sealed["sha256"]
    assert sealed["records"] > 0
    chain = [(a, d["sha256"]) for k, a, d in audited_about(site, case_id) if k == "incident.evidence_sealed"]
    assert chain == [("user:boss", sealed["sha256"])]

    # Eradication: everyone affected loses their sessions.
    ok(api(site, boss, "POST", f"{BASE}/{case_id}/phase", json={"phase": "eradication"}))
    unknown = api(site, boss, "POST", f"{BASE}/{case_id}/actions", json={"action": "explode", "reason": "r"})
    assert "not an action" in assert_error(unknown, 400, "bad-request")["message"]
    assert still_signed_in(site, bob)
    acted = ok(
        api(
            site, boss, "POST", f"{BASE}/{case_id}/actions", json={"action": "revoke-sessions", "reason": "r"}
        )
    )
    assert acted["done"] == {"victim": "sessions revoked", "bob": "sessions revoked"}
    wait_until(lambda: not still_signed_in(site, bob), timeout=10, what="bob's session ended")

    # Recovery: closing is refused with the whole checklist while the detection's lock stands.
    ok(api(site, boss, "POST", f"{BASE}/{case_id}/phase", json={"phase": "recovery"}))
    checks = ok(api(site, boss, "GET", f"{BASE}/{case_id}/checks"))
    failed = {c["name"]: c["detail"] for c in checks["checks"] if not c["passed"]}
    assert checks["passed"] is False
    assert list(failed) == ["containment_lifted"]
    assert "lock_account victim" in failed["containment_lifted"]
    ok(api(site, boss, "POST", f"{BASE}/{case_id}/phase", json={"phase": "post-incident"}))
    refused = api(site, boss, "POST", f"{BASE}/{case_id}/phase", json={"phase": "closed"})
    body = assert_error(refused, 409, "recovery-checks-failed")
    assert [c["name"] for c in body["checks"] if not c["passed"]] == ["containment_lifted"]
    assert {c["name"] for c in body["checks"]} >= {"audit_chain", "readiness", "policy_version", "evidence"}
    assert case_of(site, boss, case_id)["phase"] == "post_incident"

    lifted = ok(api(site, boss, "POST", f"{BASE}/{case_id}/lift", json={"reason": "attacker gone"}))
    assert lifted["detections"] == [case_id]
    assert ok(api(site, boss, "GET", f"{BASE}/{case_id}/checks"))["passed"] is True

    # Post-incident: the people are previewed (nothing sent), then told.
    preview = ok(api(site, boss, "POST", f"{BASE}/{case_id}/notify", json={"preview": True}))
    assert sorted(p["to"] for p in preview["previews"]) == [
        "bob <bob@example.org>",
        "victim <victim@example.org>",
    ]
    assert all(f"Please quote the reference {case_id}." in p["body"] for p in preview["previews"])
    assert preview["deliveries"] == []
    assert mail.received == []
    todo = "Choose a new password when you next sign in."
    # A send is bound to the preview read: these messages (another text) are not what it showed, and
    # a console send before any preview is refused; nothing goes out.
    # Left out too: a send unbound to a preview (a re-attack run's API send) is refused.
    for previewed in ({"previewed": preview["digest"]}, {"previewed": ""}, {}):
        stale = api(
            site,
            boss,
            "POST",
            f"{BASE}/{case_id}/notify",
            json={"preview": False, "what_to_do": todo, **previewed},
        )
        assert_error(stale, 409, "notice-changed")
    assert mail.received == []
    # What to do is read as the console shows it: nothing a reader cannot see (a right-to-left override
    # would make the mail read otherwise), as in a note.
    hidden = api(
        site, boss, "POST", f"{BASE}/{case_id}/notify", json={"preview": True, "what_to_do": "Do \u202eton"}
    )
    assert_error(hidden, 400, "bad-request")
    assert "cannot see" in hidden.json()["message"]
    read = ok(api(site, boss, "POST", f"{BASE}/{case_id}/notify", json={"preview": True, "what_to_do": todo}))
    assert read["digest"] != preview["digest"]
    sent = ok(
        api(
            site,
            boss,
            "POST",
            f"{BASE}/{case_id}/notify",
            json={"preview": False, "what_to_do": todo, "previewed": read["digest"]},
        )
    )
    assert sorted((d["username"], d["sent"]) for d in sent["deliveries"]) == [("bob", True), ("victim", True)]
    assert sorted(r.rcpt_tos for r in mail.received) == [("bob@example.org",), ("victim@example.org",)]
    assert all(todo in r.message.get_content() for r in mail.received)

    ok(api(site, boss, "POST", f"{BASE}/{case_id}/update", json={"root_cause": "a reused password"}))
    report = api(site, boss, "GET", f"{BASE}/{case_id}/report", params={"format": "json"})
    doc = ok(report)
    assert f'filename="post-incident-{case_id}.json"' in report.headers["content-disposition"]
    phases = [e["details"]["to"] for e in doc["timeline"] if "to" in e.get("details", {})]
    assert phases == ["containment", "eradication", "recovery", "post_incident"]
    assert [a["details"]["action"] for a in doc["actions"] if a["kind"] == "action"] == [
        "revoke-sessions",
        "lift",
    ]
    assert doc["incident"]["evidence"][0]["sha256"] == sealed["sha256"]
    md = api(site, boss, "GET", f"{BASE}/{case_id}/report", params={"format": "md"})
    assert md.status_code == 200, md.text
    assert md.headers["content-type"].startswith("text/markdown")
    assert f'filename="post-incident-{case_id}.md"' in md.headers["content-disposition"]
    assert f"# Post-incident report: brute force: victim ({case_id})" in md.text
    assert "a reused password" in md.text
    assert sealed["sha256"] in md.text

    closed = ok(api(site, boss, "POST", f"{BASE}/{case_id}/phase", json={"phase": "closed"}))
    assert closed["case"]["closed_at"] is not None
    assert all(c["passed"] for c in closed["checks"])
    again = api(site, boss, "POST", f"{BASE}/{case_id}/phase", json={"phase": "containment"})
    assert "is closed" in assert_error(again, 409, "phase-refused")["message"]
    # A closed record stays closed: an attack run rewrote one's root cause, added a victim, ended
    # sessions and sent notices under it.
    entries = len(case_of(site, boss, case_id)["timeline"])
    for suffix, body in (
        ("/update", {"root_cause": "someone else", "users": ["carol"]}),
        ("/notes", {"text": "after the fact"}),
        ("/seal", {}),
        ("/actions", {"action": "revoke-sessions", "reason": "r"}),
        ("/lift", {"reason": "r"}),
        ("/notify", {"preview": False, "what_to_do": todo, "previewed": read["digest"]}),
        ("/restore-policy", {"version": 1, "reason": "r"}),
    ):
        refused = api(site, boss, "POST", f"{BASE}/{case_id}{suffix}", json=body)
        assert "is closed" in assert_error(refused, 409, "phase-refused")["message"], suffix
    after = case_of(site, boss, case_id)
    assert len(after["timeline"]) == entries
    assert after["root_cause"] == "a reused password"
    assert len(mail.received) == 2
    assert [c["id"] for c in ok(api(site, boss, "GET", BASE, params={"open": "true"}))["cases"]].count(
        case_id
    ) == 0

    # The trail: every change by the admin, the refusals as failures.
    about = audited_about(site, case_id)
    assert [d["to"] for k, a, d in about if k == "incident.phase" and a == "user:boss"] == [
        "containment", "eradication", "recovery", "post_incident", "closed",
    ]  # fmt: skip
    phases_tried = [(a["outcome"], a["details"]["phase"]) for a in audits(site, "admin.incident_case.phase")]
    assert ("failure", "panic") in phases_tried
    assert ("success", "containment") in phases_tried
    assert {a["actor"] for a in audits(site, "admin.incident_case.phase")} == {"user:boss"}
    errors = [a["details"].get("error") for a in audits(site, "admin.incident_case.phase")]
    assert errors.count("recovery-checks-failed") == 1


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", BASE, None),
        ("GET", f"{BASE}/inc-00000000", None),
        ("GET", f"{BASE}/inc-00000000/report", None),
        ("POST", BASE, {"title": "t"}),
        ("POST", f"{BASE}/inc-00000000/phase", {"phase": "containment"}),
        ("POST", f"{BASE}/inc-00000000/actions", {"action": "disable", "reason": "r"}),
    ],
)
def test_without_a_session_it_is_401_for_a_non_admin_403_and_without_a_factor_a_step_up(
    site: Site, carol: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> None:
    before = len(site.audit("incident.opened"))
    assert_error(api(site, None, method, path, json=body), 401, "authentication-required")
    assert_error(api(site, carol, method, path, json=body), 403, "admin-role-required")
    root = signed_in(site, "root")
    try:
        assert_error(api(site, root, method, path, json=body), 403, "step-up-required")
    finally:
        root.close()
    assert len(site.audit("incident.opened")) == before


@pytest.mark.peer
def test_unknown_and_malformed_ids(site: Site, boss: httpx.Client) -> None:
    for method, suffix, body in (
        ("GET", "", None),
        ("GET", "/checks", None),
        ("GET", "/report", None),
        ("POST", "/notes", {"text": "t"}),
        ("POST", "/phase", {"phase": "containment"}),
        ("POST", "/seal", {}),
        ("POST", "/actions", {"action": "revoke-sessions", "reason": "r"}),
        ("POST", "/lift", {"reason": "r"}),
        ("POST", "/notify", {}),
    ):
        assert_error(
            api(site, boss, method, f"{BASE}/inc-00000000{suffix}", json=body), 404, "incident-not-found"
        )
        assert_error(api(site, boss, method, f"{BASE}/INC-1{suffix}", json=body), 400, "bad-incident-id")
    assert not (site.db_path.parent / "incidents" / "inc-00000000").exists()
    assert_error(api(site, boss, "GET", BASE, params={"limit": 0}), 400, "bad-request")
    report = api(site, boss, "GET", f"{BASE}/inc-00000000/report", params={"format": "pdf"})
    assert_error(report, 400, "bad-request")
    schema = api(site, boss, "GET", "/api/schema/openapi.json").json()["paths"]
    for path in (BASE, f"{BASE}/{{case_id}}", f"{BASE}/{{case_id}}/phase", f"{BASE}/{{case_id}}/notify"):
        assert path in schema, path


BAD_OPENS: list[tuple[str, dict[str, Any], str]] = [
    ("no title", {"severity": "low"}, "title"),
    ("an empty title", {"title": "   "}, "must not be empty"),
    ("an unknown severity", {"title": "t", "severity": "apocalyptic"}, "Unknown severity"),
    ("an unknown field", {"title": "t", "owner": "x"}, "owner"),
    ("a control character in a name", {"title": "t", "users": ["a\nb"]}, "users"),
    ("a title too long", {"title": "x" * 201}, "title"),
]


@pytest.mark.peer
@pytest.mark.parametrize(("what", "body", "phrase"), BAD_OPENS, ids=[b[0] for b in BAD_OPENS])
def test_bad_input_is_400_and_opens_nothing(
    site: Site, boss: httpx.Client, what: str, body: dict[str, Any], phrase: str
) -> None:
    before = ok(api(site, boss, "GET", BASE, params={"limit": 1000}))["cases"]
    message = assert_error(api(site, boss, "POST", BASE, json=body), 400, "bad-request")["message"]
    assert phrase in message, (what, message)
    assert ok(api(site, boss, "GET", BASE, params={"limit": 1000}))["cases"] == before


@pytest.mark.peer
def test_a_case_opened_by_hand_notes_policy_restore_and_own_account(site: Site, boss: httpx.Client) -> None:
    opened = ok(
        api(
            site, boss, "POST", BASE,
            json={"title": "suspected admin compromise", "severity": "critical", "users": ["boss"]},
        ),
        201,
    )  # fmt: skip
    case_id = opened["id"]
    assert (opened["phase"], opened["opened_by"], opened["severity"]) == (
        "detection",
        "user:boss",
        "critical",
    )
    empty = api(site, boss, "POST", f"{BASE}/{case_id}/notes", json={"text": "   "})
    assert "must not be empty" in assert_error(empty, 400, "bad-request")["message"]
    # Disabling the admin's own account would shut them out of the console: refused, nothing done.
    # A destructive action names the accounts the admin confirmed: without them, or with a list the
    # incident no longer names (a re-attack run: an account added after the admin read the incident
    # was disabled with the rest), nothing is done.
    act = f"{BASE}/{case_id}/actions"
    unnamed = api(site, boss, "POST", act, json={"action": "disable", "reason": "r"})
    assert "accounts" in assert_error(unnamed, 400, "bad-request")["message"]
    stale = api(site, boss, "POST", act, json={"action": "disable", "reason": "r", "accounts": ["bob"]})
    assert "names boss now" in assert_error(stale, 409, "affected-changed")["message"]
    own = api(site, boss, "POST", act, json={"action": "disable", "reason": "r", "accounts": ["boss"]})
    assert_error(own, 409, "own-account")
    # Ending the admin's own sessions too (a re-attack run: failed sign-ins from the incident's address
    # added the admin, and revoke-sessions signed them out).
    ended = api(site, boss, "POST", act, json={"action": "revoke-sessions", "reason": "r"})
    assert_error(ended, 409, "own-account")
    # And a forced password change, which ends them too (a re-attack run signed itself out so).
    forced = api(
        site, boss, "POST", act, json={"action": "force-password-change", "reason": "r", "accounts": ["boss"]}
    )
    assert_error(forced, 409, "own-account")
    assert [e["kind"] for e in case_of(site, boss, case_id)["timeline"]] == ["phase"]

    # A policy restore for the incident: an unknown version is 404; the first version is restored.
    missing = api(
        site, boss, "POST", f"{BASE}/{case_id}/restore-policy", json={"version": 999, "reason": "r"}
    )
    assert_error(missing, 404, "policy-version-not-found")
    resp = api(
        site, boss, "POST", f"{BASE}/{case_id}/restore-policy", json={"version": 1, "reason": "known good"}
    )
    restored = ok(resp)
    assert restored["restored_from"] == 1
    [entry] = [e for e in case_of(site, boss, case_id)["timeline"] if e["kind"] == "action"]
    assert (entry["actor"], entry["details"]["action"], entry["details"]["from"]) == (
        "user:boss", "restore-policy", 1,
    )  # fmt: skip
    tries = [
        (a["outcome"], a["details"].get("error")) for a in audits(site, "admin.incident_case.restore_policy")
    ]
    # (The last two: another test of this site tries one on a closed record.)
    assert tries[-2:] == [("failure", "policy-version-not-found"), ("success", None)]


@pytest.mark.peer
def test_destructive_calls_need_a_reason_which_the_trail_keeps(site: Site, boss: httpx.Client) -> None:
    case_id = ok(api(site, boss, "POST", BASE, json={"title": "shared account", "users": ["bob"]}), 201)["id"]
    for suffix, body in (("/actions", {"action": "revoke-sessions"}), ("/lift", {})):
        for missing in (body, {**body, "reason": ""}):
            refused = api(site, boss, "POST", f"{BASE}/{case_id}{suffix}", json=missing)
            assert "reason" in assert_error(refused, 400, "bad-request")["message"]
    assert [e["kind"] for e in case_of(site, boss, case_id)["timeline"]] == ["phase"]
    body = {"action": "revoke-sessions", "reason": "the account was shared"}
    ok(api(site, boss, "POST", f"{BASE}/{case_id}/actions", json=body))
    [acted] = [a for a in audits(site, "admin.incident_case.action") if a["subject"] == case_id]
    assert (acted["outcome"], acted["details"]["reason"]) == ("success", "the account was shared")


# -- the console's pages -------------------------------------------------------------------------------


@pytest.mark.peer
def test_the_response_pages_need_an_admin_with_a_factor_and_render_under_the_console_csp(
    site: Site, boss: httpx.Client, carol: httpx.Client
) -> None:
    case_id = ok(api(site, boss, "POST", BASE, json={"title": "page check <b>bold</b>"}), 201)["id"]
    html = {"Accept": "text/html"}
    paths = ("/incident-cases", f"/incident-cases/{case_id}", "/lockdown")
    root = signed_in(site, "root")
    try:
        for path in paths:
            anonymous = api(site, None, "GET", path, headers=html, follow_redirects=False)
            assert anonymous.status_code == 303, (path, anonymous.text)
            assert "/.gateway/login" in anonymous.headers["location"]
            no_role = api(site, carol, "GET", path, headers=html, follow_redirects=False)
            assert no_role.status_code == 403, path
            assert "text/html" in no_role.headers["content-type"]
            no_factor = api(site, root, "GET", path, headers=html, follow_redirects=False)
            assert no_factor.status_code == 303, path
            assert "/.gateway/mfa" in no_factor.headers["location"]
            shown = api(site, boss, "GET", path, headers=html)
            assert shown.status_code == 200, (path, shown.text)
            assert shown.headers["content-security-policy"] == CONSOLE_CSP.decode()
            assert "<script>" not in shown.text
            assert " style=" not in shown.text
            assert '<a href="/incident-cases" aria-current="page">Response</a>' in shown.text
    finally:
        root.close()
    listed = api(site, boss, "GET", "/incident-cases", headers=html).text
    assert f'href="/incident-cases/{case_id}"' in listed
    # What a record says is text, never markup.
    assert "page check &lt;b&gt;bold&lt;/b&gt;" in listed
    assert "<b>bold</b>" not in listed
    for bad, status in ((f"{BASE}/INC-1", 400), (f"{BASE}/inc-00000000", 404)):
        answer = api(site, boss, "GET", bad.replace("/api", ""), headers=html)
        assert answer.status_code == status
        assert "text/html" in answer.headers["content-type"]


# -- destructive calls ask for a fresh factor ---------------------------------------------------------


@pytest.mark.peer
def test_destructive_calls_need_a_second_factor_from_the_last_moments(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """On a gateway whose destructive actions need a factor from the last 3 s: once the admin's factor
    is older, account actions, sending, lifting and restoring are refused with the step-up page and
    change nothing, while reading, a note and a preview still work; after the step-up they go through."""
    tmp = tmp_path_factory.mktemp("console-incident-cases-stale")
    policy_path = tmp / "policy.csv"
    policy_path.write_text(POLICY)
    port, admin_port = free_port(), free_port()
    with smtp_server() as mail:
        config = _config(
            tmp, port, admin_port, "http://127.0.0.1:9", policy_path, mail.port,
            destructive_reauth_max_age="3s",
        )  # fmt: skip
        with run_gateway(tmp, config) as gw:
            wait_admin_healthy(admin_port, gw.proc)
            add_user(gw.config_path, "boss", PASSWORD)
            add_user(gw.config_path, "bob", PASSWORD, "--email", "bob@example.org")
            brief = Site(gw, admin_port, tmp / "data" / "gateway.db", policy_path)
            client = signed_in(brief, "boss")
            try:
                _stale(brief, client, mail)
            finally:
                client.close()


def _stale(site: Site, client: httpx.Client, mail: SmtpServer) -> None:
    secret = enroll_totp(client)
    case_id = ok(api(site, client, "POST", BASE, json={"title": "t", "users": ["bob"]}), 201)["id"]

    def stale() -> bool:
        probe = api(site, client, "POST", f"{BASE}/inc-00000000/lift", json={"reason": "r"})
        return probe.status_code == 403  # 404 (no such incident) while the factor is fresh

    wait_until(stale, timeout=15.0, interval=0.5, what="the factor too old for destructive actions")
    for suffix, body in (
        ("/actions", {"action": "revoke-sessions", "reason": "r"}),
        ("/notify", {"preview": False}),
        ("/lift", {"reason": "r"}),
        ("/restore-policy", {"version": 1, "reason": "r"}),
    ):
        resp = api(site, client, "POST", f"{BASE}/{case_id}{suffix}", json=body)
        assert (
            assert_error(resp, 403, "step-up-required")["location"] == f"{site.gw.url}/.gateway/mfa?need=any"
        )
    assert mail.received == []
    assert [e["kind"] for e in case_of(site, client, case_id)["timeline"]] == ["phase"]
    refused = [(a["outcome"], a["details"]["error"]) for a in audits(site, "admin.incident_case.action")]
    assert refused == [("failure", "step-up-required")]
    # Reading, a note and a preview are not destructive.
    ok(api(site, client, "POST", f"{BASE}/{case_id}/notes", json={"text": "still here"}), 201)
    assert len(ok(api(site, client, "POST", f"{BASE}/{case_id}/notify", json={}))["previews"]) == 1
    unknown = api(site, client, "POST", f"{BASE}/{case_id}/notify", json={"template": "nope"})
    assert "no notification template 'nope'" in assert_error(unknown, 400, "notify-bad-message")["message"]

    stepped = post_form(client, "/.gateway/mfa/totp", {"code": oathtool(secret, time.time()), "rd": ""})
    assert stepped.status_code == 302, stepped.text
    acted = ok(
        api(
            site,
            client,
            "POST",
            f"{BASE}/{case_id}/actions",
            json={"action": "revoke-sessions", "reason": "r"},
        )
    )
    assert acted["done"] == {"bob": "sessions revoked"}


@pytest.mark.peer
def test_a_ticketing_tool_that_does_not_answer_never_holds_up_the_console(
    site: Site, boss: httpx.Client, hook: WebhookReceiver
) -> None:
    """During an incident the ticketing tool may be down too: each change goes out from a queue, so
    the admin's calls answer at once while the receiver hangs (threat.webhook_timeout is 90 s here;
    a console that POSTed in the call would not answer within the client's 30 s), and the events
    arrive, in order, once it answers again."""
    hook.open.clear()
    try:
        opened = ok(
            api(site, boss, "POST", BASE, json={"title": "ticketing is down", "severity": "low"}), 201
        )
        case_id = opened["id"]
        for phase in ("containment", "eradication"):
            ok(api(site, boss, "POST", f"{BASE}/{case_id}/phase", json={"phase": phase, "note": phase}))
        assert not [e for e in hook.events if e["incident"]["id"] == case_id]
    finally:
        hook.open.set()

    def mine() -> list[dict[str, Any]]:
        return [e for e in hook.events if e["incident"]["id"] == case_id]

    wait_until(lambda: len(mine()) == 4, timeout=30, what="the four events at the receiver")
    assert [(e["event"], e["incident"]["phase"]) for e in mine()] == [
        ("opened", "detection"),
        ("phase", "containment"),
        ("evidence", "containment"),  # containment seals the evidence
        ("phase", "eradication"),
    ]
