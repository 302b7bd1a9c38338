"""The policy's JSON shapes: rules, findings and history entries, as the admin API and the console answer them.

One module for both: the policy API in :mod:`admin.app` and the console's Policies section
(:mod:`admin.console.policies`) show the same rule the same way, and the console cannot import the
app (the app collects the console's handlers).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar.params import PathParameter

from gateway.authz.rules import Rule
from gateway.authz.store import PolicyVersionInfo
from gateway.authz.validate import Finding
from gateway.reasons import REASON_PATTERN

__all__ = [
    "ChangeResult",
    "Field",
    "FindingView",
    "PermissionRule",
    "Reason",
    "RoleLink",
    "StoredPermissionRule",
    "StoredRoleLink",
    "VersionId",
    "VersionInfo",
    "finding_json",
    "rule_json",
    "version_info",
]

Field = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]

# Taken as text and parsed by parse_id in the handler: a number beyond the id columns' range reached
# the database as is, and its refusal answered as an outage (503 with the driver's text).
VersionId = Annotated[
    str, PathParameter(description="A policy version: a whole number from 1 to 2147483647.")
]
Reason = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        pattern=REASON_PATTERN,
        max_length=2000,
        description="Why: kept in the policy history and the audit trail.",
    ),
]


class PermissionRule(msgspec.Struct, tag="p", tag_field="ptype", kw_only=True, forbid_unknown_fields=True):
    """A ``p`` line: may ``subject`` use ``methods`` on ``path`` of ``route``?"""

    subject: Field
    route: Field
    path: Field
    methods: Field
    effect: Literal["allow", "deny"]


class RoleLink(msgspec.Struct, tag="g", tag_field="ptype", kw_only=True, forbid_unknown_fields=True):
    """A ``g`` line: ``member`` holds ``role``."""

    member: Field
    role: Field


class StoredPermissionRule(PermissionRule, tag="p", kw_only=True):
    line: int | None = None
    csv: str = ""


class StoredRoleLink(RoleLink, tag="g", kw_only=True):
    line: int | None = None
    csv: str = ""


class VersionInfo(msgspec.Struct, kw_only=True):
    version: int
    created_at: datetime
    actor: str
    reason: str
    lines: int
    restored_from: int | None
    added: int
    removed: int


class FindingView(msgspec.Struct, kw_only=True):
    """A validation finding: ``error`` refuses a change (422), ``warning`` is reported with it."""

    severity: str
    code: str
    message: str
    line: int | None
    rule: str | None


class ChangeResult(msgspec.Struct, kw_only=True):
    version: int
    previous: int
    changed: bool
    # What validation still says about the stored policy (errors refuse a change; these do not).
    warnings: list[FindingView] = msgspec.field(default_factory=list)


def rule_json(rule: Rule) -> StoredPermissionRule | StoredRoleLink:
    if rule.ptype == "p":
        return StoredPermissionRule(
            subject=rule.sub,
            route=rule.dom,
            path=rule.obj,
            methods=rule.act,
            effect="deny" if rule.is_deny else "allow",
            line=rule.line,
            csv=rule.to_csv(),
        )
    return StoredRoleLink(member=rule.member, role=rule.role, line=rule.line, csv=rule.to_csv())


def version_info(info: PolicyVersionInfo) -> VersionInfo:
    return VersionInfo(
        version=info.version,
        created_at=info.created_at,
        actor=info.actor,
        reason=info.reason,
        lines=info.lines,
        restored_from=info.restored_from,
        added=info.added,
        removed=info.removed,
    )


def finding_json(finding: Finding) -> FindingView:
    return FindingView(
        severity=str(finding.severity),
        code=finding.code,
        message=finding.message,
        line=finding.line,
        rule=finding.rule.to_csv() if finding.rule is not None else None,
    )
