"""The recovery checklist: what must hold before an incident may close, each checked, not ticked.

* ``audit_chain``: the whole trail verifies with the keyring (nobody covered their tracks);
* ``readiness``: the deployment serves again, decided as ``/.gateway/ready`` decides it
  (:func:`gateway.observe.readiness.assess`): from this process, the database and the fast state
  (Redis on replicas) answer and the policy loads; and every gateway worker heard from in the last
  30 s reported itself ready at its last heartbeat (its own ``/.gateway/ready`` verdict: its policy
  current, its fast state reachable), and at least one did (nothing serving is not recovered). The
  upstreams are not part of it, as they are not of ``/.gateway/ready``'s verdict: one route's
  outage is not the deployment's;
* ``policy_version``: the live policy is the version the incident expects: the one restored for it
  (``restore-policy``) if any, else the one in force when the evidence was sealed at containment;
  a change made behind the incident's back fails it, naming both versions;
* ``evidence``: at least one evidence bundle was sealed, and every sealed file still hashes to what
  the incident (and the chain) recorded;
* ``containment_lifted``: no block or lock of the incident's detections is still in force (lift them,
  or they outlive the incident unnoticed);
* ``lockdown``: the gateway is not in lockdown (when the deployment can tell).

Every check runs, also after another failed or could not reach its store: the team sees the whole list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.audit.chain import verify_database
from gateway.authz.store import PolicyStore
from gateway.backup.manifest import file_sha256
from gateway.clock import Clock
from gateway.crypto.keyring import Keyring
from gateway.observe.readiness import Component, ReadinessMonitor, assess, sessions_needed
from gateway.observe.replicas import ReplicaRegistry
from gateway.response.cases import Cases, CaseView, EntryView, detection_ids
from gateway.settings.schema import Settings
from gateway.store.db import Database
from gateway.store.fast import FastState
from gateway.threat.incidents import IncidentStore

__all__ = ["ExpectedPolicy", "RecoveryCheck", "expected_policy", "readiness_check", "recovery_checks"]

# The role serving processes register under in the replica registry (gateway.root.start.Role.WORKER).
_WORKER = "worker"


@dataclass(frozen=True, slots=True)
class RecoveryCheck:
    """One check of the list."""

    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ExpectedPolicy:
    """The policy version an incident expects to be live when it closes, and why."""

    version: int
    why: str


def expected_policy(case: CaseView, entries: Sequence[EntryView]) -> ExpectedPolicy | None:
    """The version restored for the incident (the latest ``restore-policy`` action), else the one
    in force when its first bundle was sealed (containment); None when neither was recorded."""
    for entry in reversed(entries):
        if entry.kind == "action" and entry.details.get("action") == "restore-policy":
            version = entry.details.get("version")
            if isinstance(version, int):
                return ExpectedPolicy(version, f"restored for the incident at {entry.at:%Y-%m-%d %H:%M:%S}Z")
    for sealed in case.evidence:
        version = sealed.get("policy_version")
        if isinstance(version, int):
            return ExpectedPolicy(version, f"in force when the evidence was sealed at {sealed['sealed_at']}")
    return None


def _file_sha256(path: Path) -> str | None:
    return file_sha256(path)[0] if path.is_file() else None


async def recovery_checks(
    case: CaseView,
    *,
    db: Database,
    keyring: Keyring | None,
    cases: Cases,
    policy: PolicyStore,
    detections: IncidentStore,
    readiness: Callable[[], Awaitable[RecoveryCheck]],
    lockdown: Callable[[], Awaitable[bool]] | None = None,
) -> list[RecoveryCheck]:
    """Run every check (all of them, also after a failure: the team sees the whole list).

    Args:
        readiness: The ``readiness`` check (:func:`readiness_check` over this process's stores).
        lockdown: Whether a lockdown is on; None where the deployment cannot tell.
    """
    checks: list[RecoveryCheck] = []
    report = await verify_database(db, keyring=keyring)
    checks.append(
        RecoveryCheck(
            "audit_chain",
            report.problem is None,
            f"broken: {report.problem}" if report.problem else f"{report.records} record(s) verify",
        )
    )
    checks.append(await readiness())
    entries = await cases.entries(case.id)
    checks.append(await _policy_version(case, entries, policy))
    checks.append(await _evidence(case))
    checks.append(await _guarded("containment_lifted", _containment(entries, cases.clock, detections)))
    if lockdown is not None:
        checks.append(await _guarded("lockdown", _lockdown(lockdown)))
    return checks


async def _guarded(name: str, check: Awaitable[RecoveryCheck]) -> RecoveryCheck:
    """The check, or a failure naming why it could not run (a store out of reach is not a pass)."""
    try:
        return await check
    except Exception as exc:  # noqa: BLE001 - the check reports any failure
        return RecoveryCheck(name, False, f"cannot tell: {exc}")


async def _lockdown(read: Callable[[], Awaitable[bool]]) -> RecoveryCheck:
    active = await read()
    return RecoveryCheck("lockdown", not active, "on: lift it first" if active else "off")


async def _policy_version(case: CaseView, entries: Sequence[EntryView], policy: PolicyStore) -> RecoveryCheck:
    try:
        live = (await policy.current()).version
    except Exception as exc:  # noqa: BLE001
        return RecoveryCheck("policy_version", False, f"the live policy does not load: {exc}")
    expected = expected_policy(case, entries)
    if expected is None:
        return RecoveryCheck(
            "policy_version",
            False,
            f"version {live} is live, but the incident recorded no version to expect (sealing the "
            f"evidence records the one in force: seal {case.id}; or restore-policy {case.id} VERSION)",
        )
    if live != expected.version:
        return RecoveryCheck(
            "policy_version",
            False,
            f"version {live} is live, but the incident expects version {expected.version} "
            f"({expected.why}): restore-policy {case.id} {expected.version} brings it back, or "
            f"restore-policy {case.id} {live} makes the change the incident's",
        )
    return RecoveryCheck("policy_version", True, f"version {live} is live, as expected ({expected.why})")


async def readiness_check(
    *, settings: Settings, db: Database, fast: FastState, policy: PolicyStore, clock: Clock
) -> RecoveryCheck:
    """The ``readiness`` check (see the module docstring): this process's probes, assessed as
    ``/.gateway/ready`` assesses a worker's, and every serving worker's own last verdict."""
    problems: list[str] = []
    # The probes /.gateway/ready runs, run now (a readiness report is only as old as its probes).
    monitor = ReadinessMonitor({Component.STORAGE: db.ping, Component.STATE: fast.ping}, clock=clock)
    await monitor.refresh()
    policy_check: dict[str, Any]
    try:
        policy_check = {"ok": True, "version": await policy.version()}
    except Exception as exc:  # noqa: BLE001
        policy_check = {"ok": False, "error": str(exc)}
    verdict = assess(
        config={"ok": True}, policy=policy_check, probes=monitor.latest(),
        sessions=sessions_needed(settings.routes), upstreams={},
    )  # fmt: skip
    for component in Component:
        check = verdict.checks[component.value]
        if not check["ok"]:
            # Recovered means everything works again: a degraded part (the database) fails it too.
            problems.append(f"{component.value} unavailable ({check.get('error', 'down')})")
    if verdict.up[Component.STORAGE]:
        workers, problem = await _workers(db, clock)
        if problem:
            problems.append(problem)
    else:
        workers = "the workers' reports are in the database"
    if problems:
        return RecoveryCheck("readiness", False, "; ".join(problems))
    return RecoveryCheck("readiness", True, f"database and fast state answer, policy loads; {workers}")


async def _workers(db: Database, clock: Clock) -> tuple[str, str]:
    """What the serving workers last said of their readiness: a summary, and a problem ("" if none)."""
    registry = ReplicaRegistry(db, role="recovery-check", version="", clock=clock)
    try:
        rows = await registry.replicas()
    except Exception as exc:  # noqa: BLE001
        return "", f"the workers' reports cannot be read ({exc})"
    workers = [r for r in rows if r.role == _WORKER and not r.gone]
    if not workers:
        return "", "no gateway worker has reported in the last 30 s: nothing is serving"
    not_ready = [r for r in workers if not r.ready]
    if not_ready:
        names = ", ".join(f"{r.id} (policy {r.policy_version})" for r in not_ready)
        return "", f"{len(not_ready)} of {len(workers)} worker(s) not ready at their last report: {names}"
    return f"{len(workers)} worker(s) ready", ""


async def _evidence(case: CaseView) -> RecoveryCheck:
    if not case.evidence:
        return RecoveryCheck("evidence", False, "no evidence was sealed (containment seals it)")
    for sealed in case.evidence:
        found = await asyncio.to_thread(_file_sha256, Path(str(sealed["file"])))
        if found != sealed["sha256"]:
            what = "is missing" if found is None else "no longer matches its recorded sha256"
            return RecoveryCheck("evidence", False, f"{sealed['file']} {what}")
    return RecoveryCheck("evidence", True, f"{len(case.evidence)} bundle(s), hashes match")


async def _containment(
    entries: Sequence[EntryView], clock: Clock, detections: IncidentStore
) -> RecoveryCheck:
    ids = detection_ids(entries)
    now = clock.time()
    standing: list[str] = []
    for incident_id in ids:
        incident = await detections.get(incident_id)
        if incident is None:
            continue
        for action in incident.actions:
            if action.liftable and (action.until is None or action.until > now):
                standing.append(f"{action.kind} {action.target} ({incident_id})")
    if standing:
        return RecoveryCheck(
            "containment_lifted",
            False,
            "still in force: " + ", ".join(standing) + " (gateway incident lift ID)",
        )
    return RecoveryCheck("containment_lifted", True, f"{len(ids)} detection(s), nothing still in force")
