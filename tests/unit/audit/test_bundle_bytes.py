"""The evidence bundle in memory (what the console downloads) is the zip ``gateway audit export`` writes."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.audit.bundle import assemble_bundle, export_bundle, verify_bundle
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_the_bytes_are_the_exported_zip_and_verify(audit_db: Database, tmp_path: Path) -> None:
    keyring = Keyring({"k1": b"\x02" * 32}, "k1")
    clock = FakeClock(START.timestamp())
    audit = AuditLog(audit_db, clock=clock, keyring=keyring)
    for n in range(4):
        await audit.record("signin.password", actor=f"user:u{n}", subject=f"u{n}")
        clock.advance(60)
    since, until, now = START + timedelta(seconds=30), START + timedelta(hours=1), START + timedelta(hours=2)

    bundle = await assemble_bundle(
        audit_db, since=since, until=until, checkpoints=[], now=now, keyring=keyring
    )
    written = await export_bundle(
        audit_db, since=since, until=until, checkpoints=[], out=tmp_path / "b.zip", now=now, keyring=keyring
    )

    assert bundle.records == written.records == 3
    assert bundle.problem is None
    downloaded = tmp_path / "downloaded.zip"
    downloaded.write_bytes(bundle.zip_bytes())
    with zipfile.ZipFile(downloaded) as mine, zipfile.ZipFile(tmp_path / "b.zip") as theirs:
        assert {n: mine.read(n) for n in mine.namelist()} == {n: theirs.read(n) for n in theirs.namelist()}
    verdict = verify_bundle(downloaded, keyring=keyring)
    assert verdict.ok, verdict.problem
    assert verdict.records == 3
