"""Writing and reading a backup directory: parts encrypted under the keyring, described by the manifest.

A backup is a directory ``<backups>/<backup id>/`` with ``manifest.json`` and one ``<part>.enc`` per
part. A part is the plaintext in chunks of at most 4 MiB, one keyring token per line (AES-256-GCM under
the active key, ``gateway.crypto.keyring``), so memory stays bounded however large the database grows.
Each chunk's associated data binds the backup id, the part name, the chunk's index and whether it is
the last: a part copied into another backup or renamed, chunks reordered, dropped or cut off after
any chunk, all fail to decrypt. The directory is assembled under a hidden name and renamed when
complete, so a listed backup is never half-written.

The parts: ``gateway.db`` (the snapshot), ``audit-checkpoints.jsonl`` (when the node has signed
checkpoints) and one ``incidents/<case>/<file>`` part per file of the sealed incident evidence under
``<data_dir>/incidents/`` (``gateway.response.evidence``). The evidence is listed after the snapshot
is taken, so every bundle whose sealing the snapshot's audit chain records is already on disk and in
the backup; its plaintext SHA-256 in the manifest is the one the chain's ``incident.evidence_sealed``
holds. Part files are flat (``incidents-0001.enc``): a part's name says where it is restored, never
where its ciphertext lies.

The plaintext snapshot exists only in a 0700 scratch directory for as long as it is being encrypted.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import stat
import tempfile
from collections.abc import Callable
from contextlib import closing
from datetime import UTC
from pathlib import Path
from typing import Final

from gateway.audit.checkpoint import local_checkpoint_file
from gateway.backup.manifest import (
    MANIFEST_NAME,
    BackupError,
    Manifest,
    Part,
    file_sha256,
    manifest_bytes,
    parse_manifest,
    signature_problem,
)
from gateway.backup.snapshot import snapshot_sqlite
from gateway.clock import Clock
from gateway.crypto.keyring import Keyring, KeyringError
from gateway.version import package_version

__all__ = [
    "CHECKPOINTS_PART",
    "CHUNK_BYTES",
    "DATABASE_PART",
    "INCIDENTS_DIR",
    "Progress",
    "chunk_aad",
    "create_backup",
    "evidence_files",
    "fsync_dir",
    "part_path",
    "read_backup",
]

DATABASE_PART: Final = "gateway.db"
# The signed audit checkpoints live outside the database (they reveal a truncated tail), so a restored
# node needs them too.
CHECKPOINTS_PART: Final = "audit-checkpoints.jsonl"
# The sealed incident evidence of the node (``gateway.response.evidence.evidence_directory``, a floor
# above): one part per file, named ``incidents/<path below it>``.
INCIDENTS_DIR: Final = "incidents"

Progress = Callable[[str], None]
# Plaintext per chunk: large enough that the per-token overhead (nonce, tag, base64) is small.
CHUNK_BYTES: Final = 4 * 2**20


def chunk_aad(backup_id: str, name: str, index: int, *, last: bool) -> bytes:
    """The associated data of one chunk: its backup, its part, its position and whether it ends the part."""
    return f"gateway backup {backup_id} part {name} chunk {index} {'last' if last else 'more'}".encode()


def evidence_files(data_dir: Path) -> list[tuple[str, Path]]:
    """The incident evidence files of ``data_dir`` as (part name, file), sorted by name.

    Regular files only: a symbolic link is not followed (a backup never reaches outside the data
    directory through one), nor is anything that is not a file.
    """
    root = data_dir / INCIDENTS_DIR
    if not root.is_dir() or root.is_symlink():
        return []
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        for name in files:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                found.append((f"{INCIDENTS_DIR}/{path.relative_to(root).as_posix()}", path))
    return sorted(found)


def part_path(root: Path, name: str) -> Path:
    """Where the part ``name`` goes below ``root`` (a data directory or a staging directory).

    Raises:
        BackupError: A name that is not one of the parts a backup is made of: it would be written
            outside ``root`` or over something else (a manifest is signed, so only a keyring holder
            could write one; checked all the same before anything is written).
    """
    if name in (DATABASE_PART, CHECKPOINTS_PART):
        return root / name
    head, _, rest = name.partition("/")
    components = rest.split("/")
    if (
        head != INCIDENTS_DIR
        or not rest
        or any(c in ("", ".", "..") or "\\" in c or "\x00" in c for c in components)
    ):
        raise BackupError(f"{MANIFEST_NAME}: part name {name[:80]!r} is not one a backup holds", part=name)
    return root.joinpath(INCIDENTS_DIR, *components)


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(directory: Path) -> None:
    """Make the entries just renamed or created in ``directory`` durable (a power loss cannot undo them)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe_snapshot(path: Path) -> tuple[str, int, str]:
    """Schema revision and audit head (seq, hash) of the snapshot itself, so they match its content."""
    with closing(sqlite3.connect(path)) as conn:
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        head = conn.execute("SELECT seq, record_hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    if revision is None:
        raise BackupError("the database was never migrated: nothing to back up", part=DATABASE_PART)
    return str(revision[0]), int(head[0]) if head else 0, str(head[1]) if head else ""


def _settle_own_run(snap: Path, backup_id: str) -> None:
    # The scheduled run that makes this backup is "running" in its own snapshot. Restored as such,
    # the new node would hold this period as claimed and never finished (no backup until the next
    # period, then a "died" failure): the copy says what the run produced instead. Only the copy.
    with closing(sqlite3.connect(snap)) as conn:
        if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'backup_runs'"
        ).fetchone():
            conn.execute(
                "UPDATE backup_runs SET status = 'ok', backup_id = ?, finished_at = started_at, "
                "detail = 'this backup (settled in its own snapshot)' WHERE status = 'running' AND id = "
                "(SELECT max(id) FROM backup_runs WHERE status = 'running' AND kind = 'scheduled')",
                (backup_id,),
            )
            conn.commit()


