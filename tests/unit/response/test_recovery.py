"""The recovery checklist's readiness and policy-version checks, on SQLite and PostgreSQL.

The readiness check probes this process's stores as ``/.gateway/ready`` does and reads what every
serving worker last reported of its own readiness (the replica registry); the policy-version check
expects the version restored for the incident, else the one sealed with the evidence at containment.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.trail import AuditLog
from gateway.authz.store import PolicyStore
from gateway.clock import FakeClock
from gateway.observe.replicas import Heartbeat, ReplicaRegistry
from gateway.response.cases import CaseView, EntryView
from gateway.response.phases import Phase
from gateway.response.recovery import ExpectedPolicy, _evidence, expected_policy, readiness_check
from gateway.settings.loader import parse_settings
from gateway.settings.schema import Settings
from gateway.store.db import Database
from gateway.store.fast import FastState, MemoryFastState, RedisFastState

AT = datetime(2027, 1, 15, 10, 0, tzinfo=UTC)


@pytest.fixture
def settings() -> Settings:
    return parse_settings("public_url: https://auth.example.com\n")


@pytest.fixture
async def memory_state() -> AsyncIterator[FastState]:
    state = MemoryFastState()
    yield state
    await state.close()


async def _check(settings: Settings, db: Database, fast: FastState, clock: FakeClock) -> tuple[bool, str]:
    policy = PolicyStore(db, fast, AuditLog(db, clock=clock), clock)
    check = await readiness_check(settings=settings, db=db, fast=fast, policy=policy, clock=clock)
    assert check.name == "readiness"
    return check.passed, check.detail


def _worker(db: Database, clock: FakeClock) -> ReplicaRegistry:
    return ReplicaRegistry(db, role="worker", version="1.0", clock=clock)


async def test_ready_when_the_stores_answer_and_every_worker_reported_ready(
    settings: Settings, database: Database, memory_state: FastState, clock: FakeClock
) -> None:
    for _ in range(2):
        await _worker(database, clock).beat(Heartbeat(ready=True, policy_version=1, config_generation=1))
    passed, detail = await _check(settings, database, memory_state, clock)
    assert passed, detail
    assert "2 worker(s) ready" in detail


async def test_nothing_serving_is_not_recovered(
    settings: Settings, database: Database, memory_state: FastState, clock: FakeClock
) -> None:
    # The admin listener is no worker, and a worker silent for longer than 30 s has gone.
    admin = ReplicaRegistry(database, role="admin", version="1.0", clock=clock)
    await admin.beat(Heartbeat(ready=True, policy_version=1, config_generation=1))
    await _worker(database, clock).beat(Heartbeat(ready=True, policy_version=1, config_generation=1))
    clock.advance(31)
    await admin.beat(Heartbeat(ready=True, policy_version=1, config_generation=1))
    passed, detail = await _check(settings, database, memory_state, clock)
    assert not passed
    assert "no gateway worker has reported in the last 30 s" in detail


async def test_a_worker_that_reported_itself_not_ready_fails_it_by_name(
    settings: Settings, database: Database, memory_state: FastState, clock: FakeClock
) -> None:
    await _worker(database, clock).beat(Heartbeat(ready=True, policy_version=4, config_generation=1))
    stale = _worker(database, clock)
    await stale.beat(Heartbeat(ready=False, policy_version=3, config_generation=1))
    passed, detail = await _check(settings, database, memory_state, clock)
    assert not passed
    assert f"1 of 2 worker(s) not ready at their last report: {stale.id} (policy 3)" in detail


async def test_an_unreachable_fast_state_fails_it(
    settings: Settings, database: Database, clock: FakeClock
) -> None:
    await _worker(database, clock).beat(Heartbeat(ready=True, policy_version=1, config_generation=1))
    # Nothing listens on port 1: the probe /.gateway/ready runs is refused.
    unreachable = RedisFastState.from_url("redis://127.0.0.1:1/0", namespace="t:recovery:")
    try:
        passed, detail = await _check(settings, database, unreachable, clock)
    finally:
        await unreachable.close()
    assert not passed
    assert detail.startswith("state unavailable (")


def _case(evidence: list[dict[str, Any]]) -> CaseView:
    return CaseView(
        id="inc-0000abcd", title="t", severity="high", phase=Phase.RECOVERY, owner="", opened_at=AT,
        opened_by="cli:root", updated_at=AT, closed_at=None, rule="", affected_users=(), routes=(),
        addresses=(), summary="", root_cause="", lessons="", evidence=tuple(evidence),
    )  # fmt: skip


def _sealed(version: int | None, at: str) -> dict[str, Any]:
    sealed: dict[str, Any] = {"sha256": "0" * 64, "file": "/x.zip", "sealed_at": at}
    if version is not None:
        sealed["policy_version"] = version
    return sealed


def _restored(version: int) -> EntryView:
    return EntryView(
        AT, "action", "cli:root", "restored", {"action": "restore-policy", "from": 1, "version": version}
    )


def test_the_version_sealed_at_containment_is_expected() -> None:
    # A bundle sealed before versions were recorded says nothing; a later re-seal does not move it.
    case = _case([_sealed(None, "a"), _sealed(3, "b"), _sealed(5, "c")])
    assert expected_policy(case, []) == ExpectedPolicy(3, "in force when the evidence was sealed at b")


def test_a_version_restored_for_the_incident_wins_and_the_latest_restore_counts() -> None:
    case = _case([_sealed(3, "b")])
    other = EntryView(AT, "action", "cli:root", "lift", {"action": "lift", "version": 99})
    found = expected_policy(case, [_restored(6), other, _restored(8)])
    assert found is not None
    assert found.version == 8
    assert found.why.startswith("restored for the incident at 2027-01-15 10:00:00Z")


def test_nothing_recorded_expects_nothing() -> None:
    assert expected_policy(_case([]), []) is None
    assert expected_policy(_case([_sealed(None, "a")]), []) is None


async def test_the_evidence_check_rehashes_every_sealed_file(tmp_path: Path) -> None:
    bundle = tmp_path / "evidence.zip"
    bundle.write_bytes(b"sealed bytes" * 100_000)
    sealed = {"sha256": hashlib.sha256(bundle.read_bytes()).hexdigest(), "file": str(bundle)}
    assert (await _evidence(_case([sealed]))).passed
    assert (await _evidence(_case([]))).detail == "no evidence was sealed (containment seals it)"
    bundle.write_bytes(b"swapped")
    changed = await _evidence(_case([sealed]))
    assert (changed.passed, changed.detail) == (False, f"{bundle} no longer matches its recorded sha256")
    bundle.unlink()
    assert (await _evidence(_case([sealed]))).detail == f"{bundle} is missing"
