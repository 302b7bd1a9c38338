"""AES-256-GCM keyring with key ids: how secrets at rest (TOTP seeds, signing keys) are encrypted.

The keyring file is JSON, mode 0600, shared by every replica::

    {"active": "k1a2b3c4", "keys": {"k1a2b3c4": "<base64 of 32 bytes>"}, "algorithm": "AES-256-GCM",
     "compromised": {"k0d9e8f7": {"at": "2026-12-06T20:00:00+00:00", "audit_seq": 4211,
                                  "audit_hash": "<record 4211's hash>",
                                  "backups": {"20261205T020000Z-1a2b": "<manifest MAC hex>"}}}}

``compromised`` (absent until a key is marked) names the keys that may be in someone else's hands
(:meth:`Keyring.mark_compromised`). Such a key still decrypts (the secrets stored under it must stay
readable), but what it signed after it was marked is no longer trusted: a backup under it verifies only
if it is one the key had signed before (its id and manifest MAC were recorded then), an audit record
keyed under it after ``audit_seq`` is named a forgery, and so is a chain whose record ``audit_seq`` is
not ``audit_hash`` (rewritten up to the mark with the leaked key, and cut there). Whoever holds a
leaked key can compute any MAC under it; the record of what it signed before lives in this file,
which the leak did not give them write access to.

A ciphertext is a self-describing token ``v1.<kid>.<base64url(nonce || ciphertext+tag)>``. The key id
in the token picks the key, so after :meth:`Keyring.rotate` new secrets use the new key while every
older token still decrypts: keys rotate without downtime and without re-encrypting the database.

Security properties:

* **Fresh 96-bit random nonce per encryption.** GCM is catastrophically broken by a repeated
  (key, nonce) pair; with random nonces the NIST bound of 2^32 messages per key is far beyond the
  number of secrets a gateway stores, and rotation resets the count.
* **Context binding.** Callers pass ``aad`` (e.g. ``b"totp:42"``), so a ciphertext copied into another
  user's row or another column fails to decrypt instead of being used. The token header (version and
  key id) is authenticated too.
* **All or nothing.** Any tampering, a wrong ``aad`` or an unknown key id raises :class:`KeyringError`;
  GCM verifies the tag before anything is returned, so there is never a partial plaintext.
* **The file is guarded.** A keyring readable by group or others is refused (a key anyone on the box
  can read protects nothing), new files are 0600 from the moment they exist, and rewrites go through
  a temporary file and an atomic rename, so a crash never leaves half a keyring.

Errors::

    GatewayError (500)
    └── KeyringError    missing, unreadable, malformed or too-open keyring file; undecryptable token
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.clock import as_utc
from gateway.errors import GatewayError
from gateway.settings.schema import Settings
from gateway.store.private import private_dirs

__all__ = [
    "ALGORITHM",
    "KEY_BYTES",
    "NONCE_BYTES",
    "REREAD_EVERY",
    "TOKEN_VERSION",
    "Compromise",
    "Keyring",
    "KeyringError",
    "keyring_path",
    "token_key_id",
]

ALGORITHM: Final = "AES-256-GCM"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TOKEN_VERSION: Final = "v1"  # noqa: S105 - a format version, not a secret

# Key ids appear in tokens separated by dots, so they must not contain one; bounded so a hostile file
# cannot make every token huge.
_KID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TAG_BYTES: Final = 16
_INIT_HINT: Final = "run `gateway keys init --config FILE` and share the file with every replica"
_STRICT_MODE: Final = 0o600
#: Seconds between two reads of the keyring file for key ids it does not know (see Keyring._knows).
REREAD_EVERY: Final = 1.0

logger = logging.getLogger("gateway.keyring")


class KeyringError(GatewayError):
    """The keyring cannot be used, or a token does not decrypt under it (500)."""

    reason = "keyring-error"
    title = "Key material unavailable"


StrPath = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class Compromise:
    """What a key marked compromised had signed before it was marked (see the module docstring)."""

    #: When it was marked (ISO 8601, UTC).
    at: str
    #: The audit chain's head when it was marked: a record keyed under the key after it is not trusted.
    audit_seq: int
    #: Backup id → the manifest's MAC: the backups under the key that are still trusted.
    backups: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: The hash of record ``audit_seq``: the chain up to the mark, which the leaked key could rewrite.
    audit_hash: str = ""
    #: The earliest the key could have leaked (ISO 8601, UTC), when the operator knew it: no backup
    #: made from then on is vouched for. Empty: the leak's time is not known (vouching runs to the mark).
    leaked_since: str = ""

    @property
    def time(self) -> datetime:
        """:attr:`at` as an aware time (checked when the file is read)."""
        return as_utc(datetime.fromisoformat(self.at))

    def document(self) -> dict[str, object]:
        """The JSON form kept in the keyring file."""
        doc: dict[str, object] = {"at": self.at, "audit_seq": self.audit_seq}
        if self.audit_hash:
            doc["audit_hash"] = self.audit_hash
        if self.leaked_since:
            doc["leaked_since"] = self.leaked_since
        doc["backups"] = dict(sorted(self.backups.items()))
        return doc

    @classmethod
    def parse(cls, doc: object) -> Compromise:
        """Read the JSON form (ValueError when it is malformed)."""
        if not isinstance(doc, dict):
            raise ValueError("must be an object")
        at, seq, backups = doc.get("at"), doc.get("audit_seq"), doc.get("backups", {})
        anchor, leaked = doc.get("audit_hash", ""), doc.get("leaked_since", "")
        if not isinstance(at, str) or isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError('needs "at" (a time) and "audit_seq" (a record number)')
        _check_time("at", at)
        if leaked != "":
            _check_time("leaked_since", leaked)
        if not isinstance(anchor, str):
            raise ValueError('"audit_hash" must be a string')
        if not isinstance(backups, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in backups.items()
        ):
            raise ValueError('"backups" must map backup ids to MACs')
        return cls(at, seq, MappingProxyType(dict(backups)), anchor, str(leaked))


def held_mark(known: Compromise | None, compromise: Compromise) -> Compromise:
    """The mark a key holds after ``compromise`` is made on it (``known``: its mark before, if any): the
    new one; else the earlier one, narrowed by an earlier leak (its time, and only the backups both
    vouch for), never widened (see :meth:`Keyring.mark_compromised`)."""
    if known is None:
        return compromise
    if compromise.leaked_since and _cutoff(compromise) < _cutoff(known):
        return replace(
            known,
            leaked_since=compromise.leaked_since,
            backups=MappingProxyType(
                {b: mac for b, mac in known.backups.items() if compromise.backups.get(b) == mac}
            ),
        )
    return known


def _cutoff(mark: Compromise) -> datetime:
    """From when a mark trusts nothing the key signed: the leak's time when known, else the mark's."""
    return as_utc(datetime.fromisoformat(mark.leaked_since)) if mark.leaked_since else mark.time


def _check_time(name: str, value: object) -> None:
    """ValueError unless ``value`` is an ISO 8601 time (a mark's fields)."""
    try:
        datetime.fromisoformat(value)  # type: ignore[arg-type]  # anything else fails as it should
    except (TypeError, ValueError):
        raise ValueError(f'"{name}" must be an ISO 8601 time') from None


class Keyring:
    """A set of AES-256 keys by id, one of them active for new encryptions.

    Build one with :meth:`load`, :meth:`create` or :meth:`load_or_create`; the constructor is for tests
    and tools that already hold key material.
    """

    __slots__ = ("_active", "_aead", "_compromised", "_keys", "_path", "_read_again_at", "_seen")

    def __init__(
        self, keys: Mapping[str, bytes], active: str, compromised: Mapping[str, Compromise] | None = None
    ) -> None:
        """Wrap key material.

        Args:
            keys: Key id → 32 raw key bytes.
            active: The key id used by :meth:`encrypt`; must be in ``keys``.
            compromised: Key id → what it had signed when it was marked compromised; every id in
                ``keys``, never the active one.

        Raises:
            KeyringError: A key id is malformed, a key is not exactly 32 bytes, ``active`` is unknown,
                or a compromised key is unknown or the active one.
        """
        if not keys:
            raise KeyringError("the keyring holds no keys")
        for kid, key in keys.items():
            _check_kid(kid)
            if len(key) != KEY_BYTES:
                # AES-128 or a truncated key would silently weaken every secret: refuse, don't pad.
                raise KeyringError(f"key {kid!r} is {len(key)} bytes; AES-256 needs exactly {KEY_BYTES}")
        if active not in keys:
            raise KeyringError(f"the active key {active!r} is not in the keyring")
        compromised = dict(compromised or {})
        for kid in compromised:
            if kid not in keys:
                raise KeyringError(f"the compromised key {str(kid)[:64]!r} is not in the keyring")
        if active in compromised:
            # Encrypting new secrets under a key someone else holds protects nothing.
            raise KeyringError(f"the active key {active!r} is marked compromised; activate another key")
        self._compromised: dict[str, Compromise] = compromised
        self._keys: dict[str, bytes] = dict(keys)
        self._active = active
        self._aead: dict[str, AESGCM] = {kid: AESGCM(key) for kid, key in self._keys.items()}
        # The file it was read from (None: built from key material), read again for a key id it
        # does not know, at most once per REREAD_EVERY (see _knows).
        self._path: Path | None = None
        self._read_again_at = 0.0
        # The file's (inode, size, mtime) when it was last read or written: follow_file() reads it
        # again when they change.
        self._seen: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        # Never the key bytes: reprs end up in logs and tracebacks.
        return f"Keyring(active={self._active!r}, key_ids={sorted(self._keys)!r})"

    # -- files ---------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: StrPath) -> Keyring:
        """Read a keyring file.

        Args:
            path: The JSON keyring file.

        Returns:
            The keyring.

        Raises:
            KeyringError: The file is missing or unreadable, readable by group or others, not a valid
                keyring document, or holds a key that is not exactly 32 bytes.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise KeyringError(f"no keyring at {path}: {_INIT_HINT}") from exc
        except OSError as exc:
            raise KeyringError(f"cannot open the keyring {path}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as fh:
            # fstat on the open file, not stat on the name: the mode checked is that of the bytes read.
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KeyringError(f"the keyring {path} is not a regular file")
            if info.st_mode & 0o077:
                raise KeyringError(
                    f"the keyring {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others can "
                    f"read it; run `chmod 600 {path}`"
                )
            raw = fh.read()
        keyring = cls._parse(raw, path)
        keyring._path = path
        keyring._seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        return keyring

    @classmethod
    def create(cls, path: StrPath) -> Keyring:
        """Write a new keyring with one fresh key to ``path``.

        The file is 0600 from the moment it exists and appears complete or not at all (written to a
        temporary file and hard-linked into place), so a concurrent reader never sees half of it.

        Args:
            path: Where to write; its parent directory, and any missing above it, is created (0700).

        Returns:
            The new keyring.

        Raises:
            KeyringError: The file already exists or cannot be written.
        """
        path = Path(path)
        keyring = cls({(kid := _new_kid()): secrets.token_bytes(KEY_BYTES)}, kid)
        try:
            private_dirs(path.parent)
            with _temp_file(path, keyring._document()) as temp:
                # link() fails if the name exists (unlike rename), which makes this create-if-absent.
                os.link(temp, path)
            _fsync_dir(path.parent)
        except FileExistsError as exc:
            raise KeyringError(f"a keyring already exists at {path}; not overwriting it") from exc
        except OSError as exc:
            raise KeyringError(f"cannot write the keyring {path}: {exc.strerror}") from exc
        keyring._path = path
        return keyring

    @classmethod
    def load_or_create(cls, path: StrPath, *, allow_create: bool) -> Keyring:
        """Load the keyring, creating it first if it is missing and that is allowed.

        Only the single-node embedded default may create one: replicas each creating their own would
        not be able to read each other's secrets.

        Args:
            path: The keyring file.
            allow_create: Create a new keyring when the file does not exist.

        Returns:
            The keyring.

        Raises:
            KeyringError: Missing and not allowed to create (the message says how to make one), or as
                :meth:`load` / :meth:`create`.
        """
        path = Path(path)
        if not allow_create or path.exists():
            return cls.load(path)
        try:
            return cls.create(path)
        except KeyringError:
            # Another worker of this node created it between our check and our link: use theirs.
            if path.exists():
                return cls.load(path)
            raise

    def rotate(self, path: StrPath, *, activate: bool = True) -> str:
        """Add a fresh key, make it active (unless ``activate`` is False), and rewrite the file atomically.

        Old keys stay for decryption. The file is re-read under an exclusive lock first and its keys
        merged in, so two rotations at once (or a rotation by another process) cannot drop a key that
        something was already encrypted with.

        A *staged* key (``activate=False``) decrypts but encrypts nothing until :meth:`activate`: the
        two steps of a rotation across replicas that each hold their own copy of the file (a
        Kubernetes Secret): stage, give every replica the file, then activate. No replica ever meets
        a ciphertext under a key it does not have.

        Args:
            path: The keyring file to rewrite (stays mode 0600).
            activate: Make the new key the active one (False: stage it).

        Returns:
            The new key id.

        Raises:
            KeyringError: The file cannot be read or written, or holds a different key under one of
                this keyring's ids.
        """

        added: list[str] = []

        def add(draft: _Draft) -> None:
            kid = _new_kid()
            while kid in draft.keys:  # pragma: no cover - 32-bit ids; a clash is astronomically unlikely
                kid = _new_kid()
            draft.keys[kid] = secrets.token_bytes(KEY_BYTES)
            added.append(kid)
            if activate:
                draft.active = kid

        self._rewrite(Path(path), add)
        return added[0]

    def activate(self, path: StrPath, kid: str) -> None:
        """Make a key already in the file (a staged one) the active key, and rewrite the file atomically.

        Raises:
            KeyringError: ``kid`` is not in the file or is marked compromised, or as :meth:`rotate`.
        """

        def choose(draft: _Draft) -> None:
            if kid not in draft.keys:
                raise KeyringError(f"no key {kid[:64]!r} in {path}; `gateway keys list` shows the key ids")
            if kid in draft.compromised:
                raise KeyringError(f"key {kid} is marked compromised: it never becomes active again")
            draft.active = kid

        self._rewrite(Path(path), choose)

    def mark_compromised(self, path: StrPath, kid: str, compromise: Compromise) -> Compromise:
        """Mark a key that is no longer active as compromised, and rewrite the file atomically.

        A key marked once stays marked with what it had signed then: marking it again changes nothing
        (a later mark would vouch for what the leaked key signed in between), except that a leak found
        to be earlier than the mark's (``leaked_since``, or the mark's time without one) narrows it: the
        earlier leak time, and only the backups both marks vouch for. A re-attack run re-marked a key
        with an earlier leak time; the audit record said so and the file kept the later one, vouching
        for the backups in between.

        Args:
            path: The keyring file.
            kid: The key; not the active one (rotate first).
            compromise: When, the audit chain's head then, and the backups it had signed.

        Returns:
            The mark in the file (the earlier one when the key was marked already).

        Raises:
            KeyringError: ``kid`` is not in the file or is the active key, or as :meth:`rotate`.
        """

        def mark(draft: _Draft) -> None:
            if kid not in draft.keys:
                raise KeyringError(f"no key {kid[:64]!r} in {path}; `gateway keys list` shows the key ids")
            if kid == draft.active:
                raise KeyringError(
                    f"key {kid} is the active key: make another key active first "
                    "(`gateway keys rotate --keyring --compromised` does both)"
                )
            draft.compromised[kid] = held_mark(draft.compromised.get(kid), compromise)

        self._rewrite(Path(path), mark)
        return self._compromised[kid]

    def reload(self) -> None:
        """Read the file again now and take up its keys, its active key and its marks.

        For a writer that must not go on under a key another process has replaced (the audit chain
        meeting a head keyed under another key, a backup about to be signed). Unlike the reading for
        an unknown key id (:meth:`_knows`) it is not rate-limited: callers call it on a change, not per
        request.

        Raises:
            KeyringError: The file cannot be read, or changed a key this keyring holds.
        """
        if self._path is not None:
            self._adopt(type(self).load(self._path))

    def follow_file(self) -> None:
        """:meth:`reload` when the file changed since it was last read or written here (one stat).

        For the writers that must not go on under a key the file no longer has active: the audit chain
        before each record, checkpoints before each signature. A rotation whose process died after
        writing the file (before its audit record, before telling the workers) left them keying
        records under the key it had marked compromised (a re-attack run: a false alarm for ever).

        Raises:
            KeyringError: The file changed and cannot be read, or changed a key this keyring holds.
        """
        if self._path is None:
            return
        try:
            info = os.stat(self._path)
        except OSError as exc:
            raise KeyringError(f"cannot read the keyring {self._path}: {exc.strerror}") from exc
        if (info.st_ino, info.st_size, info.st_mtime_ns) != self._seen:
            self.reload()

    def _rewrite(self, path: Path, change: Callable[[_Draft], None]) -> None:
        """Under the file's lock: read it, merge this keyring's keys and marks in, let ``change`` edit
        the result, write it, and become it."""
        with _exclusive_lock(path):
            on_disk = type(self).load(path)
            draft = _Draft(dict(on_disk._keys), on_disk._active, dict(on_disk._compromised))
            for kid, key in self._keys.items():
                if draft.keys.setdefault(kid, key) != key:
                    raise KeyringError(f"key {kid!r} in {path} differs from the loaded one; not changing it")
            for kid, mark in self._compromised.items():
                draft.compromised.setdefault(kid, mark)  # a mark is never dropped
            change(draft)
            rewritten = type(self)(draft.keys, draft.active, draft.compromised)
            try:
                with _temp_file(path, rewritten._document()) as temp:
                    os.replace(temp, path)
                _fsync_dir(path.parent)
            except OSError as exc:
                raise KeyringError(f"cannot write the keyring {path}: {exc.strerror}") from exc
        self._keys, self._aead, self._active = rewritten._keys, rewritten._aead, rewritten._active
        self._compromised = rewritten._compromised
        with contextlib.suppress(OSError):
            info = os.stat(path)
            if self._path == path:
                self._seen = (info.st_ino, info.st_size, info.st_mtime_ns)

    # -- use -----------------------------------------------------------------------------------------

    @property
    def active_id(self) -> str:
        """The key id new tokens are encrypted under."""
        return self._active

    @property
    def key_ids(self) -> frozenset[str]:
        """Every key id this keyring can decrypt."""
        return frozenset(self._keys)

    @property
    def compromised(self) -> Mapping[str, Compromise]:
        """The keys marked compromised, with what each had signed then."""
        return MappingProxyType(self._compromised)

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> str:
        """Encrypt under the active key.

        Args:
            plaintext: The secret.
            aad: Context the ciphertext is bound to (e.g. ``b"totp:42"``); the same bytes must be given
                to :meth:`decrypt`.

        Returns:
            ``v1.<kid>.<base64url(nonce || ciphertext)>`` (ASCII, no padding).
        """
        kid = self._active
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead[kid].encrypt(nonce, plaintext, _associated(kid, aad))
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{TOKEN_VERSION}.{kid}.{body}"

    def decrypt(self, token: str, *, aad: bytes) -> bytes:
        """Decrypt a token made by :meth:`encrypt` (under any key still in the keyring).

        Args:
            token: The token.
            aad: The context given when it was encrypted.

        Returns:
            The plaintext.

        Raises:
            KeyringError: Malformed token, unknown key id, wrong ``aad`` or any modification. The
                message never says which, so it cannot serve as an oracle.
        """
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_VERSION:
            raise KeyringError("malformed ciphertext token")
        _version, kid, body = parts
        aead = self._aead.get(kid)
        if aead is None:
            if not self._knows(kid):
                raise KeyringError(f"ciphertext under unknown key id {kid[:64]!r}")
            aead = self._aead[kid]
        try:
            blob = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KeyringError("malformed ciphertext token") from exc
        if len(blob) < NONCE_BYTES + _TAG_BYTES:
            raise KeyringError("malformed ciphertext token")
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _associated(kid, aad))
        except InvalidTag as exc:
            raise KeyringError("ciphertext does not authenticate (tampered, or wrong context)") from exc

    def derive(self, info: bytes, *, length: int = 32, kid: str | None = None) -> bytes:
        """A subkey for another purpose (e.g. CSRF tokens), derived from the active key with HKDF-SHA256.

        Separate ``info`` labels give independent keys, so no key is ever used for two purposes. The
        result changes when the keyring rotates (it follows the active key).

        Args:
            info: A purpose label, e.g. ``b"gateway csrf v1"``.
            length: Bytes wanted.
            kid: Derive from this (possibly older) key instead of the active one, e.g. to check a MAC
                made before a rotation.

        Returns:
            ``length`` bytes of key material.

        Raises:
            KeyringError: ``kid`` is not in the keyring.
        """
        if kid is not None and kid not in self._keys and not self._knows(kid):
            raise KeyringError(f"unknown key id {kid[:64]!r}")
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=length, salt=None, info=b"gateway keyring derive\0" + info
        )
        return hkdf.derive(self._keys[kid if kid is not None else self._active])

    # -- keys added by another process ---------------------------------------------------------------

    def _knows(self, kid: str) -> bool:
        """Whether ``kid`` is known after reading the file again (for a key id not in memory).

        `gateway keys rotate` adds a key to the file while gateways run, and a process started after
        it (a restarted worker, a replica rolled first, the CLI itself) encrypts, keys audit records
        and issues CSRF tokens under the new key. A process that loaded the file before must still read
        those: it reads the file again when it meets a key id it does not know, merges the keys (a
        known id must name the same bytes, as ``rotate`` guarantees) and takes the file's active key,
        so every process encrypts under the new key once one has used it. At most once per
        :data:`REREAD_EVERY` seconds: a flood of unknown ids costs one small file read per second,
        not one per request. A file that cannot be read, or that changed a known key, is not merged
        (logged): the unknown id stays unknown and the caller gets its KeyringError.
        """
        if self._path is None or not _KID_RE.fullmatch(kid):
            return False
        now = time.monotonic()
        if now < self._read_again_at:
            return False
        self._read_again_at = now + REREAD_EVERY
        try:
            on_disk = type(self).load(self._path)
        except KeyringError as exc:
            logger.warning("keyring: cannot read %s again for key %s: %s", self._path, kid, exc)
            return False
        if kid not in on_disk._keys:
            return False
        try:
            self._adopt(on_disk)
        except KeyringError as exc:
            logger.error("keyring: %s", exc.detail)
            return False
        logger.info("keyring: read %s again; key %s added, active key %s", self._path, kid, self._active)
        return True

    def _adopt(self, on_disk: Keyring) -> None:
        """Merge the keys and marks of the file read again, and take its active key."""
        merged = dict(self._keys)
        for other_kid, key in on_disk._keys.items():
            if merged.setdefault(other_kid, key) != key:
                raise KeyringError(f"{self._path} holds a different key under id {other_kid}; not merged")
        aead = dict(self._aead)
        aead.update({k: AESGCM(key) for k, key in merged.items() if k not in aead})
        # Whole dicts replaced, each in one assignment: a thread reading the keyring meanwhile sees the
        # old set or the new one, and the active id is set last, once its key is there.
        self._keys, self._aead = merged, aead
        self._compromised = {**self._compromised, **on_disk._compromised}
        self._active = on_disk._active
        self._seen = on_disk._seen

    # -- internals -----------------------------------------------------------------------------------

    @classmethod
    def _parse(cls, raw: bytes, path: Path) -> Keyring:
        # Error messages name the field, never a value: the values are keys.
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyringError(f"the keyring {path} is not valid JSON") from exc
        if not isinstance(doc, dict):
            raise KeyringError(f"the keyring {path} must be a JSON object")
        if doc.get("algorithm") != ALGORITHM:
            raise KeyringError(f'the keyring {path} must say "algorithm": "{ALGORITHM}"')
        active, encoded = doc.get("active"), doc.get("keys")
        if not isinstance(active, str) or not isinstance(encoded, dict) or not encoded:
            raise KeyringError(f'the keyring {path} needs "active" (a key id) and a non-empty "keys" object')
        keys: dict[str, bytes] = {}
        for kid, value in encoded.items():
            if not isinstance(value, str):
                raise KeyringError(f"key {kid!r} in {path} must be a base64 string")
            try:
                keys[kid] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise KeyringError(f"key {kid!r} in {path} is not valid base64") from exc
        marks = doc.get("compromised", {})
        if not isinstance(marks, dict):
            raise KeyringError(f'"compromised" in the keyring {path} must be an object')
        compromised: dict[str, Compromise] = {}
        for kid, mark in marks.items():
            try:
                compromised[kid] = Compromise.parse(mark)
            except ValueError as exc:
                raise KeyringError(f'"compromised" entry {str(kid)[:64]!r} in {path}: {exc}') from exc
        try:
            return cls(keys, active, compromised)
        except KeyringError as exc:
            raise KeyringError(f"the keyring {path}: {exc.detail}") from exc

    def _document(self) -> bytes:
        doc: dict[str, object] = {
            "active": self._active,
            "keys": {kid: base64.b64encode(key).decode("ascii") for kid, key in self._keys.items()},
            "algorithm": ALGORITHM,
        }
        if self._compromised:
            doc["compromised"] = {kid: mark.document() for kid, mark in self._compromised.items()}
        return (json.dumps(doc, indent=2) + "\n").encode("ascii")


@dataclass(slots=True)
class _Draft:
    """A keyring file's content while :meth:`Keyring._rewrite` changes it."""

    keys: dict[str, bytes]
    active: str
    compromised: dict[str, Compromise]


