"""Eradication through the incident commands and the recovery checks that gate closing, with the real
CLI against a running gateway: on the embedded default (SQLite, the node's state file) and on the
production stores (PostgreSQL, and Redis behind a forwarder the test can cut, never the shared server).

* ``reset-mfa`` and ``disable`` act on an affected person (their passkey gone, their session ended,
  the account refused at sign-in); ``rotate-keys`` rotates the signing key (a new one in
  ``jwks.json``) and the keyring (a new active key in the file); each is on the timeline and audited.
* Closing is refused, with the reason, while readiness fails (Redis unreachable; on the embedded
  default, no gateway serving), and while the live policy is not the one the incident expects (changed
  behind its back); ``restore-policy`` through the CLI brings the expected one back and closing passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.integration.harness import (
    ALLOW_SIGNED_IN,
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, login
from tests.integration.test_lockdown import sign_in_with_passkey
from tests.support.pg import fresh_database
from tests.support.tcp_proxy import TcpProxy


@dataclass
class Deployment:
    """One gateway the test can stop and start again, and the stores it runs on."""

    tmp: Path
    config: dict[str, Any]
    # PostgreSQL; None: the embedded SQLite file.
    db_url: str | None
    # The forwarder in front of the real Redis; None on the embedded default.
    redis: TcpProxy | None
    _running: contextlib.AbstractContextManager[Gateway] | None = None
    gw: Gateway | None = None
    stops: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.tmp / "gateway.yaml"

    @property
    def running(self) -> Gateway:
        assert self.gw is not None, "the gateway is stopped"
        return self.gw

    @property
    def url(self) -> str:
        return self.running.url

    def start(self) -> None:
        self._running = run_gateway(self.tmp, self.config)
        self.gw = self._running.__enter__()

    def stop(self) -> None:
        if self._running is not None:
            running, self._running, self.gw = self._running, None, None
            running.__exit__(None, None, None)


@pytest.fixture(params=["embedded", "replicas"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    routes = [{"name": "app", "host": "127.0.0.1", "path": "/", "upstreams": [], "mfa": "none"}]
    with run_echo() as echo:
        routes[0]["upstreams"] = [echo.url]
        common: dict[str, Any] = {"session": {"insecure_cookies": True}}
        if request.param == "embedded":
            dep = Deployment(tmp_path, gateway_config(tmp_path, free_port(), routes, **common), None, None)
            try:
                dep.start()
                yield dep
            finally:
                dep.stop()
            return
        with fresh_database() as name, TcpProxy(("127.0.0.1", 6379)) as redis:
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
            config = gateway_config(
                tmp_path, free_port(), routes, storage={"url": url},
                state={"redis_url": f"redis://127.0.0.1:{redis.port}/12", "namespace": f"recover{free_port()}:"},
                **common,
            )  # fmt: skip
            dep = Deployment(tmp_path, config, url, redis)
            tmp_path.joinpath("gateway.yaml").write_text(json.dumps(config))
            for step in (("migrate",), ("keys", "init")):
                done = run_cli(*step, "--config", str(dep.config_path))
                assert done.returncode == 0, done.stdout + done.stderr
            try:
                dep.start()
                yield dep
            finally:
                dep.stop()
                with contextlib.suppress(Exception):
                    _flush_namespace(config["state"]["namespace"])


def _flush_namespace(namespace: str) -> None:
    import redis

    with redis.Redis(host="127.0.0.1", port=6379, db=12) as conn:
        keys = list(conn.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            conn.delete(*keys)


def cli(dep: Deployment, *args: str, code: int = 0) -> str:
    proc = run_cli(*args, "--config", str(dep.config_path))
    assert proc.returncode == code, f"exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert "Traceback" not in proc.stderr
    # What the command says; stderr carries the security-event log lines.
    return proc.stdout


def case_cli(dep: Deployment, *args: str, code: int = 0) -> str:
    return cli(dep, "incident", "case", *args, code=code)


def audit_records(dep: Deployment, subject: str) -> list[tuple[str, dict[str, Any]]]:
    """(kind, details) of the audit records about ``subject``, in chain order."""
    query = "SELECT kind, details FROM audit_events WHERE subject = {} ORDER BY seq"
    if dep.db_url is None:
        with closing(sqlite3.connect(dep.tmp / "data" / "gateway.db")) as conn:
            rows = conn.execute(query.format("?"), (subject,)).fetchall()
        return [(k, json.loads(d)) for k, d in rows]

    async def fetch() -> list[tuple[str, dict[str, Any]]]:
        assert dep.db_url is not None
        conn = await asyncpg.connect(dep.db_url.replace("+asyncpg", ""))
        try:
            return [
                (r["kind"], json.loads(r["details"])) for r in await conn.fetch(query.format("$1"), subject)
            ]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def timeline_actions(dep: Deployment, case_id: str) -> list[dict[str, Any]]:
    shown = json.loads(case_cli(dep, "show", case_id, "--json"))
    return [e["details"] for e in shown["timeline"] if e["kind"] == "action"]


def keys(dep: Deployment) -> dict[str, Any]:
    listed: dict[str, Any] = json.loads(cli(dep, "keys", "list", "--json"))
    return listed


def check(dep: Deployment, case_id: str) -> tuple[bool, dict[str, str]]:
    """The checklist through the CLI: whether it passed, and each check's detail prefixed ok/FAILED."""
    proc = run_cli("incident", "case", "check", case_id, "--json", "--config", str(dep.config_path))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert (proc.returncode == 0) == doc["passed"]
    return doc["passed"], {
        c["name"]: f"{'ok' if c['passed'] else 'FAILED'}: {c['detail']}" for c in doc["checks"]
    }


