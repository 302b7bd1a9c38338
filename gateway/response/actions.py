"""Eradication and recovery actions on an incident's affected people, each one call, each recorded.

Every action is an ``action`` entry of the incident's timeline and an ``incident.action`` audit record
(who, which action, how many accounts; usernames are in the incident, not repeated in the record).
The per-account effects are audited by the account service itself as usual (``user.sessions_revoked``,
``user.mfa_reset``, ...), so the chain shows both the decision and each consequence.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.trail import AuditLog
from gateway.errors import BadRequest
from gateway.identity.accounts import AccountService
from gateway.identity.sessions import SessionStore
from gateway.response.cases import Cases, CaseView
from gateway.response.vocabulary import AccountAction

__all__ = ["ActionResult", "parse_account_action", "record_action", "run_account_action"]


_DONE = {
    AccountAction.REVOKE_SESSIONS: "sessions revoked",
    AccountAction.FORCE_PASSWORD_CHANGE: "password change required at the next sign-in",
    AccountAction.RESET_MFA: "second factors reset (sessions ended)",
    AccountAction.DISABLE: "account disabled (sessions ended)",
}


@dataclass(slots=True)
class ActionResult:
    """What an action did: per account, and the accounts it could not find."""

    action: str
    done: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "done": self.done, "missing": self.missing}


def parse_account_action(text: str) -> AccountAction:
    """The action named ``text``.

    Raises:
        BadRequest: no such action.
    """
    try:
        return AccountAction(text)
    except ValueError:
        names = ", ".join(a.value for a in AccountAction)
        raise BadRequest(f"{text[:30]!r} is not an action; use one of {names}.") from None


async def run_account_action(
    case: CaseView,
    action: AccountAction,
    *,
    accounts: AccountService,
    sessions: SessionStore,
    cases: Cases,
    audit: AuditLog,
    actor: str,
) -> ActionResult:
    """Apply ``action`` to every affected user of the incident; record it.

    Raises:
        BadRequest: the incident names no affected user.
    """
    if not case.affected_users:
        raise BadRequest(f"Incident {case.id} names no affected user; add them first.")
    result = ActionResult(action.value)
    acted: set[int] = set()
    for username in case.affected_users:
        user = await accounts.find(username)
        if user is None:
            result.missing.append(username)
            continue
        if user.id in acted:
            continue  # one account under several spellings (VICTIM, victim@…): once
        acted.add(user.id)
        await _apply(action, user.id, accounts=accounts, sessions=sessions, actor=actor)
        result.done[user.username] = _DONE[action]
    await record_action(
        cases, audit, case.id, actor, action.value,
        f"{action.value}: {len(result.done)} account(s)"
        + (f"; not found: {', '.join(result.missing)}" if result.missing else ""),
        {"accounts": len(result.done), "missing": len(result.missing)},
    )  # fmt: skip
    return result


async def _apply(
    action: AccountAction, user_id: int, *, accounts: AccountService, sessions: SessionStore, actor: str
) -> None:
    steps: dict[AccountAction, Callable[[], Awaitable[object]]] = {
        # Through the account service: a store that does not answer leaves the sessions owed an end
        # (identity.owed), never a half-done action (the re-attack run).
        AccountAction.REVOKE_SESSIONS: lambda: accounts.end_sessions(user_id, actor=actor),
        AccountAction.FORCE_PASSWORD_CHANGE: lambda: accounts.require_password_change(user_id, actor=actor),
        AccountAction.RESET_MFA: lambda: accounts.reset_mfa(user_id, actor=actor),
        AccountAction.DISABLE: lambda: accounts.disable(user_id, actor=actor),
    }
    await steps[action]()
    if action is AccountAction.FORCE_PASSWORD_CHANGE:
        # The hold is placed at the next sign-in: end the sessions so there is one.
        await accounts.end_sessions(user_id, actor=actor)


async def record_action(
    cases: Cases, audit: AuditLog, case_id: str, actor: str, action: str, text: str, details: dict[str, Any]
) -> None:
    """Record an action taken for an incident (also the ones done elsewhere: keys, policy, lifts)."""
    await cases.record(case_id, "action", actor, text, {"action": action, **details})
    await audit.record("incident.action", actor=actor, subject=case_id, details={"action": action, **details})
