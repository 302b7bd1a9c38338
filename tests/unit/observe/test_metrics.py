"""Metrics in one process: the request observer, the audit listener, the sampler and the exposition.

Multi-process summing (workers and the admin listener) is tested against a real gateway in
tests/integration/test_metrics.py. Values are read from the exposition text the way Prometheus reads
it, with prometheus_client's own parser.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import yaml
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from admin.app import create_admin_app
from gateway.audit.trail import SecurityEvent
from gateway.authz.cache import DecisionCache
from gateway.authz.decision import Decision, Reason
from gateway.observe.metrics import MULTIPROC_ENV, Metrics, SessionCounter, exposition, redis_session_count
from gateway.observe.record import RequestRecord
from gateway.root.start import Role, start
from gateway.settings.loader import load_settings
from tests.support.fast_state import FAST_STATE_REDIS_URL


@pytest.fixture(autouse=True)
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests read this process's registry; the multiprocess files are the integration test's.
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, keyed by name and labels (after writing out the tallies)."""
    metrics.flush()
    text = exposition(local=metrics.registry).decode()
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


def record(**fields: Any) -> RequestRecord:
    base: dict[str, Any] = {
        "at": 0.0,
        "kind": "http",
        "route": "app",
        "status": 200,
        "decision": "allow",
        "total_seconds": 0.004,
        "policy_version": 3,
    }
    return RequestRecord(**(base | fields))


def event(kind: str, outcome: str = "success") -> SecurityEvent:
    return SecurityEvent(
        datetime(2026, 1, 1, tzinfo=UTC), kind, "user:alice", "alice", "192.0.2.1", outcome, "{}"
    )


# -- requests ---------------------------------------------------------------------------------------


def test_each_request_counts_once_under_its_route_status_class_and_decision() -> None:
    metrics = Metrics()
    metrics.observe_request(record())
    metrics.observe_request(record(status=204))
    metrics.observe_request(record(status=403, decision="deny"))
    metrics.observe_request(record(kind="forward-auth", route="", status=401, decision="unauthenticated"))

    requests = "gateway_requests_total"
    for code in ("200", "204"):
        assert (
            value(metrics, requests, kind="http", route="app", status="2xx", code=code, decision="allow") == 1
        )
    assert value(metrics, requests, kind="http", route="app", status="4xx", code="403", decision="deny") == 1
    assert (
        value(
            metrics,
            requests,
            kind="forward-auth",
            route="-",
            status="4xx",
            code="401",
            decision="unauthenticated",
        )
        == 1
    )
    assert sum(v for (name, _), v in samples(metrics).items() if name == requests) == 4


def test_latencies_go_to_their_histograms_and_missing_ones_are_not_observed() -> None:
    metrics = Metrics()
    metrics.observe_request(record(total_seconds=0.003, upstream_seconds=0.002, authz_seconds=0.000004))
    metrics.observe_request(record(total_seconds=0.0008))  # no upstream, no authorization

    assert value(metrics, "gateway_request_duration_seconds_count", route="app") == 2
    assert value(metrics, "gateway_request_duration_seconds_bucket", route="app", le="0.001") == 1
    assert value(metrics, "gateway_request_duration_seconds_bucket", route="app", le="0.005") == 2
    assert value(metrics, "gateway_upstream_duration_seconds_count", route="app") == 1
    assert value(metrics, "gateway_authz_duration_seconds_count") == 1
    # Sub-millisecond authorization lands in a µs bucket, not in the first millisecond one.
    assert value(metrics, "gateway_authz_duration_seconds_bucket", le="5e-06") == 1


def test_status_outside_the_classes_is_other() -> None:
    metrics = Metrics()
    metrics.observe_request(record(status=0, decision="error"))
    metrics.observe_request(record(status=799, decision="error"))
    requests = "gateway_requests_total"
    # No HTTP status (0) and one beyond HTTP's range keep the code label bounded: both are "other".
    assert (
        value(metrics, requests, kind="http", route="app", status="0xx", code="other", decision="error") == 1
    )
    assert (
        value(metrics, requests, kind="http", route="app", status="other", code="other", decision="error")
        == 1
    )
    metrics.observe_request(record(status=100))
    metrics.observe_request(record(status=599))
    codes = {dict(labels)["code"] for (name, labels) in samples(metrics) if name == requests}
    assert codes == {"other", "100", "599"}


