"""The incident workflow's operations, one place for the CLI (``gateway incident case``) and the admin
API (``/api/incident-cases``), so both apply the same rules:

* a phase move is checked against the workflow first; entering containment seals the evidence;
  closing runs the recovery checks and is refused (:class:`RecoveryChecksFailed`, 409, with the
  checks) while one fails, and nothing changes then;
* an account action, a policy restore and a lift each act, then record an ``action`` entry and an
  ``incident.action`` audit record with the caller as actor;
* a notification round is refused without ``notify.smtp`` unless it is a preview.

Who the caller is (``cli:root``, ``user:alice``) and what they may do (a second factor for the
destructive ones) is the caller's business; this module only does the work, as that actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.audit.trail import AuditLog
from gateway.authz.store import Keep, PolicyStore
from gateway.crypto.keyring import Keyring
from gateway.errors import GatewayError
from gateway.identity.accounts import AccountService
from gateway.identity.sessions import SessionStore
from gateway.response.actions import ActionResult, parse_account_action, record_action, run_account_action
from gateway.response.cases import Cases, CaseView, detection_ids, readable_text
from gateway.response.evidence import seal_evidence
from gateway.response.notification import DEFAULT_WHAT_TO_DO, Notified, notify_affected
from gateway.response.phases import Phase, check_move, parse_phase, refuse_closed
from gateway.response.recovery import RecoveryCheck, readiness_check, recovery_checks
from gateway.response.report import audit_timeline, report_json
from gateway.response.webhook import case_webhook, queued_webhook
from gateway.settings.schema import Settings
from gateway.store.db import Database
from gateway.store.fast import FastState
from gateway.threat.incidents import IncidentStore
from gateway.threat.lockdown import LockdownStore
from gateway.threat.responder import Responder, Webhook

__all__ = ["MailNotConfigured", "Moved", "RecoveryChecksFailed", "SessionsOutOfReach", "Workflow"]


class RecoveryChecksFailed(GatewayError):
    """Closing refused: a recovery check failed (409); ``checks`` is the whole list."""

    status = 409
    reason = "recovery-checks-failed"
    title = "The recovery checks did not pass"

    def __init__(self, case_id: str, checks: list[RecoveryCheck]) -> None:
        failed = ", ".join(c.name for c in checks if not c.passed)
        super().__init__(f"{case_id} stays open: the recovery checks did not pass ({failed}).")
        self.checks = checks


class MailNotConfigured(GatewayError):
    """Sending needs ``notify.smtp`` (409): a preview works without it."""

    status = 409
    reason = "notify-not-configured"
    title = "No mail server configured"


class SessionsOutOfReach(GatewayError):
    """The sessions live inside another process (``state.embedded: memory``): 503, nothing done."""

    status = 503
    reason = "sessions-out-of-reach"
    title = "Sessions out of reach"


@dataclass(frozen=True, slots=True)
class Moved:
    """What a phase move did: the incident as it is now, the evidence sealed on entering containment,
    and the recovery checks that let it close."""

    case: CaseView
    sealed: dict[str, Any] | None = None
    checks: list[RecoveryCheck] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Workflow:
    """The operations on incident records over one process's stores (see the module docstring)."""

    cases: Cases
    settings: Settings
    db: Database
    fast: FastState
    audit: AuditLog
    accounts: AccountService
    # None only where the sessions live inside another process (the CLI with state.embedded: memory).
    sessions: SessionStore | None
    policy: PolicyStore
    # The keyring the chain is verified and the evidence exported with.
    keyring: Keyring
    # The serving process's queue to threat.webhook_url (None in the CLI: it POSTs before it exits).
    events: Webhook | None = None

    def __post_init__(self) -> None:
        threat = self.settings.threat
        if threat.webhook_url is None:
            return
        if self.events is not None and self.events.url == threat.webhook_url:
            self.cases.listeners.append(queued_webhook(self.events))
        else:  # the CLI, or a reload moved the URL away from the queue's
            self.cases.listeners.append(
                case_webhook(threat.webhook_url, timeout=float(threat.webhook_timeout))
            )

    async def checks(self, case: CaseView) -> list[RecoveryCheck]:
        """The recovery checklist, every check run."""
        lockdowns = LockdownStore(self.fast, self.cases.clock, db=self.db)

        async def locked() -> bool:
            return (await lockdowns.read()).on

        async def readiness() -> RecoveryCheck:
            return await readiness_check(
                settings=self.settings, db=self.db, fast=self.fast, policy=self.policy, clock=self.cases.clock
            )

        return await recovery_checks(
            case, db=self.db, keyring=self.keyring, cases=self.cases, policy=self.policy,
            detections=IncidentStore(self.fast), readiness=readiness, lockdown=locked,
        )  # fmt: skip

    async def seal(self, case: CaseView, *, actor: str) -> dict[str, Any]:
        """Seal the evidence of the incident's window up to now (see :mod:`gateway.response.evidence`),
        with the policy version in force (what the recovery checks expect live at closing)."""
        refuse_closed(case.phase, "sealing more evidence")
        return await seal_evidence(
            self.db, self.cases, self.audit, case, data_dir=self.settings.data_dir, keyring=self.keyring,
            actor=actor, now=self.cases.clock.now(), policy_version=await self.policy.version(),
        )  # fmt: skip

    async def move(self, case_id: str, phase: str, *, actor: str, note: str = "") -> Moved:
        """Move the incident to the phase named ``phase``: containment seals the evidence, closing
        needs every recovery check to pass.

        Raises:
            BadIncidentId, CaseNotFound, BadPhase, PhaseRefused, BadRequest (the note).
            RecoveryChecksFailed: closing while a check fails; nothing changed.
        """
        target = parse_phase(phase)
        case = await self.cases.get(case_id)
        check_move(case.phase, target)
        checks: list[RecoveryCheck] = []
        if target is Phase.CLOSED:
            checks = await self.checks(case)
            if not all(c.passed for c in checks):
                raise RecoveryChecksFailed(case.id, checks)
        moved = await self.cases.move(case.id, target, actor=actor, note=note)
        if target is not Phase.CONTAINMENT:
            return Moved(moved, checks=checks)
        # Evidence preservation is part of containment: sealed as the incident enters it.
        sealed = await self.seal(moved, actor=actor)
        return Moved(await self.cases.get(case.id), sealed=sealed)

    async def act(
        self, case_id: str, action: str, *, actor: str, checked: CaseView | None = None
    ) -> ActionResult:
        """Apply the account action named ``action`` to every affected person.

        Args:
            checked: The incident as the caller read and checked it (whom it names): acted on as it
                is, so an update in between cannot add someone the checks never saw.

        Raises:
            BadRequest: no such action, or the incident names nobody.
            SessionsOutOfReach: this process cannot end the sessions.
        """
        chosen = parse_account_action(action)
        # The phase as it is now; whom to act on as the caller checked it.
        current = await self.cases.get(case_id)
        refuse_closed(current.phase, "an action")
        case = checked if checked is not None and checked.id == current.id else current
        if self.sessions is None:
            raise SessionsOutOfReach(
                "state.embedded is memory: sessions live inside the gateway's process, out of reach"
            )
        return await run_account_action(
            case, chosen, accounts=self.accounts, sessions=self.sessions, cases=self.cases,
            audit=self.audit, actor=actor,
        )  # fmt: skip

    async def restore_policy(
        self, case_id: str, version: int, *, reason: str, actor: str, keep: Keep | None = None
    ) -> int:
        """Restore policy ``version`` for the incident; the new version's number. ``keep``: the
        store's last check of the policy about to be stored (the console's: the admin keeps the role).

        Raises:
            UnknownVersion: no such version. PolicyRejected: it no longer validates.
        """
        case = await self.cases.get(case_id)
        refuse_closed(case.phase, "a policy restore")
        restored = await self.policy.restore(version, actor=actor, reason=f"{case.id}: {reason}", keep=keep)
        await record_action(
            self.cases, self.audit, case.id, actor, "restore-policy",
            f"policy version {version} restored as version {restored}", {"from": version, "version": restored},
        )  # fmt: skip
        return restored

    async def lift(self, case_id: str, *, actor: str) -> list[str]:
        """Lift every block and account lock of the incident's detections; the detections lifted."""
        case = await self.cases.get(case_id)
        refuse_closed(case.phase, "a lift")
        responder = Responder(
            state=self.fast, audit=self.audit, accounts=self.accounts, sessions=self.sessions,
            clock=self.cases.clock,
        )  # fmt: skip
        ids = detection_ids(await self.cases.entries(case.id))
        lifted = [i for i in ids if await responder.lift(i, actor=actor) is not None]
        await record_action(
            self.cases, self.audit, case.id, actor, "lift",
            f"blocks and locks of {len(lifted)} detection(s) lifted", {"detections": lifted},
        )  # fmt: skip
        return lifted

    async def report(self, case_id: str) -> dict[str, Any]:
        """The post-incident report as a document (``report.report_markdown`` makes it Markdown)."""
        case = await self.cases.get(case_id)
        now = self.cases.clock.now()
        return report_json(
            case, await self.cases.entries(case.id),
            await audit_timeline(self.db, case, case.closed_at or now), await self.checks(case),
            generated_at=now,
        )  # fmt: skip

    async def notify(
        self,
        case_id: str,
        *,
        actor: str,
        template: str,
        what_to_do: str | None,
        preview: bool,
        previewed: str | None = None,
    ) -> Notified:
        """Preview, or send, the incident's notification to every affected person.

        Raises:
            MailNotConfigured: sending without ``notify.smtp``.
            BadRequest: nobody named, or a template or value the notifier refuses.
            MailUnavailable: the mail server cannot be reached or refused the login.
        """
        if self.settings.notify.smtp is None and not preview:
            raise MailNotConfigured(
                "notify.smtp is not configured: there is no mail server to send through (a preview needs none)"
            )
        # Refused as a note's text is: a right-to-left override in what the people are told to do
        # would make the mail read otherwise than the console showed it.
        advice = readable_text(what_to_do, "What to do", limit=2000) if what_to_do else ""
        case = await self.cases.get(case_id)
        if not preview:
            refuse_closed(case.phase, "a notification")
        return await notify_affected(
            case, settings=self.settings, accounts=self.accounts, cases=self.cases, audit=self.audit,
            actor=actor, template=template, what_to_do=advice or DEFAULT_WHAT_TO_DO, send=not preview,
            previewed=previewed,
        )  # fmt: skip
