"""Usernames of deleted accounts: never handed to a new person just in time.

A deleted account's name still means something after the account is gone: policy lines about
``user:<name>``, the applications' own data keyed by ``X-Gateway-User``, audit records. A stranger
whose identity provider proposed that name (``preferred_username`` is editable at most providers)
would inherit all of it, so an account made at a provider sign-in never gets one. An administrator
may still create an account of that name on purpose: they know whose it was.

What is kept is an HMAC of the canonical name under a key derived from the keyring, ``<kid>:<hex>``,
one row per deletion's key: the table names nobody to someone without the keyring (usernames are
guessable, so a plain digest would confirm a guess), also after a person's erasure.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.crypto.keyring import Keyring
from gateway.identity.models import RetiredUsername

__all__ = ["retire", "retired_among"]

_INFO: Final = b"gateway retired usernames v1"


def _key(keyring: Keyring, username: str, kid: str) -> str:
    mac = hmac.new(keyring.derive(_INFO, kid=kid), username.encode("utf-8"), hashlib.sha256)
    return f"{kid}:{mac.hexdigest()}"


async def retire(session: AsyncSession, keyring: Keyring, username: str, *, at: datetime) -> None:
    """Record ``username`` (canonical) as retired, in the caller's transaction."""
    key = _key(keyring, username, keyring.active_id)
    if await session.get(RetiredUsername, key) is None:
        session.add(RetiredUsername(name_key=key, retired_at=at))


async def retired_among(session: AsyncSession, keyring: Keyring, names: Iterable[str]) -> set[str]:
    """Which of ``names`` (canonical) belonged to a deleted account, under any key the keyring holds."""
    by_key = {_key(keyring, name, kid): name for name in names for kid in keyring.key_ids}
    if not by_key:
        return set()
    found = await session.scalars(
        select(RetiredUsername.name_key).where(RetiredUsername.name_key.in_(by_key))
    )
    return {by_key[key] for key in found}