def test_decision_cache_hits_and_misses_are_counted_at_each_flush() -> None:
    metrics = Metrics()
    cache = DecisionCache()
    cache.get((1, frozenset(), "app", "GET", "/"))  # before watching: not counted
    metrics.watch_decision_cache(cache)
    key = (1, frozenset({"user:alice"}), "app", "GET", "/docs")
    assert cache.get(key) is None
    cache.put(key, Decision(allowed=True, reason=Reason.POLICY_ALLOW, rule=None, principal=None, version=1))
    assert cache.get(key) is not None
    assert cache.get(key) is not None
    metrics.observe_request(record())

    assert value(metrics, "gateway_authz_cache_lookups_total", result="hit") == 2
    assert value(metrics, "gateway_authz_cache_lookups_total", result="miss") == 1


def test_policy_version_follows_the_requests_and_the_sampler() -> None:
    metrics = Metrics()
    current = [5]
    metrics.watch_policy_version(lambda: current[0])
    assert value(metrics, "gateway_policy_version") == 5
    metrics.observe_request(record(policy_version=6))
    assert value(metrics, "gateway_policy_version") == 6
    current[0] = 7
    metrics.sample()
    assert value(metrics, "gateway_policy_version") == 7


# -- security events --------------------------------------------------------------------------------


def test_audit_listener_counts_sign_ins_mfa_and_locks() -> None:
    metrics = Metrics()
    for e in (
        event("signin.password", "failure"),
        event("signin.password", "failure"),
        event("signin.password"),
        event("signin.oidc"),
        event("mfa.totp", "failure"),
        event("mfa.webauthn"),
        event("account.locked", "locked"),
        event("policy.changed"),
    ):
        metrics.observe_audit(e)

    assert value(metrics, "gateway_signins_total", method="password", outcome="failure") == 2
    assert value(metrics, "gateway_signins_total", method="password", outcome="success") == 1
    assert value(metrics, "gateway_signins_total", method="oidc", outcome="success") == 1
    assert value(metrics, "gateway_mfa_total", factor="totp", outcome="failure") == 1
    assert value(metrics, "gateway_mfa_total", factor="webauthn", outcome="success") == 1
    assert value(metrics, "gateway_account_locks_total") == 1
    assert value(metrics, "gateway_audit_events_total", kind="policy.changed", outcome="success") == 1
    assert value(metrics, "gateway_audit_events_total", kind="account.locked", outcome="locked") == 1


def test_any_outcome_but_success_is_a_failure() -> None:
    metrics = Metrics()
    metrics.observe_audit(event("signin.passkey", "refused"))
    assert value(metrics, "gateway_signins_total", method="passkey", outcome="failure") == 1


def test_threat_detections_and_their_blocks_are_counted_from_the_audit_event() -> None:
    metrics = Metrics()
    actions = [
        {"kind": "block_ip", "target": "192.0.2.1", "ok": True},
        {"kind": "lock_account", "target": "alice", "ok": False},
        {"kind": "revoke_sessions", "target": "alice", "ok": True},
    ]
    metrics.observe_audit(
        SecurityEvent(
            datetime(2026, 1, 1, tzinfo=UTC),
            "threat.credential_stuffing",
            "system:threat",
            "alice",
            "192.0.2.1",
            "detected",
            json.dumps({"rule": "credential_stuffing", "actions": actions}),
        )
    )
    metrics.observe_audit(event("threat.odd", "detected"))  # details without actions

    assert value(metrics, "gateway_threats_total", rule="credential_stuffing") == 1
    assert value(metrics, "gateway_threats_total", rule="odd") == 1
    assert value(metrics, "gateway_blocks_total", kind="ip") == 1
    assert value(metrics, "gateway_blocks_total", kind="account") == 0


# -- sinks ------------------------------------------------------------------------------------------


class _Stats:
    def __init__(self, queued: int, sent: int, dropped: int, failures: int, pending: int) -> None:
        self.queued, self.sent, self.dropped, self.failures = queued, sent, dropped, failures
        self.pending = pending


