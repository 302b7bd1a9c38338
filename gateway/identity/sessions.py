"""Server-side sessions in the fast state, with a small in-process cache in front.

Keys (all in the fast state, so every replica sees them)::

    sess:<sha256(id)>     the Session, JSON; TTL = min(idle timeout, remaining lifetime)
    usess:<user_id>       JSON list of the user's session hashes (for "my sessions", revoke_user)
    sfam:<family>         {"u": user_id, "c": sign-in time, "ids": [hashes]}: the per-host sessions
                          of one sign-in (cross-host hand-off), ended together at sign-out

Only the SHA-256 of a session id is ever stored, so a Redis dump or ``MONITOR`` does not hand out
usable cookies. The indexes are updated with ``compare_and_set`` in a retry loop: no lost updates
between replicas, and every update touches one key (so it works on Redis Cluster).

Revocation deletes the session, then publishes its hash on ``session-revoked``; every replica's
``run_invalidation_listener`` drops it from its cache at once. A lost broadcast is bounded by
``cache_ttl`` (a cached entry is trusted for at most that long), which is also the bound while a
replica's subscription is down.

A store outage raises ``StateUnavailable`` from ``get``: the caller answers 503 and keeps the cookie.
Never access, never a silent sign-out (docs/architecture.md, invariant 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import msgspec

from gateway.clock import Clock
from gateway.errors import AuthenticationRequired
from gateway.identity.levels import SECOND_FACTORS, AuthLevel, Factor, FactorUse, newest_second_factor
from gateway.settings.schema import IdentityProvider, SessionSettings
from gateway.store.fast.base import FastState, StateUnavailable
from gateway.store.fast.follow import follow_evictions

__all__ = [
    "REVOCATION_CHANNEL",
    "TOUCH_INTERVAL",
    "Session",
    "SessionEnded",
    "SessionStore",
    "browser_label",
    "fits_host",
    "hash_session_id",
    "provider_mark",
]

_log = logging.getLogger(__name__)

REVOCATION_CHANNEL = "session-revoked"
# last_seen is written at most this often per session: an active user costs one Redis write a minute,
# not one per request. The idle timeout is therefore exact to within this interval.
TOUCH_INTERVAL = 60.0


def _touch_interval(idle: float) -> float:
    """How often ``last_seen`` is written: :data:`TOUCH_INTERVAL`, or half an idle timeout shorter than
    two of it, so a session in use never idles out between two writes (an attack run's 20 s idle
    timeout signed out a client asking every 5 s, 20 s after it signed in)."""
    return min(TOUCH_INTERVAL, idle / 2)


# Factor uses kept per session: enough for any audit question about this session, bounded so a
# session that steps up all day does not grow without limit.
_MAX_FACTORS = 16
# Sessions indexed per user. Beyond it the oldest live ones are ended rather than dropped from the
# index: a session missing from the index could not be revoked by revoke_user.
_MAX_USER_SESSIONS = 200
_CAS_ATTEMPTS = 50
# token_urlsafe(32) gives 43 characters. Anything far from that shape is refused before hashing or a
# store round trip, so a flood of junk cookies costs nothing.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{20,128}")
_HASH = re.compile(r"[0-9a-f]{64}")


class SessionEnded(AuthenticationRequired):
    """The session (or the sign-in it belongs to) no longer exists: sign in again."""

    reason = "session-ended"
    title = "Your session has ended"


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in browser on one host. Times are Unix seconds."""

    id_hash: str
    family: str
    user_id: int
    username: str
    level: AuthLevel
    factors: tuple[FactorUse, ...]
    roles: tuple[str, ...]
    created_at: float
    last_seen: float
    ip: str
    user_agent: str
    host: str
    # Defaulted so sessions stored before these fields existed still decode.
    email: str = ""
    groups: tuple[str, ...] = ()
    # The account still has a one-time password (an admin set it, or the quick start): until it is
    # changed, this session may only change it or sign out, on every host (see web/gate.py).
    password_change: bool = False
    # The optional purposes not to process for this person (gateway.privacy.purposes.optout): decided
    # at sign-in and whenever a consent, objection or restriction changes, so the data plane only
    # tests membership (e.g. "policy_analytics" for the decision sample).
    optout: tuple[str, ...] = ()
    # A password (or a provider's) sign-in of an account that has a second factor, not proved yet: the
    # session reaches its pending step and sign-out only, on every host, also an app that asks for no
    # second factor (an attack run copied such a cookie to an `mfa: none` app's host and got in).
    owes_second_factor: bool = False
    # A provider sign-in: ``<provider>:<digest>`` of what decided its roles and groups there
    # (:func:`provider_mark`). Once the provider is gone or its groups_claim/role_map changed, the
    # session is refused (SessionStore.use_providers): an attack run kept a removed provider's mapped
    # roles until the session's lifetime ended. Empty: not a provider sign-in.
    provider_mark: str = ""

    @property
    def second_factor_at(self) -> float | None:
        """Unix time of the newest second-factor use in this session, or None."""
        return newest_second_factor(self.factors)


class _Family(msgspec.Struct, frozen=True):
    u: int
    c: float
    ids: tuple[str, ...] = ()
    # The sign-in's provider_mark: a session joining the family (a hand-off) carries it too.
    p: str = ""


