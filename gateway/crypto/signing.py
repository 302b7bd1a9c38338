"""The ES256 keys that sign identity assertions: creation, rotation, publication (JWKS) and pruning.

Every replica reads the same ``signing_keys`` rows. A key's life, by its three times::

    created_at ──── active_from ─────────── retired_at ──────── retired_at + grace
    │  "next":         │  "active":             │  "retiring":          │  "expired":
    │  published,      │  published, signs      │  published, no longer │  not published,
    │  signs nothing   │  (the newest such key) │  signs                │  deleted by prune()

:meth:`SigningKeys.rotate` adds a key whose ``active_from`` is ``publish_ahead`` in the future and
sets the current key's ``retired_at`` to that same instant: upstreams that cache the JWKS learn the
new key before they meet a token signed with it, and tokens signed with the old key keep verifying
for ``grace`` (which the settings require to be at least the assertion ttl).

Security properties:

* **Private keys are keyring ciphertext** (PKCS#8 DER, AES-256-GCM, AAD ``signing:<kid>``): a database
  dump does not hand out the power to mint identities, and a ciphertext moved to another row does not
  decrypt. Only keys that sign now or later are decrypted at all.
* **One first key.** Creation and rotation run under a database-wide write lock (``BEGIN IMMEDIATE``
  on SQLite, a transaction-scoped advisory lock on PostgreSQL) and re-check the table inside it, so
  replicas starting together never create two keys that both sign.
* **Time decides, not load order.** A :class:`KeySet` answers "which key signs at *t*" from the key
  times, so every replica switches at the same ``active_from`` whenever it last reloaded.

Errors::

    GatewayError (500)
    ├── KeyringError         a private key does not decrypt (tampered row, keyring lacks its key)
    └── SigningUnavailable   no key set loaded yet, or no key signs at this moment
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import Clock
from gateway.crypto.keyring import Keyring, KeyringError
from gateway.crypto.models import SigningKey
from gateway.errors import GatewayError
from gateway.settings.schema import AssertionSettings
from gateway.store.db import SQLITE_BEGIN_OPTION, Database, store_errors
from gateway.store.fast.base import FastState, StateUnavailable
from gateway.store.fast.follow import follow_channel

__all__ = [
    "ALGORITHM",
    "COMPROMISE_CHANNEL",
    "COMPROMISE_KEY",
    "KeySet",
    "KeyState",
    "PublishedKey",
    "SigningKeys",
    "SigningUnavailable",
    "announce_compromise",
    "follow_compromise",
    "private_key_aad",
]

logger = logging.getLogger("gateway.signing")

ALGORITHM: Final = "ES256"
# A rotation with ``compromised`` also tells every worker through the fast state (the time it was made,
# and a broadcast): one that cannot reload the keys then (its database out of reach) stops signing
# instead of going on with the leaked key (the re-attack run: a cut-off replica signed with it for
# minutes). The fast state is above this floor: the caller writes it (gateway.crypto.lifecycle).
COMPROMISE_KEY: Final = "signing:compromised"
COMPROMISE_CHANNEL: Final = "signing-compromised"
# Arbitrary, fixed key for pg_advisory_xact_lock; distinct from the migration lock.
_PG_SIGNING_LOCK: Final = 0x67777369676E6B79  # b"gwsignky"
# 16 base64url characters of the RFC 7638 thumbprint: 96 bits, unique in practice, short in headers.
_KID_CHARS: Final = 16


class SigningUnavailable(GatewayError):
    """No assertion-signing key can be used right now (500)."""

    reason = "signing-unavailable"
    title = "Identity assertion unavailable"


class KeyState(StrEnum):
    """Where a key is in its life at a given moment (see the module docstring)."""

    NEXT = "next"
    ACTIVE = "active"
    RETIRING = "retiring"
    EXPIRED = "expired"


def private_key_aad(kid: str) -> bytes:
    """The keyring context a signing key's private half is encrypted under."""
    return f"signing:{kid}".encode()


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """One signing key as loaded: its public JWK, its times (Unix seconds) and, if it may sign, its
    private key."""

    kid: str
    jwk: Mapping[str, str]
    created_at: float
    active_from: float
    retired_at: float | None
    # None for keys that never sign again (not decrypted), or one whose ciphertext the keyring could
    # not open (logged; signing with it fails closed).
    private_key: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False, compare=False)
    # The keyring key id the private half is encrypted under (for `gateway keys list`).
    keyring_kid: str = ""


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable snapshot of the signing keys; every answer is for a moment ``at`` (Unix time).

    ``keys`` is ordered newest ``active_from`` first.
    """

    keys: tuple[PublishedKey, ...]
    grace: float

    def signing_key(self, at: float) -> PublishedKey | None:
        """The key that signs at ``at``: the newest one already active and not yet retired."""
        for key in self.keys:
            if key.active_from <= at and (key.retired_at is None or key.retired_at > at):
                return key
        return None

    def state(self, key: PublishedKey, at: float) -> KeyState:
        """The life stage of ``key`` at ``at``."""
        if key.retired_at is not None and at >= key.retired_at + self.grace:
            return KeyState.EXPIRED
        if key.active_from > at:
            return KeyState.NEXT
        signing = self.signing_key(at)
        return KeyState.ACTIVE if signing is not None and signing.kid == key.kid else KeyState.RETIRING

    def published(self, at: float) -> tuple[PublishedKey, ...]:
        """Keys upstreams must be able to verify with at ``at``: every key that is not expired."""
        return tuple(k for k in self.keys if k.retired_at is None or at < k.retired_at + self.grace)

    def jwks(self, at: float) -> dict[str, Any]:
        """The JWK Set document (RFC 7517) of :meth:`published`."""
        return {"keys": [dict(k.jwk) for k in self.published(at)]}


class SigningKeys:
    """The shared signing keys of one worker (or one CLI run): database rows plus a loaded KeySet."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        clock: Clock,
        settings: AssertionSettings,
    ) -> None:
        """Create the manager; nothing is read until :meth:`ensure`, :meth:`load` or :meth:`refresh`.

        Args:
            db: The relational store holding ``signing_keys``.
            keyring: Decrypts (and, for new keys, encrypts) the private halves.
            clock: Time for key times and for "which key signs now".
            settings: ``grace`` and ``publish_ahead``.
        """
        self._db = db
        self._keyring = keyring
        self._clock = clock
        self._settings = settings
        self._grace = float(settings.grace)
        self._publish_ahead = float(settings.publish_ahead)
        self._keyset: KeySet | None = None
        self._fingerprint: tuple[tuple[Any, ...], ...] | None = None
        # When a (re)load was last attempted: ``refresh(if_older_than=...)`` also spaces out attempts
        # that failed, so a dead database is not asked on every JWKS request.
        self._attempted_at: float | None = None
        self._refresh_lock = asyncio.Lock()

    def under(self, keyring: Keyring) -> SigningKeys:
        """The same keys, with new private halves encrypted under ``keyring`` (nothing loaded yet).

        For the rotation that follows a keyring key's compromise: the new signing key must be encrypted
        under the keyring key the rotation just made active, not under the leaked one a caller's own
        keyring (loaded before the rotation, e.g. the console's process) still has active.
        """
        return SigningKeys(self._db, keyring, self._clock, self._settings)

    # -- the loaded key set ----------------------------------------------------------------------

    @property
    def keyset(self) -> KeySet | None:
        """The last loaded key set, or None before the first load."""
        return self._keyset

    def current(self) -> KeySet:
        """The last loaded key set (the provider :class:`~gateway.identity.assertion.AssertionSigner`
        calls on every assertion).

        Raises:
            SigningUnavailable: Nothing loaded yet.
        """
        keyset = self._keyset
        if keyset is None:
            raise SigningUnavailable("signing keys are not loaded")
        return keyset

    def jwks(self) -> dict[str, Any]:
        """The JWK Set to publish now: ``{"keys": [{kid, kty, crv, x, y, alg, use}, ...]}``.

        Raises:
            SigningUnavailable: Nothing loaded yet.
        """
        return self.current().jwks(self._clock.time())

    # -- database --------------------------------------------------------------------------------

    async def ensure(self) -> KeySet:
        """Create the first key (signing at once) if no key is left to sign; then load.

        Safe for many replicas starting together: the check and the insert run under the write lock,
        so exactly one of them creates the key and the others see it.

        Returns:
            The loaded key set.

        Raises:
            StoreUnavailable: The database cannot be reached.
            KeyringError: The signing key does not decrypt.
        """
        async with self._exclusive() as conn:
            live = await conn.scalar(select(SigningKey.kid).where(SigningKey.retired_at.is_(None)).limit(1))
            if live is None:
                now = self._clock.now()
                kid = await self._insert(conn, created_at=now, active_from=now)
                logger.info("created the first assertion-signing key %s", kid)
        return await self.load()

    async def rotate(self, *, compromised: bool = False) -> str:
        """Add a new key: published now, signing from ``now + publish_ahead``.

        Every key not yet retired gets ``retired_at`` = the new key's ``active_from``, so exactly one
        key signs at any moment. With no key left to sign, the new one signs at once (there is
        nothing to hand over from). Expired keys are pruned in the same transaction.

        ``compromised``: the old keys may be in someone else's hands, so the new key signs at once and
        every other key is deleted (gone from the JWKS, never signing again) instead of handed over:
        tokens the old keys signed stop verifying at every application that fetches the JWKS anew.

        Returns:
            The new key's kid.

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        async with self._exclusive() as conn:
            now = self._clock.now()
            live = await conn.scalar(select(SigningKey.kid).where(SigningKey.retired_at.is_(None)).limit(1))
            at_once = live is None or compromised
            active_from = now if at_once else now + timedelta(seconds=self._publish_ahead)
            await conn.execute(
                update(SigningKey).where(SigningKey.retired_at.is_(None)).values(retired_at=active_from)
            )
            kid = await self._insert(conn, created_at=now, active_from=active_from)
            if compromised:
                await conn.execute(delete(SigningKey).where(SigningKey.kid != kid))
            await self._delete_expired(conn, now)
        logger.info("rotated the assertion-signing key: %s signs from %s", kid, active_from.isoformat())
        return kid

    async def delete_kids(self, kids: Sequence[str]) -> list[str]:
        """Delete the keys ``kids`` (a rotation of leaked keys made again on a database restored from
        an earlier backup); a key that signs now is replaced by a new one signing at once.

        Returns:
            The kids that were there and are deleted.

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        if not kids:
            return []
        async with self._exclusive() as conn:
            deleted = list(
                (
                    await conn.scalars(
                        delete(SigningKey).where(SigningKey.kid.in_(kids)).returning(SigningKey.kid)
                    )
                ).all()
            )
            live = await conn.scalar(select(SigningKey.kid).where(SigningKey.retired_at.is_(None)).limit(1))
            if deleted and live is None:
                now = self._clock.now()
                kid = await self._insert(conn, created_at=now, active_from=now)
                logger.warning("the leaked signing keys were back (a restored database): %s signs now", kid)
        return deleted

    async def prune(self) -> int:
        """Delete keys whose grace period is over (``retired_at + grace`` has passed).

        Returns:
            How many keys were deleted.
        """
        async with self._exclusive() as conn:
            return await self._delete_expired(conn, self._clock.now())

    async def load(self, *, with_private: bool = True) -> KeySet:
        """Read every key and make it the loaded key set.

        Args:
            with_private: Decrypt the private halves of the keys that sign now or later. ``False``
                (``gateway keys list``) reads only public data and does not replace the loaded set.

        Returns:
            The key set.

        Raises:
            StoreUnavailable: The database cannot be reached.
            KeyringError: The key that signs now does not decrypt.
        """
        rows = await self._read()
        now = self._clock.time()
        if not with_private:
            return KeySet(tuple(_public_entry(row) for row in rows), self._grace)
        keyset = KeySet(tuple([await self._entry(row, now) for row in rows]), self._grace)
        self._keyset, self._fingerprint, self._attempted_at = keyset, _fingerprint(keyset), now
        return keyset

    async def refresh(self, *, if_older_than: float = 0.0) -> bool:
        """Reload the key set if the rows changed (new, retired or deleted keys).

        Calls run one at a time; with ``if_older_than``, callers waiting behind a refresh use its
        result instead of reading again. Keys are decrypted only when the rows changed (or a key that
        signs now or later is still missing its private half). On any error the loaded set is kept and
        the error raised: the caller decides whether to log it (a periodic refresh) or fail.

        Args:
            if_older_than: Do nothing if the last attempt (successful or not) is more recent than this
                many seconds.

        Returns:
            Whether the loaded key set changed.
        """
        async with self._refresh_lock:
            attempted = self._attempted_at
            if attempted is not None and 0 <= self._clock.time() - attempted < if_older_than:
                return False
            self._attempted_at = self._clock.time()
            rows = await self._read()
            now = self._clock.time()
            public = KeySet(tuple(_public_entry(row) for row in rows), self._grace)
            old = self._keyset
            if old is not None and _fingerprint(public) == self._fingerprint and _complete(old, now):
                return False
            keyset = KeySet(tuple([await self._entry(row, now) for row in rows]), self._grace)
            self._keyset, self._fingerprint = keyset, _fingerprint(keyset)
            return True

    async def after_compromise(self) -> None:
        """The keys were rotated as compromised: reload them now, or stop signing until that works
        (an empty key set: every assertion is refused, the JWKS lists no key; the periodic refresh
        loads the new set once the database answers)."""
        try:
            await self.refresh()
        except Exception:
            logger.error(
                "the signing keys were rotated as compromised and cannot be reloaded now: no assertion "
                "is signed until they can",
                exc_info=True,
            )
            self._keyset, self._fingerprint = KeySet((), self._grace), None

    async def run_refresh(self, interval: float = 30.0) -> None:
        """Refresh every ``interval`` seconds until cancelled; errors are logged, the last set kept."""
        while True:
            await asyncio.sleep(interval)
            try:
                if await self.refresh():
                    logger.info("assertion-signing keys reloaded")
            except Exception:
                # A failed refresh must not end the loop: the loaded keys keep signing.
                logger.warning("reloading the assertion-signing keys failed", exc_info=True)

    # -- internals -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[AsyncConnection]:
        """A transaction holding the database-wide signing-key write lock."""
        with store_errors("signing keys"):
            async with self._db.engine.connect() as conn:
                if self._db.backend == "sqlite":
                    # The write lock is taken at BEGIN, before the re-check reads anything.
                    await conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                async with conn.begin():
                    if self._db.backend == "postgresql":
                        await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_SIGNING_LOCK})")
                    yield conn

    async def _read(self) -> list[SigningKey]:
        with store_errors("signing keys"):
            async with self._db.session() as session:
                result = await session.scalars(
                    select(SigningKey).order_by(
                        SigningKey.active_from.desc(), SigningKey.created_at.desc(), SigningKey.kid.desc()
                    )
                )
                return list(result)

    async def _insert(self, conn: AsyncConnection, *, created_at: datetime, active_from: datetime) -> str:
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = _public_jwk(private.public_key())
        kid = jwk["kid"]
        der = private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        await conn.execute(
            insert(SigningKey).values(
                kid=kid,
                algorithm=ALGORITHM,
                public_jwk=json.dumps(jwk, separators=(",", ":")),
                private_enc=self._keyring.encrypt(der, aad=private_key_aad(kid)),
                created_at=created_at,
                active_from=active_from,
                retired_at=None,
            )
        )
        return kid

    async def _delete_expired(self, conn: AsyncConnection, now: datetime) -> int:
        cutoff = now - timedelta(seconds=self._grace)
        result = await conn.execute(
            delete(SigningKey).where(SigningKey.retired_at.is_not(None), SigningKey.retired_at <= cutoff)
        )
        return int(result.rowcount or 0)

    async def _entry(self, row: SigningKey, now: float) -> PublishedKey:
        entry = _public_entry(row)
        if entry.retired_at is not None and entry.retired_at <= now:
            return entry  # never signs again: leave it encrypted
        try:
            private = await self._decrypt(row)
        except KeyringError:
            if entry.active_from <= now:
                raise
            # A key that signs only later is still published; signing with it fails closed unless a
            # later refresh can open it.
            logger.error("signing key %s (signs from %s) does not decrypt", row.kid, row.active_from)
            return entry
        if _public_jwk(private.public_key()) != dict(entry.jwk):
            raise KeyringError(f"signing key {row.kid}: the private key does not match the published one")
        return PublishedKey(
            entry.kid,
            entry.jwk,
            entry.created_at,
            entry.active_from,
            entry.retired_at,
            private,
            entry.keyring_kid,
        )

    async def _decrypt(self, row: SigningKey) -> ec.EllipticCurvePrivateKey:
        aad = private_key_aad(row.kid)
        # A key encrypted under a keyring key added after this process started: the keyring reads
        # its file again for an id it does not know (Keyring._knows).
        der = self._keyring.decrypt(row.private_enc, aad=aad)
        private = serialization.load_der_private_key(der, password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
            raise KeyringError(f"signing key {row.kid} is not a P-256 key")
        return private


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_jwk(public: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public.public_numbers()
    x, y = _b64url(numbers.x.to_bytes(32, "big")), _b64url(numbers.y.to_bytes(32, "big"))
    # RFC 7638 thumbprint: the required members, sorted, no whitespace.
    thumbprint = hashlib.sha256(
        json.dumps(
            {"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"), sort_keys=True
        ).encode("ascii")
    ).digest()
    kid = _b64url(thumbprint)[:_KID_CHARS]
    return {"kid": kid, "kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": ALGORITHM, "use": "sig"}


def _keyring_kid(token: str) -> str:
    parts = token.split(".")
    return parts[1] if len(parts) == 3 else ""


def _public_entry(row: SigningKey) -> PublishedKey:
    jwk = json.loads(row.public_jwk)
    if not isinstance(jwk, dict) or jwk.get("kid") != row.kid:
        raise KeyringError(f"signing key {row.kid}: its public JWK is malformed")
    return PublishedKey(
        kid=row.kid,
        jwk=MappingProxyType({str(k): str(v) for k, v in jwk.items()}),
        created_at=row.created_at.timestamp(),
        active_from=row.active_from.timestamp(),
        retired_at=row.retired_at.timestamp() if row.retired_at is not None else None,
        keyring_kid=_keyring_kid(row.private_enc),
    )


def _fingerprint(keyset: KeySet) -> tuple[tuple[Any, ...], ...]:
    return tuple((k.kid, k.active_from, k.retired_at, k.keyring_kid) for k in keyset.keys)


def _complete(keyset: KeySet, now: float) -> bool:
    """Whether every key that signs now or later has its private half (a failed decrypt is retried)."""
    return all(k.private_key is not None for k in keyset.keys if k.retired_at is None or k.retired_at > now)


async def announce_compromise(fast: FastState, at: float) -> None:
    """Tell every worker that the keys were rotated as compromised (see :data:`COMPROMISE_KEY`); a
    failure is logged: the workers' periodic reload still finds the new key."""
    try:
        await fast.set(COMPROMISE_KEY, repr(at).encode())
        await fast.publish(COMPROMISE_CHANNEL, b"rotated")
    except StateUnavailable:
        logger.warning("could not tell the gateways of the compromised rotation; they reload within 30 s")


async def follow_compromise(
    fast: FastState, signing: SigningKeys, *, every: float = 5.0, keyring: Keyring | None = None
) -> None:
    """Until cancelled: on a compromised rotation made after this worker started, reload the keys now or
    stop signing (:meth:`SigningKeys.after_compromise`), and read ``keyring``'s file again, so that a
    keyring key marked compromised encrypts nothing more here (:meth:`Keyring.reload`)."""
    seen: bytes | None = None
    first = True

    async def check() -> None:
        nonlocal seen, first
        marker = await fast.get(COMPROMISE_KEY)
        if first:
            seen, first = marker, False
            return
        if marker != seen:
            seen = marker
            if keyring is not None:
                try:
                    await asyncio.to_thread(keyring.reload)
                except KeyringError as exc:
                    logger.error("cannot read the keyring again after a compromised rotation: %s", exc.detail)
            await signing.after_compromise()

    await follow_channel(fast, COMPROMISE_CHANNEL, check, refresh_every=every, what="signing-key compromise")
