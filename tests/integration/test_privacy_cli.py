"""``gateway privacy …`` and ``gateway retention …`` as an operator runs them: real subprocesses on SQLite
and PostgreSQL.

What a terminal shows is what is checked (exit codes, stdout, stderr, never a traceback), and what the
commands did is read back from the database: a closed registration goes only once due and not under a
legal hold, the chain still verifies after the purge and no audit row names the person; an export is a
new owner-only file that is not overwritten by accident; an erasure needs a terminal or --yes and says
which hold suspends it. An objection or consent withdrawal recorded for a person is their choice (their
objections, their consent record) and a completed register row verified by the operator; a purpose of
the wrong kind, an unknown one or a missing reason exits 2 and changes nothing. The retention plan and
run name the closed incident records that go (an open one stays).
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gateway.privacy.register import Channel, Kind, Register
from gateway.settings.schema import PrivacySettings
from gateway.store.db import Database
from tests.integration.harness import ROOT

PASSWORD = "amber quarry lantern voyage"
PRIVACY_ACTIONS = [
    ["requests"],
    ["show"],
    ["verify"],
    ["reject"],
    ["export"],
    ["rectify"],
    ["restrict"],
    ["close"],
    ["erase"],
    ["object"],
    ["withdraw"],
    ["hold"],
    ["hold", "place"],
    ["hold", "release"],
    ["hold", "list"],
    ["hold", "carry"],
    ["removed"],
    ["removed", "list"],
    ["removed", "open"],
]


@dataclass
class Cli:
    config: Path
    url: str

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """``gateway ARGS --config FILE`` (log lines at warning only: the audit mirror is not output)."""
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "--log-level", "warning", *args, "--config", str(self.config)],
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def ok(self, *args: str, stdin: str = "") -> str:
        proc = self.run(*args, stdin=stdin)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def add_user(self, name: str) -> None:
        self.ok(
            "user", "add", name, "--email", f"{name}@example.com", "--password-stdin", stdin=PASSWORD + "\n"
        )

    def sql(self, statement: str, **params: Any) -> list[Any]:
        async def go() -> list[Any]:
            db = Database.open(self.url, pool_size=1)
            try:
                async with db.engine.begin() as conn:
                    result = await conn.execute(text(statement), params)
                    return list(result.all()) if result.returns_rows else []
            finally:
                await db.close()

        return asyncio.run(go())


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Cli:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:8080\n"
        "public_url: http://127.0.0.1:8080\n"
        f"data_dir: {tmp_path / 'data'}\n"
        f"keyring: {tmp_path / 'keyring.json'}\n"
        f'storage: {{url: "{database_url}"}}\n'
        "routes:\n"
        "  - {name: echo, host: 127.0.0.1, upstreams: ['http://127.0.0.1:9000'], mfa: none}\n"
    )
    c = Cli(config, database_url)
    c.ok("keys", "init")
    c.ok("migrate")
    return c


def test_every_action_has_help_and_a_bare_group_exits_2(cli: Cli) -> None:
    for action in PRIVACY_ACTIONS:
        proc = cli.run("privacy", *action, "--help")
        assert proc.returncode == 0, (action, proc.stderr)
        assert "usage: gateway privacy" in proc.stdout
    for action in (["plan"], ["run"]):
        proc = cli.run("retention", *action, "--help")
        assert proc.returncode == 0
        assert "--config" in proc.stdout
    for group in ("privacy", "retention"):
        proc = cli.run(group)
        assert proc.returncode == 2
        assert "ACTION" in proc.stderr


def _class(plan: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in plan["classes"] if c["data_class"] == name]
    assert len(found) == 1
    return found[0]


def test_a_closed_registration_goes_when_due_and_not_under_a_hold(cli: Cli) -> None:
    cli.add_user("alice")
    out = cli.ok("privacy", "close", "alice", "--verified-by", "front desk, passport seen")
    assert "closure request PR-" in out
    assert "180 days" in out
    # An attack run: closing again restarted the 180 days. Refused, nothing changed.
    again = cli.run("privacy", "close", "alice", "--verified-by", "front desk")
    assert again.returncode != 0
    assert "was closed on" in again.stderr
    assert "nothing was changed" in again.stderr

    plan = json.loads(cli.ok("retention", "plan", "--json"))
    registration = _class(plan, "registration")
    assert registration["due_now"] == 0
    (upcoming,) = registration["next"]
    assert upcoming["what"] == "alice"
    due_at = datetime.fromisoformat(upcoming["due_at"])
    assert timedelta(days=179) < due_at - datetime.now(UTC) <= timedelta(days=180)
    # Looking ahead past the due date: then it would go.
    ahead = json.loads(
        cli.ok("retention", "plan", "--json", "--at", (due_at + timedelta(days=1)).isoformat())
    )
    assert _class(ahead, "registration")["due_now"] == 1
    text_plan = cli.ok("retention", "plan", "--at", (due_at + timedelta(days=1)).date().isoformat())
    assert "registration (kept 180 days; erased when due)" in text_plan
    assert "due now: 1" in text_plan

    # 181 days ago, as far as the database knows; a court order arrives first.
    cli.sql(
        "UPDATE users SET closed_at = :at WHERE username = 'alice'",
        at=datetime.now(UTC) - timedelta(days=181),
    )
    cli.ok("privacy", "hold", "place", "CASE-7", "--reason", "subpoena of 2027-01-02", "--user", "alice")
    out = cli.ok("retention", "run")
    assert "registration: 0 erased; kept by legal holds: CASE-7 (1)" in out
    assert cli.run("user", "show", "alice").returncode == 0
    (hold,) = json.loads(cli.ok("privacy", "hold", "list", "--json"))
    assert (hold["reference"], hold["subject"], hold["active"]) == ("CASE-7", "alice", True)

    cli.ok("privacy", "hold", "release", "CASE-7")
    assert cli.ok("privacy", "hold", "list") == "no active legal holds\n"
    # This period was run: a plain run does nothing and says so; --force runs it again.
    proc = cli.run("retention", "run")
    assert proc.returncode == 0
    assert "done already" in proc.stderr
    assert cli.run("user", "show", "alice").returncode == 0
    summary = json.loads(cli.ok("retention", "run", "--force", "--json"))
    assert summary["period"].endswith("/manual-1")
    assert summary["classes"]["registration"]["done"] == 1
    assert "alice" not in json.dumps(summary)

    assert cli.run("user", "show", "alice").returncode == 2
    assert cli.run("audit", "verify").returncode == 0
    rows = cli.sql("SELECT actor, subject, ip, details FROM audit_events")
    assert not [row for row in rows if "alice" in " ".join(map(str, row))]
    (erasure,) = cli.sql("SELECT subject, channel, status FROM privacy_requests WHERE kind = 'erasure'")
    assert erasure[0].startswith("[erased:")
    assert tuple(erasure[1:]) == ("system", "completed")
    runs = cli.sql("SELECT period, finished_at FROM retention_runs ORDER BY id")
    assert len(runs) == 2
    assert all(finished is not None for _, finished in runs)


def test_export_is_a_new_private_file_and_erasure_asks_or_says_which_hold(cli: Cli, tmp_path: Path) -> None:
    cli.add_user("carol")
    out = tmp_path / "carol.json"
    proc = cli.run("privacy", "export", "carol", "--verified-by", "video call", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "access request PR-" in proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["account"]["username"] == "carol"
    out.write_text("keep me")
    proc = cli.run("privacy", "export", "carol", "--verified-by", "video call", "--out", str(out))
    assert proc.returncode == 2
    assert "--force" in proc.stderr
    assert out.read_text() == "keep me"
    out.chmod(0o644)  # replaced with --force, it is made private too
    cli.ok("privacy", "export", "carol", "--verified-by", "video call", "--out", str(out), "--force")
    assert json.loads(out.read_text())["account"]["email"] == "carol@example.com"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # A link is never followed, even with --force: it could aim the export at any writable file.
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's file")
    (tmp_path / "link.json").symlink_to(victim)
    args = ("privacy", "export", "carol", "--verified-by", "video call", "--out", str(tmp_path / "link.json"))
    proc = cli.run(*args, "--force")
    assert proc.returncode == 2
    assert "symbolic link" in proc.stderr
    assert victim.read_text() == "someone's file"
    # To standard output: the document only; what was done goes to stderr.
    assert json.loads(cli.ok("privacy", "export", "carol", "--verified-by", "video call", "--law", "ccpa"))
    # Only two of the three exports were recorded: the refused path recorded nothing.
    requests = json.loads(cli.ok("privacy", "requests", "--json"))
    assert [(r["kind"], r["status"], r["channel"]) for r in requests] == [("access", "completed", "cli")] * 3
    assert requests[0]["law"] == "ccpa"
    shown = json.loads(cli.ok("privacy", "show", requests[0]["ref"], "--json"))
    assert shown["verified_by"] == "video call"
    assert cli.run("privacy", "show", "PR-AAAAAAAAAA").returncode == 2

    # No terminal and no --yes: nothing happens.
    proc = cli.run("privacy", "erase", "carol", "--verified-by", "signed letter")
    assert proc.returncode == 2
    assert "--yes" in proc.stderr
    assert cli.run("user", "show", "carol").returncode == 0

    cli.ok("privacy", "hold", "place", "LIT-3", "--reason", "litigation", "--user", "carol@example.com")
    out_text = cli.ok("privacy", "erase", "carol", "--verified-by", "signed letter", "--yes")
    assert "on_hold (held by LIT-3)" in out_text
    (held,) = json.loads(cli.ok("privacy", "requests", "--open", "--json"))
    assert held["hold_ref"] == "LIT-3"
    assert cli.run("user", "show", "carol").returncode == 0
    # Nor does deleting the account get past the hold (a re-attack run deleted a held account so).
    refused = cli.run("user", "delete", "carol", "--yes")
    assert refused.returncode == 2
    assert "legal hold LIT-3" in refused.stderr
    assert cli.run("user", "show", "carol").returncode == 0
    released = cli.ok("privacy", "hold", "release", "LIT-3")
    assert f"carried out the held erasure request {held['ref']}: completed" in released
    assert cli.run("user", "show", "carol").returncode == 2
    assert cli.run("audit", "verify").returncode == 0
    assert cli.run("privacy", "erase", "carol", "--verified-by", "x", "--yes").returncode == 2
    assert cli.run("privacy", "hold", "release", "LIT-3").returncode == 2


def test_removed_content_is_listed_without_names_and_opened_with_an_audited_reason(
    cli: Cli, tmp_path: Path
) -> None:
    cli.add_user("erin")
    cli.add_user("frank")
    cli.ok("privacy", "hold", "place", "ORDER-8", "--reason", "preservation order", "--user", "erin")
    corrected = cli.ok(
        "privacy", "rectify", "erin", "--email", "erin.new@example.com", "--verified-by", "call"
    )
    cli.ok("privacy", "erase", "frank", "--verified-by", "signed letter", "--yes")
    listing = cli.ok("privacy", "removed", "list")
    assert "(account kept)" in listing
    assert "[erased:" in listing
    assert "frank" not in listing
    assert "erin" not in listing
    (erins,) = json.loads(cli.ok("privacy", "removed", "list", "--user", "erin", "--json"))
    assert erins["ref"] in corrected
    assert "ORDER-8" in erins["reason"]
    (franks,) = json.loads(cli.ok("privacy", "removed", "list", "--user", "frank", "--json"))
    assert franks["person"].startswith("[erased:")
    # No reason, an unknown reference, a refused file: exit 2, nothing opened, nothing recorded.
    assert cli.run("privacy", "removed", "open", erins["ref"]).returncode == 2
    refused = cli.run("privacy", "removed", "open", "PR-AAAAAAAAAA", "--reason", "case 3")
    assert (refused.returncode, "No removed content" in refused.stderr) == (2, True)
    out = tmp_path / "erin-was.json"
    out.write_text("keep me")
    assert (
        cli.run(
            "privacy", "removed", "open", erins["ref"], "--reason", "case 3", "--out", str(out)
        ).returncode
        == 2
    )
    assert cli.sql("SELECT count(*) FROM audit_events WHERE kind = 'privacy.removed_content_opened'") == [
        (0,)
    ]
    proc = cli.run(
        "privacy", "removed", "open", erins["ref"], "--reason", "case 3", "--out", str(out), "--force"
    )
    assert proc.returncode == 0, proc.stderr
    assert "audit trail" in proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["account"]["email"] == "erin@example.com"
    opened = json.loads(cli.ok("privacy", "removed", "open", franks["ref"], "--reason", "case 4"))
    assert opened["account"]["username"] == "frank"
    rows = cli.sql(
        "SELECT subject, details FROM audit_events WHERE kind = 'privacy.removed_content_opened' ORDER BY id"
    )
    assert [(subject, json.loads(details)["reason"]) for subject, details in rows] == [
        ("erin", "case 3"),
        (franks["person"], "case 4"),
    ]
    assert cli.run("audit", "verify").returncode == 0


def test_verify_reject_and_what_is_refused(cli: Cli) -> None:
    cli.add_user("dave")

    async def received() -> str:
        db = Database.open(cli.url, pool_size=1)
        try:
            register = Register(db)
            view = await register.open(
                Kind.ACCESS, settings=PrivacySettings(), user_id=None, subject="dave", channel=Channel.PORTAL
            )
            return view.ref
        finally:
            await db.close()

    first, second = asyncio.run(received()), asyncio.run(received())
    assert "verified" in cli.ok("privacy", "verify", first, "--by", "ID card at the desk")
    proc = cli.run("privacy", "verify", first, "--by", "again")
    assert proc.returncode == 2
    assert "no identity left to verify" in proc.stderr
    assert "rejected" in cli.ok("privacy", "reject", second, "--reason", "we could not verify who asked")
    assert cli.run("privacy", "reject", second, "--reason", "twice").returncode == 2
    kinds = [row[0] for row in cli.sql("SELECT kind FROM audit_events ORDER BY seq")]
    assert "privacy.request.verified" in kinds
    assert "privacy.request.rejected" in kinds

    assert cli.run("privacy", "rectify", "dave", "--verified-by", "x").returncode == 2
    out = cli.ok("privacy", "rectify", "dave", "--verified-by", "x", "--name", "Dave D")
    assert "Corrected: display_name." in out
    assert "restricted" in cli.ok("privacy", "restrict", "dave", "--verified-by", "x")
    assert "lifted" in cli.ok("privacy", "restrict", "dave", "--verified-by", "x", "--lift")
    assert cli.run("privacy", "close", "nobody", "--verified-by", "x").returncode == 2
    assert cli.run("privacy", "hold", "place", "H", "--reason", "r", "--class", "nope").returncode == 2
    assert cli.run("privacy", "hold", "place", "H", "--reason", "r").returncode == 2
    cli.ok("privacy", "hold", "place", "H", "--reason", "r", "--class", "incidents")
    assert cli.run("privacy", "hold", "place", "H", "--reason", "r", "--class", "incidents").returncode == 2
    assert cli.run("retention", "plan", "--at", "next tuesday").returncode == 2
    # Moments whose retention periods reach out of the calendar (a traceback before): exit 2, one line.
    for edge in ("0001-01-01", "0001-01-01T00:00:00+23:59", "9999-12-31"):
        refused = cli.run("retention", "plan", "--at", edge)
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr
    plan = json.loads(cli.ok("retention", "plan", "--json"))
    assert [c["data_class"] for c in plan["classes"]] == [
        "registration",
        "removed_content",
        "audit_events",
        "incidents",
        "privacy_requests",
    ]


# -- objection and consent withdrawal, recorded for a person ----------------------------------------------

PURPOSES = """privacy:
  purposes:
    - {name: geolocation, title: Sign-in location checks, notice: The address is looked up., basis: legitimate_interest, objectable: true}
    - {name: policy_analytics, title: Access pattern sample, notice: Request shapes are counted., basis: legitimate_interest, objectable: true}
    - {name: newsletter, title: Product newsletter, notice: A monthly mail., basis: consent}
