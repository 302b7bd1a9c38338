"""Single-use recovery codes: the way back in when the phone or the security key is lost.

A batch of ``MfaSettings.recovery_codes`` codes like ``7k2m-9qpx-4wht`` is generated, shown once, and
stored only as argon2id hashes. Generating a new batch deletes the old one in the same transaction, so
at no moment are both valid and a half-failed generation leaves the old codes working.

Security properties:

* **Entropy.** 12 characters from a 32-letter alphabet: 60 bits per code, drawn from ``secrets``.
  Online guessing is hopeless (and regulated by the caller); the argon2id hash makes an offline attack
  on a stolen database hopeless too.
* **Unambiguous alphabet** (Crockford's base32: no ``i``, ``l``, ``o``, ``u``). Codes are read off paper,
  so input is forgiving: case, spaces and dashes are ignored and the look-alikes ``i``/``l`` → ``1``,
  ``o`` → ``0`` are mapped.
* **Single use, also under races.** A code is spent with ``UPDATE ... WHERE id = :id AND used_at IS
  NULL``; of two requests presenting the same code at once, only the one whose update changed the row
  succeeds.

Cost: checking a code verifies it against every unused code of the batch (hashes are salted, so there
is no lookup), at most ``recovery_codes`` argon2 computations per attempt, queued behind the hasher's
concurrency bound. Wrong attempts are counted by the regulator like any other failed factor.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime
from typing import Final

from sqlalchemy import delete, select, update

from gateway.clock import Clock
from gateway.factors.ledgered import note_removed
from gateway.identity.ledger import AccountLedger
from gateway.identity.models import RecoveryCode, User
from gateway.identity.passwords import PasswordHasher
from gateway.settings.schema import MfaSettings
from gateway.store.db import Database, store_errors

__all__ = ["ALPHABET", "CODE_CHARS", "RecoveryCodes", "format_code", "normalise_code"]

#: Crockford's base32 alphabet, lower case: digits and letters without i, l, o and u.
ALPHABET: Final = "0123456789abcdefghjkmnpqrstvwxyz"
#: Characters per code (without dashes): 12 x 5 bits = 60 bits.
CODE_CHARS: Final = 12
_GROUP: Final = 4
_LOOKALIKES: Final = str.maketrans({"i": "1", "l": "1", "o": "0"})
_IGNORED: Final = frozenset(" -\t\r\n\u00a0")


def format_code(raw: str) -> str:
    """``"7k2m9qpx4wht"`` → ``"7k2m-9qpx-4wht"`` (how codes are shown)."""
    return "-".join(raw[i : i + _GROUP] for i in range(0, len(raw), _GROUP))


def normalise_code(typed: str) -> str | None:
    """The canonical 12 characters of a code as typed, or None if it cannot be a code.

    Case, spaces and dashes are ignored; ``i``/``l`` read as ``1`` and ``o`` as ``0``.
    """
    cleaned = "".join(ch for ch in typed.lower() if ch not in _IGNORED).translate(_LOOKALIKES)
    if len(cleaned) != CODE_CHARS or any(ch not in ALPHABET for ch in cleaned):
        return None
    return cleaned


class RecoveryCodes:
    """Generates, checks and counts a user's recovery codes."""

    def __init__(
        self,
        db: Database,
        hasher: PasswordHasher,
        settings: MfaSettings,
        clock: Clock,
        *,
        ledger: AccountLedger | None = None,
    ) -> None:
        """Wire the service.

        Args:
            db: Where the hashes are stored.
            hasher: argon2id hashing, off the event loop and bounded in concurrency.
            settings: ``settings.recovery_codes`` is the batch size.
            clock: Time source for ``created_at`` and ``used_at``.
            ledger: Where a new batch and a spent code are noted, so that a restore brings back neither
                the old sheet nor a spent code.
        """
        self._db = db
        self._hasher = hasher
        self._settings = settings
        self._clock = clock
        self._ledger = ledger

    async def generate(self, user_id: int) -> list[str]:
        """Replace the user's codes with a fresh batch.

        Args:
            user_id: The account.

        Returns:
            The new codes, formatted ``xxxx-xxxx-xxxx``. Shown to the user once; only hashes are kept.
        """
        raw = _distinct_codes(self._settings.recovery_codes)
        # Hashed before the transaction opens: a database transaction must not stay open for the
        # seconds the hashes may take under load.
        hashes = await asyncio.gather(*(self._hasher.hash(code) for code in raw))
        batch = secrets.token_hex(8)
        now = self._clock.now()
        async with self._db.session() as session:
            with store_errors("cannot store recovery codes"):
                await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
                session.add_all(
                    RecoveryCode(
                        user_id=user_id, batch=batch, position=i, code_hash=h, created_at=now, used_at=None
                    )
                    for i, h in enumerate(hashes)
                )
                user = await session.get(User, user_id) if self._ledger is not None else None
                noted = (
                    [await self._ledger.note(session, user, "codes-replaced")]
                    if self._ledger is not None and user is not None
                    else []
                )
                await session.commit()
        if self._ledger is not None:
            await self._ledger.append(noted)
        return [format_code(code) for code in raw]

    async def discard(self, user_id: int) -> int:
        """Delete every code of the account (a sheet made by a session that ended while it was stored);
        how many. Not noted in the ledger: no backup holds codes this new."""
        async with self._db.session() as session:
            with store_errors("cannot discard recovery codes"):
                gone = await session.scalars(
                    delete(RecoveryCode).where(RecoveryCode.user_id == user_id).returning(RecoveryCode.id)
                )
                count = len(gone.all())
                await session.commit()
        return count

    async def use(self, user_id: int, code: str) -> bool:
        """Spend one recovery code.

        Args:
            user_id: The account.
            code: The code as typed (case, spaces and dashes do not matter).

        Returns:
            True if it is an unused code of the user's current batch and this call marked it used.
        """
        normalised = normalise_code(code)
        if normalised is None:
            return False
        for row_id, code_hash in await self._unused(user_id):
            if await self._hasher.verify(code_hash, normalised):
                return await self._spend(row_id)
        return False

    async def remaining(self, user_id: int) -> int:
        """How many unused codes the user's current batch has left."""
        return len(await self._unused(user_id))

    async def _unused(self, user_id: int) -> list[tuple[int, str]]:
        # Only the newest batch counts. Normally it is the only one; two generations racing could both
        # commit, and then the codes last shown win, never a mixture.
        async with self._db.session() as session:
            with store_errors("cannot read recovery codes"):
                latest = (
                    select(RecoveryCode.batch)
                    .where(RecoveryCode.user_id == user_id)
                    .order_by(RecoveryCode.id.desc())
                    .limit(1)
                    .scalar_subquery()
                )
                rows = await session.execute(
                    select(RecoveryCode.id, RecoveryCode.code_hash)
                    .where(
                        RecoveryCode.user_id == user_id,
                        RecoveryCode.batch == latest,
                        RecoveryCode.used_at.is_(None),
                    )
                    .order_by(RecoveryCode.position)
                )
                return [(row_id, code_hash) for row_id, code_hash in rows.all()]

    async def _spend(self, row_id: int) -> bool:
        now: datetime = self._clock.now()
        async with self._db.session() as session:
            with store_errors("cannot update recovery codes"):
                # The condition makes spending atomic: a concurrent use of the same code finds used_at set.
                spent = (
                    await session.execute(
                        update(RecoveryCode)
                        .where(RecoveryCode.id == row_id, RecoveryCode.used_at.is_(None))
                        .values(used_at=now)
                        .returning(RecoveryCode.user_id, RecoveryCode.batch, RecoveryCode.position)
                    )
                ).first()
                # Noted in the ledger: a restore must not make a spent code (seen over a shoulder,
                # photographed on the sheet) good again.
                noted = (
                    await note_removed(
                        self._ledger,
                        session,
                        "code",
                        user_id=spent.user_id,
                        row_id=row_id,
                        batch=spent.batch,
                        position=spent.position,
                    )
                    if spent is not None
                    else []
                )
                await session.commit()
        if self._ledger is not None:
            await self._ledger.append(noted)
        return spent is not None


def _distinct_codes(count: int) -> list[str]:
    codes: list[str] = []
    while len(codes) < count:
        code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))
        # A duplicate within a batch (2^-60 per pair) would make one sheet line spend two codes.
        if code not in codes:
            codes.append(code)
    return codes
