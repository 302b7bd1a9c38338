"""TOTP authenticator apps (RFC 6238: HMAC-SHA-1, 30-second steps, 6 digits) with pyotp.

Enrollment is a two-step proof::

    begin_enrollment ──► (user scans the QR code) ──► confirm(first valid code)

until ``confirm`` the credential is *unconfirmed*: it does not count as a second factor, is not listed,
and is ignored (and cleaned up) once older than :data:`ENROLLMENT_TTL`.

Security properties, and where each one is enforced:

* **Seeds at rest are ciphertext.** The base32 seed is encrypted under the keyring with the user id as
  associated data, so a seed copied into another user's row does not decrypt.
* **A code is accepted once.** :func:`match_step` only accepts a time step *greater* than the last one
  used, and :meth:`TotpService.verify` records it with a conditional ``UPDATE ... WHERE last_step <
  :step``. Of two requests replaying one code at the same moment (on any replicas) exactly one wins, and
  once a code is used, no code of the same or an earlier step is accepted either.
* **Clock drift.** Codes of the previous and next step are accepted too (``window=1``, RFC 6238 §5.2):
  phones drift and people type slowly. Wider windows only help an attacker.
* **Constant-time comparison** of every candidate code, so timing does not leak digits.

Rate limiting of wrong codes is the caller's job (``gateway.identity.regulation``): with 10^6 codes and 3
valid at a time, unlimited guessing would succeed quickly.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import io
import logging
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import pyotp
import segno
from sqlalchemy import delete, exists, select, update

from gateway.clock import Clock
from gateway.crypto.keyring import Keyring, KeyringError
from gateway.factors.last import hold_owner, refuse_none_left
from gateway.factors.ledgered import note_removed
from gateway.identity.ledger import AccountLedger
from gateway.identity.models import TotpCredential
from gateway.settings.schema import MfaSettings
from gateway.store.db import Database, store_errors

__all__ = [
    "DIGITS",
    "ENROLLMENT_TTL",
    "STEP_SECONDS",
    "TotpDevice",
    "TotpEnrollment",
    "TotpService",
    "match_step",
    "new_secret",
    "provisioning_uri",
    "qr_svg",
]

logger = logging.getLogger(__name__)

STEP_SECONDS: Final = 30
DIGITS: Final = 6
#: How long an unconfirmed enrollment stays usable; older ones are ignored and deleted.
ENROLLMENT_TTL: Final = timedelta(minutes=15)

_SECRET_CHARS: Final = 32  # base32 characters: 160 bits, the HMAC-SHA-1 key size RFC 4226 recommends
_CODE_RE: Final = re.compile(r"[0-9]{6}")  # ASCII only: str.isdigit() would accept "١٢٣٤٥٦"
_MAX_NAME_CHARS: Final = 64
_DEFAULT_NAME: Final = "Authenticator app"
_QR_TITLE: Final = "QR code: scan it with your authenticator app to add this account"


@dataclass(frozen=True, slots=True)
class TotpEnrollment:
    """A started enrollment: show ``qr_svg`` (and ``secret`` for manual entry), then confirm a code."""

    credential_id: int
    secret: str
    uri: str
    qr_svg: str


@dataclass(frozen=True, slots=True)
class TotpDevice:
    """A confirmed authenticator app as the portal shows it (never the seed, not even encrypted)."""

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


def new_secret() -> str:
    """A fresh random seed: 160 bits as 32 base32 characters (from the ``secrets`` CSPRNG)."""
    return str(pyotp.random_base32(length=_SECRET_CHARS))


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI that authenticator apps import (via the QR code).

    Args:
        secret: The base32 seed.
        account: The account label shown in the app (the username).
        issuer: Who the account is with, shown beside the label.

    Returns:
        The URI, with label and issuer percent-encoded.
    """
    return str(
        pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
            name=account, issuer_name=issuer
        )
    )


