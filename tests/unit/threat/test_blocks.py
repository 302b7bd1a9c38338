"""The address matcher the data plane asks, the shared block list, and block-list files."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import FakeClock
from gateway.store.db import Database
from gateway.store.fast import FastState, StateUnavailable
from gateway.threat import blocks as blocks_module
from gateway.threat.blocks import (
    BLOCKS_KEY,
    BlockListFiles,
    BlockStore,
    IpBlocks,
    normalize_network,
    read_block_list,
)

INF = float("inf")


def matcher(*cidrs: str, clock: FakeClock | None = None) -> IpBlocks:
    blocks = IpBlocks(clock or FakeClock())
    blocks.set_files(normalize_network(c) for c in cidrs)
    return blocks


@pytest.mark.parametrize(
    ("cidrs", "ip", "blocked"),
    [
        ((), "192.0.2.1", False),
        (("192.0.2.1",), "192.0.2.1", True),
        (("192.0.2.1",), "192.0.2.2", False),
        (("192.0.2.0/24",), "192.0.2.200", True),
        (("192.0.2.0/24",), "192.0.3.1", False),
        (("192.0.2.128/25", "10.0.0.0/8"), "10.255.0.1", True),
        (("192.0.2.128/25",), "192.0.2.127", False),
        (("192.0.2.7/24",), "192.0.2.1", True),  # host bits in a feed line are tolerated
        (("2001:db8::/32",), "2001:db8:ffff::1", True),
        (("2001:db8::/32",), "2001:db9::1", False),
        (("2001:db8::1",), "2001:DB8:0:0::1", True),  # another spelling of the same address
        # A zone id, pasted from `ss`: stored as "::1%lo/128", it blocked nothing (an attack run).
        (("::1%lo",), "::1", True),
        (("fe80::1%eth0/64",), "fe80::abcd", True),
        (("192.0.2.1",), "::ffff:192.0.2.1", True),  # IPv4-mapped
        (("::ffff:192.0.2.0/120",), "192.0.2.9", True),
        # NAT64 (the re-attack run: the sprayer was blocked by its IPv4 address and let through by its
        # IPv6 form), well-known and local-use prefixes, and a feed's IPv4 entry.
        (("198.51.100.66",), "64:ff9b::c633:6442", True),
        (("198.51.100.0/24",), "64:ff9b:1::c633:6442", True),
        (("198.51.100.66",), "64:ff9b::c633:6443", False),
        (("fe80::1",), "fe80::1%eth0", True),  # a zone names the link, not another host
        # Teredo: a client is the IPv4 address its address carries, not its server's /64.
        (("2001:0:4136:e378:8000:63bf:3fff:fdd2",), "2001:0:4136:e378:8000:63bf:3fff:fdd1", False),
        (("2001:0:4136:e378:8000:63bf:3fff:fdd2",), "2001:0:5ef5:79fb:0:5efe:3fff:fdd2", True),
        (("2001:0:4136:e378:8000:63bf:3fff:fdd2",), "192.0.2.45", True),
        (("192.0.2.45",), "2001:0:4136:e378:8000:63bf:3fff:fdd2", True),
        # 6to4: a site is its IPv4 address, every /64 of its /48.
        (("2002:cb00:710a:5::1",), "2002:cb00:710a:7::9", True),
        (("2002:cb00:710a:5::1",), "203.0.113.10", True),
        (("2002:cb00:710a:5::1",), "2002:cb00:710b:5::1", False),
        (("203.0.113.10",), "2002:cb00:710a:7::9", True),
        # A feed's Teredo and 6to4 ranges stay IPv6 and still match (a bogon's is not 10.0.0.0/8).
        (("2001::/32",), "2001:0:4136:e378:8000:63bf:3fff:fdd2", True),
        (("2002::/16",), "2002:cb00:710a:5::1", True),
        (("2002:a00::/24",), "2002:a00:1::1", True),
        (("2002:a00::/24",), "10.0.0.1", False),
        (("fe80::/64",), "fe80::2%3", True),
        (("0.0.0.0/0",), "203.0.113.1", True),
        (("192.0.2.0/24",), "not-an-ip", False),
        (("192.0.2.0/24",), "", False),
    ],
)
def test_matcher(cidrs: tuple[str, ...], ip: str, blocked: bool) -> None:
    blocks = matcher(*cidrs)
    assert (ip in blocks) is blocked
    assert (ip in blocks) is blocked  # answered from the cache the second time


def test_temporary_blocks_expire_without_a_rebuild(clock: FakeClock) -> None:
    from gateway.threat.blocks import BlockEntry

    blocks = IpBlocks(clock)
    blocks.set_dynamic(
        [BlockEntry("192.0.2.1/32", clock.time() + 60), BlockEntry("198.51.100.0/24", clock.time() + 120)]
    )
    assert "192.0.2.1" in blocks
    assert "198.51.100.3" in blocks
    clock.advance(61)
    assert "192.0.2.1" not in blocks
    assert "198.51.100.3" in blocks
    clock.advance(60)
    assert "198.51.100.3" not in blocks


def test_block_list_file_reload(tmp_path: Path) -> None:
    feed = tmp_path / "feed.txt"
    feed.write_text("# threat intel\n192.0.2.0/24  # scanners\n\nnot-an-address\n2001:db8::/48\n")
    assert [str(n) for n in read_block_list(str(feed))] == ["192.0.2.0/24", "2001:db8::/48"]
    blocks = IpBlocks(FakeClock())
    files = BlockListFiles(blocks, lambda: [str(feed)])
    assert files.poll()
    assert "192.0.2.9" in blocks
    assert not files.poll()  # unchanged: not re-read

    feed.write_text("198.51.100.0/24\n")
    os.utime(feed, (1, 1))  # a new mtime even within the file system's timestamp granularity
    assert files.poll()
    assert "192.0.2.9" not in blocks
    assert "198.51.100.1" in blocks

    feed.unlink()  # a feed being replaced keeps its last good contents
    assert not files.poll()
    assert "198.51.100.1" in blocks


async def test_block_store_broadcast_reaches_a_peer(
    fast_state: FastState, fast_state_peer: FastState, clock: FakeClock
) -> None:
    here, there = BlockStore(fast_state, clock), BlockStore(fast_state_peer, clock)
    peer_blocks = IpBlocks(clock)
    refreshed = asyncio.Event()
    original = there.refresh

    async def noting(blocks: IpBlocks) -> None:
        await original(blocks)
        refreshed.set()

    there.refresh = noting  # type: ignore[method-assign]
    listener = asyncio.ensure_future(there.run_listener(peer_blocks, refresh_every=3600))
    try:
        async with asyncio.timeout(10):
            await refreshed.wait()  # subscribed and loaded
        refreshed.clear()
        await here.add("192.0.2.1", until=clock.time() + 60, incident="inc-1")
        async with asyncio.timeout(10):
            while "192.0.2.1" not in peer_blocks:
                await refreshed.wait()
                refreshed.clear()
        assert [(e.cidr, e.incident) for e in await there.entries()] == [("192.0.2.1/32", "inc-1")]
        assert await here.remove("192.0.2.1/32") == 1
        async with asyncio.timeout(10):
            while "192.0.2.1" in peer_blocks:
                await refreshed.wait()
                refreshed.clear()
        assert await here.remove("192.0.2.1") == 0
    finally:
        listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listener


async def test_a_block_is_extended_never_shortened(fast_state: FastState, clock: FakeClock) -> None:
    store = BlockStore(fast_state, clock)
    await store.add("192.0.2.1", until=clock.time() + 600)
    await store.add("192.0.2.1", until=clock.time() + 60)
    [entry] = await store.entries()
    assert entry.until == clock.time() + 600
    assert entry.until < INF


async def test_a_full_list_pushes_out_a_rules_soonest_ending_blocks_never_a_persons(
    fast_state: FastState, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attack run: automatic blocks of one IPv6 /48's /64s, one after another, pushed an admin's
    30-day block of the attacker's own address out of the full list (the oldest went first)."""
    monkeypatch.setattr(blocks_module, "MAX_BLOCKS", 20)
    store = BlockStore(fast_state, clock)
    now = clock.time()
    await store.add("203.0.113.66", until=now + 30 * 86400, reason="manual", actor="cli:root")
    for n in range(40):
        await store.add(
            f"2001:db8:42:{n:x}::/64", until=now + 600 + n, reason="threat", actor="system:threat"
        )
    kept = await store.entries()
    assert len(kept) == 20
    assert "203.0.113.66/32" in {e.cidr for e in kept}
    # The automatic ones that end last stay, the newest among them.
    assert min(e.until for e in kept if e.actor == "system:threat") == now + 600 + 21
    assert "2001:db8:42:27::/64" in {e.cidr for e in kept}


