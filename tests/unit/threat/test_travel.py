"""Impossible travel, against a tiny MaxMind DB built for the test with mmdb-writer."""

from __future__ import annotations

from pathlib import Path

import msgspec.structs
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from gateway.threat.geo import GeoLocator, distance_km
from tests.unit.threat.conftest import World

BERLIN = "198.51.100.10"
SYDNEY = "203.0.113.20"
POTSDAM = "192.0.2.30"


@pytest.fixture
def geoip(tmp_path: Path) -> str:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    places = {
        "198.51.100.0/24": (52.52, 13.40),
        "203.0.113.0/24": (-33.87, 151.21),
        "192.0.2.0/24": (52.39, 13.06),
    }
    for network, (lat, lon) in places.items():
        writer.insert_network(IPSet([network]), {"location": {"latitude": lat, "longitude": lon}})
    path = tmp_path / "city.mmdb"
    writer.to_db_file(str(path))
    return str(path)


def test_locator_and_distance(geoip: str) -> None:
    geo = GeoLocator(geoip)
    berlin, sydney = geo.locate(BERLIN), geo.locate(SYDNEY)
    assert berlin is not None
    assert sydney is not None
    assert 16_000 < distance_km(berlin, sydney) < 16_200
    assert geo.locate("10.1.2.3") is None
    assert geo.locate("nonsense") is None
    geo.close()


async def signin(world: World, ip: str) -> None:
    await world.audit.record("signin.password", actor="user:alice", subject="alice", ip=ip)
    await world.pump()


async def test_berlin_then_sydney_an_hour_later_fires(world: World, geoip: str) -> None:
    world.settings[0] = msgspec.structs.replace(world.settings[0], geoip_database=geoip)
    await signin(world, BERLIN)
    world.advance(3600)
    await signin(world, SYDNEY)
    [incident] = await world.responder.incidents.latest()
    assert (incident.rule, incident.subject, incident.ip) == ("impossible_travel", "alice", SYDNEY)
    assert incident.evidence["previous_ip"] == BERLIN


async def test_plausible_travel_is_quiet(world: World, geoip: str) -> None:
    world.settings[0] = msgspec.structs.replace(world.settings[0], geoip_database=geoip)
    await signin(world, BERLIN)
    world.advance(600)
    await signin(world, POTSDAM)  # 25 km: below min_distance_km
    world.advance(30 * 3600)
    await signin(world, SYDNEY)  # 16,000 km in 30 h: a flight
    assert await world.responder.incidents.latest() == []


async def test_without_a_database_the_rule_is_off(world: World) -> None:
    await signin(world, BERLIN)
    await signin(world, SYDNEY)
    assert await world.responder.incidents.latest() == []