def test_sink_stats_become_queue_depth_and_counters_of_the_increase() -> None:
    metrics = Metrics()
    reports: list[dict[str, Any]] = [
        {
            "file": {"queued": 14, "sent": 10, "dropped": 0, "failures": 1, "pending": 4},
            "http": _Stats(10, 5, 3, 0, pending=5),
        },
        {
            "file": {
                "queued": 17,
                "sent": 15,
                "dropped": 2,
                "failures": 1,
                "pending": 2,
                "dropped_security": 1,
            },
            "http": _Stats(12, 5, 3, 0, pending=7),
        },
    ]
    metrics.watch_sinks(lambda: reports[0])
    metrics.sample()
    reports.pop(0)
    metrics.sample()

    assert value(metrics, "gateway_sink_queue_depth", sink="file") == 2
    assert value(metrics, "gateway_sink_queue_depth", sink="http") == 7
    assert value(metrics, "gateway_sink_events_total", sink="file", result="queued") == 17
    assert value(metrics, "gateway_sink_events_total", sink="file", result="sent") == 15
    assert value(metrics, "gateway_sink_events_total", sink="file", result="dropped") == 2
    assert value(metrics, "gateway_sink_events_total", sink="file", result="failed") == 1
    assert value(metrics, "gateway_sink_events_total", sink="file", result="dropped_security") == 1
    assert value(metrics, "gateway_sink_events_total", sink="http", result="dropped") == 3


def test_the_sink_hub_reports_through_the_same_hook() -> None:
    from gateway.observe.sinks import SinkHub

    metrics = Metrics()
    hub = SinkHub([])
    metrics.watch_sinks(hub.stats)
    metrics.sample()  # an empty hub is no error and no series
    assert not any(name.startswith("gateway_sink_") for name, _ in samples(metrics))


# -- exposition -------------------------------------------------------------------------------------


def test_exposition_parses_and_names_every_family() -> None:
    metrics = Metrics()
    metrics.observe_request(record(upstream_seconds=0.01, authz_seconds=0.00002))
    metrics.observe_audit(event("signin.password", "failure"))
    names = {f.name for f in text_string_to_metric_families(exposition(local=metrics.registry).decode())}
    assert {
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_upstream_duration_seconds",
        "gateway_authz_duration_seconds",
        "gateway_authz_cache_lookups",
        "gateway_signins",
        "gateway_mfa",
        "gateway_account_locks",
        "gateway_blocks",
        "gateway_threats",
        "gateway_audit_events",
        "gateway_sink_queue_depth",
        "gateway_sink_events",
        "gateway_policy_version",
    } <= names


# -- active sessions (real Redis) -------------------------------------------------------------------


@pytest.fixture
async def redis_namespace() -> AsyncIterator[str]:
    namespace = f"t:metrics:{secrets.token_hex(6)}:"
    yield namespace
    client = redis.asyncio.Redis.from_url(FAST_STATE_REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{namespace}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_active_sessions_are_the_session_keys_in_redis(redis_namespace: str) -> None:
    client = redis.asyncio.Redis.from_url(FAST_STATE_REDIS_URL)
    try:
        for n in range(3):
            await client.set(f"{redis_namespace}sess:{n:064x}", b"{}", ex=60)
        await client.set(f"{redis_namespace}usess:1", b"[]", ex=60)  # an index, not a session
    finally:
        await client.aclose()
    counter = SessionCounter(redis_session_count(FAST_STATE_REDIS_URL, redis_namespace), min_interval=0)
    await counter.refresh()
    metrics = Metrics()
    text = exposition(local=metrics.registry, extra=(counter,)).decode()
    found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert found["gateway_sessions_active"] == 3


async def test_a_failed_session_count_keeps_the_last_one() -> None:
    answers = [4]

    async def count() -> int:
        if not answers:
            raise ConnectionError("down")
        return answers.pop()

    counter = SessionCounter(count, min_interval=0)
    await counter.refresh()
    await counter.refresh()
    assert counter.value == 4


# -- the admin route --------------------------------------------------------------------------------


async def test_metrics_are_refused_to_a_peer_that_is_neither_loopback_nor_a_trusted_proxy(
    tmp_path: Path,
) -> None:
    config = {
        "listen": "127.0.0.1:8080",
        "public_url": "http://gw.test:8080",
        "data_dir": str(tmp_path / "data"),
        "admin": {"listen": "127.0.0.1:9443"},
        "routes": [{"name": "app", "host": "gw.test", "upstreams": ["http://127.0.0.1:9"], "mfa": "none"}],
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    path = tmp_path / "gateway.yaml"
    running = await start(path, load_settings(path), role=Role.ADMIN)
    try:
        # Litestar's test client connects as "testclient", which is no loopback address.
        async with AsyncTestClient(
            create_admin_app(running.services), base_url="http://gw.test:9443"
        ) as client:
            response = await client.get("/metrics")
            assert response.status_code == 403
            assert response.json()["error"] == "forbidden"
            assert running.services.metrics is not None  # start-up registered its metrics
    finally:
        await running.close()


# -- several processes ------------------------------------------------------------------------------

_CHILD = """
import os, sys
import prometheus_client  # imported before the directory is set, as in the gateway's master process
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from gateway.observe.metrics import Metrics
from gateway.observe.record import RequestRecord
metrics = Metrics()
metrics.watch_policy_version(lambda: 4)
for _ in range(int(sys.argv[2])):
    metrics.observe_request(RequestRecord(at=0.0, kind="http", route="app", status=200, decision="allow"))
metrics.flush()  # what closing the services does through Metrics.close when a worker stops
"""


def test_processes_are_summed_and_a_dead_ones_gauges_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for count in (3, 4):
        subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), str(count)], check=True, timeout=60)
    assert len(list(tmp_path.glob("gauge_livemin_*.db"))) == 2
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    found = {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(exposition().decode())
        for s in f.samples
    }
    labels = frozenset(
        {"kind": "http", "route": "app", "status": "2xx", "code": "200", "decision": "allow"}.items()
    )
    assert found[("gateway_requests_total", labels)] == 7
    # Both children have exited: their policy versions no longer count, their requests still do.
    assert not list(tmp_path.glob("gauge_livemin_*.db"))
    assert ("gateway_policy_version", frozenset()) not in found


