"""WebAuthn ceremonies against a software authenticator, on SQLite and PostgreSQL (real servers).

The authenticator in ``tests.support.soft_authenticator`` signs real ES256 assertions over real CBOR, so
these tests run py_webauthn's whole verification; the knobs on it play the attacker: a phishing origin,
a foreign RP ID, a missing PIN, a cloned key, a captured response replayed. Browser-level tests with
Chromium's virtual authenticator live in the integration suite.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from webauthn.helpers import parse_cbor

from gateway.audit.models import AuditEvent
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.factors.webauthn import (
    CHALLENGE_TTL_S,
    WEBAUTHN_FAILED_MESSAGE,
    WebAuthnAssertion,
    WebAuthnFailed,
    WebAuthnService,
    user_handle,
)
from gateway.identity.models import User, WebAuthnCredential
from gateway.settings.schema import WebAuthnSettings
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState
from tests.support.soft_authenticator import (
    SOFT_AAGUID,
    AuthenticatorRefused,
    SoftAuthenticator,
    b64url,
    b64url_decode,
    cbor_encode,
)

PUBLIC_URL = "https://auth.example.com"
ORIGIN = "https://auth.example.com"
RP_ID = "auth.example.com"
BROWSER = "csrf-cookie-of-one-browser family-1"


@dataclass
class World:
    db: Database
    clock: FakeClock
    fast: MemoryFastState
    audit: AuditLog
    alice: int
    bob: int

    def service(self, **settings: Any) -> WebAuthnService:
        return WebAuthnService(
            self.db,
            self.fast,
            WebAuthnSettings(**settings),
            public_url=PUBLIC_URL,
            audit=self.audit,
            clock=self.clock,
        )

    async def events(self, kind: str) -> list[AuditEvent]:
        return await self.audit.events(kind=kind)

    async def stored(self, credential_db_id: int) -> WebAuthnCredential:
        async with self.db.session() as session:
            row = await session.get(WebAuthnCredential, credential_db_id)
        assert row is not None
        return row


async def _add_user(db: Database, clock: FakeClock, username: str) -> int:
    user = User(
        username=username,
        email=f"{username}@example.com",
        display_name=username.title(),
        password_hash=None,
        created_at=clock.now(),
        updated_at=clock.now(),
        password_changed_at=None,
    )
    async with db.session() as session:
        session.add(user)
        await session.commit()
    return user.id


@pytest.fixture
async def world(database: Database) -> AsyncIterator[World]:
    clock = FakeClock()
    fast = MemoryFastState(clock=clock)
    audit = AuditLog(database, clock=clock)
    alice = await _add_user(database, clock, "alice")
    bob = await _add_user(database, clock, "bob")
    yield World(database, clock, fast, audit, alice, bob)
    await fast.close()


@pytest.fixture
def service(world: World) -> WebAuthnService:
    return world.service()


@pytest.fixture
def key() -> SoftAuthenticator:
    return SoftAuthenticator(origin=ORIGIN)


async def _enroll(
    service: WebAuthnService,
    key: SoftAuthenticator,
    user_id: int,
    *,
    name: str = "YubiKey",
    discoverable: bool = False,
) -> WebAuthnCredential:
    options = await service.registration_options(
        bound_to=BROWSER,
        user_id=user_id,
        username=f"user{user_id}",
        display_name="",
        discoverable=discoverable,
    )
    return await service.register(
        bound_to=BROWSER, user_id=user_id, name=name, credential_json=key.create(options)
    )


async def _refused(coro: Any) -> WebAuthnFailed:
    with pytest.raises(WebAuthnFailed) as caught:
        await coro
    # One answer for every failure: the client never learns which check failed.
    assert str(caught.value) == WEBAUTHN_FAILED_MESSAGE
    assert caught.value.status == 400
    assert caught.value.reason == "webauthn-failed"
    return caught.value


# --- the CBOR the soft authenticator writes is what py_webauthn reads ---------------------------------


@pytest.mark.parametrize(
    "value",
    [0, 23, 24, 255, 256, 65536, 2**32, -1, -24, -25, -257, b"", b"\x00" * 40, "", "fmt", True, False,
     [1, [2, "x"]], {1: 2, 3: -7, -1: 1, -2: b"\x01" * 32}, {"fmt": "none", "attStmt": {}}],
)  # fmt: skip
def test_cbor_encoder_round_trips_through_py_webauthn(value: object) -> None:
    assert parse_cbor(cbor_encode(value)) == value


# --- configuration ---------------------------------------------------------------------------------


def test_rp_id_and_origin_come_from_public_url(world: World) -> None:
    service = WebAuthnService(
        world.db,
        world.fast,
        WebAuthnSettings(),
        public_url="HTTPS://Auth.Example.com:443/base/",
        audit=world.audit,
        clock=world.clock,
    )
    assert service.rp_id == "auth.example.com"
    # Browsers drop the default port and lower-case scheme and host.
    assert service.origin == "https://auth.example.com"
    other = WebAuthnService(
        world.db,
        world.fast,
        WebAuthnSettings(rp_id="example.com"),
        public_url="http://auth.example.com:8443",
        audit=world.audit,
        clock=world.clock,
    )
    assert (other.rp_id, other.origin) == ("example.com", "http://auth.example.com:8443")


@pytest.mark.parametrize("rp_id", ["other.com", "xample.com", "sub.auth.example.com"])
def test_rp_id_must_be_the_host_or_a_parent(world: World, rp_id: str) -> None:
    with pytest.raises(ValueError, match="rp_id"):
        WebAuthnService(
            world.db,
            world.fast,
            WebAuthnSettings(rp_id=rp_id),
            public_url=PUBLIC_URL,
            audit=world.audit,
            clock=world.clock,
        )


# --- registration ----------------------------------------------------------------------------------


async def test_registration_options(world: World, service: WebAuthnService, key: SoftAuthenticator) -> None:
    options = json.loads(
        await service.registration_options(
            bound_to=BROWSER,
            user_id=world.alice,
            username="alice",
            display_name="Alice L.",
            discoverable=False,
        )
    )
    assert options["rp"] == {"name": "Gateway", "id": RP_ID}
    # The user handle is opaque: never the username or the email.
    assert b64url_decode(options["user"]["id"]) == user_handle(world.alice)
    assert b"alice" not in b64url_decode(options["user"]["id"])
    assert options["user"]["name"] == "alice"
    assert options["user"]["displayName"] == "Alice L."
    assert options["authenticatorSelection"]["residentKey"] == "discouraged"
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    assert options["attestation"] == "none"
    assert options["excludeCredentials"] == []
    assert options["extensions"] == {"credProps": True}
    assert options["timeout"] == CHALLENGE_TTL_S * 1000
    assert len(b64url_decode(options["challenge"])) >= 16

    passkey = json.loads(
        await world.service(user_verification="required").registration_options(
            bound_to=BROWSER, user_id=world.alice, username="alice", display_name="", discoverable=True
        )
    )
    assert passkey["authenticatorSelection"]["residentKey"] == "required"
    assert passkey["authenticatorSelection"]["requireResidentKey"] is True
    assert passkey["authenticatorSelection"]["userVerification"] == "required"
    assert passkey["user"]["displayName"] == "alice"
    assert passkey["challenge"] != options["challenge"]


async def test_register_stores_the_credential_and_audits(world: World, service: WebAuthnService) -> None:
    key = SoftAuthenticator(origin=ORIGIN, backup_eligible=True, backed_up=True, transports=("usb", "nfc"))
    cred = await _enroll(service, key, world.alice, name="  My\nYubiKey\u202e  ", discoverable=True)
    (held,) = key.credentials.values()
    stored = await world.stored(cred.id)
    assert stored.user_id == world.alice
    assert stored.name == "My YubiKey"  # control and bidi characters are gone
    assert stored.credential_id == held.credential_id
    assert parse_cbor(stored.public_key) == parse_cbor(held.cose_public_key())
    assert stored.sign_count == 0
    assert stored.transports == "usb nfc"
    assert stored.aaguid == "5e1f50f7-aa0b-4c8e-9d2d-7f6b0e3a9c11"
    assert bytes.fromhex(stored.aaguid.replace("-", "")) == SOFT_AAGUID
    assert stored.discoverable is True
    assert stored.backed_up is True
    assert stored.user_verified is True
    assert stored.created_at == world.clock.now()
    assert stored.last_used_at is None
    (event,) = await world.events("factor.enrolled")
    assert (event.actor, event.subject, event.outcome) == ("user:alice", "alice", "success")
    assert json.loads(event.details) == {"kind": "webauthn", "name": "My YubiKey", "discoverable": True}


async def test_discoverable_follows_cred_props_when_reported(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    options = await service.registration_options(
        bound_to=BROWSER, user_id=world.alice, username="alice", display_name="", discoverable=False
    )
    response = json.loads(key.create(options))
    # The platform made a resident key although we only discouraged it: credProps says so.
    response["clientExtensionResults"] = {"credProps": {"rk": True}}
    cred = await service.register(
        bound_to=BROWSER, user_id=world.alice, name="", credential_json=json.dumps(response)
    )
    assert cred.discoverable is True
    assert cred.name == "Security key"  # the default for what was asked for


async def test_exclude_credentials_lists_existing_ones(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    first = await _enroll(service, key, world.alice)
    second = await _enroll(service, SoftAuthenticator(origin=ORIGIN), world.alice, name="Phone")
    await _enroll(service, SoftAuthenticator(origin=ORIGIN), world.bob)
    options = await service.registration_options(
        bound_to=BROWSER, user_id=world.alice, username="alice", display_name="", discoverable=False
    )
    excluded = json.loads(options)["excludeCredentials"]
    assert [b64url_decode(d["id"]) for d in excluded] == [first.credential_id, second.credential_id]
    assert excluded[0] == {"id": b64url(first.credential_id), "type": "public-key", "transports": ["usb"]}
    # So the same key cannot be registered twice (the browser refuses on the authenticator's side).
    with pytest.raises(AuthenticatorRefused):
        key.create(options)


async def test_duplicate_credential_id_refused(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    cred = await _enroll(service, key, world.alice)
    # A broken or malicious client ignores excludeCredentials, or claims someone else's credential id.
    for user_id in (world.alice, world.bob):
        options = await service.registration_options(
            bound_to=BROWSER, user_id=user_id, username="x", display_name="", discoverable=False
        )
        response = SoftAuthenticator(origin=ORIGIN).create(options, reuse_credential=cred.credential_id)
        await _refused(
            service.register(bound_to=BROWSER, user_id=user_id, name="again", credential_json=response)
        )
    assert [c.id for c in await service.list(world.alice)] == [cred.id]
    assert await service.list(world.bob) == []


async def test_replayed_registration_refused(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, key, world.alice)
    await _refused(
        service.register(bound_to=BROWSER, user_id=world.alice, name="again", credential_json=key.replay())
    )
    assert len(await service.list(world.alice)) == 1


async def test_registration_challenge_is_bound_to_its_user(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    options = await service.registration_options(
        bound_to=BROWSER, user_id=world.alice, username="alice", display_name="", discoverable=False
    )
    response = key.create(options)
    await _refused(
        service.register(bound_to=BROWSER, user_id=world.bob, name="stolen", credential_json=response)
    )
    assert await service.list(world.bob) == []


async def test_registration_challenge_expires(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    options = await service.registration_options(
        bound_to=BROWSER, user_id=world.alice, username="alice", display_name="", discoverable=False
    )
    world.clock.advance(CHALLENGE_TTL_S + 1)
    await _refused(
        service.register(
            bound_to=BROWSER, user_id=world.alice, name="late", credential_json=key.create(options)
        )
    )


@pytest.mark.parametrize(
    ("knobs", "settings"),
    [
        pytest.param({"origin": "https://auth.example.com.evil.test"}, {}, id="phishing-origin"),
        pytest.param({"origin": "http://auth.example.com"}, {}, id="plain-http-origin"),
        pytest.param({"origin": "https://auth.example.com:8443"}, {}, id="other-port"),
        pytest.param({"rp_id": "evil.test"}, {}, id="wrong-rp-id"),
        pytest.param({"rp_id": "example.com"}, {}, id="parent-rp-id-not-configured"),
        pytest.param({"user_verified": False}, {"user_verification": "required"}, id="uv-required"),
    ],
)
async def test_registration_refused(
    world: World, key: SoftAuthenticator, knobs: dict[str, Any], settings: dict[str, Any]
) -> None:
    service = world.service(**settings)
    options = await service.registration_options(
        bound_to=BROWSER, user_id=world.alice, username="alice", display_name="", discoverable=False
    )
    await _refused(
        service.register(
            bound_to=BROWSER, user_id=world.alice, name="k", credential_json=key.create(options, **knobs)
        )
    )
    assert await service.list(world.alice) == []
    assert await world.events("factor.enrolled") == []


async def test_registration_without_uv_accepted_when_only_preferred(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    options = await service.registration_options(
        bound_to=BROWSER, user_id=world.alice, username="alice", display_name="", discoverable=False
    )
    cred = await service.register(
        bound_to=BROWSER,
        user_id=world.alice,
        name="k",
        credential_json=key.create(options, user_verified=False),
    )
    assert cred.user_verified is False


@pytest.mark.parametrize(
    "credential_json",
    ["", "null", "[]", "{}", '{"id": "x", "rawId": "x", "type": "public-key", "response": {}}',
     '{"id": "AA", "rawId": "AA", "type": "public-key", '
     '"response": {"clientDataJSON": "e30", "attestationObject": "oA"}}'],
)  # fmt: skip
async def test_malformed_registration_refused(
    world: World, service: WebAuthnService, credential_json: str
) -> None:
    await _refused(
        service.register(bound_to=BROWSER, user_id=world.alice, name="k", credential_json=credential_json)
    )


# --- authentication as a second factor -------------------------------------------------------------


async def test_register_then_authenticate(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    cred = await _enroll(service, key, world.alice)
    options = json.loads(await service.authentication_options(bound_to=BROWSER, user_id=world.alice))
    assert options["rpId"] == RP_ID
    assert options["userVerification"] == "preferred"
    assert options["allowCredentials"] == [
        {"id": b64url(cred.credential_id), "type": "public-key", "transports": ["usb"]}
    ]
    world.clock.advance(60)
    assertion = await service.authenticate(
        bound_to=BROWSER, credential_json=key.get(json.dumps(options)), user_id=world.alice
    )
    assert assertion == WebAuthnAssertion(user_id=world.alice, credential_db_id=cred.id, user_verified=True)
    stored = await world.stored(cred.id)
    assert stored.sign_count == 1
    assert stored.last_used_at == world.clock.now()

    # And again: the counter moves on.
    options_json = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    await service.authenticate(bound_to=BROWSER, credential_json=key.get(options_json), user_id=world.alice)
    assert (await world.stored(cred.id)).sign_count == 2


async def test_second_factor_without_uv_reported_not_required(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, key, world.alice)
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    assertion = await service.authenticate(
        bound_to=BROWSER, credential_json=key.get(options, user_verified=False), user_id=world.alice
    )
    assert assertion.user_verified is False


async def test_second_factor_without_uv_refused_when_required(world: World, key: SoftAuthenticator) -> None:
    service = world.service(user_verification="required")
    await _enroll(service, key, world.alice)
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    assert json.loads(options)["userVerification"] == "required"
    await _refused(
        service.authenticate(
            bound_to=BROWSER, credential_json=key.get(options, user_verified=False), user_id=world.alice
        )
    )


async def test_authentication_options_need_a_credential(world: World, service: WebAuthnService) -> None:
    # An empty allow list would let any passkey on the device answer.
    await _refused(service.authentication_options(bound_to=BROWSER, user_id=world.alice))


@pytest.mark.parametrize(
    "knobs",
    [
        pytest.param({"origin": "https://auth.example.com.evil.test"}, id="phishing-origin"),
        pytest.param({"origin": "https://wiki.example.com"}, id="route-host-origin"),
        pytest.param({"rp_id": "evil.test"}, id="wrong-rp-id"),
    ],
)
@pytest.mark.parametrize("passwordless", [False, True])
async def test_authentication_refused_for_another_site(
    world: World, service: WebAuthnService, key: SoftAuthenticator, knobs: dict[str, Any], passwordless: bool
) -> None:
    cred = await _enroll(service, key, world.alice, discoverable=passwordless)
    user_id = None if passwordless else world.alice
    options = await service.authentication_options(bound_to=BROWSER, user_id=user_id)
    await _refused(
        service.authenticate(bound_to=BROWSER, credential_json=key.get(options, **knobs), user_id=user_id)
    )
    stored = await world.stored(cred.id)
    assert (stored.sign_count, stored.last_used_at) == (0, None)


async def test_replayed_authentication_refused(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, key, world.alice)
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    await service.authenticate(bound_to=BROWSER, credential_json=key.get(options), user_id=world.alice)
    await _refused(service.authenticate(bound_to=BROWSER, credential_json=key.replay(), user_id=world.alice))


async def test_failed_attempt_burns_the_challenge(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, key, world.alice)
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    await _refused(
        service.authenticate(
            bound_to=BROWSER,
            credential_json=key.get(options, origin="https://evil.test"),
            user_id=world.alice,
        )
    )
    # A correct answer to the same challenge no longer counts: every attempt needs fresh options.
    await _refused(
        service.authenticate(bound_to=BROWSER, credential_json=key.get(options), user_id=world.alice)
    )


async def test_authentication_challenge_expires(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, key, world.alice)
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    world.clock.advance(CHALLENGE_TTL_S + 1)
    await _refused(
        service.authenticate(bound_to=BROWSER, credential_json=key.get(options), user_id=world.alice)
    )


async def test_credential_of_another_user_refused(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    alices = await _enroll(service, key, world.alice)
    await _enroll(service, key, world.bob)
    # Bob is signed in; the answer comes from Alice's credential (held on the same authenticator).
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.bob)
    response = key.get(options, credential_id=alices.credential_id)
    await _refused(service.authenticate(bound_to=BROWSER, credential_json=response, user_id=world.bob))
    assert (await world.stored(alices.id)).last_used_at is None


async def test_challenge_of_one_user_cannot_finish_for_another(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, key, world.alice)
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    await _refused(
        service.authenticate(bound_to=BROWSER, credential_json=key.get(options), user_id=world.bob)
    )


@pytest.mark.parametrize("user", ["alice", None])
async def test_an_assertion_relayed_into_another_browser_finds_no_challenge(
    world: World, service: WebAuthnService, key: SoftAuthenticator, user: str | None
) -> None:
    # The owner's browser asked; an attacker signed in with the same password (another CSRF cookie,
    # another session family) presents the owner's assertion first. Then the owner still finishes.
    await _enroll(service, key, world.alice, discoverable=True)
    user_id = world.alice if user else None
    options = await service.authentication_options(bound_to=BROWSER, user_id=user_id)
    response = key.get(options)
    for elsewhere in ("csrf-cookie-of-another-browser family-1", "csrf-cookie-of-one-browser family-2"):
        await _refused(service.authenticate(bound_to=elsewhere, credential_json=response, user_id=user_id))
    await _refused(service.authenticate(bound_to="", credential_json=response, user_id=user_id))
    assertion = await service.authenticate(bound_to=BROWSER, credential_json=response, user_id=user_id)
    assert assertion.user_id == world.alice


async def test_a_registration_relayed_into_another_browser_stores_nothing(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    options = await service.registration_options(
        bound_to=BROWSER, user_id=world.alice, username="alice", display_name="", discoverable=False
    )
    response = key.create(options)
    await _refused(
        service.register(bound_to="another browser", user_id=world.alice, name="k", credential_json=response)
    )
    assert await service.list(world.alice) == []
    await service.register(bound_to=BROWSER, user_id=world.alice, name="k", credential_json=response)
    assert len(await service.list(world.alice)) == 1


async def test_a_ceremony_without_a_browser_is_refused(world: World, service: WebAuthnService) -> None:
    await _refused(service.authentication_options(bound_to="", user_id=None))


async def test_unknown_credential_refused(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    cred = await _enroll(service, key, world.alice)
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    assert await service.remove(world.alice, cred.id)
    await _refused(
        service.authenticate(bound_to=BROWSER, credential_json=key.get(options), user_id=world.alice)
    )


async def test_signature_by_another_key_refused(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    cred = await _enroll(service, key, world.alice)
    # Another authenticator claims the credential id but holds a different private key.
    impostor = SoftAuthenticator(origin=ORIGIN)
    impostor.create(
        await service.registration_options(
            bound_to=BROWSER, user_id=world.alice, username="a", display_name="", discoverable=False
        ),
        ignore_exclude=True,
        reuse_credential=cred.credential_id,
    )
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    await _refused(
        service.authenticate(bound_to=BROWSER, credential_json=impostor.get(options), user_id=world.alice)
    )
    # No sign-count alarm: without a valid signature nobody can raise one.
    assert await world.events("webauthn.sign_count_regression") == []


async def test_tampered_authenticator_data_refused(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, key, world.alice)
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    response = json.loads(key.get(options, user_verified=False))
    auth_data = bytearray(b64url_decode(response["response"]["authenticatorData"]))
    auth_data[32] |= 0x04  # claim UV after the fact
    response["response"]["authenticatorData"] = b64url(bytes(auth_data))
    await _refused(
        service.authenticate(bound_to=BROWSER, credential_json=json.dumps(response), user_id=world.alice)
    )


@pytest.mark.parametrize(
    "credential_json",
    ["", "{}", "[1]", '{"id": "AA", "rawId": "AA", "type": "public-key", "response": {"clientDataJSON": "!!", '
     '"authenticatorData": "AA", "signature": "AA"}}'],
)  # fmt: skip
async def test_malformed_authentication_refused(
    world: World, service: WebAuthnService, credential_json: str
) -> None:
    await _refused(
        service.authenticate(bound_to=BROWSER, credential_json=credential_json, user_id=world.alice)
    )


# --- cloned authenticators: the signature counter ------------------------------------------------


@pytest.mark.parametrize(("stored", "presented"), [(5, 5), (5, 4), (5, 0), (0, 0)])
async def test_sign_count_regression_refused_and_audited(
    world: World,
    service: WebAuthnService,
    key: SoftAuthenticator,
    caplog: pytest.LogCaptureFixture,
    stored: int,
    presented: int,
) -> None:
    cred = await _enroll(service, key, world.alice)
    if stored:
        options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
        await service.authenticate(
            bound_to=BROWSER, credential_json=key.get(options, sign_count=stored), user_id=world.alice
        )
    last_used = (await world.stored(cred.id)).last_used_at
    world.clock.advance(10)
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    response = key.get(options, sign_count=presented)
    if stored == presented == 0:
        # An authenticator without a counter always says 0: nothing to compare, accepted.
        await service.authenticate(bound_to=BROWSER, credential_json=response, user_id=world.alice)
        assert await world.events("webauthn.sign_count_regression") == []
        return
    with caplog.at_level(logging.WARNING, logger="gateway.factors.webauthn"):
        await _refused(service.authenticate(bound_to=BROWSER, credential_json=response, user_id=world.alice))
    assert "sign count regression" in caplog.text
    after = await world.stored(cred.id)
    assert (after.sign_count, after.last_used_at) == (stored, last_used)
    (event,) = await world.events("webauthn.sign_count_regression")
    assert (event.actor, event.subject, event.outcome) == ("user:alice", "alice", "refused")
    assert json.loads(event.details) == {
        "credential": cred.id,
        "name": "YubiKey",
        "stored_count": stored,
        "presented_count": presented,
    }


async def test_counter_from_zero_to_positive_accepted(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    cred = await _enroll(service, key, world.alice)
    options = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    await service.authenticate(
        bound_to=BROWSER, credential_json=key.get(options, sign_count=7), user_id=world.alice
    )
    assert (await world.stored(cred.id)).sign_count == 7


# --- passwordless sign-in with a passkey ---------------------------------------------------------


async def test_passkey_passwordless_with_uv(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, SoftAuthenticator(origin=ORIGIN), world.alice, discoverable=True)
    passkey = await _enroll(service, key, world.bob, name="Laptop", discoverable=True)
    options = json.loads(await service.authentication_options(bound_to=BROWSER, user_id=None))
    # Nobody is named: the authenticator offers its discoverable credentials.
    assert options["allowCredentials"] == []
    assert options["userVerification"] == "required"
    response = key.get(json.dumps(options))
    assert json.loads(response)["response"]["userHandle"] == b64url(user_handle(world.bob))
    assertion = await service.authenticate(bound_to=BROWSER, credential_json=response, user_id=None)
    assert assertion == WebAuthnAssertion(user_id=world.bob, credential_db_id=passkey.id, user_verified=True)


async def test_passwordless_without_uv_refused(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    # Even where the settings would let a second factor skip the PIN: alone, a passkey needs it.
    service = world.service(user_verification="discouraged")
    cred = await _enroll(service, key, world.alice, discoverable=True)
    options = await service.authentication_options(bound_to=BROWSER, user_id=None)
    await _refused(
        service.authenticate(
            bound_to=BROWSER, credential_json=key.get(options, user_verified=False), user_id=None
        )
    )
    assert (await world.stored(cred.id)).last_used_at is None


async def test_passwordless_disabled(world: World, key: SoftAuthenticator) -> None:
    service = world.service(passwordless=False)
    await _enroll(service, key, world.alice, discoverable=True)
    await _refused(service.authentication_options(bound_to=BROWSER, user_id=None))


async def test_passwordless_user_handle_must_match(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, key, world.alice, discoverable=True)
    options = await service.authentication_options(bound_to=BROWSER, user_id=None)
    response = key.get(options, user_handle=user_handle(world.bob))
    await _refused(service.authenticate(bound_to=BROWSER, credential_json=response, user_id=None))
    # §7.2: with nobody named beforehand, the handle must be there (a discoverable credential has one).
    options = await service.authentication_options(bound_to=BROWSER, user_id=None)
    await _refused(
        service.authenticate(
            bound_to=BROWSER, credential_json=key.get(options, omit_user_handle=True), user_id=None
        )
    )


async def test_passwordless_challenge_cannot_finish_a_second_factor(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, key, world.alice, discoverable=True)
    passwordless = await service.authentication_options(bound_to=BROWSER, user_id=None)
    await _refused(
        service.authenticate(bound_to=BROWSER, credential_json=key.get(passwordless), user_id=world.alice)
    )
    second_factor = await service.authentication_options(bound_to=BROWSER, user_id=world.alice)
    await _refused(
        service.authenticate(bound_to=BROWSER, credential_json=key.get(second_factor), user_id=None)
    )


async def test_passwordless_turned_off_refuses_pending_ceremonies(
    world: World, service: WebAuthnService, key: SoftAuthenticator
) -> None:
    await _enroll(service, key, world.alice, discoverable=True)
    options = await service.authentication_options(bound_to=BROWSER, user_id=None)
    # A config reload turned passwordless off while a sign-in was under way.
    reloaded = world.service(passwordless=False)
    await _refused(reloaded.authenticate(bound_to=BROWSER, credential_json=key.get(options), user_id=None))


# --- managing credentials ------------------------------------------------------------------------


async def test_list_rename_remove(world: World, service: WebAuthnService, key: SoftAuthenticator) -> None:
    first = await _enroll(service, key, world.alice, name="Key A")
    second = await _enroll(service, SoftAuthenticator(origin=ORIGIN), world.alice, name="Key B")
    bobs = await _enroll(service, SoftAuthenticator(origin=ORIGIN), world.bob, name="Bob's")
    assert [c.name for c in await service.list(world.alice)] == ["Key A", "Key B"]

    assert await service.rename(world.alice, first.id, "  Desk key\t ") is True
    assert (await world.stored(first.id)).name == "Desk key"
    assert await service.rename(world.alice, first.id, "x" * 500) is True
    assert (await world.stored(first.id)).name == "x" * 64
    # Someone else's credential, or one that does not exist: left alone.
    assert await service.rename(world.alice, bobs.id, "mine now") is False
    assert await service.rename(world.alice, 999_999, "nope") is False
    assert (await world.stored(bobs.id)).name == "Bob's"

    assert await service.remove(world.alice, bobs.id) is False
    assert await service.remove(world.alice, second.id) is True
    assert await service.remove(world.alice, second.id) is False
    assert [c.id for c in await service.list(world.alice)] == [first.id]
    assert [c.id for c in await service.list(world.bob)] == [bobs.id]
    (event,) = await world.events("factor.removed")
    assert (event.actor, event.subject) == ("user:alice", "alice")
    assert json.loads(event.details) == {"kind": "webauthn", "name": "Key B"}
    async with world.db.session() as session:
        left = (await session.scalars(select(WebAuthnCredential.id).order_by(WebAuthnCredential.id))).all()
    assert list(left) == [first.id, bobs.id]

    # A removed credential no longer signs in, and is no longer excluded from registration.
    options = await service.registration_options(
        bound_to=BROWSER, user_id=world.alice, username="alice", display_name="", discoverable=False
    )
    assert [d["id"] for d in json.loads(options)["excludeCredentials"]] == [b64url(first.credential_id)]