def _refuse_shared(directory: Path, named: str) -> None:
    """Refuse a backups directory other users may write (through a link too: its target counts): they
    could hide a backup, or plant one that verify and drills pick (an attack run, with a link to a
    0777 directory). A directory of another user is refused too (root's is fine), and one its group may
    write unless that is a group of this process (Kubernetes' fsGroup volumes are group-writable).

    ``named`` is where the directory came from (``backup.directory``, ``--to``), for the message.

    Raises:
        BackupError: The directory is another user's, or writable by everyone or by another group.
    """
    info = directory.stat()
    foreign_group = info.st_mode & 0o020 and info.st_gid not in {os.getegid(), *os.getgroups()}
    if info.st_uid not in (os.geteuid(), 0) or info.st_mode & 0o002 or foreign_group:
        raise BackupError(
            f"{named} {directory} is writable by other users or not this user's "
            f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}): they could hide or plant "
            "backups. Make it this user's own, mode 0700: chown and chmod 700"
        )


def create_backup(
    database: Path,
    data_dir: Path,
    directory: Path,
    keyring: Keyring,
    clock: Clock,
    progress: Progress = lambda _line: None,
    *,
    named: str = "backup.directory",
) -> tuple[Manifest, Path]:
    """Snapshot the live database, encrypt it (and the audit checkpoints) and write a signed backup.

    Args:
        database: The live SQLite file (``<data_dir>/gateway.db`` by default).
        data_dir: The node's data directory (for the audit checkpoints file).
        directory: Where backups are kept; the backup becomes ``directory/<backup id>``.
        keyring: Encrypts the parts and keys the manifest's HMAC (never written into the backup).
        clock: The creation time (and the id's timestamp).
        progress: Called with one line per part done.
        named: Where ``directory`` came from, as a refusal names it (``--to`` when the operator gave it).

    Returns:
        The manifest and the backup's directory.

    Raises:
        BackupError: The database cannot be read or the backup cannot be written.
    """
    created = clock.now().astimezone(UTC)
    backup_id = f"{created:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _refuse_shared(directory, named)
        final = directory / backup_id
        work = Path(tempfile.mkdtemp(dir=directory, prefix=f".{backup_id}.", suffix=".partial"))
    except OSError as exc:
        raise BackupError(f"cannot write backups to {directory}: {exc.strerror}") from exc
    try:
        parts, revision, head_seq, head_hash = _write_parts(
            database, data_dir, work, backup_id, keyring, progress
        )
        manifest = Manifest(
            backup_id=backup_id,
            created_at=created.isoformat(),
            gateway_version=package_version(),
            schema_revision=revision,
            audit_head_seq=head_seq,
            audit_head_hash=head_hash,
            key_id=keyring.active_id,
            parts=tuple(parts),
        )
        _write_file(work / MANIFEST_NAME, manifest_bytes(manifest, keyring))
        fsync_dir(work)
        work.rename(final)
        fsync_dir(directory)
    except BaseException:
        _remove_tree(work)
        raise
    return manifest, final


