"""Access log and security events through a real gateway into real sinks.

One gateway process writes to every sink type at once: stdout (its log), a rotating file, Debian's
rsyslog over TCP (octet-counted), UDP and TLS, and an HTTP collector (aiohttp, in this process) speaking
as Elasticsearch ``_bulk``, Loki push, Splunk HEC and plain NDJSON. Secrets are sent everywhere a
client can put them (cookies, Authorization, query parameters, form bodies, the sign-in password, an
OTP code); the events must arrive and none of the secrets may appear in any output.

A second gateway logs to an HTTP collector and a syslog server that are both down: every request must
still succeed, and the losses must be counted. A third floods a slow HTTP collector with anonymous
requests while someone guesses a password: access entries are dropped, no security event is.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.integration.harness import (
    add_user,
    dead_port,
    echo_route,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
    stop,
    wait_for_port,
    wait_until,
)
from tests.integration.http_client import PASSWORD, login, post_form
from tests.support.certs import self_signed

# Plain-looking on purpose: these must be caught by where they are (names, headers), not by looking random.
SECRETS = {
    "cookie": "cookie-value-hunter-one",
    "other_cookie": "second-cookie-hunter-two",
    "bearer": "bearer-hunter-three",
    "access_token": "query-token-hunter-four",
    "api_key": "query-apikey-hunter-five",
    "code": "oauth-code-hunter-six",
    "form_password": "form-password-hunter-seven",
    "wrong_password": "wrong-password-hunter-eight",
    "otp": "918273",
}
MARKER = "visible-marker-7f3a"
RSYSLOG = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
RSYSLOG_LINE = re.compile(r"(\S+)\|(\S+)\|(\S+)\|(\S+)\|(\d+)\|(\S+)\|(\S+)\|(.*)")


@dataclass
class Rsyslog:
    tcp: int
    udp: int
    tls: int
    ca_file: Path
    output: Path

    def lines(self) -> list[str]:
        return self.output.read_text(errors="replace").splitlines() if self.output.exists() else []


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    """rsyslogd in the foreground: imtcp (plain and TLS) and imudp on free ports, everything to a file."""
    if not Path(RSYSLOG).exists():
        pytest.skip("rsyslogd is not installed (scripts/ensure-test-deps installs it)")
    tmp = tmp_path_factory.mktemp("rsyslog")
    cert, key = self_signed(tmp)
    server = Rsyslog(free_port(), free_port(), free_port(), cert, tmp / "messages.log")
    (tmp / "rsyslog.conf").write_text(
        f"""
