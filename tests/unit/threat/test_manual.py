"""Blocks by hand (CLI and admin console): which networks and durations are accepted, one rule for both."""

from __future__ import annotations

import msgspec
import pytest

from gateway.clock import FakeClock
from gateway.store.fast import FastState
from gateway.threat.blocks import BLOCKS_KEY, BlockEntry, BlockStore
from gateway.threat.incidents import (
    Action,
    BadIncidentId,
    Incident,
    IncidentNotFound,
    IncidentStore,
    parse_incident_id,
    severity,
)
from gateway.threat.manual import (
    MAX_BLOCK,
    BlockRefused,
    block_note,
    block_seconds,
    covers,
    manual_network,
    parse_network,
)
from tests.unit.threat.conftest import World


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        (" 203.0.113.7 ", "203.0.113.7/32"),
        ("203.0.113.9/24", "203.0.113.0/24"),  # host bits tolerated, as in block-list files
        ("10.1.0.0/16", "10.1.0.0/16"),  # the widest IPv4 network a hand may block
        ("2001:db8::/32", "2001:db8::/32"),  # the widest IPv6 one
        ("::ffff:203.0.113.7", "203.0.113.7/32"),  # IPv4-mapped becomes IPv4
        ("::1%lo/128", "::1/128"),  # a zone id names the host's interface, not the address
        ("fe80::1%eth0/64", "fe80::/64"),
        # A bare IPv6 address is its subscriber's /64, as the rules block it; a prefix typed is kept.
        ("2001:db8:9::7", "2001:db8:9::/64"),
        (" 2001:DB8:9:0::7 ", "2001:db8:9::/64"),
        ("::1%lo", "::/64"),
        ("2001:db8:9::7/128", "2001:db8:9::7/128"),
        ("2001:db8:9::7/96", "2001:db8:9::/96"),
        # NAT64: its clients are matched by their IPv4 address, so the block is of IPv4.
        ("64:ff9b::cb00:7107", "203.0.113.7/32"),
        ("64:ff9b::cb00:7100/120", "203.0.113.0/24"),
        ("64:ff9b:1::cb00:7100/120", "203.0.113.0/24"),
        # Teredo and 6to4: the IPv4 address it stands for (its client's, its site's).
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45/32"),
        ("2002:cb00:710a:5::1", "203.0.113.10/32"),
        ("2002:cb00:710a::/48", "2002:cb00:710a::/48"),  # a network of them is kept, and matched, as IPv6
    ],
)
def test_narrow_networks_may_be_blocked_by_hand(text: str, expected: str) -> None:
    assert str(manual_network(text)) == expected


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("0.0.0.0/0", "too broad"),
        ("10.0.0.0/8", "at most /16 for IPv4"),
        ("10.0.0.0/15", "too broad"),
        ("::/0", "at most /32 for IPv6"),
        ("2001:db8::/31", "too broad"),
        # A translator's whole prefix would be every IPv4 client; a wide NAT64 network a wide IPv4 one.
        ("64:ff9b::/96", "covers a whole NAT64 translator prefix"),
        ("64:ff9b:1::/64", "covers a whole NAT64 translator prefix"),
        ("64:ff9b::cb00:0/104", "at most /16 for IPv4"),
        # Wider than a translator's prefix: its clients are matched as IPv4, so it would pass them all.
        ("64:ff9b::/95", "contains a whole NAT64 translator prefix"),
        ("64:ff9b::/32", "contains a whole NAT64 translator prefix"),
        # A Teredo server's /64 (or all of Teredo) is every client behind it.
        ("2001:0:4136:e378::/64", "spans the clients of a Teredo server"),
        ("2001::/32", "spans the clients of a Teredo server"),
        ("2001:0:4136:e378:8000:63bf:3fff:fd00/120", "spans the clients of a Teredo server"),
        ("not-an-ip", "is not an IP address or CIDR network"),
        ("10.0.0.0/33", "is not an IP address or CIDR network"),
        ("", "is not an IP address or CIDR network"),
    ],
)
def test_broad_or_unreadable_networks_are_refused(text: str, phrase: str) -> None:
    with pytest.raises(BlockRefused, match=phrase) as caught:
        manual_network(text)
    assert caught.value.status == 400
    assert caught.value.reason == "block-refused"


def test_an_unblock_takes_any_network_so_old_broad_blocks_stay_liftable() -> None:
    assert str(parse_network("10.0.0.0/8")) == "10.0.0.0/8"
    with pytest.raises(BlockRefused):
        parse_network("nope")


@pytest.mark.parametrize(
    ("text", "note"),
    [
        ("2001:db8:9::7", "the subscriber's /64; type /128 for this address only"),
        ("2001:db8:9::7/128", ""),
        ("2001:db8:9::/64", ""),
        ("203.0.113.7", ""),
        ("::ffff:203.0.113.7", ""),
        ("64:ff9b::cb00:7107", ""),
        (
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "a Teredo address is its client's IPv4 address 192.0.2.45, not its server's /64",
        ),
        (
            "2002:cb00:710a:5::1",
            "a 6to4 address is its site's IPv4 address 203.0.113.10, all of 2002:cb00:710a::/48",
        ),
        ("2002:cb00:710a::/48", ""),
        ("nope", ""),
    ],
)
def test_the_note_says_when_a_bare_ipv6_address_was_blocked_as_its_64(text: str, note: str) -> None:
    assert block_note(text) == note


