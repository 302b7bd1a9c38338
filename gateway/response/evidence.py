"""Evidence preservation at containment: the audit trail of the incident's window, sealed.

The bundle is the one ``gateway audit export`` writes (records, the chain proof, the signed
checkpoints; it verifies offline with ``gateway audit verify-bundle``), for the window from
:data:`LOOKBACK` before the incident opened until now. Its SHA-256 goes into the incident record and,
in an ``incident.evidence_sealed`` audit record, into the chain itself: a bundle swapped later no
longer matches what the chain says was sealed. The policy version in force at sealing is recorded
with it: the recovery checks expect that version live when the incident closes, unless one was
restored for the incident.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from gateway.audit.bundle import export_bundle
from gateway.audit.checkpoint import load_checkpoints, local_checkpoint_file
from gateway.audit.trail import AuditLog
from gateway.backup.manifest import file_sha256
from gateway.crypto.keyring import Keyring
from gateway.response.cases import Cases, CaseView
from gateway.store.db import Database

__all__ = ["LOOKBACK", "evidence_directory", "seal_evidence"]

# What led up to the detection belongs to the evidence: the window starts this long before it.
LOOKBACK: Final = timedelta(hours=24)


def evidence_directory(data_dir: str) -> Path:
    """Where sealed bundles are kept: one folder an incident below it, ``<data_dir>/incidents/<id>/``."""
    return Path(data_dir) / "incidents"


async def seal_evidence(
    db: Database,
    cases: Cases,
    audit: AuditLog,
    case: CaseView,
    *,
    data_dir: str,
    keyring: Keyring | None,
    actor: str,
    now: datetime,
    policy_version: int,
) -> dict[str, Any]:
    """Write the incident's evidence bundle, and record its hash in the incident and the chain.

    Returns:
        What was sealed: ``sha256``, ``file``, ``since``, ``until``, ``records``, ``sealed_at``,
        ``problem`` (the exported range did not verify: it is sealed anyway, as evidence),
        ``policy_version`` (the version in force).
    """
    since = case.opened_at - LOOKBACK
    folder = evidence_directory(data_dir) / case.id
    await asyncio.to_thread(folder.mkdir, mode=0o700, parents=True, exist_ok=True)
    out = folder / f"evidence-{now:%Y%m%dT%H%M%S%fZ}.zip"
    local = local_checkpoint_file(data_dir)
    checkpoints = await asyncio.to_thread(load_checkpoints, local) if local.exists() else []
    summary = await export_bundle(
        db, since=since, until=now, checkpoints=checkpoints, out=out, now=now, keyring=keyring
    )
    await asyncio.to_thread(out.chmod, 0o600)
    sealed: dict[str, Any] = {
        "sha256": (await asyncio.to_thread(file_sha256, out))[0],
        "file": str(out),
        "since": since.isoformat(),
        "until": now.isoformat(),
        "records": summary.records,
        "sealed_at": now.isoformat(),
        "problem": summary.problem,
        "policy_version": policy_version,
    }
    await cases.add_evidence(case.id, sealed)
    await audit.record(
        "incident.evidence_sealed",
        actor=actor,
        subject=case.id,
        outcome="success" if summary.problem is None else "failure",
        details={k: v for k, v in sealed.items() if k != "file"},
    )
    await cases.record(
        case.id,
        "evidence",
        actor,
        f"Evidence sealed: {summary.records} audit record(s), sha256 {sealed['sha256']}",
        sealed,
    )
    return sealed