global(workDirectory="{tmp}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{cert}" defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" maxSessions="100")
module(load="imudp")
template(name="fields" type="string"
         string="%syslogfacility-text%.%syslogseverity-text%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%inputname%|%msg%\\n")
input(type="imtcp" port="{server.tcp}" address="127.0.0.1" name="tcp")
input(type="imtcp" port="{server.tls}" address="127.0.0.1" name="tls"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imudp" port="{server.udp}" address="127.0.0.1" name="udp")
action(type="omfile" file="{server.output}" template="fields" flushOnTXEnd="on" asyncWriting="off")
"""
    )
    with (tmp / "rsyslogd.out").open("wb") as out:
        proc = subprocess.Popen(
            [RSYSLOG, "-n", "-f", str(tmp / "rsyslog.conf"), "-i", str(tmp / "rsyslog.pid")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(server.tcp, proc=proc)
        wait_for_port(server.tls, proc=proc)
        yield server
    finally:
        stop(proc)


@dataclass
class Collector:
    """An HTTP log collector in a thread: records every request it receives, answering each after
    ``delay`` seconds."""

    port: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self, path: str) -> list[bytes]:
        with self.lock:
            return [body for p, _, body in self.requests if p == path]

    def headers(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [headers for p, headers, _ in self.requests if p == path]

    def everything(self) -> bytes:
        with self.lock:
            return b"\n".join(body for _, _, body in self.requests)


@contextmanager
def serve_collector(delay: float = 0.0) -> Iterator[Collector]:
    state = Collector(port=free_port(), delay=delay)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(state.delay)
        with state.lock:
            state.requests.append((request.path, dict(request.headers), body))
        if request.path.endswith("/_bulk"):
            return web.json_response({"took": 1, "errors": False, "items": []})
        if request.path.startswith("/services/collector"):
            return web.json_response({"text": "Success", "code": 0})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", state.port).start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield state
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with serve_collector() as state:
        yield state


def http_sink(collector: Collector, path: str, profile: str) -> dict[str, Any]:
    return {
        "type": "http",
        "name": profile,
        "url": collector.url + path,
        "profile": profile,
        "token": "collector-token",
        "batch_size": 20,
        "flush_interval": "200ms",
    }


@dataclass
class Outputs:
    file: Path
    gateway_log: Path
    rsyslog: Rsyslog
    collector: Collector


@pytest.fixture(scope="module")
def outputs(
    tmp_path_factory: pytest.TempPathFactory, rsyslog: Rsyslog, collector: Collector
) -> Iterator[Outputs]:
    tmp = tmp_path_factory.mktemp("access")
    port = free_port()
    with run_echo() as echo:
        routes = [echo_route(echo)]
        sinks: list[dict[str, Any]] = [
            {"type": "stdout"},
            {"type": "file", "path": "logs/access.log", "max_bytes": "10MiB", "backups": 2},
            {"type": "syslog", "name": "rsyslog-tcp", "address": f"tcp://127.0.0.1:{rsyslog.tcp}"},
            {"type": "syslog", "name": "rsyslog-udp", "address": f"udp://127.0.0.1:{rsyslog.udp}"},
            {
                "type": "syslog",
                "name": "rsyslog-tls",
                "address": f"tls://localhost:{rsyslog.tls}",
                "ca_file": str(rsyslog.ca_file),
                "facility": "local5",
                "app_name": "gw-tls",
            },
            http_sink(collector, "/_bulk", "elasticsearch"),
            http_sink(collector, "/loki/api/v1/push", "loki"),
            http_sink(collector, "/services/collector/event", "splunk"),
            http_sink(collector, "/ingest", "ndjson"),
        ]
        config = gateway_config(
            tmp,
            port,
            routes,
            session={"insecure_cookies": True},
            logging={"sinks": sinks, "flush_timeout": "5s"},
        )
        (tmp / "logs").mkdir()
        with run_gateway(tmp, config) as gw:
            add_user(gw.config_path, "alice", PASSWORD)
            send_secrets_everywhere(gw.url)
            yield Outputs(tmp / "logs" / "access.log", gw.log_path, rsyslog, collector)


def send_secrets_everywhere(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.get(
            "/anything",
            params={
                "access_token": SECRETS["access_token"],
                "apiKey": SECRETS["api_key"],
                "code": SECRETS["code"],
                "q": MARKER,
            },
            headers={
                "Authorization": f"Bearer {SECRETS['bearer']}",
                "Cookie": f"gateway_session={SECRETS['cookie']}; other={SECRETS['other_cookie']}",
            },
        )
        assert response.status_code == 200
        response = client.post("/form", data={"password": SECRETS["form_password"], "note": MARKER})
        assert response.status_code == 200
    with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as client:
        client.get("/.gateway/login")
        post_form(client, "/.gateway/login", {"username": "alice", "password": SECRETS["wrong_password"]})
        assert login(client, "alice").status_code in (200, 302, 303)
        post_form(client, "/.gateway/mfa/totp", {"code": SECRETS["otp"]})


def _secret_in(text: str) -> list[str]:
    found = [name for name, secret in SECRETS.items() if name != "otp" and secret in text]
    if re.search(rf"(?<!\d){SECRETS['otp']}(?!\d)", text):
        found.append("otp")
    if PASSWORD in text:
        found.append("password")
    return found


def _json_lines(text: str) -> list[dict[str, Any]]:
    docs = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                docs.append(json.loads(line))
            except ValueError:
                continue
    return docs


def _has_marker_and_signin(docs: list[dict[str, Any]]) -> bool:
    marker = any(MARKER in d.get("url", {}).get("query", "") for d in docs)
    signin = any(d.get("event", {}).get("action") == "signin.password" for d in docs)
    return marker and signin


@pytest.mark.peer
def test_events_arrive_in_the_file_with_secrets_redacted(outputs: Outputs) -> None:
    wait_until(
        lambda: outputs.file.exists() and _has_marker_and_signin(_json_lines(outputs.file.read_text()))
    )
    text = outputs.file.read_text()
    docs = _json_lines(text)
    [access] = [d for d in docs if MARKER in d.get("url", {}).get("query", "")]
    assert access["url"]["query"] == f"access_token=[REDACTED]&apiKey=[REDACTED]&code=[REDACTED]&q={MARKER}"
    assert access["http"]["request"]["method"] == "GET"
    assert access["http"]["response"]["status_code"] == 200
    assert access["gateway"]["route"] == "echo"
    assert access["source"]["ip"] == "127.0.0.1"
    assert access["trace"]["id"]
    assert _secret_in(text) == []


@pytest.mark.peer
def test_the_stdout_sink_writes_to_the_gateway_log(outputs: Outputs) -> None:
    wait_until(lambda: _has_marker_and_signin(_json_lines(outputs.gateway_log.read_text(errors="replace"))))
    assert _secret_in(outputs.gateway_log.read_text(errors="replace")) == []


@pytest.mark.peer
def test_rsyslog_receives_rfc5424_over_tcp_udp_and_tls(outputs: Outputs) -> None:
    def inputs() -> set[str]:
        return {m.group(7) for m in map(RSYSLOG_LINE.fullmatch, outputs.rsyslog.lines()) if m}

    wait_until(
        lambda: inputs() >= {"tcp", "udp", "tls"} and any(MARKER in x for x in outputs.rsyslog.lines())
    )
    wait_until(lambda: any("signin.password" in x for x in outputs.rsyslog.lines()))
    parsed = [m for m in map(RSYSLOG_LINE.fullmatch, outputs.rsyslog.lines()) if m]
    access = [m for m in parsed if m.group(6) == "access"]
    security = [m for m in parsed if m.group(6) == "security"]
    assert access
    assert security
    # rsyslog parsed the RFC 5424 header: facility.severity, app-name, procid, msgid, JSON body.
    tcp = [m for m in access if m.group(7).startswith("tcp")]
    assert {m.group(1) for m in tcp} == {"authpriv.info"}
    assert {m.group(4) for m in tcp} == {"gateway"}
    tls = [m for m in access if m.group(7).startswith("tls")]
    assert {m.group(1) for m in tls} == {"local5.info"}
    assert {m.group(4) for m in tls} == {"gw-tls"}
    assert all(m.group(2).startswith("20") for m in parsed)
    body = json.loads(next(m.group(8) for m in tcp if MARKER in m.group(8)))
    assert body["url"]["query"].endswith(f"q={MARKER}")
    assert _secret_in(outputs.rsyslog.output.read_text(errors="replace")) == []


@pytest.mark.peer
def test_http_collector_receives_every_profile(outputs: Outputs) -> None:
    collector = outputs.collector

    def docs(path: str) -> list[dict[str, Any]]:
        return [d for body in collector.bodies(path) for d in _json_lines(body.decode())]

    wait_until(lambda: _has_marker_and_signin(docs("/_bulk")))
    wait_until(lambda: _has_marker_and_signin(docs("/ingest")))
    bulk = docs("/_bulk")
    assert bulk[0] == {"create": {"_index": "gateway"}}
    assert all(h["Content-Type"] == "application/x-ndjson" for h in collector.headers("/_bulk"))
    assert all(h["Authorization"] == "Bearer collector-token" for h in collector.headers("/_bulk"))

    def loki_lines() -> list[dict[str, Any]]:
        out = []
        for body in collector.bodies("/loki/api/v1/push"):
            for stream in json.loads(body)["streams"]:
                assert stream["stream"]["app"] == "gateway"
                out += [
                    json.loads(line) | {"_stream": stream["stream"]["stream"]} for _, line in stream["values"]
                ]
        return out

    wait_until(lambda: _has_marker_and_signin(loki_lines()))
    assert {d["_stream"] for d in loki_lines()} == {"access", "security"}

    def splunk_events() -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for body in collector.bodies("/services/collector/event")
            for line in body.decode().splitlines()
        ]

    wait_until(lambda: _has_marker_and_signin([e["event"] for e in splunk_events()]))
    assert all(
        h["Authorization"] == "Splunk collector-token" for h in collector.headers("/services/collector/event")
    )
    assert {e["sourcetype"] for e in splunk_events()} == {"gateway:access", "gateway:security"}
    assert _secret_in(collector.everything().decode(errors="replace")) == []


def test_traffic_while_the_sinks_are_down(tmp_path: Path) -> None:
    requests = 200
    with run_echo() as echo, dead_port() as http_port, dead_port() as syslog_port:
        sinks = [
            {"type": "http", "name": "dead-http", "url": f"http://127.0.0.1:{http_port}/_bulk",
             "profile": "elasticsearch", "retries": 2, "batch_size": 10, "flush_interval": "50ms",
             "queue_size": 20},
            {"type": "syslog", "name": "dead-syslog", "address": f"tcp://127.0.0.1:{syslog_port}",
             "retries": 2, "queue_size": 20},
        ]  # fmt: skip
        port = free_port()
        config = gateway_config(
            tmp_path, port, [echo_route(echo)], logging={"sinks": sinks, "flush_timeout": "1s"}
        )
        with run_gateway(tmp_path, config) as gw:
            with httpx.Client(base_url=gw.url, timeout=30) as client:
                statuses = [client.get(f"/item/{i}").status_code for i in range(requests)]
            assert statuses == [200] * requests  # error rate 0
            stop(gw.proc)
            log = gw.log()
    for name in ("dead-http", "dead-syslog"):
        match = re.search(
            rf"log sink {name} closed: queued=(\d+) sent=(\d+) dropped=(\d+) failures=(\d+)", log
        )
        assert match, log[-2000:]
        queued, sent, dropped, failures = map(int, match.groups())
        assert sent == 0
        assert failures > 0
        # Every request's event was offered (plus the harness's readiness probes): the queue took some,
        # lost with the sink, and refused the rest.
        assert queued < requests
        assert dropped >= requests


def test_a_flood_to_a_slow_collector_drops_access_entries_and_no_security_event(tmp_path: Path) -> None:
    """The attack run: 3000 anonymous requests from 20 connections, a collector that takes its time
    per batch, and a password guessed a dozen times a second in. The queue dropped the sign-in failures
    and the lock-out with the access entries; now it drops access entries to keep them."""
    requests, connections = 3000, 20
    with run_echo() as echo, serve_collector(delay=0.5) as collector:
        sinks = [
            {"type": "http", "name": "coll", "url": f"{collector.url}/ingest", "profile": "ndjson",
             "batch_size": 50, "flush_interval": "200ms", "queue_size": 300, "retries": 3},
        ]  # fmt: skip
        config = gateway_config(
            tmp_path,
            free_port(),
            [echo_route(echo)],
            session={"insecure_cookies": True},
            logging={"sinks": sinks, "flush_timeout": "10s"},
            audit={"checkpoint_interval": "1s"},
            # Locked at the tenth failure without back-off waits; no threat response blocks the flood.
            regulation={"free_attempts": 9, "max_failures": 10, "lock_time": "15m"},
            threat={"enabled": False},
        )
        with run_gateway(tmp_path, config) as gw:
            add_user(gw.config_path, "admin", PASSWORD)
            database = tmp_path / "data" / "gateway.db"
            with sqlite3.connect(database) as conn:
                before = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0]

            guessed = threading.Event()

            def flood(connection: int) -> list[int]:
                # Its share of the requests, and on until the guessing is over: under pressure throughout.
                statuses: list[int] = []
                with httpx.Client(base_url=gw.url, timeout=30) as client:
                    while len(statuses) < requests // connections or not guessed.is_set():
                        statuses.append(client.get(f"/public/{connection}/{len(statuses)}").status_code)
                return statuses

            with ThreadPoolExecutor(connections) as pool:
                flooding = [pool.submit(flood, connection) for connection in range(connections)]
                time.sleep(1)
                try:
                    with httpx.Client(base_url=gw.url, follow_redirects=False, timeout=30) as client:
                        for attempt in range(12):
                            post_form(
                                client,
                                "/.gateway/login",
                                {"username": "admin", "password": f"wrong-{attempt}"},
                            )
                finally:
                    guessed.set()
                statuses = [status for future in flooding for status in future.result()]
            assert len(statuses) >= requests
            assert set(statuses) == {200}

            # What the trail recorded meanwhile: the sign-in failures, the lock-out, the refusals after it.
            with sqlite3.connect(database) as conn:
                recorded = conn.execute(
                    "SELECT kind, outcome FROM audit_events WHERE seq > ? ORDER BY seq", (before,)
                ).fetchall()
                last_seq = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0]
            kinds = Counter(kind for kind, _ in recorded)
            assert kinds["signin.password"] >= 10
            assert kinds["account.locked"] == 1

            def audit() -> list[dict[str, Any]]:
                return [
                    doc
                    for body in collector.bodies("/ingest")
                    for doc in _json_lines(body.decode())
                    if doc["event"]["dataset"] == "gateway.audit"
                ]

            def arrived() -> list[tuple[str, str]]:
                return [
                    (doc["event"]["action"], doc["gateway"]["outcome"])
                    for doc in audit()
                    if doc["event"]["action"] in kinds
                ]

            # Every sign-in failure and the lock-out, in the order they were recorded; and a checkpoint
            # of the chain that holds them.
            wait_until(lambda: len(arrived()) >= len(recorded), timeout=60, what="the security events")
            assert arrived() == recorded
            wait_until(
                lambda: any(
                    doc["gateway"]["checkpoint"]["head_seq"] >= last_seq
                    for doc in audit()
                    if doc["event"]["action"] == "audit.checkpoint"
                ),
                timeout=60,
                what="a checkpoint of the sign-in failures",
            )
            stop(gw.proc)
            log = gw.log()
    access = [
        doc for body in collector.bodies("/ingest") for doc in _json_lines(body.decode())
        if doc["event"]["dataset"] == "gateway.access"
    ]  # fmt: skip
    match = re.search(
        r"log sink coll closed: queued=\d+ sent=(\d+) dropped=(\d+) failures=(\d+) dropped_security=(\d+)",
        log,
    )
    assert match, log[-2000:]
    sent, dropped, failures, dropped_security = map(int, match.groups())
    assert dropped_security == 0
    assert dropped > len(statuses) // 2  # the flood did overflow the queue: access entries were dropped
    assert len(access) < len(statuses)
    assert failures == 0
    assert sent + dropped >= len(statuses) + len(recorded)


def test_access_log_off_registers_no_observer(tmp_path: Path) -> None:
    with run_echo() as echo:
        port = free_port()
        log_file = tmp_path / "access.log"
        config = gateway_config(
            tmp_path,
            port,
            [echo_route(echo)],
            logging={"access_log": False, "sinks": [{"type": "file", "path": str(log_file)}]},
        )
        with run_gateway(tmp_path, config) as gw:
            with httpx.Client(base_url=gw.url, timeout=30) as client:
                assert client.get(f"/?q={MARKER}").status_code == 200
            stop(gw.proc)
    assert not log_file.exists() or MARKER not in log_file.read_text()
