"""Impossible travel honours the "geolocation" purpose: a person who objected is never looked up (and
a position kept from before goes), everyone else still is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec.structs
import pytest

from gateway.privacy.consent import Consents
from gateway.privacy.purposes import GEOLOCATION
from gateway.settings.schema import DEFAULT_PURPOSES
from gateway.threat import ThreatDetector
from tests.unit.threat.conftest import World
from tests.unit.threat.test_travel import BERLIN, SYDNEY, geoip

__all__ = ["geoip"]  # the fixture, used here by name


def hook(world: World, geoip: str, may_locate: Callable[[str], Awaitable[bool]]) -> None:
    """Replace the world's detector by one that asks ``may_locate`` before a lookup."""
    world.settings[0] = msgspec.structs.replace(world.settings[0], geoip_database=geoip)
    world.audit.listeners.remove(world.detector.on_audit)
    world.detector = ThreatDetector(
        settings=lambda: world.settings[0],
        state=world.state,
        responder=world.responder,
        blocks=world.blocks,
        clock=world.clock,
        may_locate=may_locate,
    )
    world.audit.listeners.append(world.detector.on_audit)


@pytest.fixture
def consents(world: World, geoip: str) -> Consents:
    """The person's choices, asked by the world's detector before every lookup."""
    consents = Consents(
        world.db, world.audit, world.sessions, purposes=lambda: DEFAULT_PURPOSES, clock=world.clock
    )
    hook(world, geoip, lambda name: consents.allows(name, GEOLOCATION))
    return consents


async def signin(world: World, name: str, ip: str) -> None:
    await world.audit.record("signin.password", actor=f"user:{name}", subject=name, ip=ip)
    await world.pump()


async def object_to_geolocation(world: World, consents: Consents, name: str) -> None:
    user = await world.accounts.find(name)
    assert user is not None
    await consents.object(user.id, consents.purpose(GEOLOCATION), method="api", actor=f"user:{name}")


async def test_a_person_who_objected_is_not_located_and_others_are(world: World, consents: Consents) -> None:
    await world.user("alice")
    await world.user("bob")
    await object_to_geolocation(world, consents, "alice")
    for name in ("alice", "bob"):
        await signin(world, name, BERLIN)
    world.advance(3600)
    for name in ("alice", "bob"):
        await signin(world, name, SYDNEY)
    incidents = await world.responder.incidents.latest()
    assert [(i.rule, i.subject) for i in incidents] == [("impossible_travel", "bob")]
    assert await world.state.get("threat:geo:alice") is None
    assert await world.state.get("threat:geo:bob") is not None


async def test_an_objection_drops_the_position_kept_from_before(world: World, consents: Consents) -> None:
    await world.user("alice")
    await signin(world, "alice", BERLIN)
    assert await world.state.get("threat:geo:alice") is not None
    await object_to_geolocation(world, consents, "alice")
    world.advance(3600)
    await signin(world, "alice", SYDNEY)
    assert await world.state.get("threat:geo:alice") is None
    assert await world.responder.incidents.latest() == []


async def test_not_knowing_the_choice_means_not_locating(world: World, geoip: str) -> None:
    async def broken(name: str) -> bool:
        raise RuntimeError("database down")

    hook(world, geoip, broken)
    await world.user("alice")
    await signin(world, "alice", BERLIN)
    assert await world.state.get("threat:geo:alice") is None
