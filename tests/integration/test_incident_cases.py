"""A brute-force incident walked through the five phases on the embedded default (two workers) and on
two replicas sharing PostgreSQL and Redis (the attack on one, the bystander on the other), with the
real CLI: detection raises the record; containment seals evidence that verifies and whose hash is
in the chain; eradication actions end sessions and force password changes; the recovery checks refuse
to close while a lock stands or evidence was tampered with, and pass after; the report is generated."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
import yaml

from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, login
from tests.integration.test_lockdown import sign_in_with_passkey
from tests.support.pg import fresh_database
from tests.support.smtp_server import SmtpServer, smtp_server
from tests.support.webhook_receiver import WebhookReceiver as Hook
from tests.support.webhook_receiver import webhook_receiver

ATTACKER = "198.51.100.77"
REDIS_URL = "redis://127.0.0.1:6379/11"
BREAK_GLASS = "break-glass"


@pytest.fixture
def hook() -> Iterator[Hook]:
    with webhook_receiver() as receiver:
        yield receiver


@dataclass
class Site:
    gw: Gateway  # where the attack lands and the CLI's configuration
    other: Gateway  # where the bystander works: the same gateway, or the other replica
    tmp: Path
    smtp: SmtpServer
    db_url: str | None  # PostgreSQL shared by the replicas; None: the embedded SQLite file
    hook: Hook


def _config(tmp: Path, port: int, echo_url: str, smtp_port: int, hook: str, **extra: Any) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        {"name": "app", "host": "127.0.0.1", "path": "/", "upstreams": [echo_url], "mfa": "none"},
    ]
    return gateway_config(
        tmp,
        port,
        routes,
        session={"insecure_cookies": True},
        trusted_proxies=["127.0.0.1/32"],
        threat={
            "brute_force": {"count": 3, "window": "10m", "responses": ["alert", "lock_account"]},
            "webhook_url": hook,
        },
        lockdown={"break_glass_group": BREAK_GLASS, "refresh_interval": "1s"},
        notify={
            "organisation": "Example Ltd",
            "smtp": {
                "host": "127.0.0.1",
                "port": smtp_port,
                "security": "none",
                "sender": "security@example.com",
            },
        },
        **extra,
    )


@pytest.fixture(params=["embedded", "replicas"])
def site(request: pytest.FixtureRequest, tmp_path: Path, hook: Hook) -> Iterator[Site]:
    with run_echo() as echo, smtp_server() as smtp:
        if request.param == "embedded":
            config = _config(tmp_path, free_port(), echo.url, smtp.port, hook.url, server={"workers": 2})
            with run_gateway(tmp_path, config) as gw:
                yield Site(gw, gw, tmp_path, smtp, None, hook)
            return
        # Two replicas sharing PostgreSQL, Redis and one keyring.
        with fresh_database() as name:
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
            namespace = f"cases{free_port()}:"
            shared = {
                "storage": {"url": url},
                "state": {"redis_url": REDIS_URL, "namespace": namespace},
                "keyring": str(tmp_path / "keyring.json"),
            }
            config_a = _config(tmp_path / "a", free_port(), echo.url, smtp.port, hook.url, **shared)
            config_b = _config(tmp_path / "b", free_port(), echo.url, smtp.port, hook.url, **shared)
            (tmp_path / "a").mkdir()
            path_a = tmp_path / "a" / "gateway.yaml"
            path_a.write_text(yaml.safe_dump(config_a))
            for step in (("migrate",), ("keys", "init")):
                done = run_cli(*step, "--config", str(path_a))
                assert done.returncode == 0, done.stdout + done.stderr
            try:
                with (
                    run_gateway(tmp_path / "a", config_a) as gw_a,
                    run_gateway(tmp_path / "b", config_b) as gw_b,
                ):
                    yield Site(gw_a, gw_b, tmp_path / "a", smtp, url, hook)
            finally:
                with redis.Redis.from_url(REDIS_URL) as conn:
                    keys = list(conn.scan_iter(match=f"{namespace}*", count=1000))
                    if keys:
                        conn.delete(*keys)


def cli(site: Site, *args: str, code: int = 0) -> str:
    proc = run_cli("incident", "case", *args, "--config", str(site.gw.config_path))
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture
def clients() -> Iterator[list[httpx.Client]]:
    made: list[httpx.Client] = []
    yield made
    for client in made:
        client.close()


def signed_in(gw: Gateway, username: str, clients: list[httpx.Client]) -> httpx.Client:
    client = httpx.Client(base_url=gw.url, follow_redirects=False, timeout=30.0)
    clients.append(client)
    assert login(client, username, PASSWORD).status_code == 302
    return client


def probe(site: Site, session: str | None) -> int:
    """The status the app's route answers with this session, on the bystander's gateway."""
    resp = httpx.get(
        f"{site.other.url}/probe",
        headers={"Cookie": f"{SESSION_COOKIE}={session}", "Accept": "application/json"},
        timeout=30,
    )
    return resp.status_code


def still_signed_in(site: Site, client: httpx.Client) -> bool:
    return probe(site, client.cookies.get(SESSION_COOKIE)) == 200


def lockdown(site: Site, *args: str) -> str:
    proc = run_cli("lockdown", *args, "--config", str(site.gw.config_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def audit_kinds(site: Site, subject: str) -> list[tuple[str, str]]:
    query = "SELECT kind, details FROM audit_events WHERE subject = {} ORDER BY seq"
    if site.db_url is None:
        with closing(sqlite3.connect(site.tmp / "data" / "gateway.db")) as conn:
            return [(k, d) for k, d in conn.execute(query.format("?"), (subject,)).fetchall()]

    async def fetch() -> list[tuple[str, str]]:
        assert site.db_url is not None
        conn = await asyncpg.connect(site.db_url.replace("+asyncpg", ""))
        try:
            return [(r["kind"], r["details"]) for r in await conn.fetch(query.format("$1"), subject)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_a_brute_force_incident_through_all_five_phases(site: Site, clients: list[httpx.Client]) -> None:
    for name in ("victim", "bob"):
        add_user(site.gw.config_path, name, PASSWORD, "--email", f"{name}@example.org")
    add_user(site.gw.config_path, "responder", PASSWORD, "--role", BREAK_GLASS)
    bob = signed_in(site.other, "bob", clients)
    assert still_signed_in(site, bob)
    # The responder enrols a passkey ahead of the emergency (break-glass needs one).
    responder = sign_in_with_passkey(site.other, "responder")

    # Detection: three wrong passwords for the victim raise the record (one, however many workers).
    with httpx.Client(
        base_url=site.gw.url, follow_redirects=False, timeout=30.0, headers={"X-Forwarded-For": ATTACKER}
    ) as attacker:
        for _ in range(3):
            login(attacker, "victim", "not the password")
    cases = wait_until(
        lambda: [c for c in json.loads(_stdout(site, "list", "--json")) if c["rule"] == "brute_force"],
        timeout=30,
        what="a brute-force incident record",
    )
    assert len(cases) == 1
    case = cases[0]
    case_id = case["id"]
    assert (case["phase"], case["affected_users"], case["addresses"]) == ("detection", ["victim"], [ATTACKER])
    assert case["opened_by"] == "rule:brute_force"

    # Analysis: an owner, and bob turns out to be affected too.
    cli(site, "update", case_id, "--owner", "alice", "--user", "bob", "--severity", "high")
    cli(site, "note", case_id, "the attacker address belongs to a VPN provider")

    # The workflow refuses shortcuts: no closing from detection.
    assert "closes from post-incident" in cli(site, "phase", case_id, "closed", code=2)

    # Containment seals the evidence: a bundle that verifies, its hash in the record and the chain.
    out = cli(site, "phase", case_id, "containment", "--note", "attacker locked out")
    assert "evidence sealed" in out
    shown = json.loads(_stdout(site, "show", case_id, "--json"))
    (sealed,) = shown["evidence"]
    bundle = Path(sealed["file"])
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == sealed["sha256"]
    verify = run_cli("audit", "verify-bundle", str(bundle))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    chain = [json.loads(d) for k, d in audit_kinds(site, case_id) if k == "incident.evidence_sealed"]
    assert [c["sha256"] for c in chain] == [sealed["sha256"]]
    assert sealed["records"] > 0
    # Containment also shuts the doors: only the break-glass responder with a passkey gets through.
    lockdown(site, "on", "--reason", f"{case_id}: containment")
    wait_until(lambda: probe(site, bob.cookies.get(SESSION_COOKIE)) == 503, timeout=15, what="bob locked out")
    assert probe(site, None) == 503
    wait_until(lambda: probe(site, responder) == 200, timeout=15, what="the responder let through")

    # Eradication: sessions of everyone affected end, passwords must change.
    cli(site, "phase", case_id, "eradication")
    out = cli(site, "act", case_id, "revoke-sessions")
    assert "bob: sessions revoked" in out
    # A destructive action lists the accounts and asks first: no terminal here, so it is refused.
    assert "pass --yes to confirm" in cli(site, "act", case_id, "force-password-change", code=2)
    assert "password change required" in cli(site, "act", case_id, "force-password-change", "--yes")

    # Recovery: the checks refuse while the lock of the detection stands...
    cli(site, "phase", case_id, "recovery")
    out = cli(site, "check", case_id, code=1)
    assert "[FAILED] containment_lifted" in out
    assert "lock_account victim" in out
    assert "[FAILED] lockdown: on" in out
    cli(site, "lift", case_id)
    # Recovery resumes service: the doors open again, and bob's old session is gone for good.
    lockdown(site, "off", "--reason", f"{case_id}: recovered")
    wait_until(lambda: probe(site, bob.cookies.get(SESSION_COOKIE)) == 401, timeout=15, what="bob signed out")
    # ...and while the sealed evidence does not match its hash.
    saved = bundle.read_bytes()
    bundle.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    assert "[FAILED] evidence" in cli(site, "check", case_id, code=1)
    bundle.write_bytes(saved)
    out = cli(site, "check", case_id)
    assert "PASSED" in out
    assert "[ok] audit_chain" in out
    # Every worker of both replicas reported itself ready; the policy sealed at containment is live.
    assert "[ok] readiness: database and fast state answer, policy loads; " in out
    assert "[ok] policy_version: version 1 is live, as expected (in force when the evidence was sealed" in out

    # Post-incident: the affected people are told (previewed first), the report, then closed.
    cli(site, "phase", case_id, "post-incident")
    preview = cli(site, "notify", case_id, "--preview")
    assert "--- to victim <victim@example.org>" in preview
    assert f"Please quote the reference {case_id}." in preview
    assert "Subject: Security notice from Example Ltd: brute force: victim" in preview
    assert site.smtp.received == []
    todo = "Choose a new password when you next sign in."
    # Bound to the preview read: that one had no such text, so nothing goes; the one with it does.
    digest = re.search(r"--previewed ([0-9a-f]{64})", preview)
    assert digest is not None
    stale = cli(site, "notify", case_id, "--what-to-do", todo, "--previewed", digest.group(1), code=1)
    assert "preview them again" in stale
    unbound = cli(site, "notify", case_id, "--what-to-do", todo, code=2)
    assert "needs --previewed" in unbound
    assert site.smtp.received == []
    read = cli(site, "notify", case_id, "--preview", "--what-to-do", todo)
    digest = re.search(r"--previewed ([0-9a-f]{64})", read)
    assert digest is not None
    out = cli(site, "notify", case_id, "--what-to-do", todo, "--previewed", digest.group(1))
    assert "bob <bob@example.org>: sent" in out
    assert sorted(r.rcpt_tos for r in site.smtp.received) == [("bob@example.org",), ("victim@example.org",)]
    for received in site.smtp.received:
        body = received.message.get_content()
        assert todo in body
        assert f"Please quote the reference {case_id}." in body
    # Each message names its recipient alone (an attack run: everyone affected got the notice of the
    # person the incident was first detected for, by name).
    (to_bob,) = [r.message for r in site.smtp.received if r.rcpt_tos == ("bob@example.org",)]
    assert to_bob["Subject"] == "Security notice from Example Ltd: brute force: another account"
    assert "victim" not in to_bob.get_content()
    sent = [
        json.loads(d) for k, d in audit_kinds(site, "victim") + audit_kinds(site, "bob") if k == "notify.sent"
    ]
    assert sorted(d["incident"] for d in sent) == [case_id, case_id]
    cli(site, "update", case_id, "--root-cause", "a reused password", "--lessons", "enforce passkeys")
    report = json.loads(_stdout(site, "report", case_id, "--format", "json"))
    phases = [e["details"]["to"] for e in report["timeline"] if "to" in e.get("details", {})]
    assert phases == ["containment", "eradication", "recovery", "post_incident"]
    assert [a["kind"] for a in report["actions"]].count("notification") == 1
    assert [a["details"]["action"] for a in report["actions"] if a["kind"] == "action"] == [
        "revoke-sessions",
        "force-password-change",
        "lift",
    ]
    assert report["incident"]["evidence"][0]["sha256"] == sealed["sha256"]
    assert all(c["passed"] for c in report["recovery_checks"])
    assert any(r["kind"] == "threat.brute_force" for r in report["audit_records"])
    md_path = site.tmp / "report.md"
    cli(site, "report", case_id, "-o", str(md_path))
    markdown = md_path.read_text()
    assert f"# Post-incident report: brute force: victim ({case_id})" in markdown
    assert "a reused password" in markdown
    assert sealed["sha256"] in markdown
    # It names people and addresses: only the operator reads it, and it never goes through a link.
    assert md_path.stat().st_mode & 0o777 == 0o600
    assert "exists or is a link" in cli(site, "report", case_id, "-o", str(md_path), code=2)
    victim = site.tmp / "victim.txt"
    victim.write_text("PRECIOUS\n")
    (site.tmp / "link.md").symlink_to(victim)
    assert "exists or is a link" in cli(site, "report", case_id, "-o", str(site.tmp / "link.md"), code=2)
    assert victim.read_text() == "PRECIOUS\n"

    cli(site, "phase", case_id, "closed")
    assert "is closed" in cli(site, "phase", case_id, "containment", code=2)
    phases_audited = [json.loads(d)["to"] for k, d in audit_kinds(site, case_id) if k == "incident.phase"]
    assert phases_audited == ["containment", "eradication", "recovery", "post_incident", "closed"]
    # The ticketing tool followed along: every phase, action, seal and notification, with no secret.
    events = [e for e in site.hook.events if e["incident"]["id"] == case_id]
    assert [e["incident"]["phase"] for e in events if e["event"] == "phase"] == phases_audited
    assert {e["event"] for e in events} == {"phase", "action", "evidence", "notification"}
    assert all(e["type"] == "incident" and e["actor"].startswith("cli") for e in events)
    assert PASSWORD not in json.dumps(events)


def _stdout(site: Site, *args: str) -> str:
    proc = run_cli("incident", "case", *args, "--config", str(site.gw.config_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_bad_input_changes_nothing(site: Site) -> None:
    assert "not an incident id" in cli(site, "show", "../../etc", code=2)
    assert "no incident record" in cli(site, "show", "inc-00000000", code=2).lower()
    case_id = _stdout(site, "open", "--title", "suspected admin compromise", "--severity", "critical").strip()
    assert "must not be empty" in cli(site, "note", case_id, "   ", code=2)
    shown = json.loads(_stdout(site, "show", case_id, "--json"))
    assert [e["kind"] for e in shown["timeline"]] == ["phase"]
    assert "names no affected user" in cli(site, "act", case_id, "reset-mfa", code=2)
