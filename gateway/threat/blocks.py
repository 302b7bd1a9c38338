"""Blocked addresses: the in-process matcher the data plane asks, and the shared list that feeds it.

Two sources, merged into one ``IpBlocks`` per worker:

* **Temporary blocks** (a threat rule's ``block_ip`` response, or ``gateway incident block-ip``) live in
  the fast state under one key, ``threat:blocks`` (JSON list, changed with compare-and-set). Every
  change is announced on the ``threat-blocks`` channel; each replica re-reads the key when it hears
  it, and every few seconds anyway (a lost broadcast or a dropped subscription is bounded by that).
  Every change is also kept in the database (``kv_settings``, key ``threat-blocks``), as the lockdown
  switch is: a replica that cannot read the fast state reads the list there, and a fast state that
  lost the key (Redis restarted without persistence) gets it back (an attack run: a replica cut off
  from Redis served blocked addresses on public paths and bearer routes).
* **Block-list files** (threat-intel feeds: one CIDR per line, ``#`` comments), re-read when their
  modification time or size changes. Each replica reads its own copy of the files.

The data plane's check is ``client_ip in blocks``: one dict look-up when only single addresses are
blocked, a parse plus one set look-up per distinct prefix length when networks are (results cached).
Never a network call on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.clock import Clock
from gateway.errors import ErrorReason, Forbidden
from gateway.store.db import Database
from gateway.store.fast.base import FastState, StateUnavailable
from gateway.store.fast.follow import follow_channel
from gateway.store.kv import read_kv_or_none, write_kv
from gateway.threat.addresses import TranslatorRange, ipv4_behind, ipv4_network_behind, tunnelled

__all__ = [
    "BLOCKS_CHANNEL",
    "BLOCKS_KEY",
    "BlockEntry",
    "BlockFeed",
    "BlockListFiles",
    "BlockStore",
    "IpBlocked",
    "IpBlocks",
    "normalize_network",
    "read_block_list",
]

logger = logging.getLogger("gateway.threat")

BLOCKS_KEY: Final = "threat:blocks"
BLOCKS_CHANNEL: Final = "threat-blocks"
# The database's copy (kv_settings).
_DB_KEY: Final = "threat-blocks"
_CAS_ROUNDS: Final = 32
_CACHE_SIZE: Final = 4096
# Blocks kept in the shared list at most; a rule blocking more than this is itself an incident.
MAX_BLOCKS: Final = 10_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IpBlocked(Forbidden):
    """The client address is blocked (a threat response or a block list): 403 ``ip-blocked``."""

    reason: str = ErrorReason.IP_BLOCKED
    title = "Access from this address is blocked"


def normalize_network(text: str) -> Network:
    """Parse an address or CIDR (host bits allowed) into its network; IPv4-mapped IPv6 becomes IPv4,
    and so does a network of NAT64 addresses (``64:ff9b::cb00:7100/120`` is ``203.0.113.0/24``).

    An IPv6 zone id (``fe80::1%eth0``, as ``ss`` prints it) is dropped: it names the interface of the
    host that saw the address, not the address, and a client's address never carries one here, so a
    block of ``::1%lo`` was stored, reported as blocked, and matched nothing (an attack run).

    The matcher reads a NAT64 client as its IPv4 address (``IpBlocks._lookup``), so a block of a NAT64
    network kept in IPv6 form was accepted, listed, and matched nothing (an attack run); a translator's
    whole prefix names no IPv4 network (it would be all of IPv4) and is refused. A single Teredo or
    6to4 address becomes the IPv4 address it stands for; a network of them is kept as IPv6, which the
    matcher also checks them against (``threat.addresses``).

    Raises:
        TranslatorRange: a NAT64 network of /96 or wider (a ``ValueError`` saying what to block).
        ValueError: not an address or network.
    """
    address, slash, prefix = text.strip().partition("/")
    net = ipaddress.ip_network(address.partition("%")[0] + slash + prefix, strict=False)
    if not isinstance(net, ipaddress.IPv6Network):
        return net
    mapped = net.network_address.ipv4_mapped
    if mapped is not None and net.prefixlen >= 96:
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    translated = ipv4_network_behind(net)
    return net if translated is None else translated


@dataclass(frozen=True, slots=True)
class BlockEntry:
    """One temporary block. ``until`` is Unix time; ``incident`` the incident that made it; ``actor``
    who made it (``system:threat`` for a rule, the admin for a manual block; "" in older entries)."""

    cidr: str
    until: float
    incident: str = ""
    reason: str = ""
    actor: str = ""

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "cidr": self.cidr, "until": self.until, "incident": self.incident, "reason": self.reason
        }  # fmt: skip
        if self.actor:
            doc["actor"] = self.actor
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> BlockEntry:
        until = doc["until"]
        if not isinstance(until, int | float):
            raise TypeError("until")
        return cls(
            str(doc["cidr"]), float(until), str(doc.get("incident", "")), str(doc.get("reason", "")),
            str(doc.get("actor", "")),
        )  # fmt: skip


class IpBlocks:
    """The in-process set of blocked addresses and networks, rebuilt whole on every change."""

    __slots__ = ("_cache", "_dynamic", "_exact", "_files", "_nets", "_time")

    def __init__(self, clock: Clock) -> None:
        """Start empty.

        Args:
            clock: Unix time; an entry stops matching at its ``until`` even before the next rebuild.
        """
        # Bound once: the receive stage asks on every request while anything is blocked.
        self._time = clock.time
        self._dynamic: list[tuple[Network, float]] = []
        self._files: list[Network] = []
        # address text -> until; plus per IP version: prefix length -> {network int >> host bits: until}
        self._exact: dict[str, float] = {}
        self._nets: dict[int, dict[int, dict[int, float]]] = {}
        self._cache: dict[str, float] = {}

    def __contains__(self, ip: str) -> bool:
        if not self._exact and not self._nets:
            return False
        until = self._exact.get(ip)
        if until is None:
            # IPv6 text has many spellings (and IPv4-mapped forms): only those need parsing here.
            if not self._nets and ":" not in ip:
                return False
            until = self._cache.get(ip)
            if until is None:
                until = self._lookup(ip)
                if len(self._cache) >= _CACHE_SIZE:
                    self._cache.clear()
                self._cache[ip] = until
        return until > self._time()

    def _lookup(self, ip: str) -> float:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return 0.0
        if isinstance(addr, ipaddress.IPv6Address):
            # The IPv4 client behind an IPv4-mapped, NAT64, Teredo or 6to4 address: the one the rules
            # counted and blocked (threat.addresses), and a feed's IPv4 entries name (the re-attack
            # run's NAT64 sprayer was blocked by its IPv4 and let through by its IPv6 form).
            inner = ipv4_behind(addr)
            if inner is not None and tunnelled(addr):
                # Also itself: feeds name Teredo and 6to4 ranges in IPv6 form (2002::/16, bogons).
                return max(self._match(inner), self._match(addr))
            if inner is not None:
                addr = inner
            elif addr.scope_id is not None:  # fe80::1%eth0: the zone names the link, not another host
                addr = ipaddress.IPv6Address(int(addr))
        return self._match(addr)

    def _match(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> float:
        """Until when ``addr`` itself is blocked (0.0: it is not), by an exact entry or a network."""
        exact = self._exact.get(str(addr))
        if exact is not None:
            return exact
        by_len = self._nets.get(addr.version)
        if not by_len:
            return 0.0
        bits = addr.max_prefixlen
        value = int(addr)
        best = 0.0
        for plen, nets in by_len.items():
            until = nets.get(value >> (bits - plen))
            if until is not None and until > best:
                best = until
        return best

    def set_dynamic(self, entries: Iterable[BlockEntry]) -> None:
        """Replace the temporary blocks (from the fast state)."""
        parsed: list[tuple[Network, float]] = []
        for entry in entries:
            try:
                parsed.append((normalize_network(entry.cidr), entry.until))
            except ValueError:
                logger.error("ignoring unreadable block %r", entry.cidr)
        self._dynamic = parsed
        self._rebuild()

    def set_files(self, networks: Iterable[Network]) -> None:
        """Replace the networks from block-list files (they never expire)."""
        self._files = list(networks)
        self._rebuild()

    def _rebuild(self) -> None:
        exact: dict[str, float] = {}
        nets: dict[int, dict[int, dict[int, float]]] = {}
        pairs = [*self._dynamic, *((net, math.inf) for net in self._files)]
        for net, until in pairs:
            if net.prefixlen == net.max_prefixlen:
                key = str(net.network_address)
                exact[key] = max(until, exact.get(key, 0.0))
                continue
            shifted = int(net.network_address) >> (net.max_prefixlen - net.prefixlen)
            table = nets.setdefault(net.version, {}).setdefault(net.prefixlen, {})
            table[shifted] = max(until, table.get(shifted, 0.0))
        # Swapped whole, never mutated in place: a request mid-check sees the old or the new set.
        self._exact, self._nets, self._cache = exact, nets, {}

    @property
    def dynamic(self) -> Sequence[tuple[Network, float]]:
        return tuple(self._dynamic)

    def __len__(self) -> int:
        return len(self._dynamic) + len(self._files)


def _decode(raw: bytes | None) -> list[BlockEntry]:
    if raw is None:
        return []
    try:
        return [BlockEntry.from_json(doc) for doc in json.loads(raw)]
    except (ValueError, TypeError, KeyError):
        logger.error("unreadable block list in the fast state; treating it as empty")
        return []


def _bounded(entries: list[BlockEntry], added: BlockEntry) -> list[BlockEntry]:
    """``entries`` cut to :data:`MAX_BLOCKS`: the automatic blocks (a rule's) that end soonest go
    first, ``added`` last; a person's are never pushed out (an attack run's automatic blocks of one
    IPv6 /48's many /64s evicted an admin's 30-day block of the attacker's own address, the oldest)."""
    excess = len(entries) - MAX_BLOCKS
    if excess <= 0:
        return entries
    automatic = [e for e in entries if not e.actor or e.actor.startswith("system:")]
    automatic.sort(key=lambda e: (e is added, e.until))
    dropped = {id(e) for e in automatic[:excess]}
    return [e for e in entries if id(e) not in dropped]


def _canonical(cidr: str) -> str:
    """A stored block's network as :func:`normalize_network` writes it now: a NAT64 network blocked
    before it was stored in IPv4 form stays liftable by the text that blocked it."""
    try:
        return str(normalize_network(cidr))
    except ValueError:
        return cidr


class BlockStore:
    """The shared list of temporary blocks in the fast state (and its copy in the database), and the
    listener that mirrors it."""

    def __init__(self, state: FastState, clock: Clock, *, db: Database | None = None) -> None:
        self._state = state
        self._clock = clock
        self._db = db

    async def entries(self) -> list[BlockEntry]:
        """The blocks still in force, soonest-ending first: the fast state's list; the database's copy
        when the fast state cannot answer, or has lost the list (which it then gets back).

        Raises:
            StateUnavailable: neither can answer.
        """
        now = self._clock.time()
        try:
            raw = await self._state.get(BLOCKS_KEY)
        except StateUnavailable:
            stored = await self._from_db()
            if stored is None:
                raise
            raw = stored
        else:
            if raw is None:
                # Never written, or lost (an empty list is stored as "[]"): the database's copy, put
                # back for every reader unless someone wrote meanwhile.
                raw = await self._from_db()
                if raw is not None and _decode(raw):
                    with contextlib.suppress(StateUnavailable):
                        await self._state.compare_and_set(BLOCKS_KEY, None, raw)
                    logger.warning("block list: the fast state did not hold it; took the database's copy")
        live = [e for e in _decode(raw) if e.until > now]
        return sorted(live, key=lambda e: e.until)

    async def _from_db(self) -> bytes | None:
        """The database's copy; None when there is none or it cannot be read."""
        value = await read_kv_or_none(self._db, _DB_KEY, what="the block list")
        return None if value is None else value.encode("utf-8")

    async def _keep_in_db(self, encoded: bytes) -> None:
        """Write the database's copy, then make sure it is the fast state's list: two changes at once
        (a rule blocking on one replica, an admin unblocking on another) could finish their database
        writes in the other order than their compare-and-sets, and an older list stayed in the copy
        (a re-attack run: a lifted block came back for a replica cut off from Redis, and for every
        replica once Redis lost the key). Whoever writes the copy last read the fast state after it."""
        for _ in range(_CAS_ROUNDS):
            await self._to_db(encoded)
            try:
                current = await self._state.get(BLOCKS_KEY)
            except StateUnavailable:
                return
            if current is None or current == encoded:
                return
            encoded = current

    async def _to_db(self, encoded: bytes) -> None:
        if self._db is None:
            return
        try:
            await write_kv(
                self._db, _DB_KEY, encoded.decode("utf-8"), at=self._clock.now(), what="the block list"
            )
        except Exception:  # reported; the fast state's list is the one read first
            logger.exception("block list: could not keep the list in the database")

    async def add(
        self, cidr: str, *, until: float, incident: str = "", reason: str = "", actor: str = ""
    ) -> BlockEntry:
        """Block ``cidr`` until ``until`` (an existing block of it is extended, never shortened).

        Raises:
            ValueError: ``cidr`` is not an address or network.
            StateUnavailable: the fast state cannot answer.
        """
        text = str(normalize_network(cidr))
        entry = BlockEntry(text, until, incident, reason, actor)

        def change(current: list[BlockEntry]) -> list[BlockEntry]:
            kept = [e for e in current if e.cidr != text]
            old = [e for e in current if e.cidr == text]
            if old and old[0].until >= until:
                return current
            return _bounded([*kept, entry], entry)

        await self._update(change)
        return entry

    async def remove(self, cidr: str) -> int:
        """Lift the block of exactly ``cidr``; returns how many were lifted (0 or 1).

        Raises:
            ValueError: ``cidr`` is not an address or network.
            StateUnavailable: the fast state cannot answer.
        """
        text = str(normalize_network(cidr))
        removed = 0

        def change(current: list[BlockEntry]) -> list[BlockEntry]:
            nonlocal removed
            kept = [e for e in current if _canonical(e.cidr) != text]
            removed = len(current) - len(kept)
            return kept

        await self._update(change)
        return removed

    async def release(
        self, cidr: str, *, incident: str, successor: BlockEntry | None = None
    ) -> BlockEntry | None:
        """Lift the block of exactly ``cidr`` only if ``incident`` holds it, putting ``successor`` (another
        incident's claim on the same network) in its place in the same update; returns the block in force
        for ``cidr`` afterwards (None: not blocked). A block another incident holds (it blocked longer, or
        later) stays: lifting one incident must not undo another's containment. An incident's target
        no longer read as a network (a NAT64 translator's whole prefix, blocked before such blocks were
        refused) is matched as written: lifting it must not fail.

        Raises:
            StateUnavailable: the fast state cannot answer.
        """
        text = _canonical(cidr)
        after: BlockEntry | None = None

        def change(current: list[BlockEntry]) -> list[BlockEntry]:
            nonlocal after
            held = next((e for e in current if _canonical(e.cidr) == text), None)
            if held is None or held.incident != incident:
                after = held
                return current
            after = successor
            kept = [e for e in current if e is not held]
            return kept if successor is None else [*kept, successor]

        await self._update(change)
        return after

    async def _update(self, change: Callable[[list[BlockEntry]], list[BlockEntry]]) -> None:
        for _ in range(_CAS_ROUNDS):
            raw = await self._state.get(BLOCKS_KEY)
            now = self._clock.time()
            current = [e for e in _decode(raw) if e.until > now]
            new = change(current)
            # An empty list is stored, not deleted: a missing key means the fast state lost it.
            encoded = json.dumps([e.to_json() for e in new], separators=(",", ":")).encode()
            if await self._state.compare_and_set(BLOCKS_KEY, raw, encoded):
                break
        else:
            raise StateUnavailable("the block list kept changing; giving up")
        await self._keep_in_db(encoded)
        try:
            await self._state.publish(BLOCKS_CHANNEL, b"changed")
        except StateUnavailable:
            # Stored already: every replica's periodic refresh picks it up within its interval.
            logger.warning("could not broadcast a block-list change")

    async def refresh(self, blocks: IpBlocks) -> None:
        """Load the shared list into ``blocks`` (keeps the old set if the store cannot answer)."""
        blocks.set_dynamic(await self.entries())

    async def run_listener(self, blocks: IpBlocks, *, refresh_every: float = 1.0) -> None:
        """Keep ``blocks`` current: re-read on every broadcast, and every ``refresh_every`` s anyway."""
        await follow_channel(
            self._state,
            BLOCKS_CHANNEL,
            lambda: self.refresh(blocks),
            refresh_every=refresh_every,
            what="block-list",
        )


def read_block_list(path: str) -> list[Network]:
    """Parse a block-list file: one address or CIDR per line; ``#`` starts a comment.

    Unreadable lines are logged and skipped, so one bad line in a feed does not drop the whole feed.

    Raises:
        OSError: the file cannot be read.
    """
    networks: list[Network] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                networks.append(normalize_network(text.split()[0]))
            except TranslatorRange as exc:
                logger.warning("%s:%d: skipped: %s", path, number, exc)
            except ValueError:
                logger.warning("%s:%d: not an address or network: %.60r", path, number, text)
    return networks


class BlockListFiles:
    """Re-reads block-list files when they change and feeds ``IpBlocks``."""

    def __init__(self, blocks: IpBlocks, paths: Callable[[], Sequence[str]]) -> None:
        self._blocks = blocks
        self._paths = paths
        self._seen: dict[str, tuple[float, int]] = {}
        self._loaded: dict[str, list[Network]] = {}

    def poll(self) -> bool:
        """Re-read changed files and rebuild the matcher if any changed; returns whether it did."""
        changed = self.scan()
        if changed:
            self.apply()
        return changed

    def scan(self) -> bool:
        """Re-read changed files (blocking I/O: run in a thread); returns whether any changed.

        A file that vanished or cannot be read keeps its last good contents: a feed being rewritten
        must not open the gate.
        """
        paths = list(self._paths())
        gone = set(self._loaded) - set(paths)
        for path in gone:
            self._loaded.pop(path, None)
            self._seen.pop(path, None)
        changed = bool(gone)
        for path in paths:
            try:
                stat = os.stat(path)
            except OSError as exc:
                if path not in self._loaded:
                    logger.error("block list %s cannot be read: %s", path, exc.strerror)
                continue
            mark = (stat.st_mtime, stat.st_size)
            if self._seen.get(path) == mark:
                continue
            try:
                networks = read_block_list(path)
            except OSError as exc:
                logger.error("block list %s cannot be read: %s", path, exc.strerror)
                continue
            self._seen[path], self._loaded[path] = mark, networks
            changed = True
            logger.info("block list %s loaded: %d entries", path, len(networks))
        return changed

    def apply(self) -> None:
        """Hand the loaded networks to the matcher (on the event loop, like every other change)."""
        self._blocks.set_files(n for nets in list(self._loaded.values()) for n in nets)

    async def run(self, interval: Callable[[], float]) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            if await asyncio.to_thread(self.scan):
                self.apply()
            await asyncio.sleep(interval())


class BlockFeed:
    """Keeps one worker's :class:`IpBlocks` current: the block-list files and the shared blocks (the
    CLI's, the console's and detection's), whether threat detection is on or not. An attack run with
    ``threat.enabled: false`` had ``gateway incident block-ip`` report a block that the data plane never
    applied."""

    def __init__(
        self,
        blocks: IpBlocks,
        store: BlockStore,
        paths: Callable[[], Sequence[str]],
        poll: Callable[[], float],
    ) -> None:
        self._blocks = blocks
        self._store = store
        self._files = BlockListFiles(blocks, paths)
        self._poll = poll
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load both once, then follow them (the shared blocks by broadcast, the files by polling)."""
        await asyncio.to_thread(self._files.scan)
        self._files.apply()
        with contextlib.suppress(StateUnavailable):
            await self._store.refresh(self._blocks)
        self._tasks = [
            asyncio.ensure_future(self._store.run_listener(self._blocks)),
            asyncio.ensure_future(self._files.run(self._poll)),
        ]

    async def close(self) -> None:
        """Stop following."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
