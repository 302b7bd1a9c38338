"""Sinks against real in-process peers: an aiohttp collector, asyncio syslog servers, files on disk."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.trail import SecurityEvent
from gateway.observe.access import (
    AccessEntry,
    CheckpointEntry,
    Entry,
    SecurityEntry,
    _timestamp,
    _timestamp_bytes,
    access_observer,
    audit_listener,
)
from gateway.observe.record import RequestRecord
from gateway.observe.sinks import Delivery, FileSink, HttpSink, Sink, SinkHub, StdoutSink, SyslogSink, stream

AT = 1_767_225_600.25  # 2026-01-01T00:00:00.250Z
RFC5424 = re.compile(rb"<(\d+)>1 (\S+) (\S+) (\S+) (\d+) (\S+) - (.*)", re.S)


def record(**overrides: Any) -> RequestRecord:
    fields: dict[str, Any] = {
        "at": AT,
        "kind": "http",
        "request_id": "req-1",
        "client_ip": "192.0.2.7",
        "user_agent": "curl/8",
        "host": "app.example.com",
        "method": "GET",
        "path": "/reports",
        "query": "page=2&access_token=s3cr3t",
        "route": "app",
        "user": "alice",
        "session": "ab12cd34",
        "status": 200,
        "bytes_in": 10,
        "bytes_out": 2048,
        "upstream": "10.0.0.5:8080",
        "upstream_seconds": 0.004,
        "authz_seconds": 0.00002,
        "total_seconds": 0.005,
        "decision": "allow",
        "reason": "policy-allow",
        "policy_version": 7,
        "auth": "session",
    }
    fields.update(overrides)
    return RequestRecord(**fields)


def security(
    kind: str = "signin.failure", details: str = '{"password": "pw", "method": "password"}'
) -> SecurityEvent:
    return SecurityEvent(
        datetime.fromtimestamp(AT, UTC), kind, "user:alice", "alice", "192.0.2.7", "failure", details
    )


def test_access_document_has_the_ecs_fields() -> None:
    doc = AccessEntry(record()).document()
    assert doc["@timestamp"] == "2026-01-01T00:00:00.250Z"
    assert doc["event"] == {
        "kind": "event",
        "category": ["web"],
        "type": ["access", "allowed"],
        "dataset": "gateway.access",
        "outcome": "success",
        "duration": 5_000_000,
    }
    assert doc["http"] == {
        "request": {"method": "GET", "body": {"bytes": 10}, "id": "req-1"},
        "response": {"status_code": 200, "body": {"bytes": 2048}},
    }
    assert doc["url"] == {
        "path": "/reports",
        "query": "page=2&access_token=[REDACTED]",
        "domain": "app.example.com",
    }
    assert doc["source"] == {"ip": "192.0.2.7"}
    assert doc["user"] == {"name": "alice"}
    assert doc["session"] == {"id": "ab12cd34"}
    assert doc["user_agent"] == {"original": "curl/8"}
    assert doc["gateway"] == {
        "kind": "http",
        "route": "app",
        "decision": "allow",
        "reason": "policy-allow",
        "policy_version": 7,
        "auth": "session",
        "authz": {"duration": 20_000},
    }
    assert doc["upstream"] == {"address": "10.0.0.5:8080", "duration": 4_000_000}
    assert doc["trace"] == {"id": "req-1"}
    assert b"s3cr3t" not in AccessEntry(record()).json()
    # No request or response headers at all (cookies, Authorization): only the user agent is kept.
    assert set(doc) == {
        "@timestamp", "ecs", "event", "http", "url", "source", "user_agent", "gateway", "user", "session",
        "upstream", "trace",
    }  # fmt: skip
    assert "headers" not in doc["http"]["request"]


def test_the_json_line_is_the_document() -> None:
    entry = AccessEntry(record())
    line = entry.json()
    assert json.loads(line) == AccessEntry(record()).document()
    assert line.startswith(b'{"@timestamp":"2026-01-01T00:00:00.250Z","ecs":{"version":')


def test_an_anonymous_request_without_client_address_has_no_source_or_user() -> None:
    doc = AccessEntry(record(client_ip="", user="", session="", request_id="", query="")).document()
    assert not {"source", "user", "session", "trace"} & set(doc)
    assert "query" not in doc["url"]
    assert "id" not in doc["http"]["request"]


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_timestamps_are_what_isoformat_writes(at: float) -> None:
    expected = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert _timestamp(at) == expected


def _isoformat(at: float) -> bytes:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()


# Times close together and at the edges of a millisecond, in any order: the access log remembers
# which times write its last timestamp, and a time just outside that millisecond must not get it.
_MILLISECOND = st.builds(
    lambda second, ms, offset: second + ms / 1000 + offset,
    st.sampled_from([0, 1_796_445_002, 4_102_444_799]),
    st.integers(min_value=0, max_value=1000),
    st.sampled_from([-2e-6, -1e-6, -5e-7, -4e-7, -1e-7, 0.0, 1e-7, 4e-7, 5e-7, 1e-6, 2e-6, 5e-4, 9.98e-4]),
)


@given(st.lists(st.one_of(_MILLISECOND, st.floats(min_value=0, max_value=4_102_444_800)), max_size=30))
def test_the_access_logs_timestamps_are_what_isoformat_writes_whatever_came_before(
    times: list[float],
) -> None:
    for at in times:
        assert _timestamp_bytes(at) == _isoformat(at), at


def test_a_time_a_microsecond_after_the_remembered_millisecond_gets_its_own() -> None:
    first = 1_796_445_002.123_4
    assert _timestamp_bytes(first).endswith(b".123Z")
    assert _timestamp_bytes(1_796_445_002.123_999_6) == _isoformat(1_796_445_002.123_999_6)  # rounds up
    assert _timestamp_bytes(1_796_445_002.123_999_6).endswith(b".124Z")
    assert _timestamp_bytes(1_796_445_002.122_999).endswith(b".122Z")


def test_denied_request_is_a_failure_without_user_or_upstream() -> None:
    doc = AccessEntry(
        record(decision="deny", reason="policy-deny", user="", upstream="", status=403)
    ).document()
    assert doc["event"]["outcome"] == "failure"
    assert doc["event"]["type"] == ["access", "denied"]
    assert "user" not in doc
    assert "upstream" not in doc


def test_security_event_document_redacts_details() -> None:
    entry = SecurityEntry(security())
    doc = entry.document()
    assert doc["event"]["kind"] == "event"
    assert doc["event"]["action"] == "signin.failure"
    assert doc["event"]["outcome"] == "failure"
    assert doc["gateway"]["details"] == {"password": "[REDACTED]", "method": "password"}
    assert entry.stream == "security"
    assert entry.severity == 6


def test_lockouts_and_detections_are_alerts() -> None:
    for kind in ("account.locked", "threat.credential_stuffing"):
        entry = SecurityEntry(security(kind, "{}"))
        assert entry.document()["event"]["kind"] == "alert"
        assert entry.severity == 4


def test_details_that_are_not_json_are_hidden() -> None:
    assert SecurityEntry(security(details="token=abc")).document()["gateway"]["details"] == "[REDACTED]"


class Recording(Sink):
    """A sink that fails its first ``fail`` deliveries, then records."""

    def __init__(self, delivery: Delivery, *, fail: int = 0) -> None:
        super().__init__("recording", delivery)
        self.fail = fail
        self.batches: list[list[bytes]] = []

    async def send(self, batch: list[Any]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("down")
        self.batches.append([entry.json() for entry in batch])


async def test_a_full_queue_drops_and_counts_without_raising() -> None:
    sink = Recording(Delivery(queue_size=3))
    hub = SinkHub([sink], flush_timeout=5)
    observe = access_observer(hub)
    for _ in range(5):
        observe(record())  # not started: nothing drains the queue
    assert hub.stats()["recording"].queued == 3
    assert hub.stats()["recording"].dropped == 2
    await hub.start()
    await hub.close()
    stats = hub.stats()["recording"]
    assert (stats.sent, stats.dropped, stats.pending) == (3, 2, 0)


def checkpoint(seq: int) -> CheckpointEntry:
    return CheckpointEntry({"type": "audit.checkpoint", "head_seq": seq}, AT)


def delivered(sink: Recording) -> list[str]:
    """What ``sink`` delivered, in order: ``access:<request id>``, the audit kind, ``checkpoint:<seq>``."""
    names = []
    for line in (json.loads(x) for batch in sink.batches for x in batch):
        if line["event"]["dataset"] == "gateway.access":
            names.append(f"access:{line['trace']['id']}")
        elif "checkpoint" in line["gateway"]:
            names.append(f"checkpoint:{line['gateway']['checkpoint']['head_seq']}")
        else:
            names.append(line["event"]["action"])
    return names


async def test_a_full_queue_drops_access_entries_to_keep_security_events_and_checkpoints() -> None:
    """The attack run: a flood of anonymous requests filled an HTTP sink's queue, and the sign-in
    failures and the lock-out that came in between were dropped; the collector had only access lines."""
    sink = Recording(Delivery(queue_size=10, batch_size=4))
    hub = SinkHub([sink])
    for index in range(10):
        hub.publish(AccessEntry(record(request_id=f"a{index}")))  # not started: the queue is full now
    for kind in ("signin.password", "signin.password", "account.locked"):
        hub.publish(SecurityEntry(security(kind)))
    hub.publish(checkpoint(1))
    hub.publish(AccessEntry(record(request_id="late")))  # still full: dropped
    hub.publish(checkpoint(2))
    stats = hub.stats()["recording"]
    assert (stats.queued, stats.dropped, stats.dropped_security, stats.pending) == (15, 6, 0, 10)
    await hub.start()
    await hub.close()
    # The oldest access entries made way; the rest of the queue kept its order.
    assert delivered(sink) == [
        "access:a5", "access:a6", "access:a7", "access:a8", "access:a9",
        "signin.password", "signin.password", "account.locked", "checkpoint:1", "checkpoint:2",
    ]  # fmt: skip
    stats = hub.stats()["recording"]
    assert (stats.sent, stats.dropped, stats.dropped_security, stats.pending) == (10, 6, 0, 0)


async def test_a_queue_of_refusals_makes_way_for_checkpoints_alerts_and_changes() -> None:
    """A re-attack run filled the queue with security events anyone can cause (junk back-channel
    logout tokens, wrong passwords from many addresses), and the lock-out and the checkpoint after
    them were the ones dropped. Refusals (failures that are no alert) now make way, oldest first."""
    sink = Recording(Delivery(queue_size=4, batch_size=4))
    hub = SinkHub([sink], flush_timeout=5)
    for _ in range(4):
        hub.publish(SecurityEntry(security("signout.backchannel")))  # refusals: the queue is full
    changed = replace(security("user.roles_changed"), outcome="success")
    locked = replace(security("account.locked"), outcome="locked")
    for entry in (checkpoint(1), SecurityEntry(changed), SecurityEntry(locked)):
        hub.publish(entry)
    hub.publish(SecurityEntry(security("signin.password")))  # a refusal finds only refusals to drop:
    stats = hub.stats()["recording"]  # it is dropped itself
    assert (stats.queued, stats.dropped, stats.dropped_security) == (7, 4, 4)
    await hub.start()
    await hub.close()
    assert delivered(sink) == ["signout.backchannel", "checkpoint:1", "user.roles_changed", "account.locked"]


async def test_security_events_keep_their_order_and_only_a_queue_of_nothing_else_drops_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Recording(Delivery(queue_size=5, batch_size=2))
    hub = SinkHub([sink], flush_timeout=5)
    for entry in (checkpoint(0), AccessEntry(record(request_id="a0")), checkpoint(1)):
        hub.publish(entry)
    hub.publish(AccessEntry(record(request_id="a1")))
    hub.publish(AccessEntry(record(request_id="a2")))  # full: c0 a0 c1 a1 a2
    for seq in range(2, 9):
        # c2-c4 take the places of a0-a2; c5-c8 find nothing but checkpoints and are dropped.
        hub.publish(checkpoint(seq))
    hub.publish(AccessEntry(record(request_id="a3")))  # dropped: there is no room for an access entry
    stats = hub.stats()["recording"]
    assert (stats.queued, stats.dropped, stats.dropped_security, stats.pending) == (8, 8, 4, 5)
    # One warning however many are dropped (at most one a minute).
    warnings = [r.getMessage() for r in caplog.records if "dropped a security event" in r.getMessage()]
    assert warnings == [
        "log sink recording dropped a security event: its queue holds 5 security events and nothing else "
        "(1 dropped so far)"
    ]
    await hub.start()
    async with asyncio.timeout(5):
        while hub.stats()["recording"].pending:
            await asyncio.sleep(0.01)
    hub.publish(AccessEntry(record(request_id="a4")))  # delivered: the queue has room again
    await hub.close()
    assert delivered(sink) == [*(f"checkpoint:{seq}" for seq in range(5)), "access:a4"]
    assert "log sink recording closed: queued=9 sent=6 dropped=8 failures=0 dropped_security=4" in caplog.text


@pytest.mark.parametrize("retries", [1, 1000], ids=["lost-with-the-batch", "lost-at-shutdown"])
async def test_security_events_lost_with_a_batch_or_at_shutdown_are_counted_as_such(retries: int) -> None:
    sink = Recording(Delivery(retries=retries, batch_size=1), fail=10**6)
    hub = SinkHub([sink], flush_timeout=0.3)
    await hub.start()
    hub.publish(AccessEntry(record()))
    hub.publish(SecurityEntry(security()))
    await hub.close()
    stats = hub.stats()["recording"]
    assert (stats.sent, stats.dropped, stats.dropped_security) == (0, 2, 1)


async def test_failed_batches_are_retried_then_delivered() -> None:
    sink = Recording(Delivery(retries=3), fail=2)
    hub = SinkHub([sink])
    await hub.start()
    audit_listener(hub)(security())
    await hub.close()
    stats = hub.stats()["recording"]
    assert (stats.sent, stats.failures, stats.dropped) == (1, 2, 0)
    assert b"signin.failure" in sink.batches[0][0]


async def test_a_batch_is_dropped_after_its_last_attempt() -> None:
    sink = Recording(Delivery(retries=2), fail=10)
    hub = SinkHub([sink])
    await hub.start()
    hub.publish(AccessEntry(record()))
    await hub.close()
    stats = hub.stats()["recording"]
    assert (stats.sent, stats.failures, stats.dropped) == (0, 2, 1)


async def test_close_gives_up_after_the_flush_timeout_and_counts_the_rest() -> None:
    sink = Recording(Delivery(retries=1000), fail=10**6)
    hub = SinkHub([sink], flush_timeout=0.3)
    await hub.start()
    for _ in range(4):
        hub.publish(AccessEntry(record()))
    await hub.close()
    stats = hub.stats()["recording"]
    assert stats.sent == 0
    assert stats.dropped == 4
    assert stats.pending == 0


async def test_file_sink_writes_lines_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    line = len(AccessEntry(record()).json()) + 1
    sink = FileSink("file", Delivery(batch_size=1), path=str(path), max_bytes=line * 2, backups=2)
    hub = SinkHub([sink])
    await hub.start()
    for index in range(7):
        hub.publish(AccessEntry(record(request_id=f"r{index}")))
    await hub.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["access.log", "access.log.1", "access.log.2"]
    ids = [json.loads(x)["trace"]["id"] for name in ("access.log.2", "access.log.1", "access.log")
           for x in (tmp_path / name).read_text().splitlines()]  # fmt: skip
    assert ids == ["r2", "r3", "r4", "r5", "r6"]  # r0 and r1 rotated out with the oldest file
    assert path.stat().st_mode & 0o777 == 0o640


async def test_file_sink_never_writes_through_a_link_to_a_regular_file(tmp_path: Path) -> None:
    """The attack run: someone who can write the log directory links the log's path to a file the
    gateway may write; log lines (path and User-Agent of their choosing) were appended to it, and a
    rotation with no backups emptied it."""
    victim = tmp_path / "keyring.json"
    victim.write_text("PRECIOUS\n")
    path = tmp_path / "access.log"
    path.symlink_to(victim)
    sink = FileSink("file", Delivery(), path=str(path), max_bytes=10, backups=0)
    with pytest.raises(OSError, match="symbolic link to a regular file"):
        await sink.send([AccessEntry(record(request_id="planted"))])
    assert victim.read_text() == "PRECIOUS\n"

    # Linked while the sink runs (it reopens a path whose file changed), and rotated with no backups.
    path.unlink()
    await sink.send([AccessEntry(record(request_id="r0"))])
    path.unlink()
    path.symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        await sink.send([AccessEntry(record(request_id="r1"))])
    assert victim.read_text() == "PRECIOUS\n"
    await sink.aclose()


async def test_control_characters_a_client_sent_are_escaped_in_the_lines(tmp_path: Path) -> None:
    """A User-Agent with an 8-bit CSI (U+009B), a NEL and a line separator: raw in the JSON text they
    drove the operator's terminal and broke line-based readers of the log."""
    path = tmp_path / "access.log"
    sink = FileSink("file", Delivery(), path=str(path), max_bytes=10**6, backups=0)
    agent = "Mozilla \x9b2J\x9b31mHIJACK \x85 \u2028 caf\u00e9 \u00a9"
    await sink.send([AccessEntry(record(user_agent=agent)), AccessEntry(record())])
    await sink.aclose()
    data = path.read_bytes()
    for raw in (b"\xc2\x9b", b"\xc2\x85", b"\xe2\x80\xa8"):
        assert raw not in data
    assert b"\\u009b2J" in data
    lines = data.decode("utf-8").splitlines()  # what a line-based reader does
    assert len(lines) == 2
    assert json.loads(lines[0])["user_agent"]["original"] == agent  # the value itself is kept
    assert "caf\u00e9 \u00a9" in data.decode("utf-8")  # ordinary text stays as it is