def qr_svg(uri: str) -> str:
    """The QR code of ``uri`` as an inline SVG element for an HTML page.

    No XML declaration; ``role="img"`` and a ``<title>`` give screen readers a name for it.

    Args:
        uri: What to encode (a provisioning URI).

    Returns:
        ``<svg ...>...</svg>``.
    """
    code = segno.make(uri, error="m", micro=False)
    buffer = io.BytesIO()
    code.save(
        buffer,
        kind="svg",
        xmldecl=False,
        svgns=True,
        nl=False,
        scale=4,
        border=4,
        title=_QR_TITLE,
        svgclass="totp-qr",
    )
    svg = buffer.getvalue().decode("utf-8")
    return svg.replace("<svg ", '<svg role="img" ', 1)


def match_step(secret: str, code: str, *, now: float, last_step: int, window: int = 1) -> int | None:
    """The RFC 6238 time step whose code is ``code``, if it is new enough to accept.

    Args:
        secret: The base32 seed.
        code: What the person typed; exactly 6 ASCII digits or it never matches.
        now: Unix time to check at (from the injected clock).
        last_step: The last step accepted for this credential; only later steps are accepted, so a
            code is used once and never after a newer one.
        window: Steps of drift accepted either side of the current one.

    Returns:
        The matching step (the latest one, should two steps share a code), or None.
    """
    if not isinstance(code, str) or not _CODE_RE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = int(now // STEP_SECONDS)
    matched: int | None = None
    # Every candidate is compared, matched or not, so the time taken does not depend on the code.
    for step in range(current - window, current + window + 1):
        expected = str(totp.generate_otp(step))
        if hmac.compare_digest(expected.encode("ascii"), code.encode("ascii")) and step > last_step:
            matched = step
    return matched


class TotpService:
    """Authenticator-app credentials of local accounts: enroll, confirm, verify, manage."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        settings: MfaSettings,
        clock: Clock,
        *,
        ledger: AccountLedger | None = None,
    ) -> None:
        """Wire the service.

        Args:
            db: Where credentials are stored.
            keyring: Encrypts the seeds at rest.
            settings: ``settings.totp.issuer`` is shown in the app.
            clock: Time source for codes and timestamps.
            ledger: Where a removal is noted, so that a restore does not bring the app back.
        """
        self._db = db
        self._keyring = keyring
        self._settings = settings
        self._clock = clock
        self._ledger = ledger

    async def begin_enrollment(
        self, user_id: int, *, account: str, name: str, bound_to: str = ""
    ) -> TotpEnrollment:
        """Start adding an authenticator app: a new seed, stored encrypted and unconfirmed.

        Args:
            user_id: The account.
            account: The label in the app (the username).
            name: The user's name for this device (cleaned and bounded).
            bound_to: Who alone may read it again and confirm it (a sign-in's session family),
                in the seed's encryption: another session of the account finds no enrollment (a
                re-attack run read the owner's new seed, and confirmed it, from a second session).

        Returns:
            What to show: the credential id to confirm later, the seed, its URI and QR code.
        """
        secret = new_secret()
        now = self._clock.now()
        row = TotpCredential(
            user_id=user_id,
            name=_clean_name(name),
            secret_enc=self._keyring.encrypt(secret.encode("ascii"), aad=_aad(user_id, bound_to)),
            confirmed=False,
            last_step=0,
            created_at=now,
            last_used_at=None,
        )
        async with self._db.session() as session:
            with store_errors("cannot store the TOTP enrollment"):
                # Abandoned enrollments carry a seed nobody confirmed: drop them rather than keep
                # (encrypted) secrets around forever.
                await session.execute(
                    delete(TotpCredential).where(
                        TotpCredential.user_id == user_id,
                        TotpCredential.confirmed.is_(False),
                        TotpCredential.created_at < now - ENROLLMENT_TTL,
                    )
                )
                session.add(row)
                await session.commit()
        uri = provisioning_uri(secret, account=account, issuer=self._settings.totp.issuer)
        return TotpEnrollment(credential_id=row.id, secret=secret, uri=uri, qr_svg=qr_svg(uri))

    async def pending_enrollment(
        self, user_id: int, credential_id: int, *, account: str, bound_to: str = ""
    ) -> TotpEnrollment | None:
        """The user's unconfirmed, unexpired enrollment ``credential_id`` again (after a wrong code).

        The user has just scanned this seed: a mistyped code must not throw it away and make them
        scan a new one (and leave a dead entry in their app).

        Returns:
            What :meth:`begin_enrollment` returned for it, or None when it is unknown, foreign,
            confirmed, expired or does not decrypt.
        """
        row = await self._pending(user_id, credential_id)
        secret = None if row is None else self._secret(row, bound_to)
        if secret is None:
            return None
        uri = provisioning_uri(secret, account=account, issuer=self._settings.totp.issuer)
        return TotpEnrollment(credential_id=credential_id, secret=secret, uri=uri, qr_svg=qr_svg(uri))

    async def _pending(self, user_id: int, credential_id: int) -> TotpCredential | None:
        now = self._clock.now()
        async with self._db.session() as session:
            with store_errors("cannot read the TOTP enrollment"):
                row: TotpCredential | None = await session.scalar(
                    select(TotpCredential).where(
                        TotpCredential.id == credential_id,
                        TotpCredential.user_id == user_id,
                        TotpCredential.confirmed.is_(False),
                        TotpCredential.created_at >= now - ENROLLMENT_TTL,
                    )
                )
                return row

    async def confirm(self, user_id: int, credential_id: int, code: str, *, bound_to: str = "") -> bool:
        """Finish an enrollment with the first code from the app.

        Args:
            user_id: The account (the credential must be its own).
            credential_id: From :meth:`begin_enrollment`.
            code: The code the app shows (spaces are ignored).
            bound_to: As given to :meth:`begin_enrollment`.

        Returns:
            True if the code matched and the credential is now confirmed; False for a wrong code, an
            unknown, foreign, already confirmed or expired enrollment.
        """
        row = await self._pending(user_id, credential_id)
        if row is None:
            return False
        secret = self._secret(row, bound_to)
        if secret is None:
            return False
        step = match_step(secret, _normalise_code(code), now=self._clock.time(), last_step=row.last_step)
        if step is None:
            return False
        # The step is recorded with the confirmation: the code that proved the enrollment cannot be
        # replayed as a second factor afterwards. Sealed again for the account alone: every sign-in
        # checks its codes.
        sealed = self._keyring.encrypt(secret.encode("ascii"), aad=_aad(user_id)) if bound_to else None
        return await self._advance(row.id, step, confirming=True, sealed=sealed)

    async def verify(self, user_id: int, code: str) -> bool:
        """Check a second-factor code against the user's confirmed authenticator apps.

        Args:
            user_id: The account.
            code: The code typed (spaces are ignored).

        Returns:
            True if a confirmed credential produced this code for a step not used before, and this call
            is the one that recorded the step (a concurrent replay of the same code gets False).
        """
        code = _normalise_code(code)
        if not _CODE_RE.fullmatch(code):
            return False
        now = self._clock.time()
        for row in await self._confirmed(user_id):
            secret = self._secret(row)
            if secret is None:
                continue
            step = match_step(secret, code, now=now, last_step=row.last_step)
            if step is not None and await self._advance(row.id, step):
                return True
        return False

    async def list(self, user_id: int) -> builtins.list[TotpDevice]:
        """The user's confirmed authenticator apps, oldest first."""
        return [
            TotpDevice(id=row.id, name=row.name, created_at=row.created_at, last_used_at=row.last_used_at)
            for row in await self._confirmed(user_id)
        ]

    async def rename(self, user_id: int, credential_id: int, name: str) -> bool:
        """Rename one of the user's authenticator apps.

        Returns:
            True if the user has such a credential (the name is cleaned and bounded).
        """
        async with self._db.session() as session:
            with store_errors("cannot rename the TOTP credential"):
                changed = await session.scalars(
                    update(TotpCredential)
                    .where(TotpCredential.id == credential_id, TotpCredential.user_id == user_id)
                    .values(name=_clean_name(name))
                    .returning(TotpCredential.id)
                )
                ok = changed.first() is not None
                await session.commit()
        return ok

    async def remove(self, user_id: int, credential_id: int, *, keep_one: bool = False) -> bool:
        """Delete one of the user's authenticator apps (confirmed or not).

        Args:
            user_id: The owner; an app of anyone else is left alone.
            credential_id: The app's row id.
            keep_one: Refuse to remove the account's only second factor (:mod:`gateway.factors.last`).

        Returns:
            True if it existed and belonged to the user.

        Raises:
            OnlyFactor: With ``keep_one``, nothing else is left; nothing was removed.
        """
        async with self._db.session() as session:
            with store_errors("cannot remove the TOTP credential"):
                if keep_one:
                    await hold_owner(session, user_id)
                created = await session.scalar(
                    delete(TotpCredential)
                    .where(TotpCredential.id == credential_id, TotpCredential.user_id == user_id)
                    .returning(TotpCredential.created_at)
                )
                if keep_one and created is not None:
                    await refuse_none_left(session, user_id)
                noted = (
                    await note_removed(
                        self._ledger,
                        session,
                        "totp",
                        user_id=user_id,
                        row_id=credential_id,
                        created_at=created,
                    )
                    if created is not None
                    else []
                )
                await session.commit()
        if self._ledger is not None:
            await self._ledger.append(noted)
        return created is not None

    async def has_confirmed(self, user_id: int) -> bool:
        """Whether the user has at least one confirmed authenticator app."""
        async with self._db.session() as session:
            with store_errors("cannot read TOTP credentials"):
                found = await session.scalar(
                    select(
                        exists().where(TotpCredential.user_id == user_id, TotpCredential.confirmed.is_(True))
                    )
                )
        return bool(found)

    async def _confirmed(self, user_id: int) -> builtins.list[TotpCredential]:
        async with self._db.session() as session:
            with store_errors("cannot read TOTP credentials"):
                rows = await session.scalars(
                    select(TotpCredential)
                    .where(TotpCredential.user_id == user_id, TotpCredential.confirmed.is_(True))
                    .order_by(TotpCredential.id)
                )
                return builtins.list(rows.all())

    async def _advance(
        self, credential_id: int, step: int, *, confirming: bool = False, sealed: str | None = None
    ) -> bool:
        # The replay check lives in the UPDATE's condition, not in Python: two requests carrying the
        # same code may both pass match_step, but only one of them can move last_step past it.
        values: dict[str, object] = {"last_step": step, "last_used_at": self._clock.now()}
        if confirming:
            values["confirmed"] = True
        if sealed is not None:
            values["secret_enc"] = sealed
        async with self._db.session() as session:
            with store_errors("cannot update the TOTP credential"):
                changed = await session.scalars(
                    update(TotpCredential)
                    .where(
                        TotpCredential.id == credential_id,
                        TotpCredential.last_step < step,
                        # Confirming needs an unconfirmed row, verifying a confirmed one.
                        TotpCredential.confirmed.is_(not confirming),
                    )
                    .values(**values)
                    .returning(TotpCredential.id)
                )
                ok = changed.first() is not None
                await session.commit()
        return ok

    def _secret(self, row: TotpCredential, bound_to: str = "") -> str | None:
        try:
            return self._keyring.decrypt(row.secret_enc, aad=_aad(row.user_id, bound_to)).decode("ascii")
        except (KeyringError, UnicodeDecodeError):
            if not row.confirmed:
                return None  # an enrollment another sign-in started (bound_to): not this one's to read
            # A seed that does not decrypt (keyring replaced, row tampered with or copied from another
            # user) can never produce a valid code. Refuse it, loudly for the operator, and let the
            # user's other factors still work.
            logger.error("TOTP credential %s of user %s does not decrypt; ignoring it", row.id, row.user_id)
            return None


def _aad(user_id: int, bound_to: str = "") -> bytes:
    if not bound_to:
        return f"totp:{user_id}".encode("ascii")
    return f"totp:{user_id}:{hashlib.sha256(bound_to.encode()).hexdigest()}".encode("ascii")


def _normalise_code(code: str) -> str:
    # Apps show "123 456"; people paste it with the space or a trailing newline.
    return "".join(code.split()) if isinstance(code, str) else ""


def _clean_name(name: str) -> str:
    # Names are shown in the portal and the admin console: drop control and format characters (no
    # newlines in log lines, no bidi overrides that disguise one device as another), bound the length.
    kept = "".join(
        " " if ch.isspace() else ch for ch in name if ch.isspace() or unicodedata.category(ch)[0] != "C"
    )
    kept = " ".join(kept.split())[:_MAX_NAME_CHARS].strip()
    return kept or _DEFAULT_NAME