def test_a_configured_translator_prefix_is_read_as_its_ipv4_clients() -> None:
    from gateway.threat.addresses import use_nat64_prefixes

    use_nat64_prefixes(("2001:db8:46::/96",))
    try:
        blocks = matcher("203.0.113.10")
        assert "2001:db8:46::cb00:710a" in blocks
        assert "2001:db8:46::cb00:710b" not in blocks  # another IPv4 client of the same translator
    finally:
        use_nat64_prefixes(())


def test_a_block_list_entry_of_a_nat64_network_blocks_its_ipv4_clients(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An attack run: block-list entries of NAT64 networks (the well-known prefix's, a configured
    translator's) were loaded and matched nobody, the matcher reading a NAT64 client as its IPv4
    address. They are their IPv4 networks now; a translator's whole prefix, which would be every IPv4
    client, is skipped with a line saying why."""
    from gateway.threat.addresses import use_nat64_prefixes

    feed = tmp_path / "feed.txt"
    feed.write_text("64:ff9b::cb00:7100/120\n2001:db8:46::c633:6400/120\n64:ff9b::/96\n2001:db8:46::/96\n")
    use_nat64_prefixes(("2001:db8:46::/96",))
    try:
        assert [str(n) for n in read_block_list(str(feed))] == ["203.0.113.0/24", "198.51.100.0/24"]
        blocks = IpBlocks(FakeClock())
        BlockListFiles(blocks, lambda: [str(feed)]).poll()
        assert "64:ff9b::cb00:7109" in blocks
        assert "2001:db8:46::c633:6409" in blocks
        assert "198.51.100.9" in blocks
        assert "64:ff9b::cb00:7209" not in blocks
        assert "192.0.2.1" not in blocks  # the whole prefixes were not read as 0.0.0.0/0
    finally:
        use_nat64_prefixes(())
    assert "feed.txt:3: skipped: 64:ff9b::/96 covers a whole NAT64 translator prefix" in caplog.text


async def test_a_nat64_network_blocked_in_its_ipv6_form_stays_liftable(
    fast_state: FastState, clock: FakeClock
) -> None:
    # Stored before such blocks were kept as IPv4: the text that made it lifts it.
    store = BlockStore(fast_state, clock)
    legacy = b'[{"cidr":"64:ff9b::cb00:7100/120","until":%d,"incident":"inc-1","reason":"x"}]'
    await fast_state.set(BLOCKS_KEY, legacy % int(clock.time() + 600))
    blocks = IpBlocks(clock)
    await store.refresh(blocks)
    assert "64:ff9b::cb00:7109" in blocks  # and it matches now
    assert await store.remove("64:ff9b::cb00:7100/120") == 1
    assert await store.entries() == []


class _CutOff:
    """A fast state that does not answer (a replica cut off from Redis, or started while it was)."""

    async def get(self, key: str) -> bytes | None:
        raise StateUnavailable("cut off")

    def subscribe(self, channel: str) -> Any:
        raise StateUnavailable("cut off")


async def test_a_replica_cut_off_from_the_fast_state_reads_the_blocks_from_the_database(
    fast_state: FastState, clock: FakeClock, audit_db: Database
) -> None:
    """An attack run: a replica that could not reach Redis (started during the outage, or cut off
    later) kept serving addresses blocked since on public paths and bearer routes, as the list lived
    in Redis alone. It is kept in the database too, and the cut-off replica's listener follows it."""
    store = BlockStore(fast_state, clock, db=audit_db)
    cut_off = BlockStore(_CutOff(), clock, db=audit_db)  # type: ignore[arg-type]
    blocks = IpBlocks(clock)
    listener = asyncio.create_task(cut_off.run_listener(blocks, refresh_every=0.01))
    try:
        await store.add("192.0.2.7", until=clock.time() + 600, incident="inc-9", actor="cli:op")
        async with asyncio.timeout(5):
            while "192.0.2.7" not in blocks:
                await asyncio.sleep(0.01)
        # A lift reaches it the same way (an empty list is kept, not a missing one).
        assert await store.remove("192.0.2.7") == 1
        async with asyncio.timeout(5):
            while "192.0.2.7" in blocks:
                await asyncio.sleep(0.01)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    with pytest.raises(StateUnavailable):  # neither answers: the caller keeps what it knew
        await BlockStore(_CutOff(), clock).entries()  # type: ignore[arg-type]


async def test_a_fast_state_that_lost_the_blocks_gets_them_back_from_the_database(
    fast_state: FastState, clock: FakeClock, audit_db: Database
) -> None:
    """Redis restarted without persistence: the blocks were silently gone on every replica."""
    store = BlockStore(fast_state, clock, db=audit_db)
    await store.add("198.51.100.0/24", until=clock.time() + 600, incident="inc-3")
    await fast_state.delete(BLOCKS_KEY)
    assert [e.cidr for e in await BlockStore(fast_state, clock, db=audit_db).entries()] == ["198.51.100.0/24"]
    assert await fast_state.get(BLOCKS_KEY) is not None  # put back for every other reader
    # Lifted while the fast state answered: the empty list is kept, and nothing comes back.
    assert await store.remove("198.51.100.0/24") == 1
    assert await fast_state.get(BLOCKS_KEY) == b"[]"
    assert await BlockStore(fast_state, clock, db=audit_db).entries() == []


async def test_the_database_copy_is_the_fast_states_list_after_changes_at_once(
    fast_state: FastState, clock: FakeClock, audit_db: Database
) -> None:
    """A re-attack run: a block and an unblock made at the same moment on two replicas finished their
    database writes in the other order than their compare-and-sets, and the copy kept the older list
    (a lifted block came back for a replica cut off from Redis). Whoever writes the copy last has read
    the fast state after writing."""
    here, there = BlockStore(fast_state, clock, db=audit_db), BlockStore(fast_state, clock, db=audit_db)
    cut_off = BlockStore(_CutOff(), clock, db=audit_db)  # type: ignore[arg-type]
    for round_ in range(20):
        changes = [here.add("192.0.2.9", until=clock.time() + 600), there.remove("192.0.2.9")]
        await asyncio.gather(*(changes if round_ % 2 else reversed(changes)))
        in_fast = [e.cidr for e in await here.entries()]
        assert [e.cidr for e in await cut_off.entries()] == in_fast, round_
