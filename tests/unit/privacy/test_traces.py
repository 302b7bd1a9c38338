"""The short-lived keys that name a person go with the person (SQLite and PostgreSQL): an attack run
found the sign-in position and the failure counters after an erasure, and the position after an
objection to geolocation and a restriction; a new account of the erased name then drew an
impossible-travel incident from the erased person's address."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.identity.accounts import AccountService
from gateway.identity.models import User
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.identity.sessions import SessionStore
from gateway.privacy.consent import Consents
from gateway.privacy.register import Channel
from gateway.privacy.service import Privacy
from gateway.response.personal_data import CasePersonalData
from gateway.settings.schema import (
    PasswordSettings,
    PrivacySettings,
    Purpose,
    RegulationSettings,
    SessionSettings,
)
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState
from gateway.threat.detector import location_key, person_keys

FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
SETTINGS = PrivacySettings()
POSITION = b'{"lat": 52.52, "lon": 13.4, "t": 1, "ip": "198.51.100.10"}'


@dataclass
class World:
    fast: MemoryFastState
    accounts: AccountService
    privacy: Privacy

    async def person(self, name: str) -> User:
        user = await self.accounts.create(
            username=name, password="correct horse battery staple", email=f"{name}@example.com", actor="cli:t"
        )
        for key in (*person_keys(name), f"reg:{name}", f"reg:{name}@example.com"):
            await self.fast.set(key, POSITION if key == location_key(name) else b"3", ttl=86400)
        return user

    async def kept(self, name: str) -> set[str]:
        keys = (*person_keys(name), f"reg:{name}", f"reg:{name}@example.com")
        return {key for key in keys if await self.fast.get(key) is not None}


@pytest.fixture
async def world(database: Database, tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    fast = MemoryFastState(clock=clock)
    keyring = Keyring.create(tmp_path / "keyring.json")
    audit = AuditLog(database, clock=clock, keyring=keyring)
    sessions = SessionStore(fast, SessionSettings(), clock)
    regulator = Regulator(fast, lambda: RegulationSettings(), audit, clock)
    accounts = AccountService(
        database, PasswordHasher(FAST_ARGON), regulator, audit, clock, sessions=sessions
    )
    privacy = Privacy(
        database,
        keyring=keyring,
        accounts=accounts,
        sessions=sessions,
        audit=audit,
        consents=Consents(database, audit, sessions, purposes=lambda: SETTINGS.purposes, clock=clock),
        incident_records=CasePersonalData(database),
        clock=clock,
        fast=fast,
    )
    yield World(fast, accounts, privacy)
    await fast.close()


ARGS = {"settings": SETTINGS, "channel": Channel.CLI, "actor": "cli:root", "verified_by": "signed letter"}


async def test_an_erasure_takes_every_key_that_names_the_person(world: World) -> None:
    eve = await world.person("eve")
    bob = await world.person("bob")
    await world.privacy.erase(eve, **ARGS)  # type: ignore[arg-type]
    assert await world.kept("eve") == set()
    assert len(await world.kept("bob")) == 5  # the control: someone else's stay
    assert bob.username == "bob"


@pytest.mark.parametrize("how", ["object", "withdraw", "restrict", "close"])
async def test_an_objection_or_a_restriction_takes_the_sign_in_position(world: World, how: str) -> None:
    ann = await world.person("ann")
    if how == "object":
        await world.privacy.object(ann, "geolocation", method="cli:root", **ARGS)  # type: ignore[arg-type]
    elif how == "withdraw":
        # A deployment that asks for consent to geolocation instead.
        asked = Purpose(name="geolocation", title="Sign-in location checks", notice="We look it up.")
        args = {**ARGS, "settings": PrivacySettings(purposes=(asked,))}
        await world.privacy.withdraw_consent(ann, "geolocation", method="cli:root", **args)  # type: ignore[arg-type]
    elif how == "restrict":
        await world.privacy.restrict(ann, True, **ARGS)  # type: ignore[arg-type]
    else:
        await world.privacy.close(ann, **ARGS)  # type: ignore[arg-type]
    assert location_key("ann") not in await world.kept("ann")
