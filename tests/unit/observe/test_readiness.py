"""Readiness: the verdict's rules, the probe monitor (fake clock, real tasks) and the gauges.

The same rules against real PostgreSQL and Redis outages are in tests/integration/test_readiness.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.clock import FakeClock
from gateway.observe.metrics import MULTIPROC_ENV, Metrics, exposition
from gateway.observe.readiness import (
    Component,
    ProbeResult,
    ReadinessMonitor,
    assess,
    sessions_needed,
)
from gateway.settings.schema import Route
from tests.support.wait import wait_until_async

UP = ProbeResult(ok=True)
DOWN = ProbeResult(ok=False, error="connection refused")
# Bound on waiting for background work, so a bug fails the test instead of hanging it.
GUARD = 10


def verdict(
    *,
    storage: ProbeResult = UP,
    state: ProbeResult = UP,
    policy_ok: bool = True,
    sessions: bool = True,
    probes: Mapping[Component, ProbeResult] | None = None,
) -> Any:
    policy: dict[str, Any] = {"ok": policy_ok, "version": 3}
    if not policy_ok:
        policy["error"] = "policy not confirmed current for 400s"
    return assess(
        config={"ok": True, "generation": 1},
        policy=policy,
        probes=probes if probes is not None else {Component.STORAGE: storage, Component.STATE: state},
        sessions=sessions,
        upstreams={"app": [{"url": "http://10.0.0.1:80"}]},
    )


# -- the verdict -----------------------------------------------------------------------------------


def test_everything_up_is_ready_and_not_degraded() -> None:
    result = verdict()
    assert result.ready is True
    assert result.degraded == ()
    assert all(result.up.values())
    report = result.report()
    assert report["checks"]["storage"] == {"ok": True, "required": False}
    assert report["checks"]["state"] == {"ok": True, "required": True}
    assert report["checks"]["upstreams"] == {"app": [{"url": "http://10.0.0.1:80"}]}


def test_a_database_outage_degrades_sign_in_but_keeps_the_replica_ready() -> None:
    result = verdict(storage=DOWN)
    assert result.ready is True
    assert "sign-in" in result.degraded
    assert result.up[Component.STORAGE] is False
    storage = result.report()["checks"]["storage"]
    assert storage["ok"] is False
    assert storage["required"] is False
    assert storage["error"] == "connection refused"
    assert "sign-in" in storage["unavailable"]


def test_an_unreachable_session_store_takes_the_replica_out_when_routes_need_sessions() -> None:
    result = verdict(state=DOWN)
    assert result.ready is False
    assert "sessions" in result.degraded
    assert result.report()["checks"]["state"]["required"] is True


def test_an_unreachable_session_store_does_not_matter_when_every_route_is_public() -> None:
    result = verdict(state=DOWN, sessions=False)
    assert result.ready is True
    assert "sessions" in result.degraded  # still reported


def test_a_stale_policy_takes_the_replica_out() -> None:
    result = verdict(policy_ok=False)
    assert result.ready is False
    assert result.degraded == ("authorization",)


def test_a_component_never_probed_counts_as_down() -> None:
    result = verdict(probes={})
    assert result.ready is False
    assert result.report()["checks"]["state"]["error"] == "not started"


def test_both_stores_down_lists_each_lost_capability_once() -> None:
    degraded = verdict(storage=DOWN, state=DOWN).degraded
    assert len(degraded) == len(set(degraded))
    assert {"sign-in", "sessions", "mfa"} <= set(degraded)


@pytest.mark.parametrize(
    ("public_paths", "needed"),
    [((), True), (("/static/*",), True), (("/*",), False), (("*",), False), (("/a/*", "/*"), False)],
)
def test_sessions_are_needed_unless_every_route_is_public(
    public_paths: tuple[str, ...], needed: bool
) -> None:
    public = Route(name="open", host="a.test", upstreams=("http://10.0.0.1",), public_paths=("/*",))
    route = Route(name="app", host="b.test", upstreams=("http://10.0.0.2",), public_paths=public_paths)
    assert sessions_needed([public, route]) is needed
    assert sessions_needed([public]) is False


# -- the monitor -----------------------------------------------------------------------------------


class Service:
    """A probe target whose answer the test controls; counts the probes it received."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def ping(self) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error


