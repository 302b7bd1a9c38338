"""What a leaked keyring key exposes besides the signing keys, and what to do about it.

Whoever holds a leaked key reads what it encrypted from any copy of the database (a backup, a dump), so
none of it is re-encrypted under the new key as if that helped: the TOTP seeds under it are known and
their accounts must enrol a new app. Every channel that marks a key compromised says so in the same
words (``gateway keys``, the console's Keys page, ``gateway incident case rotate-keys``): a re-attack
run found the console and the incident case silent about the seeds the CLI named.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import func, select

from gateway.crypto.keyring import token_key_id
from gateway.identity.models import TotpCredential, User
from gateway.privacy.models import RemovedContent
from gateway.store.db import Database, store_errors

__all__ = ["Exposure", "exposed_by"]


@dataclass(frozen=True, slots=True)
class Exposure:
    """What ``under`` (leaked keyring key ids) encrypted: the accounts whose TOTP seeds (confirmed or
    pending) it holds, sorted, and how many rows of sealed removed content."""

    under: tuple[str, ...]
    accounts: tuple[str, ...]
    removed: int

    def lines(self) -> list[str]:
        """The operator's instructions, one finding per line."""
        under = ", ".join(self.under)
        found = []
        if self.accounts:
            # Every one: each must be reset, and no other command lists them.
            found.append(
                f"authenticator apps: the TOTP seeds of {len(self.accounts)} account(s) are encrypted under "
                f"{under}: whoever holds the key and a copy of the database can make their codes. They are "
                "NOT re-encrypted: run `gateway user reset-mfa USERNAME` (with --invite where the password "
                f"may be known too) for each, so they enrol a new app: {', '.join(self.accounts)}"
            )
        else:
            found.append(f"authenticator apps: no TOTP seed is encrypted under {under}")
        if self.removed:
            found.append(
                f"removed content: {self.removed} sealed copy(ies) of erased or corrected personal data are "
                f"encrypted under {under}: readable by whoever holds the key and a copy of the database"
            )
        found.append(
            f"backups: the archives encrypted under {under} are readable by whoever holds the key (the "
            "whole database: password hashes, email addresses): treat them as disclosed"
        )
        return found


async def exposed_by(db: Database, leaked: Collection[str]) -> Exposure:
    """What the keyring keys ``leaked`` encrypted (see :class:`Exposure`).

    Raises:
        StoreUnavailable: The database cannot be read.
    """
    kids = set(leaked)
    with store_errors("cannot read what the leaked keyring key encrypted"):
        async with db.session() as session:
            seeds = await session.execute(
                select(User.username, TotpCredential.secret_enc).join(User, User.id == TotpCredential.user_id)
            )
            accounts = sorted({name for name, sealed in seeds if token_key_id(sealed) in kids})
            # The token's head only ("v1.<kid>."): a payload may be a whole export.
            heads = await session.scalars(select(func.substr(RemovedContent.payload, 1, 72)))
            removed = sum(1 for head in heads if token_key_id(_text(head)) in kids)
    return Exposure(tuple(sorted(kids)), tuple(accounts), removed)


def _text(head: bytes | str | None) -> str:
    # 72 bytes hold "v1.<kid>." whole (a key id is at most 64 characters).
    if head is None:
        return ""
    return head if isinstance(head, str) else bytes(head).decode("ascii", "replace")
