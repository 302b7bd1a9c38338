"""The account a person's provider access token speaks for: the OIDC identity link, cached for a second.

``(provider, sub)`` finds an account exactly as an OIDC sign-in does (:mod:`gateway.identity.oidc.links`):
by the link an earlier sign-in made and by nothing else (no email, no username claim). A token never
creates or links an account. A disabled, restricted or closed account is no account here.

Answers (found or not) are cached per worker for ``ttl`` (1 s): the hot path does at most one
query per person per second per worker, and a disabled account is refused everywhere within a
second (invariant 4), as sessions are.

With the account comes what not to process for the person (``optout``, the assertion's claim, as a
session carries it): a token has no session that a consent withdrawn or an objection could reach,
and an assertion without the claim reads as "nothing opted out" to the app (an attack run's objecting
person was sent to the app without it). A choice reaches the person's tokens within ``ttl``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import select

from gateway.clock import Clock
from gateway.identity.models import User
from gateway.identity.oidc.models import IdentityLink
from gateway.machine.provider_principals import LinkedPerson, refuse, subject_of
from gateway.settings.schema import AccessTokens
from gateway.store.db import Database, store_errors

__all__ = ["LinkedAccounts", "OptoutOf"]

#: What not to process for an account (``gateway.privacy.consent.Consents.optout_of``, given by the
#: composition root: the privacy layer is above this one).
OptoutOf = Callable[[User], Awaitable[tuple[str, ...]]]


class LinkedAccounts:
    """``(provider, sub)`` → the linked account (:class:`LinkedPerson`), or None."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        optout_of: OptoutOf | None = None,
        ttl: float = 1.0,
        size: int = 10_000,
    ) -> None:
        self._db = db
        self._clock = clock
        self._optout_of = optout_of
        self._ttl = ttl
        self._size = size
        self._cache: dict[tuple[str, str], tuple[LinkedPerson | None, float]] = {}
        self.queries = 0

    async def person(
        self, provider: str, claims: Mapping[str, Any], tokens: AccessTokens
    ) -> LinkedPerson | None:
        """The account a verified token speaks for: None for a client's own token.

        Raises:
            TokenRefused: a person's token where the provider's ``users`` is ``refuse``
                (``user-tokens-refused``); an unlinked or disabled person is refused later, by
                :func:`~gateway.machine.provider_principals.verified_token` (``user-not-linked``).
            StoreUnavailable: the database cannot answer.
        """
        subject = subject_of(claims)
        if subject is None:
            return None
        if tokens.users != "linked":
            raise refuse("user-tokens-refused")
        return await self.linked(provider, subject)

    async def linked(self, provider: str, subject: str) -> LinkedPerson | None:
        """The linked account that may act, or None (no link, or the account cannot sign in).

        Raises:
            StoreUnavailable: the database cannot answer (the request fails closed, 503).
        """
        key = (provider, subject)
        mono = self._clock.monotonic()
        hit = self._cache.get(key)
        if hit is not None and 0 <= mono - hit[1] <= self._ttl:
            return hit[0]
        query = (
            select(User)
            .join(IdentityLink, IdentityLink.user_id == User.id)
            .where(IdentityLink.provider == provider, IdentityLink.subject == subject)
        )
        self.queries += 1
        async with self._db.session() as session:
            with store_errors("cannot find the token's account"):
                user = (await session.execute(query)).scalar_one_or_none()
        found = None
        if user is not None and user.can_sign_in:
            optout = await self._optout_of(user) if self._optout_of is not None else ()
            found = LinkedPerson(user.username, optout)
        self._cache.pop(key, None)
        while len(self._cache) >= self._size:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = (found, mono)
        return found
