"""The manifest of a backup: what it holds, each part's hashes, and an HMAC that binds it to the keyring.

``manifest.json`` names the backup (id, creation time, gateway version, schema revision, audit-chain
head) and every part (file name, SHA-256 and size of the ciphertext and of the plaintext). Its
``signature`` is HMAC-SHA256 over the canonical JSON of everything else, under a key derived from the
keyring key the parts are encrypted with (``Keyring.derive``, its own label).

Why an HMAC and not the gateway's Ed25519/ES signing keys: those keys live *inside* the database being
backed up, so checking a signature would first need the backup it is meant to vouch for, and anyone
with the database file could re-sign. The keyring lives outside the database and is exactly what a
restore needs anyway; whoever holds it can check the manifest offline, and whoever does not can
neither forge a manifest nor read a part. A public-key signature would only add value for verifiers
who may not decrypt, and there are none: a backup is verified by restoring it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from gateway.crypto.keyring import Keyring, KeyringError
from gateway.errors import GatewayError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "BackupError",
    "Manifest",
    "Part",
    "file_sha256",
    "mac_problem",
    "manifest_bytes",
    "parse_manifest",
    "sha256_hex",
    "signature_mac",
    "signature_problem",
]

FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "manifest.json"
_LABEL: Final = b"gateway backup manifest v1"
_BLOCK: Final = 2**20


class BackupError(GatewayError):
    """A backup cannot be made, read, verified or restored; ``part`` names what failed (500)."""

    reason = "backup-error"
    title = "Backup failed"

    def __init__(self, detail: str, *, part: str = "") -> None:
        """Args:
        detail: What went wrong, naming the part.
        part: The failing part (``manifest.json``, a part name), for callers that report it apart.
        """
        super().__init__(detail)
        self.part = part


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, *, follow_symlinks: bool = True) -> tuple[str, int]:
    """Lowercase hex SHA-256 and size of a file, read in blocks (parts can be large); without
    ``follow_symlinks``, a symbolic link is refused (ELOOP) rather than read through.

    Raises:
        OSError: The file cannot be read (or is a link, without ``follow_symlinks``).
    """
    digest, size = hashlib.sha256(), 0
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    with os.fdopen(os.open(path, flags), "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


@dataclass(frozen=True, slots=True)
class Part:
    """One encrypted file of a backup."""

    name: str
    file: str
    sha256: str
    size: int
    plain_sha256: str
    plain_size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """A backup's description; ``signature`` is empty until :func:`manifest_bytes` signs it."""

    backup_id: str
    created_at: str
    gateway_version: str
    schema_revision: str
    audit_head_seq: int
    audit_head_hash: str
    key_id: str
    parts: tuple[Part, ...]
    source: str = "sqlite"
    format: int = FORMAT_VERSION

    def part(self, name: str) -> Part | None:
        """The part called ``name``, if the backup has one."""
        return next((p for p in self.parts if p.name == name), None)

    def summary(self) -> dict[str, object]:
        """What an audit record says about the backup: identifiers and hashes, never key material."""
        return {
            "backup_id": self.backup_id,
            "created_at": self.created_at,
            "schema_revision": self.schema_revision,
            "audit_head_seq": self.audit_head_seq,
            "parts": {p.name: p.sha256 for p in self.parts},
        }

    def body(self) -> dict[str, Any]:
        """Everything the signature covers, as JSON-ready values."""
        doc = asdict(self)
        doc["parts"] = [asdict(p) for p in self.parts]
        return doc