async def test_results_are_reused_within_max_age_and_probed_again_after(clock: FakeClock) -> None:
    db = Service()
    monitor = ReadinessMonitor({Component.STORAGE: db.ping}, max_age=1.0, clock=clock)
    assert (await monitor.current())[Component.STORAGE] == UP
    clock.advance(0.5)
    db.error = ConnectionRefusedError("refused")
    assert (await monitor.current())[Component.STORAGE] == UP  # anyone may ask: no probe per request
    assert db.calls == 1
    clock.advance(0.6)
    assert (await monitor.current())[Component.STORAGE] == ProbeResult(ok=False, error="refused")
    assert db.calls == 2
    await monitor.close()


async def test_concurrent_callers_share_one_probe() -> None:
    db = Service()
    db.gate = asyncio.Event()
    monitor = ReadinessMonitor({Component.STORAGE: db.ping}, clock=FakeClock())
    waiting = [asyncio.ensure_future(monitor.current()) for _ in range(20)]
    await asyncio.sleep(0)  # one turn of the loop: every caller is now waiting on the one probe
    db.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*waiting), GUARD)
    assert db.calls == 1
    assert all(r[Component.STORAGE] == UP for r in results)
    await monitor.close()


async def test_a_probe_that_hangs_is_down_after_the_timeout() -> None:
    db = Service()
    db.gate = asyncio.Event()  # never set: a database that accepts and never answers
    monitor = ReadinessMonitor({Component.STORAGE: db.ping}, timeout=0.05, clock=FakeClock())
    result = await asyncio.wait_for(monitor.current(), GUARD)
    assert result[Component.STORAGE] == ProbeResult(ok=False, error="no answer within 0.05s")
    await monitor.close()


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_probe() -> None:
    db = Service()
    db.gate = asyncio.Event()
    monitor = ReadinessMonitor({Component.STORAGE: db.ping}, clock=FakeClock())
    impatient = asyncio.ensure_future(monitor.current())
    patient = asyncio.ensure_future(monitor.current())
    await asyncio.sleep(0)  # one turn of the loop: both callers are waiting on the probe
    impatient.cancel()
    db.gate.set()
    assert (await asyncio.wait_for(patient, GUARD))[Component.STORAGE] == UP
    await monitor.close()


async def test_transitions_are_logged_once_each_way(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.readiness")
    db = Service()
    monitor = ReadinessMonitor({Component.STORAGE: db.ping}, clock=FakeClock())
    await monitor.refresh()
    db.error = ConnectionRefusedError("refused")
    await monitor.refresh()
    await monitor.refresh()
    db.error = None
    await monitor.refresh()
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.readiness"]
    assert len(messages) == 2, messages
    assert messages[0].startswith("readiness: storage unavailable (refused)")
    assert "sign-in" in messages[0]
    assert messages[1] == "readiness: storage reachable again"
    await monitor.close()


async def test_the_background_loop_keeps_probing_until_closed() -> None:
    db = Service()
    monitor = ReadinessMonitor({Component.STORAGE: db.ping}, interval=0.01)
    await monitor.start()
    assert db.calls >= 1  # start() probes before returning

    await wait_until_async(lambda: db.calls >= 3, timeout=GUARD, what="two more background probes")
    await monitor.close()
    await monitor.close()  # idempotent (the root closes it again after a failed start)


# -- the gauges ------------------------------------------------------------------------------------


@pytest.fixture
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def gauges(metrics: Metrics) -> dict[tuple[str, str], float]:
    text = exposition(local=metrics.registry).decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("gateway_ready", "gateway_component_up"):
                found[(sample.name, sample.labels.get("component", ""))] = sample.value
    return found


@pytest.mark.usefixtures("_one_process")
def test_gauges_show_the_verdict_and_each_component() -> None:
    metrics = Metrics()
    state = {"storage": True}

    def read() -> tuple[bool, Mapping[str, bool]]:
        result = verdict(storage=UP if state["storage"] else DOWN)
        return result.ready, {c.value: up for c, up in result.up.items()}

    metrics.watch_readiness(read)
    assert gauges(metrics) == {
        ("gateway_ready", ""): 1.0,
        ("gateway_component_up", "config"): 1.0,
        ("gateway_component_up", "storage"): 1.0,
        ("gateway_component_up", "state"): 1.0,
        ("gateway_component_up", "policy"): 1.0,
    }
    state["storage"] = False
    metrics.sample()
    found = gauges(metrics)
    assert found[("gateway_component_up", "storage")] == 0.0
    assert found[("gateway_ready", "")] == 1.0  # degraded, still ready