async def test_a_manual_block_of_an_ipv6_address_covers_its_subscribers_64(world: World) -> None:
    """An attack run: `gateway incident block-ip 2001:db8:9::7` (and POST /api/blocks) blocked the one
    address, and the attacker went on from 2001:db8:9::8 of the same /64, which the rules block whole.
    The text that blocked it unblocks it."""
    incident = await world.responder.block_ip("2001:db8:9::7", seconds=3600, actor="user:boss", reason="x")
    assert [(a.kind, a.target) for a in incident.actions] == [("block_ip", "2001:db8:9::/64")]
    await world.responder.blocks.refresh(world.blocks)
    assert "2001:db8:9::7" in world.blocks
    assert "2001:db8:9::8" in world.blocks  # the attacker's next address
    assert "2001:db8:9:1::7" not in world.blocks  # the next subscriber
    assert await world.responder.unblock_ip("2001:db8:9::7", actor="user:boss") == 1
    assert await world.responder.blocks.entries() == []
    # Typed with its prefix, the one address alone.
    await world.responder.block_ip("2001:db8:9::7/128", seconds=3600, actor="user:boss")
    await world.responder.blocks.refresh(world.blocks)
    assert "2001:db8:9::7" in world.blocks
    assert "2001:db8:9::8" not in world.blocks


async def test_a_manual_block_of_a_nat64_network_blocks_its_ipv4_clients(world: World) -> None:
    """An attack run: `gateway incident block-ip 64:ff9b::/96` was accepted, listed and matched nobody
    (the matcher reads a NAT64 client as its IPv4 address). A NAT64 network is now its IPv4 network,
    and a translator's whole prefix, all of IPv4, is refused with nothing blocked."""
    with pytest.raises(BlockRefused, match="NAT64"):
        await world.responder.block_ip("64:ff9b::/96", seconds=3600, actor="user:boss")
    assert await world.responder.blocks.entries() == []
    incident = await world.responder.block_ip("64:ff9b::cb00:7100/120", seconds=3600, actor="user:boss")
    assert [a.target for a in incident.actions] == ["203.0.113.0/24"]
    await world.responder.blocks.refresh(world.blocks)
    assert "64:ff9b::cb00:7109" in world.blocks
    assert "64:ff9b::203.0.113.200" in world.blocks
    assert "203.0.113.9" in world.blocks  # the same client, seen without the translator
    assert "64:ff9b::cb00:7209" not in world.blocks
    assert await world.responder.unblock_ip("64:ff9b::cb00:7100/120", actor="user:boss") == 1


async def test_a_manual_block_of_a_teredo_address_blocks_its_client_not_its_servers_others(
    world: World,
) -> None:
    """A Teredo address's /64 is its server's: a block of one client by it shut out everyone behind
    that server. The client is the IPv4 address the address carries."""
    incident = await world.responder.block_ip(
        "2001:0:4136:e378:8000:63bf:3fff:fdd2", seconds=3600, actor="user:boss"
    )
    assert [a.target for a in incident.actions] == ["192.0.2.45/32"]
    await world.responder.blocks.refresh(world.blocks)
    assert "2001:0:4136:e378:8000:63bf:3fff:fdd2" in world.blocks
    assert "192.0.2.45" in world.blocks
    assert "2001:0:4136:e378:8000:63bf:3fff:fdd1" not in world.blocks  # another client, same server
    assert await world.responder.unblock_ip("2001:0:4136:e378:8000:63bf:3fff:fdd2", actor="user:boss") == 1


async def test_a_manual_block_of_a_6to4_address_blocks_its_whole_site(world: World) -> None:
    """A 6to4 site's /48 is one IPv4 address: a block of one /64 was left by the site's next one."""
    incident = await world.responder.block_ip("2002:cb00:710a:5::1", seconds=3600, actor="user:boss")
    assert [a.target for a in incident.actions] == ["203.0.113.10/32"]
    await world.responder.blocks.refresh(world.blocks)
    assert "2002:cb00:710a:5::1" in world.blocks
    assert "2002:cb00:710a:7::9" in world.blocks  # another /64 of the same site
    assert "2002:cb00:710b:5::1" not in world.blocks  # the next site


async def test_a_translators_whole_prefix_blocked_before_it_was_refused_can_still_be_lifted(
    world: World,
) -> None:
    # Blocked (and matching nobody) before the fix: lifting its incident must not fail on its target.
    until = world.clock.time() + 3600
    entry = BlockEntry("64:ff9b::/96", until, "inc-00000001", "x", "user:boss")
    await world.state.set(BLOCKS_KEY, msgspec.json.encode([entry.to_json()]))
    action = Action("block_ip", "64:ff9b::/96", until=until)
    incident = Incident(id="inc-00000001", rule="manual", at=world.clock.time(), actions=(action,))
    await world.responder.incidents.save(incident, new=True)
    lifted = await world.responder.lift("inc-00000001", actor="user:boss")
    assert lifted is not None
    assert [a.lifted for a in lifted.actions] == [True]
    assert await world.responder.blocks.entries() == []


