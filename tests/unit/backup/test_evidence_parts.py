"""Sealed incident evidence (``<data_dir>/incidents/``) is in the embedded backups: encrypted parts,
named in the manifest, restored byte for byte, checked by verify against the seals in the chain."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from gateway.backup.archive import INCIDENTS_DIR, create_backup
from gateway.backup.manifest import MANIFEST_NAME, BackupError, manifest_bytes, parse_manifest
from gateway.backup.verify import restore_backup, verify_backup
from gateway.clock import FakeClock
from gateway.response.evidence import evidence_directory
from tests.unit.backup.helpers import make_node, rows

BUNDLE = b"PK\x03\x04 a sealed evidence bundle \x00\xff" * 1000


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_backup_reads_evidence_where_incident_response_writes_it(tmp_path: Path) -> None:
    # gateway.response sits a floor above gateway.backup, which therefore names the directory itself.
    assert evidence_directory(str(tmp_path)) == tmp_path / INCIDENTS_DIR


async def test_sealed_evidence_is_backed_up_and_restored_byte_for_byte(
    tmp_path: Path, clock: FakeClock
) -> None:
    node = await make_node(tmp_path / "live", clock, records=3)
    case = node.data_dir / "incidents" / "inc-7f3a"
    case.mkdir(parents=True)
    (case / "evidence-20261203T101500000000Z.zip").write_bytes(BUNDLE)
    (case / "evidence-20261203T111500000000Z.zip").write_bytes(b"")  # an empty file is a part too
    other = node.data_dir / "incidents" / "inc-0001"
    other.mkdir()
    (other / "evidence-20261201T000000000000Z.zip").write_bytes(b"second case")
    # A link out of the data directory is not followed: the backup holds the node's files only.
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not evidence")
    os.symlink(outside, other / "link.zip")
    try:
        await node.audit.record(
            "incident.evidence_sealed",
            actor="cli:test",
            subject="inc-7f3a",
            details={"sha256": _sha256(BUNDLE)},
        )
        # A seal whose bundle is gone from the node before the backup: reported, not a failure.
        await node.audit.record(
            "incident.evidence_sealed", actor="cli:test", subject="inc-gone", details={"sha256": "ab" * 32}
        )
        manifest, path = create_backup(
            node.database, node.data_dir, tmp_path / "backups", node.keyring, clock
        )
        live_rows = rows(node.database)
    finally:
        await node.db.close()

    evidence = {p.name: p for p in manifest.parts if p.name.startswith("incidents/")}
    assert sorted(evidence) == [
        "incidents/inc-0001/evidence-20261201T000000000000Z.zip",
        "incidents/inc-7f3a/evidence-20261203T101500000000Z.zip",
        "incidents/inc-7f3a/evidence-20261203T111500000000Z.zip",
    ]
    sealed = evidence["incidents/inc-7f3a/evidence-20261203T101500000000Z.zip"]
    assert sealed.plain_sha256 == _sha256(BUNDLE)  # the hash the chain holds for the seal
    assert sealed.plain_size == len(BUNDLE)
    # Encrypted like the rest: flat file names, no plaintext.
    files = sorted(p.name for p in path.iterdir())
    assert files == sorted(
        [MANIFEST_NAME, "gateway.db.enc", "incidents-0001.enc", "incidents-0002.enc", "incidents-0003.enc"]
    )
    assert b"sealed evidence bundle" not in (path / sealed.file).read_bytes()

    verified = await verify_backup(path, node.keyring)
    assert (verified.evidence_files, verified.evidence_sealed) == (3, 1)
    assert verified.sealed_missing == ("ab" * 32,)

    target = tmp_path / "restored"
    restored = await restore_backup(path, node.keyring, target)
    assert rows(restored.database) == live_rows
    for name in evidence:
        original = (node.data_dir / name).read_bytes()
        copy = target / name
        assert copy.read_bytes() == original
        assert copy.stat().st_mode & 0o777 == 0o600
    assert not (target / "incidents" / "inc-0001" / "link.zip").exists()
    assert not list(target.glob(".restore-*"))


async def test_restore_with_force_leaves_other_evidence_in_place(tmp_path: Path, clock: FakeClock) -> None:
    node = await make_node(tmp_path / "live", clock, records=1)
    (node.data_dir / "incidents" / "inc-1").mkdir(parents=True)
    (node.data_dir / "incidents" / "inc-1" / "evidence-a.zip").write_bytes(b"a")
    try:
        _manifest, path = create_backup(
            node.database, node.data_dir, tmp_path / "backups", node.keyring, clock
        )
    finally:
        await node.db.close()
    target = tmp_path / "restored"
    await restore_backup(path, node.keyring, target)
    later = target / "incidents" / "inc-2" / "evidence-b.zip"
    later.parent.mkdir()
    later.write_bytes(b"sealed after the backup")
    await restore_backup(path, node.keyring, target, force=True)
    assert (target / "incidents" / "inc-1" / "evidence-a.zip").read_bytes() == b"a"
    assert later.read_bytes() == b"sealed after the backup"  # a restore never deletes evidence


async def test_a_flipped_byte_in_an_evidence_part_names_it(tmp_path: Path, clock: FakeClock) -> None:
    node = await make_node(tmp_path / "live", clock, records=1)
    (node.data_dir / "incidents" / "inc-1").mkdir(parents=True)
    (node.data_dir / "incidents" / "inc-1" / "evidence-a.zip").write_bytes(BUNDLE)
    try:
        _manifest, path = create_backup(
            node.database, node.data_dir, tmp_path / "backups", node.keyring, clock
        )
    finally:
        await node.db.close()
    damaged = path / "incidents-0001.enc"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=r"part incidents/inc-1/evidence-a\.zip: sha256 mismatch") as info:
        await verify_backup(path, node.keyring)
    assert info.value.part == "incidents/inc-1/evidence-a.zip"
    damaged.unlink()
    with pytest.raises(BackupError, match=r"part incidents/inc-1/evidence-a\.zip: missing"):
        await verify_backup(path, node.keyring)


@pytest.mark.parametrize(
    "name",
    [
        "incidents/../../escape.txt",
        "incidents/",
        "incidents//x",
        "/etc/passwd",
        "keys/keyring.json",
        "incidents/a\\..\\b",
    ],
)
async def test_a_part_name_outside_the_data_directory_is_refused_before_anything_is_written(
    tmp_path: Path, clock: FakeClock, name: str
) -> None:
    node = await make_node(tmp_path / "live", clock, records=1)
    (node.data_dir / "incidents" / "inc-1").mkdir(parents=True)
    (node.data_dir / "incidents" / "inc-1" / "evidence-a.zip").write_bytes(b"x")
    try:
        manifest, path = create_backup(
            node.database, node.data_dir, tmp_path / "backups", node.keyring, clock
        )
    finally:
        await node.db.close()
    # Even a manifest signed with the right keyring (only its holder could write one).
    parts = tuple(
        dataclasses.replace(p, name=name) if p.name.startswith("incidents/") else p for p in manifest.parts
    )
    forged = dataclasses.replace(manifest, parts=parts)
    (path / MANIFEST_NAME).write_bytes(manifest_bytes(forged, node.keyring))
    assert parse_manifest((path / MANIFEST_NAME).read_bytes())[0].parts == parts
    target = tmp_path / "restored"
    with pytest.raises(BackupError, match="is not one a backup holds"):
        await restore_backup(path, node.keyring, target)
    assert not (tmp_path / "escape.txt").exists()
    assert not (target / "gateway.db").exists()