def _write_parts(
    database: Path, data_dir: Path, work: Path, backup_id: str, keyring: Keyring, progress: Progress
) -> tuple[list[Part], str, int, str]:
    parts = []
    with tempfile.TemporaryDirectory(prefix="gateway-backup-") as scratch:
        snap = Path(scratch) / DATABASE_PART
        try:
            snapshot_sqlite(database, snap)
            _settle_own_run(snap, backup_id)
            revision, head_seq, head_hash = _describe_snapshot(snap)
        except (OSError, sqlite3.Error) as exc:
            raise BackupError(f"cannot snapshot {database}: {exc}", part=DATABASE_PART) from exc
        sources = [(DATABASE_PART, snap, f"{DATABASE_PART}.enc")]
        checkpoints = local_checkpoint_file(data_dir)
        if checkpoints.is_file():
            sources.append((CHECKPOINTS_PART, checkpoints, f"{CHECKPOINTS_PART}.enc"))
        # After the snapshot: every bundle the snapshot's chain says was sealed is on disk by now.
        for n, (name, path) in enumerate(evidence_files(data_dir), start=1):
            sources.append((name, path, f"{INCIDENTS_DIR}-{n:04d}.enc"))
        for name, source, file in sources:
            try:
                part = _encrypt_part(source, work / file, backup_id, name, keyring)
            except OSError as exc:
                raise BackupError(f"part {name}: cannot read {source}: {exc.strerror}", part=name) from exc
            parts.append(part)
            progress(
                f"part {name}: {part.plain_size} bytes, encrypted {part.size} bytes, sha256 {part.sha256[:16]}…"
            )
    return parts, revision, head_seq, head_hash


def _encrypt_part(source: Path, dest: Path, backup_id: str, name: str, keyring: Keyring) -> Part:
    cipher, plain = hashlib.sha256(), hashlib.sha256()
    size = plain_size = index = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with source.open("rb") as inp, os.fdopen(fd, "wb") as out:
        chunk = inp.read(CHUNK_BYTES)
        while True:
            following = inp.read(CHUNK_BYTES)
            last = not following  # an empty part is one empty last chunk
            line = (
                keyring.encrypt(chunk, aad=chunk_aad(backup_id, name, index, last=last)).encode("ascii")
                + b"\n"
            )
            out.write(line)
            cipher.update(line)
            plain.update(chunk)
            size, plain_size = size + len(line), plain_size + len(chunk)
            if last:
                break
            chunk, index = following, index + 1
        out.flush()
        os.fsync(out.fileno())
    return Part(name, dest.name, cipher.hexdigest(), size, plain.hexdigest(), plain_size)


def _remove_tree(path: Path) -> None:
    for child in path.glob("*"):
        child.unlink(missing_ok=True)
    path.rmdir()


