"""The Audit, Keys and Settings sections' JSON API over real HTTP: a real gateway with its admin listener
(the fixtures of ``test_admin_api``: ``boss`` is an admin with a fresh TOTP factor, ``carol`` a
signed-in non-admin), and a second, ``strict`` one whose destructive actions need a second factor used
within the last second and whose config holds secrets.

What is checked where it matters: an exported bundle verifies with ``gateway audit verify-bundle``; a
tampered record makes verification fail at its chain position; a rotated signing key is the one the
listing shows; no secret of the config reaches the settings JSON or page. And the attacks: no session,
a non-admin, a cross-origin or non-JSON change, bad input (400, nothing changed), a rotation with a
second factor older than ``admin.destructive_reauth_max_age`` (403 step-up); every action is audited.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from gateway.clock import SYSTEM_CLOCK
from gateway.crypto.keyring import Keyring
from gateway.identity.ledger import AccountLedger, Entry
from gateway.store.db import Database
from tests.integration.harness import add_user, free_port, gateway_config, run_cli, run_echo, run_gateway
from tests.integration.http_client import PASSWORD
from tests.integration.test_admin_api import (
    POLICY,
    Site,
    api,
    assert_error,
    boss,
    carol,
    signed_in,
    site,
    wait_admin_healthy,
)
from tests.integration.test_signin_http import enroll_totp
from tests.support.wait import wait_until

__all__ = ["boss", "carol", "site"]

WEBHOOK_TOKEN = "T0KEN-in-the-webhook-9f8e7d6c5b4a"
API_KEY = "upstream-key-from-a-file-Qw3rTy"


def audited(site: Site, kind: str) -> list[dict[str, Any]]:
    return [dict(r) for r in site.audit(kind)]


def keys(site: Site, admin: httpx.Client) -> dict[str, Any]:
    resp = api(site, admin, "GET", "/api/keys")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


# -- who may use it ---------------------------------------------------------------------------------


ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/audit/events", None),
    ("POST", "/api/audit/verify", {}),
    ("POST", "/api/audit/export", {"since": "2020-01-01", "until": "2030-01-01", "reason": "x"}),
    ("GET", "/api/keys", None),
    ("POST", "/api/keys/rotate", {"which": "signing", "reason": "x"}),
    ("POST", "/api/keys/activate", {"kid": "k00000000", "reason": "x"}),
    ("GET", "/api/settings", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_without_a_session_it_is_401_and_as_a_non_admin_403(
    site: Site, carol: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> None:
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    assert_error(api(site, None, method, path, **kwargs), 401, "authentication-required")
    assert_error(api(site, carol, method, path, **kwargs), 403, "admin-role-required")
    assert not [r for r in audited(site, "admin.keys.rotate") if r["actor"] == "user:carol"]


@pytest.mark.parametrize(("method", "path", "body"), [e for e in ENDPOINTS if e[0] == "POST"])
def test_cross_origin_and_non_json_changes_are_refused(
    site: Site, boss: httpx.Client, method: str, path: str, body: dict[str, Any]
) -> None:
    before = keys(site, boss)
    forged = api(site, boss, method, path, json=body, headers={"Origin": "http://evil.example"})
    assert_error(forged, 403, "cross-origin-refused")
    cross = api(site, boss, method, path, json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert_error(cross, 403, "cross-origin-refused")
    form = api(
        site, boss, method, path, content=b"reason=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert_error(form, 415, "unsupported-media-type")
    assert keys(site, boss) == before


# -- audit ------------------------------------------------------------------------------------------


def test_the_trail_is_filtered_and_paged_by_chain_position(site: Site, boss: httpx.Client) -> None:
    everything = api(site, boss, "GET", "/api/audit/events", params={"limit": 200}).json()
    records = everything["records"]
    assert records, everything
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs, reverse=True)
    first = records[0]
    assert set(first) >= {
        "seq",
        "id",
        "at",
        "kind",
        "actor",
        "subject",
        "outcome",
        "record_hash",
        "prev_hash",
    }

    mine = api(site, boss, "GET", "/api/audit/events", params={"actor": "user:boss"}).json()["records"]
    assert mine
    assert all(r["actor"] == "user:boss" for r in mine)
    failures = api(site, boss, "GET", "/api/audit/events", params={"outcome": "failure"}).json()["records"]
    assert all(r["outcome"] == "failure" for r in failures)
    signins = api(site, boss, "GET", "/api/audit/events", params={"kind": "signin.*"}).json()["records"]
    assert signins
    assert all(r["kind"].startswith("signin.") for r in signins)
    about = api(site, boss, "GET", "/api/audit/events", params={"subject": "carol"}).json()["records"]
    assert all(r["subject"] == "carol" for r in about)
    future = api(site, boss, "GET", "/api/audit/events", params={"since": "2999-01-01"}).json()
    assert future["records"] == []
    assert future["next_before"] is None
    past = api(site, boss, "GET", "/api/audit/events", params={"until": "2000-01-01T00:00"}).json()
    assert past["records"] == []

    page1 = api(site, boss, "GET", "/api/audit/events", params={"limit": 2}).json()
    assert len(page1["records"]) == 2
    assert page1["next_before"] == page1["records"][-1]["seq"]
    page2 = api(
        site, boss, "GET", "/api/audit/events", params={"limit": 2, "before": page1["next_before"]}
    ).json()
    assert page2["records"][0]["seq"] == page1["next_before"] - 1


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"until": "2026-13-45"},
        {"limit": 0},
        {"limit": 1000},
        {"before": "x"},
        # Offsets that carry the time out of the calendar once in UTC (a 500 before: a fuzzing run).
        {"since": "0001-01-01T00:00:00+23:59"},
        {"until": "9999-12-31T23:59:59-23:59"},
    ],
)
def test_bad_filters_are_400(site: Site, boss: httpx.Client, params: dict[str, Any]) -> None:
    assert_error(api(site, boss, "GET", "/api/audit/events", params=params), 400, "bad-request")


def test_verification_walks_the_chain_and_is_audited(site: Site, boss: httpx.Client) -> None:
    resp = api(site, boss, "POST", "/api/audit/verify", json={"reason": "weekly check"})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["ok"] is True, result
    assert result["problem"] is None
    assert result["records"] >= 1
    assert result["last_seq"] == result["records"]
    assert result["message"].startswith("Verified")
    rows = [r for r in audited(site, "admin.audit.verify") if r["actor"] == "user:boss"]
    assert rows
    assert rows[-1]["outcome"] == "success"
    assert rows[-1]["subject"] == "audit"
    assert json.loads(rows[-1]["details"])["reason"] == "weekly check"
    assert_error(api(site, boss, "POST", "/api/audit/verify", json={"extra": 1}), 400, "bad-request")
    # A reason is one line of text, as everywhere else (one with a line break or a NUL was stored).
    for forged in ("weekly\nadmin.policy.changed ok", "check\x00", "\u202echeck"):
        assert_error(
            api(site, boss, "POST", "/api/audit/verify", json={"reason": forged}), 400, "bad-request"
        )


def test_an_exported_bundle_verifies_offline(site: Site, boss: httpx.Client, tmp_path: Path) -> None:
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    until = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    resp = api(
        site, boss, "POST", "/api/audit/export", json={"since": since, "until": until, "reason": "case 42"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/zip"
    assert resp.headers["content-disposition"].startswith('attachment; filename="audit-evidence-')
    records = int(resp.headers["x-audit-records"])
    assert records >= 1
    bundle = tmp_path / "evidence.zip"
    bundle.write_bytes(resp.content)
    checked = run_cli("audit", "verify-bundle", str(bundle), "--config", str(site.gw.config_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"bundle OK: {records} record(s)" in checked.stdout
    rows = [r for r in audited(site, "admin.audit.export") if r["outcome"] == "success"]
    details = json.loads(rows[-1]["details"])
    assert details["reason"] == "case 42"
    assert details["manifest_sha256"] == resp.headers["x-manifest-sha256"]

    # A backwards period, a missing reason: 400, nothing exported (the refusal is audited).
    backwards = {"since": until, "until": since, "reason": "r"}
    assert_error(api(site, boss, "POST", "/api/audit/export", json=backwards), 400, "bad-request")
    assert audited(site, "admin.audit.export")[-1]["outcome"] == "failure"
    no_reason = {"since": since, "until": until}
    assert_error(api(site, boss, "POST", "/api/audit/export", json=no_reason), 400, "bad-request")
    for bad in ("soon", "0001-01-01T00:00:00+01:00"):
        refused = len([r for r in audited(site, "admin.audit.export") if r["outcome"] == "failure"])
        bad_time = {"since": bad, "until": until, "reason": "r"}
        assert_error(api(site, boss, "POST", "/api/audit/export", json=bad_time), 400, "bad-request")
        failures = [r for r in audited(site, "admin.audit.export") if r["outcome"] == "failure"]
        assert len(failures) == refused + 1  # recorded, as every refused export


# -- keys -------------------------------------------------------------------------------------------


def test_keys_are_listed_without_private_material(site: Site, boss: httpx.Client) -> None:
    resp = api(site, boss, "GET", "/api/keys")
    body = resp.json()
    assert body["keyring"]["active"] in [k["kid"] for k in body["keyring"]["keys"]]
    signing = body["signing_keys"]
    assert [k["state"] for k in signing].count("active") == 1
    assert all(k["algorithm"] == "ES256" for k in signing)
    keyring_file = Path(body["keyring"]["path"])
    secret_bytes = json.loads(keyring_file.read_text())["keys"].values()
    for material in secret_bytes:
        assert material not in resp.text
    assert "private" not in resp.text
    assert '"d"' not in resp.text


def test_rotating_the_signing_key_publishes_a_new_one_and_is_audited(site: Site, boss: httpx.Client) -> None:
    before = {k["kid"] for k in keys(site, boss)["signing_keys"]}
    resp = api(site, boss, "POST", "/api/keys/rotate", json={"which": "signing", "reason": "quarterly"})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    new = result["signing_key"]
    assert new not in before
    assert result["keyring_key"] is None
    listed = {k["kid"]: k["state"] for k in keys(site, boss)["signing_keys"]}
    # Published at once, signing after assertion.publish_ahead (10 min by default).
    assert listed[new] == "next"
    assert "publish_ahead" in result["message"]
    # The gateway publishes it in its JWKS within its 30 s refresh; the admin's listing has it now.
    row = audited(site, "admin.keys.rotate")[-1]
    assert (row["actor"], row["outcome"], row["subject"]) == ("user:boss", "success", "keys")
    assert json.loads(row["details"]) == {"reason": "quarterly", "which": "signing", "signing_key": new}
    # The fact, under the kind `gateway keys rotate` records it with.
    fact = audited(site, "keys.rotated")[-1]
    assert (fact["actor"], json.loads(fact["details"])) == ("user:boss", {"signing_key": new})

    for bad in (
        {"which": "everything", "reason": "r"},
        {"which": "signing"},
        {"which": "signing", "reason": ""},
    ):
        assert_error(api(site, boss, "POST", "/api/keys/rotate", json=bad), 400, "bad-request")
    assert {k["kid"] for k in keys(site, boss)["signing_keys"]} == set(listed)


def test_a_leaked_signing_key_is_pulled_from_the_console_at_once(site: Site, boss: httpx.Client) -> None:
    """As `gateway keys rotate --compromised`: the new key signs now, every old one is deleted, and the
    running gateway stops publishing the old ones without waiting for its 30 s reload."""
    before = {k["kid"] for k in keys(site, boss)["signing_keys"]}
    jwks = f"{site.gw.url}/.gateway/jwks.json"
    assert before & {k["kid"] for k in httpx.get(jwks, timeout=30).json()["keys"]}
    # A leaked keyring key must stop encrypting now: staging it is refused, nothing rotated.
    refused = api(
        site,
        boss,
        "POST",
        "/api/keys/rotate",
        json={"which": "keyring", "reason": "r", "compromised": True, "stage": True},
    )
    assert_error(refused, 400, "bad-request")
    assert {k["kid"] for k in keys(site, boss)["signing_keys"]} == before

    resp = api(
        site,
        boss,
        "POST",
        "/api/keys/rotate",
        json={"which": "signing", "reason": "leak", "compromised": True},
    )
    assert resp.status_code == 200, resp.text
    result = resp.json()
    new = result["signing_key"]
    assert [(k["kid"], k["state"]) for k in result["keys"]["signing_keys"]] == [(new, "active")]
    assert "every earlier key is deleted" in result["message"]
    wait_until(
        lambda: {k["kid"] for k in httpx.get(jwks, timeout=30).json()["keys"]} == {new},
        timeout=15,
        what="the JWKS holding the new key alone",
    )
    row = audited(site, "admin.keys.rotate")[-1]
    details = json.loads(row["details"])
    assert (details["compromised"], details["signing_key"]) == (True, new)
    assert set(details["old_keys_deleted"]) == before


def test_settings_are_answered_as_loaded(site: Site, boss: httpx.Client) -> None:
    body = api(site, boss, "GET", "/api/settings").json()
    assert body["source"] == str(site.gw.config_path)
    assert body["generation"] >= 1
    assert body["settings"]["admin"]["listen"] == f"127.0.0.1:{site.admin_port}"
    # Defaults are filled in.
    assert body["settings"]["assertion"]["publish_ahead"] == 600


def test_rotating_the_keyring_adds_an_active_key_for_the_next_start(site: Site, boss: httpx.Client) -> None:
    # Last in the module: from here on the CLI keys records under the new key (the running gateway
    # learns it at its next start).
    before = keys(site, boss)["keyring"]
    resp = api(site, boss, "POST", "/api/keys/rotate", json={"which": "keyring", "reason": "yearly"})
    assert resp.status_code == 200, resp.text
    new = resp.json()["keyring_key"]
    after = keys(site, boss)["keyring"]
    assert after["active"] == new != before["active"]
    flags = {k["kid"]: (k["active"], k["in_use_here"]) for k in after["keys"]}
    # The admin listener follows the file (it read it again before its audit record of the rotation):
    # every process sharing the file does at its next record, so none keys under a key the file has
    # replaced (a re-attack run's rotation that died half-way left workers on a compromised one).
    assert flags[new] == (True, True)
    assert flags[before["active"]] == (False, False)
    # The trail still verifies (the keyring file holds every key).
    assert api(site, boss, "POST", "/api/audit/verify", json={}).json()["ok"] is True


def test_a_keyring_key_is_staged_then_activated_as_the_two_step_rotation_across_replicas(
    site: Site, boss: httpx.Client
) -> None:
    """As `gateway keys rotate --keyring --stage` and `gateway keys activate`: replicas that each hold
    their own copy of the file get the staged key before anything is encrypted under it."""
    before = keys(site, boss)["keyring"]
    bad = api(site, boss, "POST", "/api/keys/rotate", json={"which": "signing", "reason": "r", "stage": True})
    assert_error(bad, 400, "bad-request")
    resp = api(
        site, boss, "POST", "/api/keys/rotate", json={"which": "keyring", "reason": "stage", "stage": True}
    )
    assert resp.status_code == 200, resp.text
    staged = resp.json()["keyring_key"]
    assert "staged" in resp.json()["message"]
    after = keys(site, boss)["keyring"]
    assert after["active"] == before["active"]  # nothing is encrypted under it yet
    assert staged in [k["kid"] for k in after["keys"]]

    unknown = api(site, boss, "POST", "/api/keys/activate", json={"kid": "k00000000", "reason": "r"})
    assert_error(unknown, 404, "unknown-key")
    resp = api(
        site, boss, "POST", "/api/keys/activate", json={"kid": staged, "reason": "every replica has it"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["keys"]["keyring"]["active"] == staged
    assert keys(site, boss)["keyring"]["active"] == staged
    again = api(site, boss, "POST", "/api/keys/activate", json={"kid": staged, "reason": "twice"})
    assert "active key already" in again.json()["message"]
    rows = audited(site, "admin.keys.activate")
    assert [(r["outcome"], json.loads(r["details"])["keyring_key"]) for r in rows] == [
        ("failure", "k00000000"),
        ("success", staged),
        ("success", staged),
    ]
    (fact,) = audited(site, "keys.activated")
    assert json.loads(fact["details"]) == {"keyring_key": staged}
    assert api(site, boss, "POST", "/api/audit/verify", json={}).json()["ok"] is True


def test_a_leaked_keyring_key_is_marked_compromised_and_never_active_again(
    site: Site, boss: httpx.Client
) -> None:
    """As `gateway keys rotate --keyring --compromised`: the key that was active is marked in the file
    (only what it had signed stays trusted), the admin listener goes on under the new key at once, and
    the marked key cannot be activated again."""
    before = keys(site, boss)["keyring"]["active"]
    keyring_file = (site.db_path.parent / "keys" / "keyring.json").read_bytes()
    # A change in this node's account ledger that no gateway can make (a line naming no account, as
    # one forged with the leaked key would): the mark would leave it unread, so it is refused, naming
    # it, until the admin gives it up (as `--drop-unsettled` does for the CLI).
    _unsettled_change(site.db_path.parent)
    leak = {"which": "keyring", "reason": "the keyring file leaked", "compromised": True}
    refused = api(site, boss, "POST", "/api/keys/rotate", json=leak)
    message = assert_error(refused, 409, "ledger-unsettled")["message"]
    assert "disabled of account 999999" in message
    assert "drop_unsettled" in message
    assert (site.db_path.parent / "keys" / "keyring.json").read_bytes() == keyring_file
    resp = api(site, boss, "POST", "/api/keys/rotate", json={**leak, "drop_unsettled": True})
    assert resp.status_code == 200, resp.text
    (dropped,) = audited(site, "keys.ledger_unsettled_dropped")
    assert json.loads(dropped["details"])["changes"] == 1
    assert f"Keyring key {before} is marked compromised" in resp.json()["message"]
    # The seeds the leaked keys encrypted are known to whoever holds them: named, as the CLI names
    # them (a re-attack run found the console silent while the seeds decrypted from a database copy).
    assert "boss" in resp.json()["totp_exposed"]
    assert "gateway user reset-mfa USERNAME" in resp.json()["message"]
    ring = keys(site, boss)["keyring"]
    new = ring["active"]
    states = {
        k["kid"]: (k["active"], k["in_use_here"], k["compromised_at"] is not None) for k in ring["keys"]
    }
    assert states[before] == (False, False, True)
    assert states[new] == (True, True, False)
    refused = api(site, boss, "POST", "/api/keys/activate", json={"kid": before, "reason": "undo"})
    assert_error(refused, 409, "key-compromised")
    assert keys(site, boss)["keyring"]["active"] == new
    # The leak's time: only with a keyring mark, never in the future; a typo changes nothing.
    for body in (
        {"which": "keyring", "compromised": True, "leaked_since": "2999-01-01T00:00:00"},
        {"which": "keyring", "leaked_since": "2026-01-01T00:00:00"},
        {"which": "signing", "compromised": True, "leaked_since": "2026-01-01T00:00:00"},
        {"which": "keyring", "drop_unsettled": True},
        {"which": "signing", "compromised": True, "drop_unsettled": True},
    ):
        assert_error(
            api(site, boss, "POST", "/api/keys/rotate", json={**body, "reason": "typo"}), 400, "bad-request"
        )
        assert keys(site, boss)["keyring"]["active"] == new
    (fact,) = [r for r in audited(site, "keys.rotated") if "keyring_key_compromised" in r["details"]]
    assert json.loads(fact["details"])["keyring_key_compromised"] == before
    # Every record since is keyed under the new key: the trail verifies with the mark in force.
    assert api(site, boss, "POST", "/api/audit/verify", json={}).json()["ok"] is True


def _unsettled_change(data: Path) -> None:
    """Append to the node's account ledger file a disable of an account no row is, under the active key."""
    keyring = Keyring.load(data / "keys" / "keyring.json")
    ledger = AccountLedger(cast(Database, None), keyring, data / "account-ledger.jsonl", SYSTEM_CLOCK)
    line = ledger.line(Entry("no-such-account", 999_999, "disabled", datetime.now(UTC)))
    with (data / "account-ledger.jsonl").open("ab") as out:
        out.write(line)


