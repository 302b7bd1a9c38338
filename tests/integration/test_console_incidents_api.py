"""The console's Incidents and blocks API over real HTTP, on the embedded default (SQLite, the node's state file).

A real gateway (``python -m gateway serve``) with its admin listener; the loopback is a trusted proxy, so
requests tell the data plane who they come from with ``X-Forwarded-For``: one test machine is the
attacker, the blocked address, the bystander and the admin. What a block does is checked where it
matters: the gateway worker refuses the address (403 ``ip-blocked``) within the broadcast interval.

Users (as in ``test_admin_api``, whose fixtures this module reuses on its own site): ``boss`` an admin
with a fresh TOTP factor, ``root`` an admin by local role with a password only, ``carol`` no role.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import add_user, free_port, gateway_config, run_echo, run_gateway, wait_until
from tests.integration.http_client import PASSWORD, login, post_form
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
from tests.support.totp import oathtool

__all__ = ["boss", "carol"]  # fixtures, used by name

BLOCKED = "203.0.113.7"
NEIGHBOUR = "203.0.113.8"
SPRAYER = "198.51.100.50"
RANGE = "198.51.100.128/25"


def _config(
    tmp: Path, port: int, admin_port: int, echo_url: str, policy: Path, **admin: Any
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
        threat={"spraying": {"count": 3, "window": "10m", "responses": ["alert", "block_ip"]}},
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("console-incidents")
    policy_path = tmp / "policy.csv"
    policy_path.write_text(POLICY)
    port, admin_port = free_port(), free_port()
    with run_echo() as echo, run_gateway(tmp, _config(tmp, port, admin_port, echo.url, policy_path)) as gw:
        wait_admin_healthy(admin_port, gw.proc)
        for user, extra in (("boss", ()), ("root", ("--role", "admin")), ("carol", ())):
            add_user(gw.config_path, user, PASSWORD, *extra)
        yield Site(gw, admin_port, tmp / "data" / "gateway.db", policy_path)


def blocked(site: Site, ip: str) -> bool:
    """Whether the gateway worker refuses ``ip`` (the receive stage's check, before any route)."""
    resp = httpx.get(
        f"{site.gw.url}/probe",
        headers={"X-Forwarded-For": ip, "Accept": "application/json"},
        follow_redirects=False,
        timeout=30.0,
    )
    return resp.status_code == 403 and resp.json().get("error") == "ip-blocked"


def blocks(site: Site, client: httpx.Client) -> list[dict[str, Any]]:
    resp = api(site, client, "GET", "/api/blocks")
    assert resp.status_code == 200, resp.text
    found: list[dict[str, Any]] = resp.json()["blocks"]
    return found


def audits(site: Site, kind: str) -> list[dict[str, Any]]:
    return [{**dict(r), "details": json.loads(r["details"])} for r in site.audit(kind)]


# -- who may use it ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/incidents", None),
        ("GET", "/api/blocks", None),
        ("GET", "/api/incidents/inc-00000000", None),
        ("POST", "/api/blocks", {"address": BLOCKED, "reason": "r"}),
        ("POST", "/api/blocks/unblock", {"address": BLOCKED, "reason": "r"}),
        ("POST", "/api/incidents/inc-00000000/lift", {"reason": "r"}),
    ],
)
def test_without_a_session_it_is_401_and_for_a_non_admin_403(
    site: Site, carol: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> None:
    assert_error(api(site, None, method, path, json=body), 401, "authentication-required")
    assert_error(api(site, carol, method, path, json=body), 403, "admin-role-required")
    assert not blocked(site, BLOCKED)


def test_an_admin_without_a_fresh_factor_must_step_up_even_to_read(site: Site) -> None:
    root = signed_in(site, "root")
    try:
        assert_error(api(site, root, "GET", "/api/incidents"), 403, "step-up-required")
        resp = api(site, root, "POST", "/api/blocks", json={"address": BLOCKED, "reason": "r"})
        assert_error(resp, 403, "step-up-required")
    finally:
        root.close()
    assert not blocked(site, BLOCKED)


@pytest.mark.peer
def test_changes_from_another_origin_or_not_in_json_are_refused(site: Site, boss: httpx.Client) -> None:
    body = {"address": BLOCKED, "reason": "csrf"}
    evil = api(site, boss, "POST", "/api/blocks", json=body, headers={"Origin": "http://evil.example"})
    assert_error(evil, 403, "cross-origin-refused")
    cross = api(site, boss, "POST", "/api/blocks", json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert_error(cross, 403, "cross-origin-refused")
    form = api(site, boss, "POST", "/api/blocks", data=body)
    assert_error(form, 415, "unsupported-media-type")
    assert blocks(site, boss) == []
    assert not blocked(site, BLOCKED)


# -- blocking by hand -------------------------------------------------------------------------------


@pytest.mark.peer
def test_a_block_made_here_is_enforced_by_the_gateway_and_an_unblock_lifts_it(
    site: Site, boss: httpx.Client
) -> None:
    assert not blocked(site, BLOCKED)
    before = time.time()
    resp = api(
        site,
        boss,
        "POST",
        "/api/blocks",
        json={"address": BLOCKED, "expires_in": "1h", "reason": "port scan"},
    )
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["address"] == f"{BLOCKED}/32"
    assert result["incident"].startswith("inc-")
    # The worker hears the broadcast (the node's state file is polled every 100 ms).
    wait_until(lambda: blocked(site, BLOCKED), timeout=2.0, interval=0.05, what="block enforced")
    assert not blocked(site, NEIGHBOUR)

    [entry] = blocks(site, boss)
    assert (entry["address"], entry["reason"], entry["actor"]) == (f"{BLOCKED}/32", "port scan", "user:boss")
    assert entry["incident"] == result["incident"]
    assert 3500 < entry["remaining"] <= 3600
    listing = api(site, boss, "GET", "/api/incidents").json()
    [manual] = [i for i in listing["incidents"] if i["id"] == result["incident"]]
    assert (manual["rule"], manual["severity"], manual["status"], manual["opened_by"]) == (
        "manual", "low", "open", "user:boss",
    )  # fmt: skip

    [added] = [a for a in audits(site, "admin.block.add") if a["details"]["address"] == BLOCKED]
    assert (added["actor"], added["outcome"], added["details"]["reason"]) == (
        "user:boss",
        "success",
        "port scan",
    )
    assert any(e["actor"] == "user:boss" for e in audits(site, "incident.block_ip"))
    assert time.time() - before < 30

    # The attack: an admin session used from the blocked address (a stolen one, say) lifting its own
    # block from the console. The admin listener refuses the address as the data plane does.
    from_blocked = {"X-Forwarded-For": BLOCKED}
    assert_error(api(site, boss, "GET", "/api/blocks", headers=from_blocked), 403, "ip-blocked")
    lift = api(
        site,
        boss,
        "POST",
        "/api/blocks/unblock",
        json={"address": BLOCKED, "reason": "mine"},
        headers=from_blocked,
    )
    assert_error(lift, 403, "ip-blocked")
    assert [e["address"] for e in blocks(site, boss)] == [f"{BLOCKED}/32"]
    # Its public paths too: the metrics (who is signed in, what is denied) and the console's page.
    for path in ("/metrics", "/"):
        assert api(site, boss, "GET", path, headers=from_blocked).status_code == 403, path
    assert api(site, boss, "GET", "/api/blocks", headers={"X-Forwarded-For": NEIGHBOUR}).status_code == 200

    resp = api(site, boss, "POST", "/api/blocks/unblock", json={"address": BLOCKED, "reason": "scan over"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["address"] == f"{BLOCKED}/32"
    wait_until(lambda: not blocked(site, BLOCKED), timeout=2.0, interval=0.05, what="unblock enforced")
    assert blocks(site, boss) == []

    again = api(site, boss, "POST", "/api/blocks/unblock", json={"address": BLOCKED, "reason": "twice"})
    assert_error(again, 404, "not-blocked")
    removed = [(a["outcome"], a["details"]["reason"]) for a in audits(site, "admin.block.remove")]
    assert ("success", "scan over") in removed
    assert ("failure", "twice") in removed


@pytest.mark.peer
def test_a_range_is_enforced_for_every_address_in_it(site: Site, boss: httpx.Client) -> None:
    resp = api(
        site, boss, "POST", "/api/blocks", json={"address": RANGE, "expires_in": "15m", "reason": "botnet"}
    )
    assert resp.status_code == 200, resp.text
    wait_until(lambda: blocked(site, "198.51.100.200"), timeout=2.0, interval=0.05, what="range enforced")
    assert not blocked(site, "198.51.100.1")
    resp = api(site, boss, "POST", "/api/blocks/unblock", json={"address": RANGE, "reason": "done"})
    assert resp.status_code == 200, resp.text
    wait_until(lambda: not blocked(site, "198.51.100.200"), timeout=2.0, interval=0.05, what="range lifted")


BAD_BLOCKS: list[tuple[str, dict[str, Any], int, str, str]] = [
    # (what, body, status, error, a phrase the message must contain)
    ("everyone", {"address": "0.0.0.0/0", "reason": "r"}, 400, "block-refused", "too broad"),
    ("a /8", {"address": "10.0.0.0/8", "reason": "r"}, 400, "block-refused", "at most /16"),
    ("an IPv6 /16", {"address": "2001::/16", "reason": "r"}, 400, "block-refused", "at most /32"),
    ("the admin's own address", {"address": "127.0.0.1", "reason": "r"}, 400, "block-refused", "127.0.0.1"),
    ("the admin's own range", {"address": "127.0.0.0/16", "reason": "r"}, 400, "block-refused", "127.0.0.1"),
    ("not an address", {"address": "evil.example", "reason": "r"}, 400, "block-refused", "not an IP address"),
    ("for ever", {"address": BLOCKED, "expires_in": "91d", "reason": "r"}, 400, "block-refused", "90d"),
    (
        "no time",
        {"address": BLOCKED, "expires_in": "0s", "reason": "r"},
        400,
        "block-refused",
        "at least 1m",
    ),
    # Ended before any worker applied it: an incident saying so, and no block (a fuzzing run).
    (
        "a moment",
        {"address": BLOCKED, "expires_in": "1ms", "reason": "r"},
        400,
        "block-refused",
        "at least 1m",
    ),
    (
        "not a duration",
        {"address": BLOCKED, "expires_in": "soon", "reason": "r"},
        400,
        "block-refused",
        "30m",
    ),
    ("no reason", {"address": BLOCKED}, 400, "bad-request", "reason"),
    ("an empty reason", {"address": BLOCKED, "reason": ""}, 400, "bad-request", "reason"),
    ("an unknown field", {"address": BLOCKED, "reason": "r", "until": 9}, 400, "bad-request", "until"),
    ("a huge address", {"address": "1" * 65, "reason": "r"}, 400, "bad-request", "address"),
]


@pytest.mark.peer
@pytest.mark.parametrize(
    ("what", "body", "status", "error", "phrase"), BAD_BLOCKS, ids=[b[0] for b in BAD_BLOCKS]
)
def test_bad_blocks_are_refused_and_nothing_changes(
    site: Site, boss: httpx.Client, what: str, body: dict[str, Any], status: int, error: str, phrase: str
) -> None:
    resp = api(site, boss, "POST", "/api/blocks", json=body)
    message = assert_error(resp, status, error)["message"]
    assert phrase in message, (what, message)
    assert blocks(site, boss) == []
    assert not blocked(site, "127.0.0.1")
    if error == "block-refused":  # refused by the action, not by the body's shape: audited
        refused = [a for a in audits(site, "admin.block.add") if a["details"]["address"] == body["address"]]
        assert refused[-1]["outcome"] == "failure"
        assert refused[-1]["details"]["error"] == "block-refused"


# -- incidents ---------------------------------------------------------------------------------------


@pytest.mark.peer
def test_an_attack_raises_an_incident_whose_detail_shows_the_events_and_lifting_it_unblocks(
    site: Site, boss: httpx.Client
) -> None:
    with httpx.Client(base_url=site.gw.url, headers={"X-Forwarded-For": SPRAYER}, timeout=30.0) as attacker:
        for name in ("victim1", "victim2", "victim3"):
            assert login(attacker, name, "Winter2026!").status_code in (200, 401)
    wait_until(lambda: blocked(site, SPRAYER), what="sprayer blocked")

    listing = api(site, boss, "GET", "/api/incidents").json()
    [row] = [i for i in listing["incidents"] if i["rule"] == "spraying" and i["ip"] == SPRAYER]
    assert (row["status"], row["responses"], row["undoable"], row["opened_by"]) == (
        "open", ["block_ip"], True, "system:threat",
    )  # fmt: skip
    assert listing["open"] >= 1
    assert any(b["address"] == f"{SPRAYER}/32" and b["incident"] == row["id"] for b in listing["blocks"])

    detail = api(site, boss, "GET", f"/api/incidents/{row['id']}").json()
    # Three logins no account answers to: kept as three keyed digests, never as typed (a password
    # typed into the username box is often a valid name).
    raised = {e["subject"] for e in detail["raised"]}
    assert len(raised) == 3
    assert all(subject.startswith("~") for subject in raised)
    assert {(e["ip"], e["outcome"]) for e in detail["raised"]} == {(SPRAYER, "failure")}
    assert [e["kind"] for e in detail["related"]] == ["threat.spraying"]
    assert detail["evidence"]["accounts"] == 3
    [action] = detail["actions"]
    assert (action["kind"], action["target"], action["lifted"]) == ("block_ip", f"{SPRAYER}/32", False)

    resp = api(site, boss, "POST", f"/api/incidents/{row['id']}/lift", json={"reason": "test traffic"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["undone"] == [f"block_ip {SPRAYER}/32"]
    wait_until(lambda: not blocked(site, SPRAYER), timeout=2.0, interval=0.05, what="lift enforced")

    detail = api(site, boss, "GET", f"/api/incidents/{row['id']}").json()
    assert (detail["status"], detail["lifted_by"]) == ("lifted", "user:boss")
    assert [e["kind"] for e in detail["related"]][:2] == ["admin.incident.lift", "incident.lifted"]
    again = api(site, boss, "POST", f"/api/incidents/{row['id']}/lift", json={"reason": "again"})
    assert_error(again, 409, "incident-already-lifted")
    lifts = [(a["outcome"], a["details"]["reason"]) for a in audits(site, "admin.incident.lift")]
    assert ("success", "test traffic") in lifts
    assert ("failure", "again") in lifts


@pytest.mark.peer
def test_unknown_and_malformed_incident_ids(site: Site, boss: httpx.Client) -> None:
    assert_error(api(site, boss, "GET", "/api/incidents/inc-00000000"), 404, "incident-not-found")
    assert_error(api(site, boss, "GET", "/api/incidents/%3Cscript%3E"), 400, "bad-incident-id")
    assert_error(api(site, boss, "GET", "/api/incidents/INC-1"), 400, "bad-incident-id")
    lift = api(site, boss, "POST", "/api/incidents/inc-00000000/lift", json={"reason": "r"})
    assert_error(lift, 404, "incident-not-found")
    assert_error(api(site, boss, "POST", "/api/incidents/inc-00000000/lift", json={}), 400, "bad-request")
    assert_error(api(site, boss, "GET", "/api/incidents", params={"limit": 0}), 400, "bad-request")
    schema = api(site, boss, "GET", "/api/schema/openapi.json").json()["paths"]
    for path in ("/api/incidents", "/api/incidents/{incident_id}", "/api/blocks", "/api/blocks/unblock"):
        assert path in schema, path


# -- destructive actions ask for a fresh factor --------------------------------------------------------


@pytest.mark.peer
def test_lifting_and_unblocking_need_a_second_factor_from_the_last_moments(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """On a gateway whose destructive actions need a factor from the last 3 s: a block (not destructive)
    goes through; once the factor is older, unblocking is refused with the step-up page and changes
    nothing; after the step-up it goes through."""
    tmp = tmp_path_factory.mktemp("console-incidents-stale")
    policy_path = tmp / "policy.csv"
    policy_path.write_text(POLICY)
    port, admin_port = free_port(), free_port()
    config = _config(
        tmp, port, admin_port, "http://127.0.0.1:9", policy_path, destructive_reauth_max_age="3s"
    )
    with run_gateway(tmp, config) as gw:
        wait_admin_healthy(admin_port, gw.proc)
        add_user(gw.config_path, "boss", PASSWORD)
        brief = Site(gw, admin_port, tmp / "data" / "gateway.db", policy_path)
        client = signed_in(brief, "boss")
        try:
            secret = enroll_totp(client)
            resp = api(brief, client, "POST", "/api/blocks", json={"address": BLOCKED, "reason": "r"})
            assert resp.status_code == 200, resp.text

            def stale() -> bool:
                probe = api(
                    brief, client, "POST", "/api/incidents/inc-00000000/lift", json={"reason": "probe"}
                )
                return probe.status_code == 403  # 404 (no such incident) while the factor is fresh

            wait_until(stale, timeout=15.0, interval=0.5, what="the factor too old for destructive actions")
            resp = api(brief, client, "POST", "/api/blocks/unblock", json={"address": BLOCKED, "reason": "r"})
            body = assert_error(resp, 403, "step-up-required")
            assert body["location"] == f"{gw.url}/.gateway/mfa?need=any"
            assert blocked(brief, BLOCKED)
            refused = audits(brief, "admin.block.remove")
            assert [(a["outcome"], a["details"]["error"]) for a in refused] == [
                ("failure", "step-up-required")
            ]
            # Reading still works with the older factor.
            assert api(brief, client, "GET", "/api/blocks").status_code == 200

            stepped = post_form(
                client, "/.gateway/mfa/totp", {"code": oathtool(secret, time.time()), "rd": ""}
            )
            assert stepped.status_code == 302, stepped.text
            resp = api(brief, client, "POST", "/api/blocks/unblock", json={"address": BLOCKED, "reason": "r"})
            assert resp.status_code == 200, resp.text
            wait_until(lambda: not blocked(brief, BLOCKED), timeout=2.0, interval=0.05, what="unblocked")
        finally:
            client.close()