"""


def _choices(cli: Cli) -> tuple[Any, ...]:
    return (
        cli.sql("SELECT ref, kind, status FROM privacy_requests ORDER BY id"),
        cli.sql("SELECT username, objections FROM users ORDER BY id"),
        cli.sql("SELECT user_id, purpose, decision FROM consent_records ORDER BY id"),
    )


def test_an_objection_and_a_consent_withdrawal_recorded_for_a_person(cli: Cli) -> None:
    cli.config.write_text(cli.config.read_text() + PURPOSES)
    cli.add_user("erin")

    out = cli.ok(
        "privacy", "object", "erin", "policy_analytics",
        "--verified-by", "signed letter", "--reason", "letter of 3 May",
    )  # fmt: skip
    assert "objection request PR-" in out
    assert "Objection recorded for policy_analytics; in effect at once." in out
    ((objections,),) = cli.sql("SELECT objections FROM users WHERE username = 'erin'")
    assert objections == "policy_analytics"
    out = cli.ok(
        "privacy", "withdraw", "erin@example.com", "newsletter", "--verified-by", "phone", "--reason", "call"
    )
    assert "consent_withdrawal request PR-" in out
    ((decision, method),) = cli.sql("SELECT decision, method FROM consent_records")
    assert decision == "withdrawn"
    assert method.startswith("cli:")

    rows = cli.sql("SELECT kind, channel, status, verified_by, details FROM privacy_requests ORDER BY id")
    assert [tuple(r[:3]) for r in rows] == [
        ("objection", "cli", "completed"),
        ("consent_withdrawal", "cli", "completed"),
    ]
    assert rows[0][3].startswith("signed letter (cli:")
    assert json.loads(rows[0][4]) == {"purpose": "policy_analytics", "reason": "letter of 3 May"}
    kinds = {row[0] for row in cli.sql("SELECT kind FROM audit_events WHERE subject = 'erin'")}
    assert {"privacy.objection.added", "privacy.objection", "privacy.consent.withdrawn"} <= kinds

    before = _choices(cli)
    refused = [
        (["object", "erin", "newsletter"], "cannot be objected to"),
        (["object", "erin", "marketing"], "no purpose named 'marketing'"),
        (["withdraw", "erin", "geolocation"], "not on consent"),
        (["object", "nobody", "geolocation"], "no user 'nobody'"),
    ]
    for args, message in refused:
        proc = cli.run("privacy", *args, "--verified-by", "x", "--reason", "r")
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
    missing = cli.run("privacy", "object", "erin", "geolocation", "--verified-by", "x")
    assert missing.returncode == 2
    assert "--reason" in missing.stderr
    assert _choices(cli) == before


# -- incident records under the retention rule -------------------------------------------------------------


def _incident_record(cli: Cli, *, opened: datetime, closed: datetime | None) -> str:
    """An incident record as incident response leaves it, opened (and closed) at these times."""
    from gateway.response.models import IncidentCase, IncidentEntry
    from gateway.threat.incidents import new_incident_id

    case_id = new_incident_id()

    async def write() -> None:
        db = Database.open(cli.url, pool_size=1)
        try:
            async with db.session() as session:
                session.add(
                    IncidentCase(
                        id=case_id, title="brute force: ann", severity="medium",
                        phase="closed" if closed else "containment", owner="", opened_at=opened,
                        opened_by="rule:brute_force", updated_at=closed or opened, closed_at=closed,
                        rule="brute_force", affected_users='["ann"]', routes="[]", addresses="[]",
                        summary="", root_cause="", lessons="", evidence="[]",
                    )
                )  # fmt: skip
                await session.flush()
                for at in (opened, closed or opened):
                    session.add(
                        IncidentEntry(
                            case_id=case_id, at=at, kind="phase", actor="user:boss", text="", details="{}"
                        )
                    )
                await session.commit()
        finally:
            await db.close()

    asyncio.run(write())
    return case_id


def test_the_retention_plan_and_run_name_closed_incident_records(cli: Cli) -> None:
    now = datetime.now(UTC)
    old = _incident_record(cli, opened=now - timedelta(days=420), closed=now - timedelta(days=401))
    recent = _incident_record(cli, opened=now - timedelta(days=420), closed=now - timedelta(days=30))
    still_open = _incident_record(cli, opened=now - timedelta(days=900), closed=None)

    plan = cli.ok("retention", "plan")
    section = plan[plan.index("incidents (kept 400 days") : plan.index("privacy_requests (")]
    assert "due now: 1" in section
    assert f"incident record {old}" in section
    assert f"incident record {recent}" in section.split("next (")[1]
    assert still_open not in section

    out = cli.ok("retention", "run")
    assert "incidents: 1 deleted (detections: 0, records: 1, record entries: 2)" in out
    ids = {row[0] for row in cli.sql("SELECT id FROM incident_cases")}
    assert ids == {recent, still_open}
    assert cli.sql("SELECT count(*) FROM incident_entries WHERE case_id = :id", id=old) == [(0,)]
    summary = json.loads(cli.sql("SELECT summary FROM retention_runs")[0][0])
    assert summary["classes"]["incidents"]["parts"] == {"detections": 0, "records": 1, "record_entries": 2}
    assert cli.run("audit", "verify").returncode == 0


def test_an_erasure_from_the_cli_takes_the_short_lived_keys_naming_the_person(
    cli: Cli, tmp_path: Path
) -> None:
    """A re-attack run: `gateway privacy erase` left the person's failure counters and sign-in position
    in the node's fast state (the CLI's privacy service was built without it)."""
    from gateway.store.fast import open_fast_state, state_file
    from gateway.threat.detector import person_keys

    cli.add_user("dora")
    keys = [*person_keys("dora"), "reg:dora", "reg:dora@example.com"]

    async def plant() -> None:
        fast = open_fast_state(None, local_path=state_file(tmp_path / "data"))
        try:
            for key in keys:
                await fast.set(key, b"1", ttl=600)
        finally:
            await fast.close()

    async def left() -> list[str]:
        fast = open_fast_state(None, local_path=state_file(tmp_path / "data"))
        try:
            return [key for key in keys if await fast.get(key) is not None]
        finally:
            await fast.close()

    asyncio.run(plant())
    assert asyncio.run(left()) == keys
    cli.ok("privacy", "erase", "dora", "--verified-by", "signed letter", "--yes")
    assert asyncio.run(left()) == []