# -- a second factor too old, secrets in the config, a tampered trail ---------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Destructive actions need a second factor used within the last second; the config holds secrets."""
    tmp = tmp_path_factory.mktemp("strict-keys")
    policy_path = tmp / "policy.csv"
    policy_path.write_text(POLICY)
    (tmp / "api-key").write_text(API_KEY + "\n")
    port, admin_port = free_port(), free_port()
    with run_echo() as echo:
        route = {
            "name": "app", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "none",
            "request_headers": {"X-Upstream-Auth": "${file:api-key}"},
        }  # fmt: skip
        config = gateway_config(
            tmp, port, [route],
            session={"insecure_cookies": True}, policy={"file": str(policy_path)},
            admin={"listen": f"127.0.0.1:{admin_port}", "destructive_reauth_max_age": "1s"},
            threat={"webhook_url": f"https://hooks.example.com/services/{WEBHOOK_TOKEN}"},
        )  # fmt: skip
        with run_gateway(tmp, config) as gw:
            wait_admin_healthy(admin_port, gw.proc)
            add_user(gw.config_path, "boss", PASSWORD)
            yield Site(gw, admin_port, tmp / "data" / "gateway.db", policy_path)


@pytest.fixture(scope="module")
def strict_boss(strict: Site) -> Iterator[httpx.Client]:
    """The strict gateway's admin, with a TOTP factor enrolled (so fresh only for a second)."""
    client = signed_in(strict, "boss")
    enroll_totp(client)
    yield client
    client.close()


