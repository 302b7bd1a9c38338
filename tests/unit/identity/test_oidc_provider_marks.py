"""A provider sign-in ends with the configuration that gave it its roles.

An attack run: removing an identity provider, or a ``role_map`` entry, and reloading left the sessions
signed in through it with the mapped roles and ``group:<provider>:*`` principals until their lifetime
ended (after the provider's removal even its back-channel logout answered 404). Each such session now
carries the mark of what decided its roles (:func:`gateway.identity.sessions.provider_mark`), and a
session whose mark the configuration no longer gives is refused like an ended one.
"""

from __future__ import annotations

import msgspec
import pytest

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.oidc.service import CompletedSignIn, OidcService
from gateway.identity.oidc.tokens import IdToken
from gateway.identity.sessions import Session, SessionStore, decode_session, encode_session, provider_mark
from gateway.settings.schema import IdentityProvider, SessionSettings
from gateway.store.db import Database
from gateway.store.fast import FastState

CORP = IdentityProvider(
    name="corp",
    issuer="https://idp.example.com",
    client_id="gateway",
    client_secret="s",
    provisioning="jit",
    role_map={"admins": "admin", "eng": ("dev", "reader")},
)
OTHER = IdentityProvider(name="other", issuer="https://other.example.com", client_id="g", client_secret="s")


def _changed(idp: IdentityProvider, **changes: object) -> IdentityProvider:
    return msgspec.structs.replace(idp, **changes)


@pytest.fixture
def sessions(fast_state: FastState, session_settings: SessionSettings, clock: FakeClock) -> SessionStore:
    store = SessionStore(fast_state, session_settings, clock)
    store.use_providers((CORP, OTHER))
    return store


@pytest.fixture
def service(
    fast_state: FastState, sessions: SessionStore, clock: FakeClock, database: Database
) -> OidcService:
    return OidcService(
        db=database, fast=fast_state, audit=AuditLog(database, clock=clock), sessions=sessions, clock=clock
    )


async def _provider_sign_in(service: OidcService, sessions: SessionStore, clock: FakeClock) -> str:
    """A sign-in through CORP as the callback makes it: map, create the session, remember it."""
    claims = {"sub": "s-1", "preferred_username": "ada", "groups": ["admins", "eng"]}
    who = await service.mapper.map(CORP, subject="s-1", claims=claims)
    assert who.roles == ("admin", "dev", "reader")
    session_id, session = await sessions.create(
        user_id=who.user.id,
        username=who.user.username,
        level=AuthLevel.ONE_FACTOR,
        factors=(FactorUse(Factor.OIDC, clock.time()),),
        roles=who.roles,
        groups=who.groups,
        ip="192.0.2.1",
        user_agent="pytest",
        host="https://auth.example.com",
        provider_mark=who.mark,
    )
    token = IdToken(claims=claims, subject="s-1", issued_at=0.0, auth_time=None, amr=(), acr=None, sid=None)
    completed = CompletedSignIn(
        provider="corp",
        identity=who,
        level=AuthLevel.ONE_FACTOR,
        factors=session.factors,
        token=token,
        id_token="t",
        rd="",
    )
    await service.remember(completed, family=session.family)
    return session_id


async def _local_sign_in(sessions: SessionStore, clock: FakeClock) -> str:
    session_id, _ = await sessions.create(
        user_id=900,
        username="local",
        level=AuthLevel.ONE_FACTOR,
        factors=(FactorUse(Factor.PASSWORD, clock.time()),),
        roles=("admin",),
        ip="192.0.2.2",
        user_agent="pytest",
        host="https://auth.example.com",
    )
    return session_id


def test_the_mark_changes_with_what_decides_the_roles_only() -> None:
    mark = provider_mark(CORP)
    assert mark.startswith("corp:")
    # The same mapping written otherwise: the same mark.
    same = _changed(CORP, role_map={"eng": ["dev", "reader"], "admins": ("admin",)}, display_name="Corp")
    assert provider_mark(same) == mark
    assert provider_mark(_changed(CORP, role_map={"eng": ("dev", "reader")})) != mark
    assert provider_mark(_changed(CORP, role_map={**CORP.role_map, "admins": "ops"})) != mark
    assert provider_mark(_changed(CORP, groups_claim="roles")) != mark
    assert provider_mark(_changed(CORP, name="corp2")) != mark


async def test_a_reload_without_the_role_map_entry_ends_the_provider_sign_in_only(
    service: OidcService, sessions: SessionStore, clock: FakeClock
) -> None:
    provider_id = await _provider_sign_in(service, sessions, clock)
    local_id = await _local_sign_in(sessions, clock)
    signed_in = await sessions.get(provider_id)
    assert signed_in is not None
    assert signed_in.provider_mark == provider_mark(CORP)
    # A hand-off of that sign-in to an app host is the same sign-in.
    _, handed = await sessions.create(
        user_id=signed_in.user_id,
        username=signed_in.username,
        level=signed_in.level,
        factors=signed_in.factors,
        roles=signed_in.roles,
        groups=signed_in.groups,
        ip="192.0.2.1",
        user_agent="pytest",
        host="app.example.com",
        family=signed_in.family,
    )
    assert handed.provider_mark == signed_in.provider_mark

    sessions.use_providers((CORP, OTHER))  # a reload that changes nothing here
    assert await sessions.get(provider_id) is not None
    sessions.use_providers((_changed(CORP, role_map={"eng": ("dev", "reader")}), OTHER))
    assert await sessions.get(provider_id) is None  # even though this worker had it cached
    assert await sessions.current_hash(handed.id_hash) is None
    assert await sessions.get(local_id) is not None
    assert await sessions.list_user(signed_in.user_id) == []
    # Still indexed: ending the account's sessions finds both.
    assert await sessions.revoke_user(signed_in.user_id) == 2


async def test_a_reload_without_the_provider_ends_its_sign_ins(
    service: OidcService, sessions: SessionStore, clock: FakeClock
) -> None:
    provider_id = await _provider_sign_in(service, sessions, clock)
    local_id = await _local_sign_in(sessions, clock)
    sessions.use_providers((OTHER,))
    assert await sessions.get(provider_id) is None
    assert await sessions.get(local_id) is not None


async def test_a_provider_sign_in_stored_without_a_mark_is_refused(
    fast_state: FastState, sessions: SessionStore, clock: FakeClock
) -> None:
    """A provider session stored before sessions carried a mark still decodes, but what gave it its
    roles is unknown: refused (its person signs in again once). A local one is not affected."""
    provider_id, session = await sessions.create(
        user_id=5,
        username="ada",
        level=AuthLevel.ONE_FACTOR,
        factors=(FactorUse(Factor.OIDC, clock.time()),),
        roles=("admin",),
        groups=("corp:admins",),
        ip="192.0.2.1",
        user_agent="pytest",
        host="https://auth.example.com",
    )
    local_id = await _local_sign_in(sessions, clock)
    old = msgspec.json.decode(encode_session(session))
    del old["provider_mark"]
    stored = decode_session(msgspec.json.encode(old))
    assert isinstance(stored, Session)
    assert stored.provider_mark == ""
    sessions.clear_cache()
    assert await sessions.get(provider_id) is None
    assert await sessions.get(local_id) is not None
