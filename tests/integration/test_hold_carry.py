"""``gateway privacy hold carry``: a PostgreSQL database restored to a point in time gets the live
database's legal holds before a gateway runs on it (real PostgreSQL, the real CLI).

The restored cluster is made as a point-in-time restore leaves it: a copy of the live database as it
was (``CREATE DATABASE … TEMPLATE``), after which the live one goes on (a hold placed, one released, a
request opened). And the attacks: a database of another deployment (its trail shares no record with the
live one) and the live database itself are refused, and change nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_privacy_cli import Cli
from tests.support.pg import _admin, fresh_database

pytestmark = pytest.mark.peer


def _cli(tmp_path: Path, name: str, database: str) -> Cli:
    config = tmp_path / f"{name}.yaml"
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
    config.write_text(
        "listen: 127.0.0.1:8080\n"
        "public_url: http://127.0.0.1:8080\n"
        f"data_dir: {tmp_path / name}\n"
        f"keyring: {tmp_path / 'keyring.json'}\n"  # the deployment's, as a restored node reads it
        f'storage: {{url: "{url}"}}\n'
        "routes:\n"
        "  - {name: echo, host: 127.0.0.1, upstreams: ['http://127.0.0.1:9000'], mfa: none}\n"
    )
    return Cli(config, url)


@pytest.fixture
def databases() -> Iterator[tuple[str, str, str]]:
    """The live database, a name for the restored one, and another deployment's."""
    with fresh_database("gw_live") as live, fresh_database("gw_other") as other:
        restored = f"{live}_restored"
        try:
            yield live, restored, other
        finally:
            _admin(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)')


def _holds(cli: Cli) -> dict[str, tuple[str, bool]]:
    listed = json.loads(cli.ok("privacy", "hold", "list", "--all", "--json"))
    return {h["reference"]: (h["subject"] or h["data_class"], h["active"]) for h in listed}


def test_the_restored_database_gets_the_holds_placed_and_released_since(
    tmp_path: Path, databases: tuple[str, str, str]
) -> None:
    live_db, restored_db, other_db = databases
    live = _cli(tmp_path, "live", live_db)
    live.ok("keys", "init")
    live.ok("migrate")
    live.add_user("alice")
    live.add_user("bob")
    live.ok("privacy", "hold", "place", "OLD-1", "--reason", "audit of 2026", "--class", "audit_events")
    live.ok("privacy", "hold", "place", "KEEP-2", "--reason", "litigation", "--user", "bob")
    # The point-in-time restore's target: the restored cluster is the live database as it was now.
    _admin(f'CREATE DATABASE "{restored_db}" TEMPLATE "{live_db}"')
    live.ok("privacy", "hold", "place", "NEW-3", "--reason", "subpoena of 2027-01-02", "--user", "alice")
    live.ok("privacy", "hold", "release", "OLD-1")
    live.ok("privacy", "restrict", "alice", "--verified-by", "call-back to the number on file")
    (request,) = [r[0] for r in live.sql("SELECT ref FROM privacy_requests")]

    restored = _cli(tmp_path, "restored", restored_db)
    assert _holds(restored) == {"OLD-1": ("audit_events", True), "KEEP-2": ("bob", True)}
    out = restored.ok("privacy", "hold", "carry", "--from-config", str(live.config))
    assert "the restored one is the live one up to record" in out
    assert (
        "legal holds carried over: 1 placed since the restore's target (NEW-3), 1 released since (OLD-1)"
        in out
    )
    assert f"NOT restored: privacy requests opened after the restore's target: {request} (restriction)" in out
    assert (
        _holds(restored)
        == _holds(live)
        == {
            "OLD-1": ("audit_events", False),
            "KEEP-2": ("bob", True),
            "NEW-3": ("alice", True),
        }
    )
    carried = restored.sql(
        "SELECT kind, details FROM audit_events WHERE kind LIKE 'privacy.hold.%' ORDER BY seq DESC LIMIT 2"
    )
    assert {kind for kind, _ in carried} == {"privacy.hold.placed", "privacy.hold.released"}
    assert all("point-in-time restore" in json.loads(details)["carried"] for _, details in carried)
    verified = restored.run("audit", "verify")  # the carry's records extend the restored chain
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # Again: nothing left to carry; the records the carry wrote are the restored trail's own.
    again = restored.ok("privacy", "hold", "carry", "--from-config", str(live.config))
    assert "0 placed since the restore's target, 0 released since" in again
    assert "and has 2 record(s) of its own since" in again

    # Another deployment's database shares no record with the live one: refused, nothing changed.
    other = _cli(tmp_path, "other", other_db)
    other.ok("migrate")
    other.add_user("mallory")
    refused = other.run("privacy", "hold", "carry", "--from-config", str(live.config))
    assert refused.returncode == 1
    assert "shares no record with the live one" in refused.stderr
    assert _holds(other) == {}
    # The live database as its own restore: a typo of --config, refused before anything is read.
    same = live.run("privacy", "hold", "carry", "--from-config", str(live.config))
    assert same.returncode == 2
    assert "--from-config names the database --config does" in same.stderr