def test_a_rotation_with_an_older_factor_must_step_up(strict: Site, strict_boss: httpx.Client) -> None:
    admin = strict_boss
    before = keys(strict, admin)
    # The scenario is the factor's age: let it pass admin.destructive_reauth_max_age (1 s).
    time.sleep(1.5)
    for which in ("signing", "keyring", "all"):
        resp = api(strict, admin, "POST", "/api/keys/rotate", json={"which": which, "reason": "r"})
        body = assert_error(resp, 403, "step-up-required")
        assert body["location"].endswith("/.gateway/mfa?need=any")
    inactive = [k["kid"] for k in before["keyring"]["keys"] if not k["active"]] or [
        before["keyring"]["active"]
    ]
    resp = api(strict, admin, "POST", "/api/keys/activate", json={"kid": inactive[0], "reason": "r"})
    assert_error(resp, 403, "step-up-required")
    assert keys(strict, admin) == before  # nothing changed
    refused = [r for r in audited(strict, "admin.keys.rotate") if r["outcome"] == "failure"]
    assert json.loads(refused[-1]["details"]) == {"reason": "r", "which": "all", "error": "step-up-required"}
    # Reading and verifying are not destructive.
    assert api(strict, admin, "POST", "/api/audit/verify", json={}).status_code == 200