@pytest.mark.parametrize("profile", ["ndjson", "elasticsearch", "loki", "splunk", "syslog"])
def test_control_characters_are_escaped_for_every_collector(profile: str) -> None:
    """Another attack run: the syslog and HTTP sinks sent the 8-bit CSI and the line separators raw
    (a default rsyslog escapes only bytes below 0x20, so they reached files operators tail)."""
    from gateway.observe.sinks.http import encode_batch
    from gateway.observe.sinks.syslog import format_message

    agent = "ua\x85nel\x9b2J \u2028 \u2029 caf\u00e9"
    batch: list[Entry] = [AccessEntry(record(user_agent=agent))]
    if profile == "syslog":
        data = format_message(batch[0], facility=16, hostname="gw", app_name="gateway", procid="1")
    else:
        data, _ = encode_batch(batch, profile=profile, index="logs", labels={}, hostname="gw")
    for raw in (b"\xc2\x9b", b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9"):
        assert raw not in data, profile
    assert b"9b2J" in data  # the value itself is kept, escaped


async def test_file_sink_with_no_backups_truncates_what_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    line = len(AccessEntry(record()).json()) + 1
    sink = FileSink("file", Delivery(), path=str(path), max_bytes=line + 1, backups=0)
    for index in range(3):
        await sink.send([AccessEntry(record(request_id=f"r{index}"))])
    assert [json.loads(x)["trace"]["id"] for x in path.read_text().splitlines()] == ["r2"]
    await sink.aclose()


async def test_a_link_to_a_fifo_as_the_file_sinks_path_is_followed(tmp_path: Path) -> None:
    """``/dev/stdout`` is such a link: the README's FIFO-or-/dev/stdout path keeps working."""
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    path = tmp_path / "stdout"
    path.symlink_to(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        sink = FileSink("file", Delivery(), path=str(path), max_bytes=10**6, backups=0)
        await sink.send([AccessEntry(record(request_id="fifo"))])
        assert b'"fifo"' in os.read(reader, 1 << 16)
        await sink.aclose()
    finally:
        os.close(reader)


class ThreadCalls:
    """``asyncio.to_thread`` as the stream sinks see it, counting the calls (and still making them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = asyncio.to_thread

        async def counted(func: Any, /, *args: Any) -> Any:
            self.calls += 1
            return await real(func, *args)

        monkeypatch.setattr(asyncio, "to_thread", counted)


async def test_file_sink_writes_on_the_loop_until_a_write_is_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    threads = ThreadCalls(monkeypatch)
    path = tmp_path / "access.log"
    sink = FileSink("file", Delivery(), path=str(path), max_bytes=10**6, backups=1)
    await sink.send([AccessEntry(record(request_id="r0"))])
    assert threads.calls == 0  # a regular file: written on the event loop
    assert b'"r0"' in path.read_bytes()
    # A slow write (a disk under pressure): the next writes go to a thread, and the log says so once.
    real_write = sink._write

    def slow_write(data: bytes) -> None:
        time.sleep(stream.SLOW_WRITE * 2)
        real_write(data)

    monkeypatch.setattr(sink, "_write", slow_write)
    await sink.send([AccessEntry(record(request_id="r1"))])
    assert threads.calls == 0
    assert "writing from a thread" in caplog.text
    monkeypatch.setattr(sink, "_write", real_write)
    await sink.send([AccessEntry(record(request_id="r2"))])
    await sink.send([AccessEntry(record(request_id="r3"))])
    assert threads.calls == 2
    ids = [json.loads(line)["trace"]["id"] for line in path.read_text().splitlines()]
    assert ids == ["r0", "r1", "r2", "r3"]
    # Once the time is up, the loop again.
    later = SimpleNamespace(monotonic=lambda: time.monotonic() + stream.OFF_LOOP_FOR * 2)
    monkeypatch.setattr("gateway.observe.sinks.stream.time", later)  # the sink's clock only
    await sink.send([AccessEntry(record(request_id="r4"))])
    assert threads.calls == 2
    await sink.aclose()


async def test_a_fifo_in_the_file_sinks_place_is_opened_and_written_from_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = ThreadCalls(monkeypatch)
    path = tmp_path / "access.fifo"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO to write waits for a reader
    try:
        sink = FileSink("file", Delivery(), path=str(path), max_bytes=10**6, backups=0)
        await sink.send([AccessEntry(record(request_id="fifo"))])
        assert threads.calls == 1
        assert b'"fifo"' in os.read(reader, 1 << 16)
        await sink.aclose()
    finally:
        os.close(reader)


@pytest.mark.parametrize("target", ["pipe", "file"])
async def test_stdout_is_written_on_the_loop_only_when_it_is_a_regular_file(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = ThreadCalls(monkeypatch)
    if target == "pipe":
        read_fd, write_fd = os.pipe()
    else:
        write_fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
        read_fd = os.open(tmp_path / "out", os.O_RDONLY)
    out = os.fdopen(write_fd, "w")
    monkeypatch.setattr(sys, "stdout", out)
    try:
        await StdoutSink("stdout", Delivery()).send([AccessEntry(record(request_id="out"))])
        assert threads.calls == (1 if target == "pipe" else 0)
        assert b'"out"' in os.read(read_fd, 1 << 16)
    finally:
        out.close()
        os.close(read_fd)


@dataclass
class Collector:
    url: str
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answered in order; then 200
    delay: float = 0.0  # seconds before each answer: a slow collector


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    app = web.Application()
    runner = web.AppRunner(app)
    state = Collector("")

    async def handle(request: web.Request) -> web.Response:
        state.requests.append((request.path, dict(request.headers), await request.read()))
        await asyncio.sleep(state.delay)
        status = state.statuses.pop(0) if state.statuses else 200
        if request.path.endswith("_bulk"):
            return web.json_response({"errors": False, "items": []}, status=status)
        return web.json_response({}, status=status)

    app.router.add_route("POST", "/{tail:.*}", handle)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def http_sink(url: str, profile: str, **options: Any) -> HttpSink:
    return HttpSink(
        profile,
        Delivery(batch_size=options.pop("batch_size", 10), retries=options.pop("retries", 3)),
        url=url,
        profile=profile,
        headers=options.pop("headers", {}),
        token=options.pop("token", "tok-123"),
        index="gw-access",
        labels={"env": "test"},
        timeout=5,
    )


async def deliver(sink: Sink, *entries: Any) -> SinkHub:
    hub = SinkHub([sink])
    await hub.start()
    for entry in entries:
        hub.publish(entry)
    await hub.close()
    return hub


async def test_elasticsearch_bulk_profile(collector: Collector) -> None:
    await deliver(
        http_sink(collector.url + "/_bulk", "elasticsearch"), AccessEntry(record()), SecurityEntry(security())
    )
    [(_path, headers, body)] = collector.requests
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers["Authorization"] == "Bearer tok-123"
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert lines[0] == {"create": {"_index": "gw-access"}} == lines[2]
    assert lines[1]["event"]["dataset"] == "gateway.access"
    assert lines[3]["event"]["action"] == "signin.failure"
    assert body.endswith(b"\n")


async def test_loki_push_profile(collector: Collector) -> None:
    await deliver(
        http_sink(collector.url + "/loki/api/v1/push", "loki"),
        AccessEntry(record()),
        SecurityEntry(security()),
    )
    [(path, headers, body)] = collector.requests
    assert path == "/loki/api/v1/push"
    assert headers["Content-Type"] == "application/json"
    streams = json.loads(body)["streams"]
    assert [s["stream"] for s in streams] == [
        {"app": "gateway", "env": "test", "stream": "access"},
        {"app": "gateway", "env": "test", "stream": "security"},
    ]
    [[stamp, line]] = streams[0]["values"]
    assert stamp == "1767225600250000000"
    assert json.loads(line)["url"]["query"] == "page=2&access_token=[REDACTED]"


async def test_splunk_hec_profile(collector: Collector) -> None:
    await deliver(http_sink(collector.url + "/services/collector/event", "splunk"), AccessEntry(record()))
    [(_path, headers, body)] = collector.requests
    assert headers["Authorization"] == "Splunk tok-123"
    event = json.loads(body)
    assert event["time"] == 1767225600.25
    assert event["sourcetype"] == "gateway:access"
    assert event["event"]["http"]["response"]["status_code"] == 200


async def test_ndjson_profile_and_custom_headers(collector: Collector) -> None:
    sink = http_sink(collector.url + "/ingest", "ndjson", token=None, headers={"X-Tenant": "a"})
    await deliver(sink, *(AccessEntry(record(request_id=str(i))) for i in range(25)))
    assert [len(body.splitlines()) for _, _, body in collector.requests] == [10, 10, 5]
    assert all("Authorization" not in h and h["X-Tenant"] == "a" for _, h, _ in collector.requests)


async def test_http_retries_server_errors_and_drops_refusals(collector: Collector) -> None:
    collector.statuses = [503, 429, 200, 400]
    hub = await deliver(
        http_sink(collector.url + "/x", "ndjson", batch_size=1), AccessEntry(record()), AccessEntry(record())
    )
    stats = hub.stats()["ndjson"]
    assert (stats.sent, stats.failures, stats.dropped) == (1, 3, 1)


async def test_a_flood_to_a_slow_collector_delivers_every_security_event(collector: Collector) -> None:
    """The attack run's sink, scaled down: 3000 anonymous requests against a collector that takes a
    while per batch, a dozen failed sign-ins and a lock-out in the middle of it."""
    collector.delay = 0.1
    sink = HttpSink(
        "coll",
        Delivery(queue_size=300, batch_size=50, flush_interval=0.05, retries=3),
        url=collector.url + "/ingest",
        profile="ndjson",
        headers={},
        token=None,
        index="gateway",
        labels={},
        timeout=5,
    )
    hub = SinkHub([sink], flush_timeout=10)
    await hub.start()
    expected = []
    for index in range(3000):
        hub.publish(AccessEntry(record(request_id=f"a{index}")))
        if index % 100 == 99:
            await asyncio.sleep(0.001)  # the requests take turns with the sink's task
        if 1000 <= index < 1012:
            kind = "account.locked" if index == 1011 else "signin.password"
            hub.publish(SecurityEntry(security(kind, details=json.dumps({"attempt": index}))))
            expected.append((kind, index))
        if index == 2000:
            hub.publish(checkpoint(7))
            expected.append(("audit.checkpoint", 7))
    await hub.close()
    lines = [json.loads(x) for _, _, body in collector.requests for x in body.splitlines()]
    audit = [
        (doc["event"]["action"], doc["gateway"]["details"]["attempt"])
        if "details" in doc["gateway"]
        else (doc["event"]["action"], doc["gateway"]["checkpoint"]["head_seq"])
        for doc in lines
        if doc["event"]["dataset"] == "gateway.audit"
    ]
    assert audit == expected
    stats = hub.stats()["coll"]
    assert stats.dropped > 1000  # the flood did overflow the queue
    assert (stats.dropped_security, stats.failures, stats.pending) == (0, 0, 0)
    # Every event offered is sent or dropped (an access entry that made way was queued, then dropped).
    assert stats.sent == len(lines)
    assert stats.sent + stats.dropped == 3000 + len(expected)


async def test_http_to_a_dead_port_counts_failures_and_drops() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        hub = await deliver(
            http_sink(f"http://127.0.0.1:{port}/x", "ndjson", retries=2), AccessEntry(record())
        )
    stats = hub.stats()["ndjson"]
    assert (stats.sent, stats.failures, stats.dropped) == (0, 2, 1)


def parse_frames(data: bytes) -> list[bytes]:
    """Split RFC 6587 octet-counted frames, checking each count."""
    out = []
    while data:
        count, _, rest = data.partition(b" ")
        out.append(rest[: int(count)])
        data = rest[int(count) :]
    return out


async def test_syslog_tcp_octet_counting_and_rfc5424_header() -> None:
    received = bytearray()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())
        done.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = SyslogSink(
        "syslog",
        Delivery(),
        address=f"tcp://127.0.0.1:{port}",
        facility="local3",
        app_name="gw",
        hostname="node-1",
    )
    await deliver(sink, AccessEntry(record()), SecurityEntry(security("account.locked", "{}")))
    await done.wait()
    server.close()
    first, second = (RFC5424.fullmatch(frame) for frame in parse_frames(bytes(received)))
    assert first is not None
    assert second is not None
    assert first.group(1) == b"158"  # local3 (19) * 8 + informational (6)
    assert second.group(1) == b"156"  # warning (4): an alert
    assert first.group(2) == b"2026-01-01T00:00:00.250000Z"
    assert (first.group(3), first.group(4), first.group(6)) == (b"node-1", b"gw", b"access")
    assert second.group(6) == b"security"
    assert json.loads(first.group(7))["http"]["request"]["method"] == "GET"


async def test_syslog_udp_sends_one_message_per_datagram() -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            queue.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    sink = SyslogSink("udp", Delivery(), address=f"udp://127.0.0.1:{port}", facility="auth", app_name="gw")
    await deliver(sink, AccessEntry(record()), AccessEntry(record()))
    messages = [await queue.get(), await queue.get()]
    transport.close()
    assert all(RFC5424.fullmatch(m) and m.startswith(b"<38>1 ") for m in messages)


async def test_syslog_tcp_to_a_dead_port_counts_failures() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sink = SyslogSink(
            "s", Delivery(retries=2), address=f"tcp://127.0.0.1:{port}", facility="auth", app_name="gw"
        )
        hub = await deliver(sink, AccessEntry(record()))
    stats = hub.stats()["s"]
    assert (stats.sent, stats.failures, stats.dropped) == (0, 2, 1)