def test_requests_reach_the_values_only_when_flushed_and_are_written_once() -> None:
    metrics = Metrics()
    child = metrics.requests.labels(kind="http", route="app", status="2xx", code="200", decision="allow")
    for _ in range(3):
        metrics.observe_request(record(total_seconds=0.02, upstream_seconds=0.5, authz_seconds=0.00003))
    assert child._value.get() == 0  # tallied in process, not yet in the (shared) values
    metrics.flush()
    metrics.flush()  # a second flush with nothing new adds nothing
    assert (
        value(
            metrics,
            "gateway_requests_total",
            kind="http",
            route="app",
            status="2xx",
            code="200",
            decision="allow",
        )
        == 3
    )
    assert value(metrics, "gateway_request_duration_seconds_bucket", route="app", le="0.01") == 0
    assert value(metrics, "gateway_request_duration_seconds_bucket", route="app", le="0.025") == 3
    assert value(metrics, "gateway_request_duration_seconds_sum", route="app") == pytest.approx(0.06)
    assert value(metrics, "gateway_upstream_duration_seconds_bucket", route="app", le="0.25") == 0
    assert value(metrics, "gateway_upstream_duration_seconds_bucket", route="app", le="0.5") == 3
    assert value(metrics, "gateway_authz_duration_seconds_bucket", le="2.5e-05") == 0
    assert value(metrics, "gateway_authz_duration_seconds_bucket", le="5e-05") == 3
    assert value(metrics, "gateway_authz_duration_seconds_count") == 3


def test_an_observation_on_a_bucket_bound_counts_in_that_bucket() -> None:
    metrics = Metrics()
    metrics.observe_request(record(total_seconds=0.005))  # exactly a bound: "le" means <=
    metrics.observe_request(record(total_seconds=60.0))  # above every bound: only +Inf
    assert value(metrics, "gateway_request_duration_seconds_bucket", route="app", le="0.0025") == 0
    assert value(metrics, "gateway_request_duration_seconds_bucket", route="app", le="0.005") == 1
    assert value(metrics, "gateway_request_duration_seconds_bucket", route="app", le="30.0") == 1
    assert value(metrics, "gateway_request_duration_seconds_bucket", route="app", le="+Inf") == 2


async def test_closing_writes_what_is_still_tallied() -> None:
    metrics = Metrics()
    metrics.start()
    metrics.observe_request(record())
    await metrics.close()
    assert (
        metrics.requests.labels(
            kind="http", route="app", status="2xx", code="200", decision="allow"
        )._value.get()
        == 1
    )


def test_events_sent_as_an_unencodable_stand_in_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.observe import access

    # The warning's once-a-minute memory goes back as it was: another test waits for the warning.
    monkeypatch.setattr(access, "_unencodable_warned_at", access._unencodable_warned_at)
    metrics = Metrics()
    metrics.sample()
    assert value(metrics, "gateway_log_unencodable_events_total") == 0
    # A JSON escape of a lone surrogate: msgspec refuses to encode it, the sinks get a stand-in.
    for surrogate in ("\\ud800", "\\udfff"):
        bad = dataclasses.replace(event("signin.password", "failure"), details=f'{{"name": "{surrogate}"}}')
        access.SecurityEntry(bad).json()
    metrics.sample()
    assert value(metrics, "gateway_log_unencodable_events_total") == 2
    metrics.sample()  # counted once
    assert value(metrics, "gateway_log_unencodable_events_total") == 2
