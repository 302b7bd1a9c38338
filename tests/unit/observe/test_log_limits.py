"""Events too large or too odd for the log sinks: cut down, capped or replaced, and counted, never lost
silently or taking their batch with them (an attack run on the gateway's log output)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.observe import access
from gateway.observe.access import UNENCODABLE, AccessEntry, Entry, SecurityEntry
from gateway.observe.sinks import Delivery, FileSink, SinkHub, SyslogSink, syslog
from gateway.observe.sinks.syslog import MAX_UDP, cut_down
from tests.unit.observe.test_sinks import RFC5424, deliver, record, security

# A sign-in failure whose details alone are over a UDP datagram: readable words (not secret-looking).
HUGE_DETAILS = json.dumps({"method": "password", "note": "too many words " * 5_000})


@dataclass
class Receiver:
    """A real UDP socket on the loopback, as a syslog server binds one."""

    port: int
    datagrams: asyncio.Queue[bytes]


@pytest.fixture
async def udp_server() -> AsyncIterator[Receiver]:
    datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    class Protocol(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            datagrams.put_nowait(data)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Protocol, local_addr=("127.0.0.1", 0)
    )
    try:
        yield Receiver(transport.get_extra_info("sockname")[1], datagrams)
    finally:
        transport.close()


def udp_sink(port: int) -> SyslogSink:
    return SyslogSink("udp", Delivery(), address=f"udp://127.0.0.1:{port}", facility="auth", app_name="gw")


def body_of(message: bytes) -> dict[str, Any]:
    match = RFC5424.fullmatch(message)
    assert match is not None
    document: dict[str, Any] = json.loads(match.group(7))
    return document


async def test_a_security_event_over_a_datagram_arrives_cut_down_and_counted(udp_server: Receiver) -> None:
    entry = SecurityEntry(security("account.locked", HUGE_DETAILS))
    assert len(entry.json()) > MAX_UDP
    hub = await deliver(udp_sink(udp_server.port), entry)
    message = await asyncio.wait_for(udp_server.datagrams.get(), 5)
    assert len(message) <= MAX_UDP
    doc = body_of(message)
    assert doc["tags"] == ["truncated"]
    assert doc["event"]["action"] == "account.locked"
    assert doc["event"]["outcome"] == "failure"
    assert doc["@timestamp"] == "2026-01-01T00:00:00.250Z"
    assert (doc["gateway"]["actor"], doc["gateway"]["subject"]) == ("user:alice", "alice")
    assert (doc["user"]["name"], doc["source"]["ip"]) == ("alice", "192.0.2.7")
    # Only the long text went; what is short in the details stays.
    assert doc["gateway"]["details"]["method"] == "password"
    assert doc["gateway"]["details"]["note"] == f"[TRUNCATED {len('too many words ' * 5_000)} bytes]"
    stats = hub.stats()["udp"]
    assert (stats.sent, stats.truncated, stats.dropped, stats.dropped_security) == (1, 1, 0, 0)


async def test_a_huge_user_name_is_cut_to_its_beginning_not_dropped(udp_server: Receiver) -> None:
    """A sign-in failure for a 70 KB user name: even the identifying fields are too long."""
    name = "mallory" * 10_000
    event = security("signin.failure", "{}")
    event = type(event)(event.at, event.kind, name, name, event.ip, event.outcome, event.details)
    hub = await deliver(udp_sink(udp_server.port), SecurityEntry(event))
    doc = body_of(await asyncio.wait_for(udp_server.datagrams.get(), 5))
    assert doc["user"]["name"].startswith("mallory" * 100)
    assert doc["user"]["name"].endswith(" bytes]")
    assert doc["event"]["action"] == "signin.failure"
    assert doc["source"]["ip"] == "192.0.2.7"
    assert hub.stats()["udp"].truncated == 1


async def test_an_event_that_cannot_be_cut_small_enough_is_counted_as_dropped(
    udp_server: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A datagram too small for even the identifying fields: the event cannot go, and must not count as sent.
    monkeypatch.setattr(syslog, "MAX_UDP", 300)
    with caplog.at_level(logging.WARNING, "gateway.observe.sinks"):
        hub = await deliver(
            udp_sink(udp_server.port),
            SecurityEntry(security("account.locked", HUGE_DETAILS)),
            AccessEntry(record()),
        )
    stats = hub.stats()["udp"]
    assert (stats.sent, stats.dropped, stats.dropped_security) == (0, 2, 1)
    assert udp_server.datagrams.empty()
    assert "too large for its transport" in caplog.text


def test_a_cut_down_access_event_keeps_its_ids_and_stays_one_document() -> None:
    entry = AccessEntry(record(path="/files/" + "a/" * 40_000, user_agent="agent " * 80))
    body = cut_down(entry.json(), 2_000)
    assert body is not None
    assert len(body) <= 2_000
    doc = json.loads(body)
    assert doc["url"]["path"].startswith("[TRUNCATED ")
    assert doc["http"]["request"]["id"] == "req-1"
    assert (doc["user"]["name"], doc["source"]["ip"], doc["session"]["id"]) == (
        "alice",
        "192.0.2.7",
        "ab12cd34",
    )
    assert doc["event"] == json.loads(entry.json())["event"]


def test_an_event_that_fits_is_not_cut() -> None:
    entry = AccessEntry(record())
    assert cut_down(entry.json(), 64) is None  # not even the kept fields fit
    body = cut_down(entry.json(), 65_000)
    assert body is not None
    assert json.loads(body) == json.loads(entry.json()) | {"tags": ["truncated"]}


def test_a_30_kb_host_is_logged_at_most_255_characters() -> None:
    # Latin-1 as the data plane decodes it: every C2 85 pair is two characters, one escaped to six bytes.
    host = (b"\xc2\x85" * 15_000).decode("latin-1")
    entry = AccessEntry(record(host=host + ":8443"))
    doc = entry.document()
    assert len(doc["url"]["domain"]) <= 255
    assert doc["url"]["domain"] == host[:255]
    assert doc["url"]["port"] == 8443
    assert len(entry.json()) < 2_000


def test_a_usual_host_is_logged_whole() -> None:
    host = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61  # 253: the longest DNS name
    assert AccessEntry(record(host=host)).document()["url"]["domain"] == host


async def test_an_unencodable_event_is_replaced_and_the_rest_of_its_batch_goes_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The warning comes once a minute: another test's stand-in in this process would silence it.
    monkeypatch.setattr(access, "_unencodable_warned_at", None)
    # A JSON escape of a lone surrogate: json.loads makes it a str that msgspec refuses to encode.
    bad = SecurityEntry(security("signin.failure", '{"name": "\\ud800"}'))
    good: list[Entry] = [AccessEntry(record(request_id=f"r{index}")) for index in range(3)]
    sink = FileSink("file", Delivery(retries=1), path=str(tmp_path / "log"), max_bytes=10**6, backups=1)
    before = access.unencodable_events()
    with caplog.at_level(logging.WARNING, "gateway.observe"):
        hub = await deliver(sink, good[0], bad, *good[1:])
    lines = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert [line["event"]["dataset"] for line in lines] == ["gateway.access", "gateway.audit"] + [
        "gateway.access"
    ] * 2
    stand_in = lines[1]
    assert stand_in["tags"] == [UNENCODABLE]
    assert stand_in["event"]["action"] == "signin.failure"
    assert stand_in["@timestamp"] == "2026-01-01T00:00:00.250Z"
    assert (stand_in["user"]["name"], stand_in["source"]["ip"]) == ("alice", "192.0.2.7")
    assert "details" not in stand_in["gateway"]
    stats = hub.stats()["file"]
    assert (stats.sent, stats.dropped, stats.failures) == (4, 0, 0)
    assert access.unencodable_events() == before + 1
    assert "could not be encoded (UnicodeEncodeError)" in caplog.text


def test_the_stand_in_is_the_document_too() -> None:
    """The Splunk profile asks for the document; it is the stand-in once the JSON failed."""
    entry = SecurityEntry(security("signin.failure", '{"name": "\\ud800"}'))
    assert json.loads(entry.json()) == entry.document()
    assert entry.document()["tags"] == [UNENCODABLE]


async def test_a_hub_of_several_sinks_counts_the_unencodable_event_once(tmp_path: Path) -> None:
    before = access.unencodable_events()
    sinks = [
        FileSink(name, Delivery(), path=str(tmp_path / name), max_bytes=10**6, backups=1)
        for name in ("a", "b")
    ]
    hub = SinkHub(sinks)
    await hub.start()
    hub.publish(SecurityEntry(security("signin.failure", '{"name": "\\ud800"}')))
    await hub.close()
    assert access.unencodable_events() == before + 1
    assert all(json.loads((tmp_path / name).read_text())["tags"] == [UNENCODABLE] for name in ("a", "b"))
