"""The short-lived keys that name a person go with the person (SQLite and PostgreSQL): an attack run
found the sign-in position and the failure counters after an erasure, and the position after an
objection to geolocation and a restriction; a new account of the erased name then drew an
impossible-travel incident from the erased person's address."""

from __future__ import annotations

import pytest

from gateway.identity.models import User
from gateway.privacy.register import Channel
from gateway.settings.schema import PrivacySettings, Purpose
from gateway.threat.detector import location_key, person_keys
from tests.unit.privacy.test_rights import SETTINGS, World, world

__all__ = ["world"]  # the fixture, shared with the rights' tests

POSITION = b'{"lat": 52.52, "lon": 13.4, "t": 1, "ip": "198.51.100.10"}'


def _keys(name: str) -> tuple[str, ...]:
    return (*person_keys(name), f"reg:{name}", f"reg:{name}@example.com")


async def _person(world: World, name: str) -> User:
    """An account, and the short-lived keys its sign-ins would have left."""
    user = await world.accounts.create(
        username=name, password="amber quarry lantern voyage", email=f"{name}@example.com", actor="cli:t"
    )
    for key in _keys(name):
        await world.fast.set(key, POSITION if key == location_key(name) else b"3", ttl=86400)
    return user


async def _kept(world: World, name: str) -> set[str]:
    return {key for key in _keys(name) if await world.fast.get(key) is not None}


ARGS = {"settings": SETTINGS, "channel": Channel.CLI, "actor": "cli:root", "verified_by": "signed letter"}


async def test_an_erasure_takes_every_key_that_names_the_person(world: World) -> None:
    eve = await _person(world, "eve")
    await _person(world, "bob")
    await world.privacy.erase(eve, **ARGS)  # type: ignore[arg-type]
    assert await _kept(world, "eve") == set()
    assert len(await _kept(world, "bob")) == 5  # the control: someone else's stay


@pytest.mark.parametrize("how", ["object", "withdraw", "restrict", "close"])
async def test_an_objection_or_a_restriction_takes_the_sign_in_position(world: World, how: str) -> None:
    ann = await _person(world, "ann")
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
    assert location_key("ann") not in await _kept(world, "ann")