def keyring_path(settings: Settings) -> Path:
    """The configured keyring file, or the one in data_dir.

    One answer for every process and command (the workers, ``gateway keys``, ``gateway audit``), so
    they all open the same file.
    """
    return Path(settings.keyring) if settings.keyring else Path(settings.data_dir) / "keys" / "keyring.json"


def token_key_id(token: str) -> str:
    """The key id a ciphertext token (:meth:`Keyring.encrypt`) names, or ``""`` if it is not one.

    Read without decrypting: what was encrypted under a key marked compromised, for the operator to
    act on (the key's holder can decrypt it from any copy of the database).
    """
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_VERSION or not _KID_RE.fullmatch(parts[1]):
        return ""
    return parts[1]


def _check_kid(kid: str) -> None:
    if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
        raise KeyringError(f"key id {str(kid)[:64]!r} must be 1-64 characters of A-Z a-z 0-9 _ -")


def _new_kid() -> str:
    # The same shape `gateway quickstart` writes: "k" + 8 hex digits.
    return "k" + secrets.token_hex(4)


def _associated(kid: str, aad: bytes) -> bytes:
    # The header is authenticated with the caller's context: a token cannot be re-labelled with
    # another version or key id. Key ids hold no ".", so the boundary is unambiguous.
    return f"{TOKEN_VERSION}.{kid}.".encode("ascii") + aad


@contextlib.contextmanager
def _temp_file(path: Path, content: bytes) -> Iterator[str]:
    """A fully written, fsynced 0600 file next to ``path``; removed afterwards if still there."""
    # mkstemp opens with O_EXCL and mode 0600: the key is never readable by others, not even briefly.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _STRICT_MODE)
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        yield temp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _STRICT_MODE)
    except OSError as exc:
        raise KeyringError(f"cannot lock the keyring {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_dir(directory: Path) -> None:
    # Makes the new directory entry durable: without it a power loss can undo the rename.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
