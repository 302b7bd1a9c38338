"""The recovery checklist: what must hold before an incident may close, each checked, not ticked.

* ``audit_chain``: the whole trail verifies with the keyring (nobody covered their tracks);
* ``database``: the database answers;
* ``policy``: the current policy version loads and compiles (a restored version is live);
* ``evidence``: at least one evidence bundle was sealed, and every sealed file still hashes to what
  the incident (and the chain) recorded;
* ``containment_lifted``: no block or lock of the incident's detections is still in force (lift them,
  or they outlive the incident unnoticed);
* ``lockdown``: the gateway is not in lockdown (when the deployment can tell).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.audit.chain import verify_database
from gateway.authz.store import PolicyStore
from gateway.crypto.keyring import Keyring
from gateway.response.cases import Cases, CaseView
from gateway.store.db import Database
from gateway.threat.incidents import IncidentStore

__all__ = ["RecoveryCheck", "recovery_checks"]


@dataclass(frozen=True, slots=True)
class RecoveryCheck:
    """One check of the list."""

    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def recovery_checks(
    case: CaseView,
    *,
    db: Database,
    keyring: Keyring | None,
    cases: Cases,
    policy: PolicyStore,
    detections: IncidentStore,
    lockdown: Callable[[], Awaitable[bool]] | None = None,
) -> list[RecoveryCheck]:
    """Run every check (all of them, also after a failure: the team sees the whole list)."""
    checks: list[RecoveryCheck] = []
    report = await verify_database(db, keyring=keyring)
    checks.append(
        RecoveryCheck(
            "audit_chain",
            report.problem is None,
            f"broken: {report.problem}" if report.problem else f"{report.records} record(s) verify",
        )
    )
    try:
        await db.ping()
        checks.append(RecoveryCheck("database", True, "answers"))
    except Exception as exc:  # noqa: BLE001 - the check reports any failure
        checks.append(RecoveryCheck("database", False, str(exc)))
    try:
        current = await policy.current()
        checks.append(RecoveryCheck("policy", True, f"version {current.version} loads and compiles"))
    except Exception as exc:  # noqa: BLE001
        checks.append(RecoveryCheck("policy", False, f"the current policy does not load: {exc}"))
    checks.append(await _evidence(case))
    checks.append(await _containment(case, cases, detections))
    if lockdown is not None:
        active = await lockdown()
        checks.append(RecoveryCheck("lockdown", not active, "on: lift it first" if active else "off"))
    return checks


async def _evidence(case: CaseView) -> RecoveryCheck:
    if not case.evidence:
        return RecoveryCheck("evidence", False, "no evidence was sealed (containment seals it)")
    for sealed in case.evidence:
        found = await asyncio.to_thread(_file_sha256, Path(str(sealed["file"])))
        if found != sealed["sha256"]:
            what = "is missing" if found is None else "no longer matches its recorded sha256"
            return RecoveryCheck("evidence", False, f"{sealed['file']} {what}")
    return RecoveryCheck("evidence", True, f"{len(case.evidence)} bundle(s), hashes match")


async def _containment(case: CaseView, cases: Cases, detections: IncidentStore) -> RecoveryCheck:
    ids = {str(e.details["detection"]) for e in await cases.entries(case.id) if e.kind == "detection"}
    now = cases.clock.time()
    standing: list[str] = []
    for incident_id in sorted(ids):
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