def read_backup(path: Path, keyring: Keyring, into: Path) -> Manifest:
    """Check a backup's manifest signature and every part, in that order, decrypting the parts ``into``.

    Checks: the manifest is present and readable; the keyring holds the key it was made under; the
    signature holds; each part is present, of its size and SHA-256; it decrypts; the plaintext has its
    SHA-256. The first failure is raised, naming the part. The plaintexts are written to
    ``into/<part name>`` (mode 0600); on a failure what was written there is the caller's to remove.

    Raises:
        BackupError: The first check that failed (``part`` says which part).
    """
    try:
        raw = (path / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise BackupError(f"{MANIFEST_NAME}: missing in {path}", part=MANIFEST_NAME) from None
    except OSError as exc:
        raise BackupError(f"{MANIFEST_NAME}: cannot read it: {exc.strerror}", part=MANIFEST_NAME) from exc
    manifest, doc = parse_manifest(raw)
    if manifest.key_id not in keyring.key_ids and manifest.parts:
        first = manifest.parts[0].name
        raise BackupError(
            f"cannot decrypt part {first}: wrong keyring? the backup was made under key "
            f"{manifest.key_id!r}, which this keyring does not hold (nor can it check the manifest's signature)",
            part=first,
        )
    problem = signature_problem(manifest, doc, keyring)
    if problem is not None:
        raise BackupError(f"{MANIFEST_NAME}: {problem}", part=MANIFEST_NAME)
    if raw != manifest_bytes(manifest, keyring):
        # Signed content intact but the bytes differ (spacing, order): not as written, so not trusted.
        raise BackupError(f"{MANIFEST_NAME}: not byte for byte as it was written", part=MANIFEST_NAME)
    targets = {part.name: part_path(into, part.name) for part in manifest.parts}
    for part in manifest.parts:
        if "/" in part.file or part.file.startswith("."):
            raise BackupError(
                f"{MANIFEST_NAME}: part file {part.file[:80]!r} is not a plain name", part=part.name
            )
    # Every part's hash before any decryption: a damaged part is named as damaged, not as undecryptable.
    for part in manifest.parts:
        _check_hash(path, part)
    for part in manifest.parts:
        dest = targets[part.name]
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _decrypt_part(path / part.file, manifest.backup_id, part, keyring, dest)
    return manifest


def _check_hash(path: Path, part: Part) -> None:
    try:
        digest, size = file_sha256(path / part.file)
    except FileNotFoundError:
        raise BackupError(
            f"part {part.name}: missing ({part.file} is not in {path})", part=part.name
        ) from None
    except OSError as exc:
        raise BackupError(
            f"part {part.name}: cannot read {part.file}: {exc.strerror}", part=part.name
        ) from exc
    if (digest, size) != (part.sha256, part.size):
        raise BackupError(
            f"part {part.name}: sha256 mismatch ({part.file} is {size} bytes, the manifest says {part.size}; "
            "changed or damaged)",
            part=part.name,
        )


def _decrypt_part(source: Path, backup_id: str, part: Part, keyring: Keyring, dest: Path) -> None:
    name = part.name
    plain, size = hashlib.sha256(), 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with source.open("rb") as inp, os.fdopen(fd, "wb") as out:
        lines = iter(inp)
        current = next(lines, None)
        index = 0
        while current is not None:
            following = next(lines, None)
            aad = chunk_aad(backup_id, name, index, last=following is None)
            try:
                data = keyring.decrypt(current.rstrip(b"\n").decode("ascii"), aad=aad)
            except (KeyringError, UnicodeDecodeError) as exc:
                raise BackupError(f"cannot decrypt part {name}: wrong keyring?", part=name) from exc
            out.write(data)
            plain.update(data)
            size += len(data)
            current, index = following, index + 1
        out.flush()
        os.fsync(out.fileno())
    if (plain.hexdigest(), size) != (part.plain_sha256, part.plain_size):
        raise BackupError(f"part {name}: the decrypted content does not match its sha256", part=name)
