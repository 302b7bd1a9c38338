"""The result of one authorization check, with the reason and the rule that decided it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.authz.rules import Rule

__all__ = ["Decision", "Reason"]


class Reason(StrEnum):
    """Why a request was allowed or denied; the id the access log, the 403 page and ``explain`` show."""

    POLICY_ALLOW = "policy-allow"
    # An explicit deny rule matched: deny wins over any allow.
    POLICY_DENY = "policy-deny"
    # No rule matched at all: default deny.
    NO_MATCHING_RULE = "no-matching-rule"
    # The policy has no permission rules at all (nothing loaded yet, or an emptied policy).
    NO_POLICY = "no-policy"


@dataclass(frozen=True, slots=True)
class Decision:
    """An authorization decision.

    Attributes:
        allowed: True only when an allow rule matched and no deny rule did.
        reason: see :class:`Reason`.
        rule: the deciding rule: the deny rule that matched, else the allow rule; ``None`` when none did.
        principal: the subject of ``rule`` (a principal of the request or a role it holds).
        version: the policy version that decided.
    """

    allowed: bool
    reason: Reason
    rule: Rule | None
    principal: str | None
    version: int

    def explain(self) -> str:
        """One line for people: the verdict, the rule (with its line) and the policy version."""
        verdict = "allowed" if self.allowed else "denied"
        if self.rule is None:
            detail = (
                "the policy has no permission rules"
                if self.reason is Reason.NO_POLICY
                else "no rule matches (default deny)"
            )
            return f"{verdict} [{self.reason}]: {detail}; policy version {self.version}"
        where = f" (line {self.rule.line})" if self.rule.line is not None else ""
        return (
            f"{verdict} [{self.reason}] by rule{where} {self.rule.to_csv()!r}"
            f" for {self.principal}; policy version {self.version}"
        )
