"""``gateway audit verify`` and ``verify-bundle`` over a trail with erased records, as an operator runs them.

Records are written and a person erased by separate OS processes (as the gateway and the privacy
service do), then the real CLI verifies: it must pass, say how many records have erased fields, and
fail, naming the erasure record, once someone with database access erases a field by hand: in a record
the erasure did not touch, or a further field of one it did (the admin who acted on the erased person),
under the genuine erasure's name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import ROOT, run_cli

# Write records naming alice and carol, then erase alice (the way gateway.privacy does).
_WRITE_AND_ERASE = """\
import asyncio, sys
from gateway.audit.chain_key import ChainKeys
from gateway.audit.erase import erase_person
from gateway.audit.trail import AuditLog
from gateway.clock import SYSTEM_CLOCK
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database

async def main(url, keyring_path):
    keyring = Keyring.load(keyring_path)
    db = Database.open(url, pool_size=1)
    try:
        log = AuditLog(db, keyring=keyring)
        await log.record("signin.password", actor="user:alice", subject="alice", ip="198.51.100.23")
        await log.record("admin.user.roles", actor="admin:bob", subject="alice", ip="203.0.113.9")
        await log.record("signin.password", actor="user:carol", subject="carol", ip="192.0.2.44")
        result = await erase_person(
            db, ChainKeys(keyring), at=SYSTEM_CLOCK.now(), username="alice", pseudonym="a1",
            actor="admin:bob", request_ref="GDPR-1",
        )
        print(result.record.seq)
    finally:
        await db.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

# Database access only: erase the actor of the record of KIND about SUBJECT by hand, naming the genuine
# erasure record (BY) and carrying its pseudonym; fields the record already has erased stay.
_HAND_ERASE = """\
import asyncio, json, sys
from sqlalchemy import select, update
from gateway.audit.erasable import commit, parse_salts
from gateway.audit.models import AuditEvent
from gateway.store.db import Database

async def main(url, by, kind, subject):
    db = Database.open(url, pool_size=1)
    try:
        async with db.session() as session:
            query = select(AuditEvent).where(AuditEvent.kind == kind, AuditEvent.subject == subject)
            row = (await session.scalars(query)).one()
            salts = parse_salts(row.salts)
            erased = json.loads(row.erased)
            erased["actor"] = {"c": commit("actor", salts.pop("actor"), row.actor), "by": by}
            await session.execute(update(AuditEvent).where(AuditEvent.id == row.id).values(
                actor="[erased:a1]", salts=json.dumps({f: s.hex() for f, s in salts.items()}),
                erased=json.dumps(erased),
            ))
            await session.commit()
    finally:
        await db.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
"""


def _gateway(*args: str) -> subprocess.CompletedProcess[str]:
    proc = run_cli(*args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _python(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _erased_trail(database_url: str, tmp_path: Path) -> tuple[tuple[str, str], int]:
    """A migrated, keyed gateway whose trail has alice erased: its ``--config`` and the erasure's seq."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path / 'data'}\nstorage: {{url: '{database_url}'}}\n"
    )
    c = ("--config", str(config))
    assert _gateway("migrate", *c).returncode == 0
    assert _gateway("keys", "init", *c).returncode == 0
    erasure_seq = int(
        _python(_WRITE_AND_ERASE, database_url, str(tmp_path / "data" / "keys" / "keyring.json"))
    )
    return c, erasure_seq


def test_verify_counts_erased_records_and_names_a_hand_erasure(database_url: str, tmp_path: Path) -> None:
    c, erasure_seq = _erased_trail(database_url, tmp_path)

    proc = _gateway("audit", "verify", *c)
    assert proc.returncode == 0, proc.stdout
    assert f"audit trail OK: {erasure_seq} record(s) verified" in proc.stdout
    assert (
        "erasable: from seq 1 on (chain version 3); 2 record(s) with erased personal fields, backed by 1 "
        "erasure record(s)"
    ) in proc.stdout
    proc = _gateway("audit", "list", *c, "--json", "--limit", "10")
    assert "alice" not in proc.stdout
    assert "198.51.100.23" not in proc.stdout
    assert "carol" in proc.stdout

    bundle = tmp_path / "b.zip"
    proc = _gateway(
        "audit", "export", *c, "--since", "2000-01-01", "--until", "2100-01-01", "-o", str(bundle)
    )
    assert proc.returncode == 0, proc.stderr
    proc = _gateway("audit", "verify-bundle", str(bundle), *c)
    assert proc.returncode == 0, proc.stdout
    assert "erased: 2 record(s) with erased personal fields" in proc.stdout

    _python(_HAND_ERASE, database_url, str(erasure_seq), "signin.password", "carol")
    proc = _gateway("audit", "verify", *c)
    assert proc.returncode == 1, proc.stdout
    assert f"(seq {erasure_seq}): this erasure record says it erased 2 record(s), but the records marked" in (
        proc.stdout
    )
    assert json.loads(_gateway("audit", "list", *c, "--json", "--limit", "1").stdout)["kind"] == (
        "privacy.audit_erased"
    )


def test_verify_names_the_admin_hidden_under_a_genuine_erasure(database_url: str, tmp_path: Path) -> None:
    # The record of admin bob acting on alice lost her subject and the details to her erasure; bob's
    # name was tombstoned by hand under that erasure's name and pseudonym (the record's hash unchanged).
    c, erasure_seq = _erased_trail(database_url, tmp_path)
    assert _gateway("audit", "verify", *c).returncode == 0
    _python(_HAND_ERASE, database_url, str(erasure_seq), "admin.user.roles", "[erased:a1]")
    assert (
        "admin:bob"
        not in _gateway("audit", "list", *c, "--json", "--limit", "10", "--kind", "admin.*").stdout
    )
    proc = _gateway("audit", "verify", *c)
    assert proc.returncode == 1, proc.stdout
    assert (
        f"(seq {erasure_seq}): the fields marked erased by this erasure record in seqs 1, 2 are not the ones "
        "it says it erased"
    ) in proc.stdout
    assert "What to do: treat the trail as tampered" in proc.stdout