def _canonical(body: dict[str, Any]) -> bytes:
    # One byte string per manifest: sorted keys, no whitespace, so re-serialising cannot change it.
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _mac(body: dict[str, Any], keyring: Keyring, kid: str) -> str:
    key = keyring.derive(_LABEL, kid=kid)
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def manifest_bytes(manifest: Manifest, keyring: Keyring) -> bytes:
    """The signed ``manifest.json`` (indented for people; the signature is over the canonical form)."""
    body = manifest.body()
    doc = {
        **body,
        "signature": {
            "alg": "HMAC-SHA256",
            "key_id": manifest.key_id,
            "mac": _mac(body, keyring, manifest.key_id),
        },
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")


def parse_manifest(raw: bytes) -> tuple[Manifest, dict[str, Any]]:
    """Read ``manifest.json`` (unchecked): the manifest and the whole document with its signature.

    Raises:
        BackupError: Not JSON, or a field missing or of the wrong type (part ``manifest.json``).
    """
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
            raise ValueError("unknown format")
        parts = tuple(
            Part(
                str(p["name"]),
                str(p["file"]),
                str(p["sha256"]),
                int(p["size"]),
                str(p["plain_sha256"]),
                int(p["plain_size"]),
            )
            for p in doc["parts"]
        )
        manifest = Manifest(
            backup_id=str(doc["backup_id"]),
            created_at=str(doc["created_at"]),
            gateway_version=str(doc["gateway_version"]),
            schema_revision=str(doc["schema_revision"]),
            audit_head_seq=int(doc["audit_head_seq"]),
            audit_head_hash=str(doc["audit_head_hash"]),
            key_id=str(doc["key_id"]),
            parts=parts,
            source=str(doc["source"]),
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(
            f"{MANIFEST_NAME}: unreadable ({exc.__class__.__name__}: {exc})", part=MANIFEST_NAME
        ) from exc
    return manifest, doc


def signature_problem(manifest: Manifest, doc: dict[str, Any], keyring: Keyring) -> str | None:
    """Why the manifest's signature does not hold under ``keyring``, or ``None`` when it does.

    Also checks that the parsed manifest is exactly what was signed (no field added or dropped).
    """
    problem = mac_problem(manifest, doc, keyring)
    if problem is not None:
        return problem
    mark = keyring.compromised.get(manifest.key_id)
    if mark is not None and not hmac.compare_digest(
        mark.backups.get(manifest.backup_id, ""), signature_mac(doc)
    ):
        # Whoever holds the leaked key can sign anything under it: only what it had signed before it
        # was marked, as the keyring file recorded then, is still this deployment's.
        return (
            f"signed under key {manifest.key_id!r}, marked compromised at {mark.at}, and not one of the "
            "backups it had signed before (a forgery with the leaked key, or made by a gateway that had "
            "not yet read the rotation: make a new backup)"
        )
    return None


def mac_problem(manifest: Manifest, doc: dict[str, Any], keyring: Keyring) -> str | None:
    """Why the manifest's MAC does not check under ``keyring``, or ``None`` when it does (whether its
    key was marked compromised since is :func:`signature_problem`'s question)."""
    sig = doc.get("signature")
    if not isinstance(sig, dict) or not isinstance(sig.get("mac"), str):
        return "no signature"
    if (
        sig.keys() != {"alg", "key_id", "mac"}
        or sig["alg"] != "HMAC-SHA256"
        or sig["key_id"] != manifest.key_id
    ):
        return "the signature is not an HMAC-SHA256 under the manifest's key"
    body = {k: v for k, v in doc.items() if k != "signature"}
    if body != manifest.body():
        return "fields beyond the known ones, or of the wrong type"
    try:
        expected = _mac(body, keyring, manifest.key_id)
    except KeyringError:
        return f"signed under key {manifest.key_id!r}, which this keyring does not hold: wrong keyring?"
    if not hmac.compare_digest(expected, sig["mac"]):
        return "the signature does not match (the manifest was changed, or this is the wrong keyring)"
    return None


def signature_mac(doc: dict[str, Any]) -> str:
    """The MAC a manifest document carries (empty when it has none); see :func:`signature_problem`."""
    sig = doc.get("signature")
    mac = sig.get("mac") if isinstance(sig, dict) else None
    return mac if isinstance(mac, str) else ""
