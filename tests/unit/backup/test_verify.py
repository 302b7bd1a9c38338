"""``verify_backup`` names the failing part: a flipped byte, a wrong keyring, a missing part."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from gateway.backup import archive
from gateway.backup.archive import create_backup
from gateway.backup.manifest import MANIFEST_NAME, BackupError
from gateway.backup.verify import verify_backup
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from tests.unit.backup.helpers import backup_with_checkpoints, make_node


@pytest.fixture
async def backup(tmp_path: Path, clock: FakeClock) -> tuple[Path, Keyring]:
    """A backup with two parts (the database and the audit checkpoints)."""
    return await backup_with_checkpoints(tmp_path, clock)


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


async def test_an_intact_backup_verifies(backup: tuple[Path, Keyring]) -> None:
    path, keyring = backup
    verified = await verify_backup(path, keyring)
    assert verified.row_counts["audit_events"] == 4
    assert verified.row_counts["alembic_version"] == 1


@pytest.mark.parametrize(
    ("file", "part"),
    [("gateway.db.enc", "gateway.db"), ("audit-checkpoints.jsonl.enc", "audit-checkpoints.jsonl")],
)
@pytest.mark.parametrize("where", [0, 40, -1])
async def test_a_flipped_byte_in_a_part_names_it(
    backup: tuple[Path, Keyring], file: str, part: str, where: int
) -> None:
    path, keyring = backup
    size = (path / file).stat().st_size
    _flip(path / file, where % size)
    with pytest.raises(BackupError, match=f"part {part}: sha256 mismatch") as caught:
        await verify_backup(path, keyring)
    assert caught.value.part == part


async def test_a_part_changed_with_its_hash_fixed_does_not_decrypt(backup: tuple[Path, Keyring]) -> None:
    """An attacker who also rewrites the hashes in the manifest breaks its signature instead."""
    path, keyring = backup
    _flip(path / "gateway.db.enc", 60)
    doc = json.loads((path / MANIFEST_NAME).read_text())
    from gateway.backup.manifest import sha256_hex

    doc["parts"][0]["sha256"] = sha256_hex((path / "gateway.db.enc").read_bytes())
    (path / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(BackupError, match=re.escape("manifest.json: the signature does not match")):
        await verify_backup(path, keyring)


@pytest.mark.parametrize("field", ["created_at", "audit_head_seq", "schema_revision"])
async def test_a_changed_manifest_field_fails_the_signature(backup: tuple[Path, Keyring], field: str) -> None:
    path, keyring = backup
    doc = json.loads((path / MANIFEST_NAME).read_text())
    doc[field] = 99 if isinstance(doc[field], int) else doc[field] + "x"
    (path / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(BackupError, match=re.escape("manifest.json: the signature does not match")) as caught:
        await verify_backup(path, keyring)
    assert caught.value.part == MANIFEST_NAME


async def test_every_flipped_byte_of_the_manifest_is_found(backup: tuple[Path, Keyring]) -> None:
    path, keyring = backup
    original = (path / MANIFEST_NAME).read_bytes()
    # Every 7th byte (all of them takes long): each flip is caught and blamed on the manifest, or on the
    # key id (a flipped key id is a key this keyring does not hold), never passes.
    for at in range(0, len(original), 7):
        _flip(path / MANIFEST_NAME, at)
        with pytest.raises(BackupError) as caught:
            await verify_backup(path, keyring)
        assert caught.value.part == MANIFEST_NAME or "wrong keyring?" in caught.value.detail, (
            at,
            caught.value.detail,
        )
        (path / MANIFEST_NAME).write_bytes(original)


async def test_a_different_keyring_names_decryption(backup: tuple[Path, Keyring], tmp_path: Path) -> None:
    path, _keyring = backup
    other = Keyring.create(tmp_path / "other.json")
    with pytest.raises(
        BackupError, match=re.escape("cannot decrypt part gateway.db: wrong keyring?")
    ) as caught:
        await verify_backup(path, other)
    assert caught.value.part == "gateway.db"


async def test_same_key_id_other_key_material_names_decryption_or_signature(
    backup: tuple[Path, Keyring],
) -> None:
    path, keyring = backup
    impostor = Keyring({keyring.active_id: b"\x07" * 32}, keyring.active_id)
    with pytest.raises(BackupError, match="wrong keyring"):
        await verify_backup(path, impostor)


async def test_a_rotated_keyring_still_verifies(backup: tuple[Path, Keyring], tmp_path: Path) -> None:
    path, keyring = backup
    keyring_file = tmp_path / "live" / "keys" / "keyring.json"
    keyring.rotate(keyring_file)
    await verify_backup(path, Keyring.load(keyring_file))


@pytest.mark.parametrize(
    ("file", "part"),
    [("gateway.db.enc", "gateway.db"), ("audit-checkpoints.jsonl.enc", "audit-checkpoints.jsonl")],
)
async def test_a_missing_part_is_named(backup: tuple[Path, Keyring], file: str, part: str) -> None:
    path, keyring = backup
    (path / file).unlink()
    with pytest.raises(BackupError, match=f"part {part}: missing") as caught:
        await verify_backup(path, keyring)
    assert caught.value.part == part


async def test_a_missing_manifest_is_named(backup: tuple[Path, Keyring]) -> None:
    path, keyring = backup
    (path / MANIFEST_NAME).unlink()
    with pytest.raises(BackupError, match=re.escape("manifest.json: missing")):
        await verify_backup(path, keyring)


async def test_a_part_swapped_from_another_backup_does_not_decrypt(
    backup: tuple[Path, Keyring], tmp_path: Path, clock: FakeClock
) -> None:
    """The same keyring, a valid part of another backup: the AAD binds each part to its backup."""
    path, keyring = backup
    other_dir = tmp_path / "backups2"
    shutil.copytree(path, other_dir / "copy")
    doc = json.loads((path / MANIFEST_NAME).read_text())
    # Re-sign a manifest naming another backup id over the same parts, as a keyring holder could:
    from gateway.backup.manifest import manifest_bytes, parse_manifest

    manifest, _ = parse_manifest(json.dumps(doc).encode())
    forged = dataclasses.replace(manifest, backup_id="20270101T000000Z-abcdef")
    (other_dir / "copy" / MANIFEST_NAME).write_bytes(manifest_bytes(forged, keyring))
    with pytest.raises(BackupError, match=re.escape("cannot decrypt part gateway.db")):
        await verify_backup(other_dir / "copy", keyring)


async def test_a_backup_of_a_newer_schema_is_named(tmp_path: Path, clock: FakeClock) -> None:
    """A database at a revision this gateway's migrations never made cannot be served by it."""
    node = await make_node(tmp_path / "live", clock, records=1)
    await node.db.close()
    with closing(sqlite3.connect(node.database)) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
        conn.commit()
    _manifest, path = create_backup(node.database, node.data_dir, tmp_path / "backups", node.keyring, clock)
    with pytest.raises(
        BackupError, match="schema revision f00dfeedbeef is not one this gateway knows"
    ) as caught:
        await verify_backup(path, node.keyring)
    assert caught.value.part == "gateway.db"


