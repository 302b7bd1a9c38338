"""TOTP (RFC 6238), cross-checked against Debian's ``oathtool``, on SQLite and PostgreSQL (real servers).

``oathtool`` plays the user's authenticator app: every code the gateway accepts here was computed by an
independent implementation, so a bug shared by pyotp and our use of it cannot hide.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update

from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring, KeyringError
from gateway.factors.totp import (
    ENROLLMENT_TTL,
    TotpService,
    match_step,
    new_secret,
    provisioning_uri,
    qr_svg,
)
from gateway.identity.models import TotpCredential, User
from gateway.settings.schema import MfaSettings, TotpSettings
from gateway.store.db import Database

SVG_NS = "{http://www.w3.org/2000/svg}"
# RFC 6238 appendix B: the SHA-1 seed "12345678901234567890"; 6-digit codes are the last 6 of the table's 8.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = [(59, "287082"), (1111111109, "081804"), (1111111111, "050471"), (1234567890, "005924"), (2000000000, "279037"), (20000000000, "353130")]  # fmt: skip


def oathtool(secret: str, at: float) -> str:
    """The code an independent authenticator (oathtool) shows for ``secret`` at Unix time ``at``."""
    tool = shutil.which("oathtool")
    if tool is None:
        pytest.fail(
            "oathtool is not installed: run scripts/ensure-test-deps (Debian/Ubuntu: apt-get install oathtool)"
        )
    out = subprocess.run(
        [tool, "--totp", "-b", secret, "-N", f"@{int(at)}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return out.stdout.strip()


# -- the pure functions --------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize(("at", "code"), RFC_VECTORS)
def test_rfc_6238_vectors_agree_with_oathtool(at: int, code: str) -> None:
    assert oathtool(RFC_SECRET, at) == code
    assert match_step(RFC_SECRET, code, now=at, last_step=0, window=0) == at // 30


@pytest.mark.peer
@pytest.mark.parametrize("at", [1_800_000_000.0, 1_800_000_029.9, 1_700_000_015.5, 86_400.0])
def test_random_secrets_agree_with_oathtool(at: float) -> None:
    for _ in range(5):
        secret = new_secret()
        assert match_step(secret, oathtool(secret, at), now=at, last_step=0, window=0) == int(at // 30)


@pytest.mark.peer
def test_one_step_of_drift_either_way() -> None:
    secret = new_secret()
    now = 1_800_000_010.0
    step = int(now // 30)
    assert match_step(secret, oathtool(secret, now - 30), now=now, last_step=0) == step - 1
    assert match_step(secret, oathtool(secret, now + 30), now=now, last_step=0) == step + 1
    assert match_step(secret, oathtool(secret, now - 60), now=now, last_step=0) is None
    assert match_step(secret, oathtool(secret, now + 60), now=now, last_step=0) is None
    assert match_step(secret, oathtool(secret, now - 30), now=now, last_step=0, window=0) is None


@pytest.mark.peer
def test_only_steps_after_the_last_one_are_accepted() -> None:
    secret = new_secret()
    now = 1_800_000_010.0
    step = int(now // 30)
    code = oathtool(secret, now)
    assert match_step(secret, code, now=now, last_step=step - 1) == step
    assert match_step(secret, code, now=now, last_step=step) is None  # replay
    # After the next step's code was used, the current one is too old.
    assert match_step(secret, code, now=now, last_step=step + 1) is None


@pytest.mark.parametrize(
    "code", ["", "12345", "1234567", "12345a", " 12345", "١٢٣٤٥٦", "+12345", "12 345", "0x1234"]
)
def test_malformed_codes_never_match(code: str) -> None:
    assert match_step(RFC_SECRET, code, now=59, last_step=0) is None


@given(at=st.floats(min_value=0, max_value=2**40, allow_nan=False), data=st.data())
def test_generated_codes_match_their_step(at: float, data: st.DataObject) -> None:
    import pyotp

    secret = data.draw(st.sampled_from([RFC_SECRET, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"]))
    step = int(at // 30)
    code = pyotp.TOTP(secret).generate_otp(step)
    assert match_step(secret, code, now=at, last_step=step - 1, window=0) == step


def test_new_secret_is_160_bits_of_base32() -> None:
    secrets_ = {new_secret() for _ in range(100)}
    assert len(secrets_) == 100
    for s in secrets_:
        assert re.fullmatch(r"[A-Z2-7]{32}", s)
        assert len(base64.b32decode(s)) == 20


def test_provisioning_uri() -> None:
    uri = provisioning_uri(
        "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", account="alice@example.com", issuer="ACME Gate"
    )
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert parts.path == "/ACME%20Gate:alice%40example.com"
    query = parse_qs(parts.query)
    assert query["secret"] == ["JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"]
    assert query["issuer"] == ["ACME Gate"]


def test_qr_svg_is_accessible_inline_svg() -> None:
    uri = provisioning_uri(new_secret(), account="alice", issuer="Gateway")
    svg = qr_svg(uri)
    assert svg.startswith("<svg ")
    assert "<?xml" not in svg
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    assert root.get("role") == "img"
    title = root.find(f"{SVG_NS}title")
    assert title is not None
    assert "authenticator" in (title.text or "")
    path = root.find(f"{SVG_NS}path")
    assert path is not None
    assert len(path.get("d", "")) > 500  # a real QR code, not an empty frame
    assert int(root.get("width", "0")) >= 100
    # The picture depends on the data.
    assert qr_svg(uri.replace("alice", "bob")) != svg


# -- the service -------------------------------------------------------------------------------------


@dataclass
class World:
    db: Database
    clock: FakeClock
    keyring: Keyring
    service: TotpService
    alice: int
    bob: int

    async def row(self, credential_id: int) -> TotpCredential:
        async with self.db.session() as session:
            row = await session.get(TotpCredential, credential_id)
        assert row is not None
        return row

    async def enrolled(self, user_id: int, name: str = "Phone") -> tuple[int, str]:
        """A confirmed credential: (id, secret). Moves the clock beyond the drift window of the confirming code."""
        enrollment = await self.service.begin_enrollment(user_id, account="alice", name=name)
        assert await self.service.confirm(
            user_id, enrollment.credential_id, oathtool(enrollment.secret, self.clock.time())
        )
        self.clock.advance(90)
        return enrollment.credential_id, enrollment.secret


async def _add_user(db: Database, clock: FakeClock, username: str) -> int:
    user = User(username=username, email=None, display_name=username, password_hash=None, created_at=clock.now(), updated_at=clock.now(), password_changed_at=None)  # fmt: skip
    async with db.session() as session:
        session.add(user)
        await session.commit()
    return user.id


@pytest.fixture
async def world(database: Database) -> World:
    clock = FakeClock(1_800_000_010.0)
    keyring = Keyring({"ktest0001": bytes(range(32))}, "ktest0001")
    service = TotpService(database, keyring, MfaSettings(totp=TotpSettings(issuer="ACME")), clock)
    return World(
        database,
        clock,
        keyring,
        service,
        await _add_user(database, clock, "alice"),
        await _add_user(database, clock, "bob"),
    )


@pytest.mark.peer
async def test_enroll_and_confirm(world: World) -> None:
    enrollment = await world.service.begin_enrollment(world.alice, account="alice", name="  My\nphone\u202e ")
    assert enrollment.uri.startswith("otpauth://totp/ACME:alice?")
    assert f"secret={enrollment.secret}" in enrollment.uri
    assert enrollment.qr_svg.startswith("<svg ")
    row = await world.row(enrollment.credential_id)
    assert (row.user_id, row.name, row.confirmed, row.last_step) == (world.alice, "My phone", False, 0)
    # At rest the seed is ciphertext bound to the user.
    assert enrollment.secret not in row.secret_enc
    assert (
        world.keyring.decrypt(row.secret_enc, aad=f"totp:{world.alice}".encode())
        == enrollment.secret.encode()
    )
    # Unconfirmed: not a factor yet, not listed.
    assert not await world.service.has_confirmed(world.alice)
    assert await world.service.list(world.alice) == []

    code = oathtool(enrollment.secret, world.clock.time())
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert not await world.service.confirm(world.alice, enrollment.credential_id, wrong)
    assert not await world.service.confirm(world.bob, enrollment.credential_id, code)  # not bob's
    assert await world.service.confirm(world.alice, enrollment.credential_id, code[:3] + " " + code[3:])
    assert not await world.service.confirm(world.alice, enrollment.credential_id, code)  # only once
    assert await world.service.has_confirmed(world.alice)
    assert not await world.service.has_confirmed(world.bob)
    row = await world.row(enrollment.credential_id)
    assert row.confirmed
    assert row.last_step == int(world.clock.time() // 30)
    assert row.last_used_at == world.clock.now()
    # The code that confirmed the enrollment cannot be replayed as a second factor.
    assert not await world.service.verify(world.alice, code)


@pytest.mark.peer
async def test_stale_enrollments_are_ignored_and_cleaned(world: World) -> None:
    stale = await world.service.begin_enrollment(world.alice, account="alice", name="old")
    world.clock.advance(ENROLLMENT_TTL.total_seconds() + 1)
    assert not await world.service.confirm(
        world.alice, stale.credential_id, oathtool(stale.secret, world.clock.time())
    )
    fresh = await world.service.begin_enrollment(world.alice, account="alice", name="new")
    async with world.db.session() as session:
        ids = (
            await session.scalars(select(TotpCredential.id).where(TotpCredential.user_id == world.alice))
        ).all()
    assert list(ids) == [fresh.credential_id]
    world.clock.advance(ENROLLMENT_TTL.total_seconds() - 1)
    assert await world.service.confirm(
        world.alice, fresh.credential_id, oathtool(fresh.secret, world.clock.time())
    )


@pytest.mark.peer
async def test_verify_accepts_a_code_once_with_one_step_of_drift(world: World) -> None:
    _cid, secret = await world.enrolled(world.alice)
    now = world.clock.time()
    early = oathtool(secret, now - 30)
    current = oathtool(secret, now)
    late = oathtool(secret, now + 30)
    assert not await world.service.verify(world.alice, oathtool(secret, now - 60))
    assert not await world.service.verify(world.alice, oathtool(secret, now + 60))
    assert not await world.service.verify(world.bob, current)  # another user's app
    assert await world.service.verify(world.alice, early)
    assert not await world.service.verify(world.alice, early)  # replay refused
    assert await world.service.verify(world.alice, late)
    # A newer step was used: the current (older) step's code is refused now too.
    assert current != late
    assert not await world.service.verify(world.alice, current)
    world.clock.advance(60)
    assert await world.service.verify(world.alice, oathtool(secret, world.clock.time()))


@pytest.mark.peer
async def test_any_confirmed_credential_works(world: World) -> None:
    _first, first_secret = await world.enrolled(world.alice, "Phone")
    second, second_secret = await world.enrolled(world.alice, "Tablet")
    assert await world.service.verify(world.alice, oathtool(second_secret, world.clock.time()))
    world.clock.advance(30)
    assert await world.service.verify(world.alice, oathtool(first_secret, world.clock.time()))
    assert (await world.row(second)).last_used_at is not None


@pytest.mark.peer
async def test_concurrent_verify_of_one_code_succeeds_once(world: World) -> None:
    racers = 6
    barrier = asyncio.Barrier(racers)

    class Racing(TotpService):
        async def _advance(
            self, credential_id: int, step: int, *, confirming: bool = False, sealed: str | None = None
        ) -> bool:
            # Every request has matched the code before any of them records it: the worst case.
            await barrier.wait()
            return await super()._advance(credential_id, step, confirming=confirming, sealed=sealed)

    _cid, secret = await world.enrolled(world.alice)
    code = oathtool(secret, world.clock.time())
    racing = Racing(world.db, world.keyring, MfaSettings(), world.clock)
    results = await asyncio.gather(*(racing.verify(world.alice, code) for _ in range(racers)))
    assert results.count(True) == 1
    assert not await world.service.verify(world.alice, code)


@pytest.mark.peer
async def test_a_seed_copied_to_another_user_does_not_decrypt(world: World) -> None:
    cid, secret = await world.enrolled(world.alice)
    stolen = (await world.row(cid)).secret_enc
    mine, _ = await world.enrolled(world.bob)
    async with world.db.session() as session:
        await session.execute(
            update(TotpCredential).where(TotpCredential.id == mine).values(secret_enc=stolen)
        )
        await session.commit()
    with pytest.raises(KeyringError):
        world.keyring.decrypt(stolen, aad=f"totp:{world.bob}".encode())
    # Alice's codes do not work for bob through the copied seed.
    assert not await world.service.verify(world.bob, oathtool(secret, world.clock.time()))


@pytest.mark.peer
async def test_list_rename_remove(world: World) -> None:
    first, _ = await world.enrolled(world.alice, "Phone")
    second, _ = await world.enrolled(world.alice, "Tablet")
    pending = await world.service.begin_enrollment(world.alice, account="alice", name="pending")
    devices = await world.service.list(world.alice)
    assert [(d.id, d.name) for d in devices] == [(first, "Phone"), (second, "Tablet")]
    assert not hasattr(devices[0], "secret_enc")
    assert await world.service.rename(world.alice, first, " Work\tphone ")
    assert not await world.service.rename(world.bob, first, "Mine now")
    assert (await world.row(first)).name == "Work phone"
    assert await world.service.rename(world.alice, first, "\u200b\n")  # nothing left: the default
    assert (await world.row(first)).name == "Authenticator app"
    assert not await world.service.remove(world.bob, first)
    assert await world.service.remove(world.alice, first)
    assert not await world.service.remove(world.alice, first)
    assert await world.service.remove(world.alice, pending.credential_id)
    assert [d.id for d in await world.service.list(world.alice)] == [second]
    assert await world.service.remove(world.alice, second)
    assert not await world.service.has_confirmed(world.alice)


async def test_codes_are_refused_without_a_credential(world: World) -> None:
    assert not await world.service.verify(world.alice, "123456")
    assert not await world.service.verify(world.alice, "not a code")
    assert not await world.service.confirm(world.alice, 999, "123456")