@pytest.mark.parametrize(
    ("text", "seconds"), [("1m", 60.0), ("30m", 1800.0), ("1h", 3600.0), ("7d", 604800.0), ("90d", MAX_BLOCK)]
)
def test_durations(text: str, seconds: float) -> None:
    assert block_seconds(text) == seconds


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("soon", "expected a duration"),
        ("0s", "at least 1m"),
        ("0.000001s", "at least 1m"),
        ("59s", "at least 1m"),
        ("91d", "at most 90d"),
        ("1h 30", "expected"),
    ],
)
def test_bad_durations_are_refused(text: str, phrase: str) -> None:
    with pytest.raises(BlockRefused, match=phrase):
        block_seconds(text)


@pytest.mark.parametrize(
    ("network", "address", "inside"),
    [
        ("203.0.113.0/24", "203.0.113.7", True),
        ("203.0.113.0/24", "::ffff:203.0.113.7", True),
        # A NAT64 client is the IPv4 address behind it, as the block list reads it (a re-attack run's
        # admin blocked themselves past the own-address check).
        ("203.0.113.0/24", "64:ff9b::cb00:7105", True),
        ("64:ff9b::/120", "64:ff9b::cb00:7105", False),
        ("203.0.113.0/24", "203.0.114.7", False),
        ("2001:db8::/32", "2001:DB8::1", True),
        ("203.0.113.0/24", "2001:db8::1", False),
        # Teredo and 6to4 addresses as their IPv4 clients, as the block list reads them.
        ("192.0.2.45", "2001:0:4136:e378:8000:63bf:3fff:fdd2", True),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:4136:e378:8000:63bf:3fff:fdd1", False),
        ("2002:cb00:710a:5::1", "2002:cb00:710a:7::9", True),
        ("203.0.113.0/24", "2002:cb00:710a:7::9", True),
        ("2002:cb00:710a::/48", "2002:cb00:710a:7::9", True),
        ("2002:cb00:710b::/48", "2002:cb00:710a:7::9", False),
        ("203.0.113.0/24", "", False),
        ("203.0.113.0/24", "testclient", False),
    ],
)
def test_covers(network: str, address: str, inside: bool) -> None:
    assert covers(parse_network(network), address) is inside


@pytest.mark.parametrize("text", ["inc-3f9a1c2b", "inc-00000000"])
def test_incident_ids(text: str) -> None:
    assert parse_incident_id(text) == text


@pytest.mark.parametrize(
    "text", ["", "inc-3F9A1C2B", "inc-3f9a1c2", "inc-3f9a1c2b0", "../inc-3f9a1c2b", "x" * 500]
)
def test_malformed_incident_ids_are_refused_before_any_look_up(text: str) -> None:
    with pytest.raises(BadIncidentId) as caught:
        parse_incident_id(text)
    assert caught.value.status == 400


async def test_require_names_the_missing_incident(fast_state: FastState) -> None:
    store = IncidentStore(fast_state)
    with pytest.raises(IncidentNotFound, match="inc-00000000") as caught:
        await store.require("inc-00000000")
    assert caught.value.status == 404
    incident = Incident(id="inc-00000001", rule="manual", at=1.0, actor="user:boss")
    await store.save(incident, new=True)
    assert await store.require("inc-00000001") == incident


@pytest.mark.parametrize(
    ("rule", "level"),
    [("session_hijack", "high"), ("mfa_failures", "high"), ("brute_force", "medium"), ("manual", "low")],
)
def test_severity_is_the_rules(rule: str, level: str) -> None:
    assert severity(Incident(id="inc-00000001", rule=rule, at=0.0)) == level


async def test_a_block_remembers_who_made_it(fast_state: FastState, clock: FakeClock) -> None:
    store = BlockStore(fast_state, clock)
    await store.add("203.0.113.7", until=clock.time() + 60, reason="probe", actor="user:boss")
    await store.add("198.51.100.1", until=clock.time() + 30)
    entries = await store.entries()
    assert entries == [
        BlockEntry("198.51.100.1/32", clock.time() + 30),
        BlockEntry("203.0.113.7/32", clock.time() + 60, "", "probe", "user:boss"),
    ]
    # Entries written before blocks had an actor still read.
    assert BlockEntry.from_json({"cidr": "192.0.2.1/32", "until": 5}).actor == ""


@pytest.mark.parametrize("reason", ["   ", "\n\t", "x\nFAKE LINE: incident lifted by boss2", "a\x1b[2Jb"])
async def test_a_block_reason_is_one_line_of_text(world: World, reason: str) -> None:
    """A reason of spaces says nothing, and a line break in one printed a forged line in
    `gateway incident list` (an attack run): refused, and nothing is blocked."""
    with pytest.raises(BlockRefused, match="reason"):
        await world.responder.block_ip("203.0.113.7", seconds=60, actor="user:boss", reason=reason)
    assert await world.responder.blocks.entries() == []