def _resign(path: Path, keyring: Keyring, file: str) -> None:
    """Rewrite the manifest with the current hashes of ``file``: what only a keyring holder could do."""
    from gateway.backup.manifest import file_sha256, manifest_bytes, parse_manifest

    manifest, _doc = parse_manifest((path / MANIFEST_NAME).read_bytes())
    digest, size = file_sha256(path / file)
    parts = tuple(
        dataclasses.replace(p, sha256=digest, size=size) if p.file == file else p for p in manifest.parts
    )
    (path / MANIFEST_NAME).write_bytes(manifest_bytes(dataclasses.replace(manifest, parts=parts), keyring))


@pytest.mark.parametrize("change", ["drop the last chunk", "swap two chunks", "duplicate a chunk"])
async def test_chunks_are_bound_to_their_place(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Small chunks, many of them: a re-signed part with chunks cut, reordered or repeated does not decrypt."""
    monkeypatch.setattr(archive, "CHUNK_BYTES", 4096)
    node = await make_node(tmp_path / "live", clock, records=30)
    try:
        manifest, path = create_backup(
            node.database, node.data_dir, tmp_path / "backups", node.keyring, clock
        )
    finally:
        await node.db.close()
    lines = (path / "gateway.db.enc").read_bytes().splitlines(keepends=True)
    assert len(lines) == manifest.parts[0].plain_size // 4096 + (
        1 if manifest.parts[0].plain_size % 4096 else 0
    )
    assert len(lines) > 3
    verified = await verify_backup(path, node.keyring)  # many chunks restore to the whole database
    assert verified.row_counts["audit_events"] == 30

    if change == "drop the last chunk":
        lines = lines[:-1]
    elif change == "swap two chunks":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines.insert(1, lines[1])
    (path / "gateway.db.enc").write_bytes(b"".join(lines))
    _resign(path, node.keyring, "gateway.db.enc")
    with pytest.raises(BackupError, match=re.escape("cannot decrypt part gateway.db")):
        await verify_backup(path, node.keyring)