def test_no_secret_of_the_config_reaches_the_settings(strict: Site, strict_boss: httpx.Client) -> None:
    admin = strict_boss
    as_json = api(strict, admin, "GET", "/api/settings")
    as_page = api(strict, admin, "GET", "/settings", headers={"Accept": "text/html"})
    assert as_json.status_code == as_page.status_code == 200
    for answer in (as_json.text, as_page.text):
        assert WEBHOOK_TOKEN not in answer
        assert API_KEY not in answer
    settings = as_json.json()["settings"]
    assert settings["threat"]["webhook_url"] == "https://hooks.example.com/[masked]"
    assert settings["routes"][0]["request_headers"] == {"X-Upstream-Auth": "[masked]"}
    assert {"threat.webhook_url", "routes[0].request_headers.X-Upstream-Auth"} <= set(
        as_json.json()["masked"]
    )
    assert "hooks.example.com" in as_page.text


def test_a_tampered_record_fails_verification_at_its_position(
    strict: Site, strict_boss: httpx.Client
) -> None:
    admin = strict_boss
    with sqlite3.connect(strict.db_path) as conn:
        seq = conn.execute("SELECT MIN(seq) FROM audit_events WHERE kind LIKE 'signin.%'").fetchone()[0]
        conn.execute("UPDATE audit_events SET outcome = 'forged' WHERE seq = ?", (seq,))
    result = api(strict, admin, "POST", "/api/audit/verify", json={"reason": "suspicion"}).json()
    assert result["ok"] is False
    assert result["problem"]["seq"] == seq
    assert "does not match its hash" in result["problem"]["what"]
    assert "FAILED" in result["message"]
    row = audited(strict, "admin.audit.verify")[-1]
    assert row["outcome"] == "failure"
    assert json.loads(row["details"])["problem_seq"] == seq