def provider_mark(idp: IdentityProvider) -> str:
    """The mark of a sign-in through ``idp``: its name and a digest of ``groups_claim`` and ``role_map``,
    what gave the session its provider groups and roles (:meth:`IdentityMapper.map
    <gateway.identity.oidc.links.IdentityMapper.map>`). Any change of them gives another mark."""
    mapping = sorted(
        (group, [roles] if isinstance(roles, str) else list(roles)) for group, roles in idp.role_map.items()
    )
    digest = hashlib.sha256(msgspec.json.encode([idp.groups_claim, mapping])).hexdigest()[:16]
    return f"{idp.name}:{digest}"


_encode = msgspec.json.Encoder().encode
_decode_session = msgspec.json.Decoder(Session).decode
_decode_family = msgspec.json.Decoder(_Family).decode
_decode_ids = msgspec.json.Decoder(tuple[str, ...]).decode


_BROWSERS = (
    ("Edg/", "Edge"),
    ("Firefox/", "Firefox"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
)
_SYSTEMS = (
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
    ("Android", "Android"),
    ("iPhone", "iPhone"),
)


def browser_label(user_agent: str) -> str:
    """A session's browser as people name it ("Chrome on Linux"), for "my sessions" and the console."""
    for marker, name in _BROWSERS:
        if marker in user_agent:
            system = next((label for mark, label in _SYSTEMS if mark in user_agent), "")
            return name + (f" on {system}" if system else "")
    return user_agent[:40] or "Unknown browser"


def hash_session_id(session_id: str) -> str:
    """The storage key of a session id: SHA-256, hex."""
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


def fits_host(session: Session, host: str) -> bool:
    """Whether ``session`` may be used on ``host`` (lower case, without port or trailing dot).

    A session an app host got through the hand-off (``host``: that host's name) is that host's
    alone: a cookie leaked from a less trusted app (its logs, a plain-HTTP listener) opened the
    person's whole account portal on the auth host, every other app, and hand-offs to all of them (an
    attack run). A sign-in on the auth host (``host``: the public URL) may go wherever its cookie is
    sent: forward-auth set-ups share it across the apps' parent domain.
    """
    bound = session.host
    return "://" in bound or bound == host


def encode_session(session: Session) -> bytes:
    """Serialise a session (also used by hand-off codes)."""
    return _encode(session)


def decode_session(raw: bytes) -> Session | None:
    """Parse a stored session; None (logged) if it is corrupt, which callers treat as absent."""
    try:
        return _decode_session(raw)
    except msgspec.MsgspecError:
        _log.warning("discarding an unreadable session record")
        return None


def _without(gone: frozenset[str]) -> Callable[[tuple[str, ...]], list[str]]:
    return lambda cur: [h for h in cur if h not in gone]


def _session_key(id_hash: str) -> str:
    return f"sess:{id_hash}"


def _user_key(user_id: int) -> str:
    return f"usess:{user_id}"


def _family_key(family: str) -> str:
    return f"sfam:{family}"


class SessionStore:
    """Create, look up, elevate and revoke sessions.

    One instance per worker. The cache maps id hash → (session, cached at); an entry is used for at
    most ``cache_ttl`` seconds of ``clock`` time (and never if the clock went backwards).
    """

    def __init__(
        self,
        state: FastState,
        settings: SessionSettings,
        clock: Clock,
        *,
        cache_ttl: float = 1.0,
        cache_size: int = 10_000,
    ) -> None:
        """Create a store.

        Args:
            state: The fast state shared by the replicas.
            settings: Idle timeout and absolute lifetime.
            clock: Unix time for session times and the cache.
            cache_ttl: Longest time (s) a cached session is trusted without asking the store; the
                bound on how long a revoked session can still pass if a broadcast is lost.
            cache_size: Most cached sessions; the oldest entry goes first.
        """
        if cache_ttl < 0 or cache_size < 0:
            raise ValueError("cache_ttl and cache_size must not be negative")
        self._state = state
        self._idle = float(settings.idle_timeout)
        self._lifetime = float(settings.lifetime)
        self._touch_every = _touch_interval(self._idle)
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._cache: dict[str, tuple[Session, float]] = {}
        self._listening = asyncio.Event()
        #: Accounts whose sessions are owed an end (:mod:`gateway.identity.owed`): none is served while
        #: the store cannot end them. An attack run held the embedded state file's write lock; the
        #: revocation could not be written, reads went on, and a disabled account's session was served.
        self.owed: frozenset[int] = frozenset()
        # The marks of the configured providers (use_providers); None: not told, nothing is checked.
        self._marks: frozenset[str] | None = None

    @property
    def lifetime(self) -> float:
        """Seconds a session lives at most from its sign-in, as the configuration in force says."""
        return self._lifetime

    def use(self, settings: SessionSettings) -> None:
        """Apply a reloaded ``session`` block: its idle timeout and lifetime hold for every session from
        the next look-up on (a shortened lifetime ends the sessions older than it)."""
        self._idle = float(settings.idle_timeout)
        self._lifetime = float(settings.lifetime)
        self._touch_every = _touch_interval(self._idle)

    def use_providers(self, providers: Sequence[IdentityProvider]) -> None:
        """Apply the configured identity providers (at start and at each reload): a provider sign-in
        whose provider is gone, or whose ``groups_claim``/``role_map`` changed, is refused from the next
        look-up on, as an ended session (sign in again). Its record stays (and in the indexes), so
        revoking the account still finds it."""
        marks = frozenset(provider_mark(idp) for idp in providers)
        if marks != self._marks:
            self._marks = marks
            # Only a store read checks the mark (a cache hit costs nothing more): a reload that
            # changes a mark drops what this worker cached.
            self._cache.clear()

    def _stale(self, session: Session) -> bool:
        """Whether a provider sign-in no longer matches its provider's configuration."""
        marks = self._marks
        if marks is None:
            return False
        if session.provider_mark:
            return session.provider_mark not in marks
        # Stored before sessions carried a mark: what decided its roles is unknown, so a provider
        # sign-in is refused (fail closed: its person signs in again once).
        return any(use.factor is Factor.OIDC for use in session.factors)

    # -- cache -----------------------------------------------------------------------------------

    def _remember(self, session: Session, now: float) -> None:
        if self._cache_size == 0 or self._cache_ttl == 0:
            return
        cache = self._cache
        cache.pop(session.id_hash, None)
        while len(cache) >= self._cache_size:
            del cache[next(iter(cache))]
        cache[session.id_hash] = (session, now)

    def _forget(self, hashes: Iterable[str]) -> None:
        for id_hash in hashes:
            self._cache.pop(id_hash, None)

    def clear_cache(self) -> None:
        """Drop every cached session (the next lookup of each goes to the store)."""
        self._cache.clear()

    @property
    def cached(self) -> int:
        """Number of cached sessions."""
        return len(self._cache)

    # -- time ------------------------------------------------------------------------------------

    def _alive(self, session: Session, now: float) -> bool:
        return (
            now - session.last_seen <= self._idle
            and now - session.created_at <= self._lifetime
            and not (self.owed and session.user_id in self.owed)
        )

    def _ttl(self, session: Session, now: float) -> float | None:
        """Store TTL: until the idle timeout or the lifetime ends, whichever is first (None: over)."""
        ttl = min(session.last_seen + self._idle, session.created_at + self._lifetime) - now
        return ttl if ttl > 0 else None

    # -- look-up ---------------------------------------------------------------------------------

    async def get(self, session_id: str) -> Session | None:
        """The live session for a cookie value, or None.

        Raises:
            StateUnavailable: the store cannot answer (the caller answers 503, keeps the cookie).
        """
        if not _SESSION_ID.fullmatch(session_id):
            return None
        id_hash = hash_session_id(session_id)
        now = self._clock.time()
        entry = self._cache.get(id_hash)
        if entry is not None:
            cached, cached_at = entry
            if 0 <= now - cached_at < self._cache_ttl:
                if self._alive(cached, now):
                    return cached
                self._cache.pop(id_hash, None)
                return None
            self._cache.pop(id_hash, None)
        raw = await self._state.get(_session_key(id_hash))
        if raw is None:
            return None
        session = decode_session(raw)
        # The id_hash check guards against a record stored under the wrong key ever being served.
        if (
            session is None
            or session.id_hash != id_hash
            or not self._alive(session, now)
            or self._stale(session)
        ):
            return None
        self._remember(session, now)
        return session

    async def current_hash(self, id_hash: str) -> Session | None:
        """The session with this id hash as it is now, if it is live: read from the store, never the
        cache (a hand-off asks this about the session that issued its code, which may have ended or
        been stepped down on another worker a moment ago).

        Raises:
            StateUnavailable: the store cannot answer.
        """
        raw = await self._state.get(_session_key(id_hash))
        session = decode_session(raw) if raw is not None else None
        if (
            session is None
            or session.id_hash != id_hash
            or not self._alive(session, self._clock.time())
            or self._stale(session)
        ):
            return None
        return session

    async def touch(self, session_id: str, session: Session) -> None:
        """Record activity: refresh ``last_seen`` and the store TTL, at most once per minute.

        Uses compare-and-set against the stored record, so a touch racing a revocation or an
        elevation can never bring the old session back.

        Raises:
            StateUnavailable: the store cannot answer.
        """
        now = self._clock.time()
        if now - session.last_seen < self._touch_every:
            return
        id_hash = hash_session_id(session_id)
        key = _session_key(id_hash)
        raw = await self._state.get(key)
        current = None if raw is None else decode_session(raw)
        if raw is None or current is None or current.id_hash != id_hash:
            self._forget((id_hash,))
            return
        if now - current.last_seen < self._touch_every:  # another replica touched it already
            self._remember(current, now)
            return
        updated = replace(current, last_seen=now)
        ttl = self._ttl(updated, now)
        if ttl is None or not self._alive(current, now):
            return
        if await self._state.compare_and_set(key, raw, encode_session(updated), ttl=ttl):
            self._remember(updated, now)

    async def list_user(self, user_id: int) -> list[Session]:
        """The user's live sessions, most recently active first.

        Raises:
            StateUnavailable: the store cannot answer.
        """
        raw_ids = await self._state.get(_user_key(user_id))
        ids = self._parse_ids(raw_ids)
        if not ids:
            return []
        now = self._clock.time()
        records = await asyncio.gather(*(self._state.get(_session_key(h)) for h in ids))
        live: list[Session] = []
        dead: set[str] = set()
        for id_hash, raw in zip(ids, records, strict=True):
            session = None if raw is None else decode_session(raw)
            if session is None or session.user_id != user_id or not self._alive(session, now):
                dead.add(id_hash)
            elif not self._stale(session):
                # A stale provider sign-in stays indexed: refused while stale, still found by revoke_user.
                live.append(session)
        if dead:
            # Housekeeping only: a failure here must not hide the answer.
            with contextlib.suppress(StateUnavailable):
                await self._update_user(user_id, lambda cur: [h for h in cur if h not in dead])
        live.sort(key=lambda s: s.last_seen, reverse=True)
        return live

    # -- creation and elevation -------------------------------------------------------------------

    async def create(
        self,
        *,
        user_id: int,
        username: str,
        level: AuthLevel,
        factors: Sequence[FactorUse],
        roles: Sequence[str],
        ip: str,
        user_agent: str,
        host: str,
        family: str | None = None,
        email: str | None = None,
        groups: Sequence[str] = (),
        password_change: bool = False,
        optout: Sequence[str] = (),
        owes_second_factor: bool = False,
        provider_mark: str = "",
    ) -> tuple[str, Session]:
        """Start a session; return its id (the cookie value) and the session.

        Args:
            user_id: Account id.
            username: Account name (for the UI and identity headers).
            level: Authentication level reached.
            factors: Factors used to reach it.
            roles: The user's roles.
            ip: Client address.
            user_agent: Client User-Agent (shown in "my sessions").
            host: The host this session's cookie is for.
            email: The account's email, if it has one (for identity headers).
            groups: Groups an identity provider asserted, as ``<provider>:<group>`` (principals
                ``group:<provider>:<group>``).
            password_change: The account must choose a new password before anything else.
            optout: The optional purposes not to process for this person (see ``Session.optout``).
            family: Join this existing sign-in (cross-host hand-off): the session inherits the
                sign-in time, so the absolute lifetime counts from the real sign-in on every host
                (and its provider mark). None starts a new sign-in.
            provider_mark: A new sign-in through an identity provider: :func:`provider_mark` of the
                provider's configuration that gave it its groups and roles (see ``Session``).

        Raises:
            SessionEnded: ``family`` has ended (signed out, revoked or past its lifetime).
            ValueError: ``family`` belongs to another user.
            StateUnavailable: the store cannot answer.
        """
        session_id = secrets.token_urlsafe(32)
        id_hash = hash_session_id(session_id)
        now = self._clock.time()
        joining = family is not None
        family_id = family if family is not None else secrets.token_urlsafe(16)
        created_at, mark = await self._join_family(
            family_id, id_hash, user_id, now, joining=joining, mark=provider_mark
        )
        session = Session(
            id_hash=id_hash,
            family=family_id,
            user_id=user_id,
            username=username,
            level=level,
            factors=tuple(factors)[-_MAX_FACTORS:],
            roles=tuple(roles),
            created_at=created_at,
            last_seen=now,
            ip=ip,
            user_agent=user_agent,
            host=host,
            email=email or "",
            groups=tuple(groups),
            password_change=password_change,
            optout=tuple(optout),
            owes_second_factor=owes_second_factor,
            # A hand-off's session is the same provider sign-in as the one it came from.
            provider_mark=mark,
        )
        ttl = self._ttl(session, now)
        if ttl is None:
            raise SessionEnded("This sign-in has expired.")
        # Index first: if the store fails half-way, what is left is a dangling index entry (pruned
        # later), never a live session that revoke_user cannot find.
        ids = await self._update_user(user_id, lambda cur: [*cur, id_hash])
        await self._state.set(_session_key(id_hash), encode_session(session), ttl=ttl)
        if not await self._indexed(user_id, id_hash):
            # A sweep of the user's sessions (disable, password change, sign-out everywhere) read the
            # index after this id was added and ended it before its record was written: it must not
            # live on outside the index, where no later sweep could find it.
            await self._state.delete(_session_key(id_hash))
            raise SessionEnded("This account's sessions were just ended.")
        if len(ids) > _MAX_USER_SESSIONS and not await self._trim_user(user_id, session):
            raise SessionEnded(
                f"This account has {_MAX_USER_SESSIONS} sessions that signed in more strongly than this "
                "one: sign out of some on your account page (Sessions) first."
            )
        if joining and not await self._family_has(family_id, id_hash):
            # revoke_family ran between joining and storing: it could not delete what was not yet
            # written, so undo it here rather than leave a session outside its ended family.
            await self._state.delete(_session_key(id_hash))
            raise SessionEnded("This sign-in has ended.")
        self._remember(session, now)
        return session_id, session

    async def elevate(self, session_id: str, *, level: AuthLevel, factor: FactorUse) -> tuple[str, Session]:
        """Record a verified factor, raise the level, and rotate the session id.

        A new id at every change of authentication level defeats session fixation: an id planted
        or observed before the second factor is worthless after it. The old id stops working at
        once on this replica and, through the broadcast, on every other.

        Raises:
            SessionEnded: the session no longer exists.
            StateUnavailable: the store cannot answer.
        """
        return await self._rotate(
            session_id,
            lambda old: replace(
                old,
                level=max(old.level, level),
                factors=(*old.factors, factor)[-_MAX_FACTORS:],
                owes_second_factor=old.owes_second_factor and max(old.level, level) < AuthLevel.TWO_FACTOR,
            ),
        )

    async def password_changed(self, session_id: str) -> tuple[str, Session]:
        """Lift the session's forced password change after the new password is stored; new id.

        Raises:
            SessionEnded: the session no longer exists.
            StateUnavailable: the store cannot answer.
        """
        return await self._rotate(session_id, lambda old: replace(old, password_change=False))

    async def rotate(self, session_id: str) -> tuple[str, Session]:
        """The same session under a new id (after a change of the account's credentials: a copy of the
        old cookie must not outlive it); the old id ends everywhere.

        Raises:
            SessionEnded: the session no longer exists.
            StateUnavailable: the store cannot answer.
        """
        return await self._rotate(session_id, lambda old: old)

    async def renew(self, session_id: str) -> tuple[str, Session]:
        """The same session under a new id in a sign-in of its own (a new family, with the old one's
        sign-in time, so its absolute lifetime does not grow); the old id ends everywhere. The caller
        then ends the old family with :meth:`revoke_family`: a hand-off still in flight from it cannot
        join it any more (the re-attack run redeemed hand-offs while a password change was ending the
        other sessions, and kept them).

        Raises:
            SessionEnded: the session no longer exists.
            StateUnavailable: the store cannot answer.
        """
        old_hash, old, now = await self._take_live(session_id)
        new_id = secrets.token_urlsafe(32)
        new_hash = hash_session_id(new_id)
        family = secrets.token_urlsafe(16)
        session = replace(old, id_hash=new_hash, family=family, last_seen=now)
        ttl = self._ttl(session, now)
        remaining = old.created_at + self._lifetime - now
        if ttl is None or remaining <= 0:
            await self._broadcast([old_hash])
            raise SessionEnded("This sign-in has expired.")
        await self._state.set(
            _family_key(family),
            _encode(_Family(u=old.user_id, c=old.created_at, ids=(new_hash,), p=old.provider_mark)),
            ttl=remaining,
        )
        await self._state.set(_session_key(new_hash), encode_session(session), ttl=ttl)
        if not await self._swap_in_index(old.user_id, old_hash, new_hash):
            await self._state.delete(_session_key(new_hash), _family_key(family))
            await self._broadcast([old_hash])
            raise SessionEnded("This account's sessions were just ended.")
        await self._update_family(old.family, lambda ids: [h for h in ids if h != old_hash])
        await self._broadcast([old_hash])
        self._remember(session, now)
        return new_id, session

    async def _take_live(self, session_id: str) -> tuple[str, Session, float]:
        """Take a live session out of the store (its id hash, the session, now); its id ends here.

        ``take``: of two concurrent rotations of one id, exactly one gets to rotate it.

        Raises:
            SessionEnded: it does not exist or has ended.
        """
        old_hash = hash_session_id(session_id)
        now = self._clock.time()
        raw = await self._state.take(_session_key(old_hash))
        old = None if raw is None else decode_session(raw)
        self._forget((old_hash,))
        if old is None or old.id_hash != old_hash or not self._alive(old, now) or self._stale(old):
            await self._broadcast([old_hash])
            raise SessionEnded("This session has ended.")
        return old_hash, old, now

    async def _rotate(self, session_id: str, change: Callable[[Session], Session]) -> tuple[str, Session]:
        """Replace a session by a changed copy under a new id; the old id ends everywhere."""
        old_hash, old, now = await self._take_live(session_id)
        new_id = secrets.token_urlsafe(32)
        new_hash = hash_session_id(new_id)
        session = replace(change(old), id_hash=new_hash, last_seen=now)
        ttl = self._ttl(session, now)
        if ttl is None:
            raise SessionEnded("This session has ended.")
        await self._state.set(_session_key(new_hash), encode_session(session), ttl=ttl)
        if not await self._swap_in_index(old.user_id, old_hash, new_hash):
            await self._state.delete(_session_key(new_hash))
            await self._broadcast([old_hash])
            raise SessionEnded("This account's sessions were just ended.")
        family_alive = await self._update_family(
            old.family, lambda ids: [*(h for h in ids if h != old_hash), new_hash]
        )
        await self._broadcast([old_hash])
        if not family_alive:
            await self._state.delete(_session_key(new_hash))
            raise SessionEnded("This sign-in has ended.")
        self._remember(session, now)
        return new_id, session

    # -- revocation ------------------------------------------------------------------------------

    async def revoke(self, session_id: str) -> bool:
        """End one session (by its id). Returns whether it existed."""
        return await self.revoke_hash(hash_session_id(session_id))

    async def demote(self, id_hash: str) -> bool:
        """Force a step-up: drop the session's second-factor uses, keep its first factor.

        The session stays signed in (kinder to a false alarm than revoking it), but it opens no
        application until the second factor is used again (the MFA page); passing it rotates the id as
        usual. Every replica drops its cached copy through the revocation broadcast and re-reads the
        record.

        Returns:
            False if the session no longer exists.

        Raises:
            StateUnavailable: the store cannot answer, or the record kept changing.
        """

        def demoted(current: Session) -> Session:
            return replace(
                current,
                level=min(current.level, AuthLevel.ONE_FACTOR),
                factors=tuple(f for f in current.factors if f.factor not in SECOND_FACTORS),
                # It proved a second factor, which it now owes again: no application opens until it
                # does, as for a sign-in that has not yet proved it.
                owes_second_factor=current.owes_second_factor or current.level >= AuthLevel.TWO_FACTOR,
            )

        if not await self._change_in_place(id_hash, demoted, failed="the step-up was not applied"):
            return False
        await self._broadcast([id_hash])
        return True

    async def set_optout(self, user_id: int, optout: Sequence[str]) -> int:
        """Give every live session of the user this opt-out, in place (no new id, nothing else changes).

        Each record is updated with compare-and-set, so a touch or a demotion racing it is never
        undone; then the changed ids are broadcast so every replica drops its cached copy and reads
        the new value. The index is read again after the pass: a session that a rotation or a sign-in
        added meanwhile is updated too (one that lands after the last pass keeps the value it was
        given, at worst until the next change).

        Returns:
            How many sessions were changed.

        Raises:
            StateUnavailable: the store cannot answer, or a record kept changing.
        """
        return await self._update_live(user_id, {"optout": tuple(optout)})

    async def set_email(self, user_id: int, email: str) -> int:
        """Give every live session of the user a corrected email (rectification), as :meth:`set_optout`
        does: the identity headers and assertions of the next requests carry it, on every replica."""
        return await self._update_live(user_id, {"email": email})

    async def owe_second_factor(self, user_id: int) -> int:
        """Mark every live session of the user that has not proved a second factor as owing one, in
        place (as :meth:`set_optout`): the account has one now. A re-attack run's password-only session,
        opened before the owner enrolled their first factor, went on opening ``mfa: none`` apps.

        Returns:
            How many sessions were marked.

        Raises:
            StateUnavailable: the store cannot answer, or a record kept changing.
        """

        def owing(current: Session) -> Session | None:
            if (
                current.user_id != user_id
                or current.level >= AuthLevel.TWO_FACTOR
                or current.owes_second_factor
            ):
                return None
            return replace(current, owes_second_factor=True)

        return await self._change_live(user_id, owing)

    async def _update_live(self, user_id: int, fields: dict[str, object]) -> int:
        def with_fields(current: Session) -> Session | None:
            if current.user_id != user_id or all(getattr(current, n) == v for n, v in fields.items()):
                return None
            return replace(current, **fields)  # type: ignore[arg-type]

        return await self._change_live(user_id, with_fields)

    async def _change_live(self, user_id: int, change: Callable[[Session], Session | None]) -> int:
        """``change`` every live session of the user in place (None: leave it); how many changed."""
        seen: set[str] = set()
        changed: list[str] = []
        for _ in range(3):
            ids = [h for h in self._parse_ids(await self._state.get(_user_key(user_id))) if h not in seen]
            if not ids:
                break
            seen.update(ids)
            for id_hash in ids:
                if await self._change_in_place(id_hash, change, failed="it was not updated"):
                    changed.append(id_hash)
        await self._broadcast(changed)
        return len(changed)

    async def _change_in_place(
        self, id_hash: str, change: Callable[[Session], Session | None], *, failed: str
    ) -> bool:
        """Replace a live session's record by ``change(current)`` under the same id, with
        compare-and-set so a racing touch is never undone; False when the session is gone or
        ``change`` returns None (nothing to change).

        Raises:
            StateUnavailable: the store cannot answer, or the record kept changing (``failed`` says
                what was not done).
        """
        key = _session_key(id_hash)
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._state.get(key)
            current = decode_session(raw) if raw is not None else None
            if current is None or current.id_hash != id_hash:
                return False
            ttl = self._ttl(current, self._clock.time())
            updated = None if ttl is None else change(current)
            if updated is None:
                return False
            if await self._state.compare_and_set(key, raw, encode_session(updated), ttl=ttl):
                return True
        raise StateUnavailable(f"the session kept changing; {failed}")

    async def revoke_hash(self, id_hash: str) -> bool:
        """End one session by its id hash (what "my sessions" shows). Returns whether it existed.

        Raises:
            StateUnavailable: the store cannot answer.
        """
        if not _HASH.fullmatch(id_hash):
            return False
        raw = await self._state.take(_session_key(id_hash))
        self._forget((id_hash,))
        session = None if raw is None else decode_session(raw)
        if session is not None:
            await self._update_user(session.user_id, lambda cur: [h for h in cur if h != id_hash])
            await self._update_family(session.family, lambda ids: [h for h in ids if h != id_hash])
        # Broadcast even when already gone here: another replica may still have it cached.
        await self._broadcast([id_hash])
        return raw is not None

    async def revoke_family(self, family: str) -> int:
        """End every session of one sign-in (sign-out on all hosts). Returns how many existed.

        The family record is deleted first, so a hand-off still in flight cannot join it afterwards.

        Raises:
            StateUnavailable: the store cannot answer.
        """
        raw = await self._state.take(_family_key(family))
        record = self._parse_family(raw)
        if record is None:
            return 0
        count = await self._end(record.ids)
        await self._update_user(record.u, lambda cur: [h for h in cur if h not in record.ids])
        await self._broadcast(record.ids)
        return count

    async def revoke_user(self, user_id: int) -> int:
        """End every session of a user (disable, delete, password reset). Returns how many existed.

        Their sign-in families are ended too, so a pending hand-off code cannot start a new session.

        Raises:
            StateUnavailable: the store cannot answer.
        """
        ids = self._parse_ids(await self._state.take(_user_key(user_id)))
        records = await asyncio.gather(*(self._state.take(_session_key(h)) for h in ids))
        self._forget(ids)
        families: set[str] = set()
        count = 0
        for raw in records:
            if raw is None:
                continue
            count += 1
            session = decode_session(raw)
            if session is not None:
                families.add(session.family)
        if families:
            await self._state.delete(*(_family_key(f) for f in families))
        await self._broadcast(ids)
        return count

    async def revoke_others(self, session_id: str, user_id: int) -> int:
        """End every session of ``user_id`` except ``session_id`` ("sign out everywhere else").

        Returns:
            How many sessions were ended.

        Raises:
            StateUnavailable: the store cannot answer, or the user's sessions kept changing.
        """
        return await self.end_others(user_id, keep=hash_session_id(session_id))

    async def end_others(self, user_id: int, *, keep: str, keep_family: str | None = None) -> int:
        """End every session of ``user_id`` but the one whose id hash is ``keep`` (and, with
        ``keep_family``, that sign-in's sessions on the other hosts).

        Every other sign-in ends whole (:meth:`revoke_family`): a hand-off in flight from it cannot
        start a session afterwards. The index is read again after each pass until it names nothing
        else, and every id a pass tried to end leaves the index with it: a session that changed its id
        meanwhile (a second factor, an enrolment) is either found under its new id by the next pass
        or, finding its old id gone from the index, ends itself (an attack run kept 2 of 8 such
        sessions through a password change).

        Returns:
            How many sessions were ended.

        Raises:
            StateUnavailable: the store cannot answer, or the user's sessions kept changing.
        """
        mine = await self._state.get(_session_key(keep))
        session = None if mine is None else decode_session(mine)
        # Sign-ins left standing: this browser's (``keep_family``), and the one ``keep`` belongs to; every
        # other sign-in ends whole, its family record taken, so no hand-off can join it again (an
        # attack run kept a copied cookie minting sessions on another host through the sweep).
        spared = {family for family in (keep_family, session.family if session else None) if family}
        kept = {keep}
        count = 0
        for _ in range(_CAS_ATTEMPTS):
            ids = [h for h in self._parse_ids(await self._state.get(_user_key(user_id))) if h not in kept]
            if not ids:
                return count
            records = await asyncio.gather(*(self._state.get(_session_key(h)) for h in ids))
            families: set[str] = set()
            for id_hash, raw in zip(ids, records, strict=True):
                other = None if raw is None else decode_session(raw)
                if other is None or other.id_hash != id_hash:
                    continue
                if keep_family is not None and other.family == keep_family:
                    kept.add(id_hash)
                elif other.family not in spared:
                    families.add(other.family)
            ids = [h for h in ids if h not in kept]
            if not ids:
                return count
            for family in families:
                count += await self.revoke_family(family)
            for id_hash in ids:  # the rest: gone already, or of the sign-in ``keep`` belongs to
                if await self.revoke_hash(id_hash):
                    count += 1
            await self._update_user(user_id, _without(frozenset(ids)))
        raise StateUnavailable(f"the sessions of user {user_id} kept changing; not every one was ended")

    async def _end(self, ids: Sequence[str]) -> int:
        results = await asyncio.gather(*(self._state.take(_session_key(h)) for h in ids))
        self._forget(ids)
        return sum(1 for r in results if r is not None)

    async def _broadcast(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._forget(ids)
        try:
            await self._state.publish(REVOCATION_CHANNEL, "\n".join(ids).encode("ascii"))
        except StateUnavailable:
            # The sessions are already deleted; other replicas' caches expire within cache_ttl.
            # Failing the sign-out now would tell the user it did not happen when it did.
            _log.warning("could not broadcast the revocation of %d session(s)", len(ids))

    # -- invalidation listener -------------------------------------------------------------------

    async def wait_listening(self) -> None:
        """Wait until ``run_invalidation_listener`` is subscribed (wrap in ``asyncio.timeout``)."""
        await self._listening.wait()

    async def run_invalidation_listener(self, *, retry_delay: float = 1.0) -> None:
        """Evict revoked sessions from this replica's cache as other replicas announce them.

        Runs until cancelled (the runtime starts it as a task); see
        :func:`gateway.store.fast.follow.follow_evictions` for what a possibly missed message does.
        """
        await follow_evictions(
            self._state, REVOCATION_CHANNEL, forget=self._forget, clear=self._cache.clear,
            listening=self._listening, wake_every=self._cache_ttl, retry_delay=retry_delay,
            what="session invalidation",
        )  # fmt: skip

    # -- indexes ---------------------------------------------------------------------------------

    @staticmethod
    def _parse_ids(raw: bytes | None) -> tuple[str, ...]:
        if raw is None:
            return ()
        try:
            return _decode_ids(raw)
        except msgspec.MsgspecError:
            _log.warning("discarding an unreadable session index")
            return ()

    @staticmethod
    def _parse_family(raw: bytes | None) -> _Family | None:
        if raw is None:
            return None
        try:
            return _decode_family(raw)
        except msgspec.MsgspecError:
            _log.warning("discarding an unreadable session family record")
            return None

    async def _update_user(
        self, user_id: int, change: Callable[[tuple[str, ...]], list[str]]
    ) -> tuple[str, ...]:
        """Apply ``change`` to the user's session index atomically (CAS retry loop); return the new list.

        The index lives as long as a session could (the lifetime, renewed at every change), so it
        never outlives what it indexes by much and never disappears while one is alive.
        """
        key = _user_key(user_id)
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._state.get(key)
            new = tuple(dict.fromkeys(change(self._parse_ids(raw))))
            payload = _encode(new) if new else None
            if raw is None and payload is None:
                return new
            if await self._state.compare_and_set(key, raw, payload, ttl=self._lifetime if payload else None):
                return new
        raise StateUnavailable(f"session index of user {user_id} is too contended")

    async def _swap_in_index(self, user_id: int, old_hash: str, new_hash: str) -> bool:
        """Put ``new_hash`` in the user's index in place of ``old_hash``, only while ``old_hash`` is still
        there; False when a sweep (or a listing that found the old record gone) removed it: the caller
        must then end the new session (see :meth:`end_others`)."""
        swept = False

        def swap(cur: tuple[str, ...]) -> list[str]:
            nonlocal swept
            swept = old_hash not in cur
            return list(cur) if swept else [*(h for h in cur if h != old_hash), new_hash]

        await self._update_user(user_id, swap)
        return not swept

    async def _indexed(self, user_id: int, id_hash: str) -> bool:
        return id_hash in self._parse_ids(await self._state.get(_user_key(user_id)))

    async def _trim_user(self, user_id: int, newcomer: Session) -> bool:
        """Over the cap: end sessions (never just drop them from the index, or revoke_user would miss
        them) until it holds, after list_user has pruned those that ended on their own. False if that
        ended ``newcomer``.

        The lowest level goes first (a password still owing its second factor), least recently active
        first among equals, and a sign-in never ends a session of a higher level than its own: it ends
        itself instead. An attack run signed in 200 times with a stolen password alone, never passing
        the second factor, and so ended the owner's fully signed-in session.
        """
        sessions = await self.list_user(user_id)
        excess = len(sessions) - _MAX_USER_SESSIONS
        ranked = sorted(sessions, key=lambda s: (s.level, s.last_seen))
        for extra in ranked[: max(0, excess)]:
            if extra.level > newcomer.level or extra.id_hash == newcomer.id_hash:
                await self.revoke_hash(newcomer.id_hash)
                return False
            await self.revoke_hash(extra.id_hash)
        return True

    async def _join_family(
        self, family: str, id_hash: str, user_id: int, now: float, *, joining: bool, mark: str
    ) -> tuple[float, str]:
        """Add ``id_hash`` to the family (creating it, with the provider ``mark``, unless ``joining``);
        return its sign-in time and provider mark."""
        key = _family_key(family)
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._state.get(key)
            record = self._parse_family(raw)
            if record is None:
                if joining:
                    raise SessionEnded("This sign-in has ended.")
                record = _Family(u=user_id, c=now, p=mark)
            elif record.u != user_id:
                raise ValueError("session family belongs to another user")
            remaining = record.c + self._lifetime - now
            if remaining <= 0:
                raise SessionEnded("This sign-in has expired.")
            new = msgspec.structs.replace(record, ids=(*record.ids, id_hash))
            if await self._state.compare_and_set(key, raw, _encode(new), ttl=remaining):
                return record.c, record.p
        raise StateUnavailable("session family record is too contended")

    async def _update_family(self, family: str, change: Callable[[tuple[str, ...]], list[str]]) -> bool:
        """Apply ``change`` to the family's ids; False if the family no longer exists."""
        key = _family_key(family)
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._state.get(key)
            record = self._parse_family(raw)
            if record is None:
                return False
            remaining = record.c + self._lifetime - self._clock.time()
            ids = tuple(dict.fromkeys(change(record.ids)))
            new: bytes | None = None
            if ids and remaining > 0:
                new = _encode(msgspec.structs.replace(record, ids=ids))
            if await self._state.compare_and_set(key, raw, new, ttl=remaining if new else None):
                return True
        raise StateUnavailable("session family record is too contended")

    async def _family_has(self, family: str, id_hash: str) -> bool:
        record = self._parse_family(await self._state.get(_family_key(family)))
        return record is not None and id_hash in record.ids