def probe(dep: Deployment, session: str | None) -> int:
    headers = {"Accept": "application/json"}
    if session:
        headers["Cookie"] = f"{SESSION_COOKIE}={session}"
    return httpx.get(f"{dep.url}/probe", headers=headers, timeout=30).status_code


def test_eradication_actions_and_the_checks_that_gate_closing(deployment: Deployment) -> None:
    dep = deployment
    add_user(dep.config_path, "victim", PASSWORD, "--email", "victim@example.org")
    # The victim has a passkey and a session the attacker may share.
    session = sign_in_with_passkey(dep.running, "victim")
    assert probe(dep, session) == 200
    assert len(json.loads(cli(dep, "user", "show", "victim", "--json"))["factors"]) == 1

    case_id = case_cli(
        dep, "open", "--title", "victim's passkey phished", "--severity", "high", "--user", "victim"
    ).strip()
    out = case_cli(dep, "phase", case_id, "containment")
    assert "evidence sealed" in out
    # The policy version in force (the file the gateway imported at its first start) is sealed with
    # the evidence: what closing will expect live.
    (sealed,) = json.loads(case_cli(dep, "show", case_id, "--json"))["evidence"]
    live = sealed["policy_version"]
    assert live == 1
    sealed_in_chain = [d for k, d in audit_records(dep, case_id) if k == "incident.evidence_sealed"]
    assert [d["policy_version"] for d in sealed_in_chain] == [live]

    # -- eradication through the incident's commands ------------------------------------------------
    case_cli(dep, "phase", case_id, "eradication")
    assert "victim: second factors reset (sessions ended)" in case_cli(
        dep, "act", case_id, "reset-mfa", "--yes"
    )
    assert json.loads(cli(dep, "user", "show", "victim", "--json"))["factors"] == []
    wait_until(lambda: probe(dep, session) == 401, timeout=15, what="the victim's session ended")
    assert "victim: account disabled (sessions ended)" in case_cli(dep, "act", case_id, "disable", "--yes")
    assert json.loads(cli(dep, "user", "show", "victim", "--json"))["disabled"] is True
    with browser(dep.running) as client:
        login(client, "victim", PASSWORD)
        assert not client.cookies.get(SESSION_COOKIE), "a disabled account signed in"

    before = keys(dep)
    served_before = {k["kid"] for k in httpx.get(f"{dep.url}/.gateway/jwks.json", timeout=30).json()["keys"]}
    out = case_cli(dep, "rotate-keys", case_id)
    assert out.startswith("keys rotated (all): ")
    rotated = json.loads(out.removeprefix("keys rotated (all): "))
    after = keys(dep)
    # A new active keyring key beside the old ones (kept to decrypt), and a new signing key.
    assert rotated["keyring_key"] == after["keyring"]["active"] != before["keyring"]["active"]
    assert set(before["keyring"]["keys"]) < set(after["keyring"]["keys"])
    assert rotated["signing_key"] not in {k["kid"] for k in before["signing_keys"]}
    assert rotated["signing_key"] in {k["kid"] for k in after["signing_keys"]}
    # Published at once: the running gateway serves it in its JWKS (read again within 5 s).
    wait_until(
        lambda: (
            rotated["signing_key"]
            in {k["kid"] for k in httpx.get(f"{dep.url}/.gateway/jwks.json", timeout=30).json()["keys"]}
        ),
        timeout=20,
        what="the new signing key in jwks.json",
    )
    assert served_before <= {
        k["kid"] for k in httpx.get(f"{dep.url}/.gateway/jwks.json", timeout=30).json()["keys"]
    }
    assert [a["action"] for a in timeline_actions(dep, case_id)] == ["reset-mfa", "disable", "rotate-keys"]
    audited = audit_records(dep, case_id)
    assert [d["action"] for k, d in audited if k == "incident.action"] == [
        "reset-mfa",
        "disable",
        "rotate-keys",
    ]
    (rotation,) = [d for k, d in audit_records(dep, "keys") if k == "keys.rotated"]
    assert rotation == {"signing_key": rotated["signing_key"], "keyring_key": rotated["keyring_key"]}
    victim = [k for k, _ in audit_records(dep, "victim")]
    assert {"user.mfa_reset", "user.disabled"} <= set(victim), victim

    # -- recovery: every check passes, then each failure blocks closing, with its reason ----------------
    case_cli(dep, "phase", case_id, "recovery")
    case_cli(dep, "phase", case_id, "post-incident")
    passed, checks = check(dep, case_id)
    assert passed, checks
    assert checks["readiness"].startswith("ok: database and fast state answer, policy loads; ")
    assert checks["policy_version"].startswith(f"ok: version {live} is live, as expected (in force when")

    # A policy changed behind the incident's back.
    changed = dep.tmp / "changed.csv"
    changed.write_text(ALLOW_SIGNED_IN.read_text() + "p, authenticated, app, /extra, GET, deny\n")
    cli(dep, "policy", "import", str(changed), "--reason", "an unreviewed change")
    refused = case_cli(dep, "phase", case_id, "closed", code=1)
    assert f"{case_id} stays open: the recovery checks did not pass (policy_version)." in refused
    assert (
        f"[FAILED] policy_version: version {live + 1} is live, but the incident expects version {live} "
        "(in force when the evidence was sealed at "
    ) in refused
    assert json.loads(case_cli(dep, "show", case_id, "--json"))["phase"] == "post_incident"
    # The incident's own restore brings the expected policy back (as a new version) and is recorded.
    out = case_cli(dep, "restore-policy", case_id, str(live), "--reason", "undo the unreviewed change")
    assert f"policy version {live} restored as version {live + 2}" in out
    assert cli(dep, "policy", "export").strip().endswith(ALLOW_SIGNED_IN.read_text().strip().splitlines()[-1])
    restored = [a for a in timeline_actions(dep, case_id) if a["action"] == "restore-policy"]
    assert restored == [{"action": "restore-policy", "from": live, "version": live + 2}]
    assert [d for k, d in audit_records(dep, case_id) if k == "incident.action"][-1]["version"] == live + 2
    passed, checks = check(dep, case_id)
    assert passed, checks
    assert checks["policy_version"].startswith(f"ok: version {live + 2} is live, as expected (restored for")

    # Readiness fails while the deployment cannot serve.
    if dep.redis is not None:
        dep.redis.stop()  # Redis (sessions, the lockdown switch) unreachable
        refused = case_cli(dep, "phase", case_id, "closed", code=1)
        assert "[FAILED] readiness: state unavailable (" in refused
        assert "[FAILED] lockdown: cannot tell: " in refused
        dep.redis.start()
    else:
        dep.stop()  # nothing serves: the workers leave the registry as they stop
        refused = case_cli(dep, "phase", case_id, "closed", code=1)
        assert (
            "[FAILED] readiness: no gateway worker has reported in the last 30 s: nothing is serving"
            in refused
        )
        dep.start()
    assert f"{case_id} stays open: the recovery checks did not pass (readiness" in refused
    # Back: the checks pass once every worker has reported itself ready again (a heartbeat is 10 s).
    wait_until(lambda: check(dep, case_id)[0], timeout=40, what="the checks passing again")
    out = case_cli(dep, "phase", case_id, "closed")
    assert f"{case_id} is in closed now" in out
    phases = [d["to"] for k, d in audit_records(dep, case_id) if k == "incident.phase"]
    assert phases == ["containment", "eradication", "recovery", "post_incident", "closed"]
