"""Policies: the live policy, a draft checked before it bites, history and restore, two-person approval.

Pages: ``GET /policies`` (the live policy as a table and as text, the editor, the history, the open
proposals) and ``GET /policies/versions/{v}`` (one version: who, when, why, its diff and a restore).

A draft is the whole policy as casbin CSV, sent with each question about it; nothing is stored until
it is saved (``PUT /api/policy`` with ``expected_version``, so an editor opened on an older version is
refused with 409) or, with ``admin.approvals: 2``, proposed and approved by another admin:

* ``POST /api/policy/draft/validate`` the findings, each with its line; a malformed line is one;
* ``POST /api/policy/draft/diff``     the unified diff against the live policy;
* ``POST /api/policy/draft/test``     the policy test cases (``cases``: YAML or CSV text in the format
  of ``gateway policy test --cases``, e.g. ``policies/tests.yaml``) decided by the draft. The cases
  travel with the request: the configuration names no test file, and the cases an admin checks a
  change against belong with the change, as in CI;
* ``POST /api/policy/draft/whatif``   the decision sample of the last ``hours`` replayed under the live
  policy and the draft: which request shapes flip, and the counts per route.

Two-person approval (:mod:`gateway.authz.proposals`): ``POST /api/policy/proposals`` proposes a draft,
``GET /api/policy/proposals`` lists them, ``POST /api/policy/proposals/{id}/approve`` (another admin
only; a recent second factor) makes it live, ``/reject`` closes it (the proposer withdraws).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get, post
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Template

from admin.access import holds_role
from admin.actions import admin_of, audit, confirm_destructive, keeps_admin
from admin.console.render import PAGE_OPT, page
from admin.deps import AdminServices, Policy
from admin.machine import accounts_of
from admin.policy_json import (
    FindingView,
    Reason,
    StoredPermissionRule,
    StoredRoleLink,
    VersionId,
    VersionInfo,
    finding_json,
    rule_json,
    version_info,
)
from gateway.authz.cases import Canonicalize, CasesInvalid, failures, parse_cases, run_cases
from gateway.authz.index import PolicyIndex
from gateway.authz.live import LivePolicy
from gateway.authz.proposals import Proposal, Proposals, ProposalStatus, SelfApproval
from gateway.authz.rules import PolicyError, PolicyRules, parse_policy
from gateway.authz.sample import DecisionSample
from gateway.authz.store import StoredPolicy, policy_diff
from gateway.authz.validate import Finding, is_principal, validate
from gateway.authz.whatif import Flip, what_if
from gateway.errors import BadRequest, GatewayError
from gateway.pipeline.authorize import AUTHENTICATED
from gateway.pipeline.canonical import canonicalize
from gateway.reasons import OPTIONAL_REASON_PATTERN
from gateway.services import Services
from gateway.settings.current import CurrentConfig
from gateway.store.ids import parse_id
from gateway.web.deps import Config, Identity

__all__ = ["HANDLERS"]

# A draft is the whole policy; 4 MB is far beyond any policy people edit in a browser.
Draft = Annotated[str, msgspec.Meta(max_length=4_000_000, description="The whole draft policy, casbin CSV.")]
CasesText = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=1_000_000,
        description="Policy test cases, YAML (as policies/tests.yaml) or CSV with a header row.",
    ),
]
ProposalId = Annotated[str, PathParameter(description="A proposal id: a whole number from 1 to 2147483647.")]
OptionalReason = Annotated[str, msgspec.Meta(max_length=2000, pattern=OPTIONAL_REASON_PATTERN)]
# The decision sample is kept per hour; a week is the longest replay (admin.sample_retention bounds it).
MAX_HOURS = 168


# -- request and response bodies ------------------------------------------------------------------


class DraftRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    policy: Draft


class DraftTestRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    policy: Draft
    cases: CasesText
    format: Literal["yaml", "csv"] = "yaml"


class WhatIfRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    policy: Draft
    hours: Annotated[int, msgspec.Meta(ge=1, le=MAX_HOURS)] = 24


class ProposeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    policy: Draft
    reason: Reason


class DecideRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason
    # On approval: exactly whom the change makes an admin, as the proposal lists them (new_admins).
    new_admins: (
        Annotated[list[Annotated[str, msgspec.Meta(max_length=300)]], msgspec.Meta(max_length=1000)] | None
    ) = None


class ValidateResult(msgspec.Struct, kw_only=True):
    """``ok`` when nothing would refuse the draft (warnings may remain)."""

    ok: bool
    errors: int
    warnings: int
    rules: int
    links: int
    findings: list[FindingView]


class DiffResult(msgspec.Struct, kw_only=True):
    live_version: int
    same: bool
    added: int
    removed: int
    diff: str


class CaseView(msgspec.Struct, kw_only=True):
    where: str
    name: str
    principals: list[str]
    route: str
    method: str
    path: str
    expected: str
    got: str
    reason: str
    explanation: str
    passed: bool


class TestResult(msgspec.Struct, kw_only=True):
    total: int
    passed: int
    failed: int
    # The failures first, then the passes, each in the order written.
    cases: list[CaseView]


class RouteImpactView(msgspec.Struct, kw_only=True):
    route: str
    requests: int
    to_deny: int
    to_allow: int


class FlipView(msgspec.Struct, kw_only=True):
    route: str
    method: str
    path: str
    principals: list[str]
    count: int
    # "to-deny": allowed under the live policy, denied under the draft; "to-allow": the reverse.
    direction: Literal["to-deny", "to-allow"]
    live: str
    draft: str


class WhatIfResult(msgspec.Struct, kw_only=True):
    live_version: int
    hours: int
    requests: int
    shapes: int
    to_deny: int
    to_allow: int
    routes: list[RouteImpactView]
    flips: list[FlipView]
    # Flipping shapes left out of ``flips`` (the largest come first).
    omitted: int


class ProposalView(msgspec.Struct, kw_only=True):
    id: int
    status: str
    proposer: str
    reason: str
    created_at: datetime
    expires_at: datetime
    base_version: int
    diff: str
    policy: str
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str
    applied_version: int | None
    # Who reaches the admin role with this change and not without it (open proposals): the accounts
    # (user:<name>) and the principals the policy names (group:<provider>:<group>, authenticated).
    new_admins: list[str] = msgspec.field(default_factory=list)


class ProposalList(msgspec.Struct, kw_only=True):
    approvals: int
    proposals: list[ProposalView]


class ProposalDecision(msgspec.Struct, kw_only=True):
    proposal: ProposalView
    # The policy version the approval stored; None for a rejection.
    version: int | None = None


# -- the draft ------------------------------------------------------------------------------------


def _canonical(raw: bytes) -> str:
    return canonicalize(raw).path


_CANONICAL: Canonicalize = _canonical


def _parse_draft(text: str) -> PolicyRules:
    try:
        return parse_policy(text, source="draft")
    except PolicyError as exc:
        raise BadRequest(f"{exc}; fix this line first (Validate lists every finding)") from exc


async def _live(policy: LivePolicy) -> tuple[StoredPolicy, PolicyIndex]:
    # The stored policy, not this process's copy of it: the draft is compared with what is live now.
    stored = await policy.store.current()
    return stored, PolicyIndex.build(stored.rules, version=stored.version)


def _counts(diff: str) -> tuple[int, int]:
    lines = diff.splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return added, removed


async def check_draft(text: str, local_roles: frozenset[str] = frozenset()) -> ValidateResult:
    """The findings of a draft; a malformed line is an error finding with its line. ``local_roles``:
    the roles accounts hold themselves (not "held by nobody")."""
    try:
        rules = parse_policy(text, source="draft")
    except PolicyError as exc:
        finding = FindingView(
            severity="error", code="malformed", message=exc.detail, line=exc.line, rule=None
        )
        return ValidateResult(ok=False, errors=1, warnings=0, rules=0, links=0, findings=[finding])
    # In a thread: checking a large policy is CPU work the event loop should not wait on.
    found: list[Finding] = await asyncio.to_thread(partial(validate, rules, local_roles=local_roles))
    errors = sum(1 for f in found if f.severity == "error")
    return ValidateResult(
        ok=errors == 0,
        errors=errors,
        warnings=len(found) - errors,
        rules=len(rules.policies),
        links=len(rules.links),
        findings=[finding_json(f) for f in found],
    )


async def diff_draft(policy: LivePolicy, text: str) -> DiffResult:
    rules = _parse_draft(text)
    stored = await policy.store.current()
    diff = policy_diff(stored.csv, rules.to_csv(), before=f"version {stored.version}", after="draft")
    added, removed = _counts(diff)
    return DiffResult(live_version=stored.version, same=not diff, added=added, removed=removed, diff=diff)


def run_draft_tests(text: str, cases_text: str, fmt: Literal["yaml", "csv"]) -> TestResult:
    rules = _parse_draft(text)
    try:
        cases = parse_cases(cases_text, source="cases", fmt=fmt)
    except CasesInvalid as exc:
        raise CasesInvalid(f"{exc.detail}; nothing was run") from None
    results = run_cases(PolicyIndex.build(rules, version=0), cases, canonicalize=_CANONICAL)
    failed = failures(results)
    views = [
        CaseView(
            where=r.case.where,
            name=r.case.name,
            principals=sorted(r.case.principals),
            route=r.case.route,
            method=r.case.method,
            path=r.case.path,
            expected=r.expected,
            got=r.got,
            reason=r.outcome.reason,
            explanation=r.outcome.explanation,
            passed=r.passed,
        )
        for r in sorted(results, key=lambda r: r.passed)
    ]
    return TestResult(total=len(results), passed=len(results) - len(failed), failed=len(failed), cases=views)


async def what_if_draft(policy: LivePolicy, services: Services, text: str, hours: int) -> WhatIfResult:
    rules = _parse_draft(text)
    _, live = await _live(policy)
    sample = await DecisionSample(services.db, clock=services.identity.clock).recent(hours)
    draft = PolicyIndex.build(rules, version=0)
    result = await asyncio.to_thread(what_if, live, draft, sample)
    return WhatIfResult(
        live_version=result.live_version,
        hours=hours,
        requests=result.requests,
        shapes=result.shapes,
        to_deny=result.to_deny,
        to_allow=result.to_allow,
        routes=[
            RouteImpactView(route=r.route, requests=r.requests, to_deny=r.to_deny, to_allow=r.to_allow)
            for r in result.routes
        ],
        flips=[_flip(f) for f in result.flips],
        omitted=result.omitted,
    )


def _flip(flip: Flip) -> FlipView:
    draft = flip.draft.explain().removesuffix("; policy version 0")
    return FlipView(
        route=flip.route,
        method=flip.method,
        path=flip.path,
        principals=list(flip.principals),
        count=flip.count,
        direction="to-deny" if flip.to_deny else "to-allow",
        live=flip.live.explain(),
        draft=draft,
    )


# -- proposals ------------------------------------------------------------------------------------


def _proposals(policy: LivePolicy, services: Services, config: CurrentConfig) -> Proposals:
    identity = services.identity
    ttl = timedelta(seconds=float(config.settings.admin.proposal_ttl))
    return Proposals(services.db, policy.store, identity.audit, identity.clock, ttl=ttl)


async def _holders(services: Services, config: CurrentConfig) -> dict[str, list[str]]:
    """Everyone who holds roles no ``g`` line gives, with the principals they speak as: accounts by
    their local roles, service accounts by theirs, and each identity provider's groups by the roles
    its ``role_map`` grants them (a re-attack run's "g, ops, admin" made a provider group's members
    admins unlisted, and a service account's tokens with it)."""
    held: dict[str, list[str]] = {
        f"user:{name}": [f"user:{name}", *roles, AUTHENTICATED]
        for name, roles in (await services.identity.accounts.role_holders()).items()
    }
    for account in await accounts_of(services, config).list_accounts():
        if account.roles:
            held[f"client:{account.name}"] = [f"client:{account.name}", *account.roles]
    for idp in config.settings.identity_providers:
        for group in idp.role_map:
            name = f"group:{idp.name}:{group}"
            held[name] = [name, *idp.roles_for((group,)), AUTHENTICATED]
    return held


async def _local_roles(services: Services, config: CurrentConfig) -> frozenset[str]:
    return frozenset(r for principals in (await _holders(services, config)).values() for r in principals[1:])


async def new_admins(
    services: Services, config: CurrentConfig, before: PolicyRules, after: PolicyRules
) -> list[str]:
    """Who reaches ``admin.role`` under ``after`` and not under ``before``: everyone holding roles no
    ``g`` line gives (:func:`_holders`) and every principal the policy names. An attack run had a
    reviewer approve ``g, <role>, admin`` without seeing that an account of the proposer's held that
    role."""
    role = config.settings.admin.role
    was, will = PolicyIndex.roles_only(before), PolicyIndex.roles_only(after)
    candidates = await _holders(services, config)
    named = [*(r.member for r in after.links), *(r.sub for r in after.policies), AUTHENTICATED]
    for name in named:
        if is_principal(name) and name not in candidates:
            candidates[name] = [name, AUTHENTICATED] if name.startswith(("user:", "group:")) else [name]
    return sorted(
        name
        for name, principals in candidates.items()
        if holds_role(principals, role, will) and not holds_role(principals, role, was)
    )


def _shown(admins: list[str]) -> list[str]:
    """The new admins as a reviewer reads them, and names them back when approving."""
    return sorted(_spelled(name) for name in admins)


def _spelled(name: str) -> str:
    """``name``, and its characters beyond ASCII as escapes: a look-alike (``user:\u0430lice``) must
    not read as the account it imitates where a reviewer decides."""
    if name.isascii():
        return name
    return f"{name} (spelled {name.encode('ascii', 'backslashreplace').decode('ascii')})"


def _proposal_json(p: Proposal, admins: list[str] | None = None) -> ProposalView:
    return ProposalView(
        id=p.id,
        status=str(p.status),
        proposer=p.proposer,
        reason=p.reason,
        created_at=p.created_at,
        expires_at=p.expires_at,
        base_version=p.base_version,
        diff=p.diff,
        policy=p.policy,
        decided_by=p.decided_by,
        decided_at=p.decided_at,
        decision_reason=p.decision_reason,
        applied_version=p.applied_version,
        new_admins=admins or [],
    )


async def proposal_list(
    policy: LivePolicy, services: Services, config: CurrentConfig, *, open_only: bool, limit: int = 50
) -> ProposalList:
    found = await _proposals(policy, services, config).list(open_only=open_only, limit=limit)
    live = (await policy.store.current()).rules
    views = [
        _proposal_json(
            p,
            _shown(await _proposal_admins(services, config, live, p))
            if p.status is ProposalStatus.PENDING
            else None,
        )
        for p in found
    ]
    return ProposalList(approvals=config.settings.admin.approvals, proposals=views)


async def _proposal_admins(
    services: Services, config: CurrentConfig, live: PolicyRules, p: Proposal
) -> list[str]:
    try:
        proposed = parse_policy(p.policy, source=f"proposal {p.id}")
    except PolicyError:
        return []
    return await new_admins(services, config, live, proposed)


# -- API: the draft ------------------------------------------------------------------------------


@post("/api/policy/draft/validate", status_code=200, tags=["policy draft"])
async def validate_draft(
    services: AdminServices, config: Config, data: JSONBody[DraftRequest]
) -> ValidateResult:
    """Validate a draft: every finding with its line (a malformed line is one). Nothing is stored."""
    return await check_draft(data.policy, await _local_roles(services, config))


@post("/api/policy/draft/diff", status_code=200, tags=["policy draft"])
async def diff_draft_json(live_policy: Policy, data: JSONBody[DraftRequest]) -> DiffResult:
    """The draft against the live policy: a unified diff and the lines added and removed."""
    return await diff_draft(live_policy, data.policy)


@post("/api/policy/draft/test", status_code=200, tags=["policy draft"])
async def test_draft_json(data: JSONBody[DraftTestRequest]) -> TestResult:
    """Run policy test cases against the draft (400 names the line of a malformed case).

    ``cases`` is the text of a cases file in the format of ``gateway policy test --cases`` (YAML, as
    ``policies/tests.yaml``, or CSV with ``format: csv``). Paths are made canonical as the gateway does.
    """
    return await asyncio.to_thread(run_draft_tests, data.policy, data.cases, data.format)


@post("/api/policy/draft/whatif", status_code=200, tags=["policy draft"])
async def what_if_json(
    live_policy: Policy, services: AdminServices, data: JSONBody[WhatIfRequest]
) -> WhatIfResult:
    """Replay the decisions of the last ``hours`` (1 to 168) under the live policy and the draft.

    Lists the request shapes whose verdict flips (allow to deny and back, the largest first) and the
    counts per route. The gateway keeps the decision sample for ``admin.sample_retention``.
    """
    return await what_if_draft(live_policy, services, data.policy, data.hours)


# -- API: proposals -------------------------------------------------------------------------------


@get("/api/policy/proposals", cache=False, tags=["policy proposals"])
async def list_proposals(
    live_policy: Policy,
    services: AdminServices,
    config: Config,
    open_only: Annotated[bool, QueryParameter(name="open", description="Only the pending ones.")] = False,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
) -> ProposalList:
    """Policy change proposals, newest first (``?open=true``: only those still waiting for approval)."""
    return await proposal_list(live_policy, services, config, open_only=open_only, limit=limit)


@post("/api/policy/proposals", status_code=201, tags=["policy proposals"])
async def propose(
    request: Request[Any, Any, Any],
    identity: Identity,
    live_policy: Policy,
    services: AdminServices,
    config: Config,
    data: JSONBody[ProposeRequest],
) -> ProposalView:
    """Propose a draft as the new policy; another admin approves it (422 with findings if invalid)."""
    admin = admin_of(request)
    details: dict[str, object] = {"reason": data.reason}
    try:
        rules = _parse_draft(data.policy)
        proposal = await _proposals(live_policy, services, config).propose(
            rules, actor=admin.actor, reason=data.reason
        )
    except GatewayError as err:
        await audit(
            identity,
            request,
            "admin.policy.propose",
            actor=admin.actor,
            subject="policy",
            outcome="failure",
            details={**details, "error": err.reason},
        )
        raise
    await audit(
        identity,
        request,
        "admin.policy.propose",
        actor=admin.actor,
        subject="policy",
        details={**details, "proposal": proposal.id},
    )
    return _proposal_json(proposal)


class ProposerGone(GatewayError):
    """Approving a proposal whose proposer's account was deleted: 409, nothing changed."""

    status = 409
    reason = "proposal-proposer-gone"
    title = "The proposer's account no longer exists"


class ProposerShut(GatewayError):
    """Approving a proposal whose proposer's account is disabled, restricted or closed: 409."""

    status = 409
    reason = "proposal-proposer-shut"
    title = "The proposer's account is shut"


class NewAdminsUnconfirmed(GatewayError):
    """Approving a proposal without naming exactly whom it makes an admin: 409, nothing changed."""

    status = 409
    reason = "proposal-new-admins"
    title = "Confirm who becomes an admin"


async def _refuse_made_since(
    services: Services, config: CurrentConfig, proposal: Proposal, admins: list[str]
) -> None:
    """An account or service account the proposal makes an admin, made (a service account: or given a
    token) after the proposal: the name was reviewed, not the person or credential behind it (re-attack
    runs: carol erased and made again with a password the proposer knew; boss proposed "g,
    client:deployer, admin", then made deployer and issued himself a token)."""
    since = proposal.created_at
    for name in (a.removeprefix("user:") for a in admins if a.startswith("user:")):
        account = await services.identity.accounts.find(name)
        if account is not None and account.created_at > since:
            raise NewAdminsUnconfirmed(
                f"user:{name}'s account was made after this proposal: the person behind the name is not the "
                "one reviewed. Reject it, and propose the change again if it is still wanted."
            )
    clients = {a.removeprefix("client:") for a in admins if a.startswith("client:")}
    if not clients:
        return
    machine = accounts_of(services, config)
    for client in (a for a in await machine.list_accounts() if a.name in clients):
        tokens = await machine.list_tokens(client.name)
        if client.created_at > since or any(t.created_at > since and t.state == "active" for t in tokens):
            raise NewAdminsUnconfirmed(
                f"client:{client.name} was made, or given a token, after this proposal: the credential "
                "behind the name was not the one reviewed. Reject it, and propose the change again."
            )


async def _refuse_approval(
    identity: Identity, approver: str, proposal: Proposal, named: list[str], acknowledged: list[str] | None
) -> None:
    """An account whose credentials the proposer issued (or that issued the proposer's) is the
    proposer's to use: an attack run had an admin make an account with a one-time password, have a
    second admin make it an admin, and approve his own proposals with it. ``named``: who the
    proposal makes an admin now, as shown, which the approver must have named (``acknowledged``)."""
    if approver == proposal.proposer:
        return  # refused as the proposer's own (Proposals.approve)
    if await identity.accounts.gone_since(proposal.proposer, proposal.created_at):
        # Their account is gone, and with it what tells whose accounts were theirs to use.
        raise ProposerGone(
            f"{proposal.proposer}'s account no longer exists: reject this proposal, and propose the change "
            "again if it is still wanted."
        )
    proposer = await identity.accounts.find(proposal.proposer.removeprefix("user:"))
    if proposer is not None and (proposer.disabled or proposer.restricted or proposer.closed_at is not None):
        # An admin shut out for cause (a re-attack run) left a queue any approver could still apply.
        raise ProposerShut(
            f"{proposal.proposer}'s account is disabled, restricted or closed: reject this proposal, and "
            "propose the change again if it is still wanted."
        )
    if await identity.accounts.lineage(approver) & await identity.accounts.lineage(proposal.proposer):
        raise SelfApproval(
            f"The credentials of your account and of {proposal.proposer}'s come from one admin (a one-time "
            "password or an invitation link one of you issued): another admin must approve it."
        )
    if sorted(acknowledged or ()) != named:
        # Whoever the change makes an admin is named to the approver, who names them back: a reviewer
        # approved "g, ops, admin" without seeing that an account of the proposer's held ops (an attack
        # run), and a role given after the review would otherwise slip in between.
        raise NewAdminsUnconfirmed(
            f"This change makes {', '.join(named)} an admin: approve it again with new_admins set to "
            "exactly that list (the Policies page shows it)."
            if named
            else "This change makes nobody an admin now: approve it again without new_admins."
        )


@post("/api/policy/proposals/{proposal:str}/approve", status_code=200, tags=["policy proposals"])
async def approve(
    request: Request[Any, Any, Any],
    identity: Identity,
    live_policy: Policy,
    services: AdminServices,
    config: Config,
    proposal: ProposalId,
    data: JSONBody[DecideRequest],
) -> ProposalDecision:
    """Approve another admin's pending proposal: it becomes the live policy.

    403 for one's own proposal; 409 when it is closed, expired, or the policy moved on since it was
    proposed (it turns stale: propose it again). Needs a recent second factor.
    """
    admin = admin_of(request)
    number = parse_id(proposal, what="proposal")
    details: dict[str, object] = {"reason": data.reason, "proposal": number}
    proposals = _proposals(live_policy, services, config)
    try:
        confirm_destructive(admin, config, identity.clock)
        pending = await proposals.get(number)
        admins = await _proposal_admins(services, config, (await live_policy.store.current()).rules, pending)
        details["new_admins"] = named = _shown(admins)
        await _refuse_approval(identity, admin.actor, pending, named, data.new_admins)
        await _refuse_made_since(services, config, pending, admins)
        version = await proposals.approve(
            number, actor=admin.actor, reason=data.reason, keep=keeps_admin(admin, config.settings.admin.role)
        )
    except GatewayError as err:
        await audit(
            identity,
            request,
            "admin.policy.approve",
            actor=admin.actor,
            subject="policy",
            outcome="failure",
            details={**details, "error": err.reason},
        )
        raise
    # This process decides who is an admin: it must see the approved change now.
    await live_policy.load()
    await audit(
        identity,
        request,
        "admin.policy.approve",
        actor=admin.actor,
        subject="policy",
        details={**details, "version": version},
    )
    return ProposalDecision(proposal=_proposal_json(await proposals.get(number)), version=version)


@post("/api/policy/proposals/{proposal:str}/reject", status_code=200, tags=["policy proposals"])
async def reject(
    request: Request[Any, Any, Any],
    identity: Identity,
    live_policy: Policy,
    services: AdminServices,
    config: Config,
    proposal: ProposalId,
    data: JSONBody[DecideRequest],
) -> ProposalDecision:
    """Close a pending proposal without applying it (the proposer's own: withdrawn)."""
    admin = admin_of(request)
    number = parse_id(proposal, what="proposal")
    details: dict[str, object] = {"reason": data.reason, "proposal": number}
    proposals = _proposals(live_policy, services, config)
    try:
        await proposals.reject(number, actor=admin.actor, reason=data.reason)
    except GatewayError as err:
        await audit(
            identity,
            request,
            "admin.policy.reject",
            actor=admin.actor,
            subject="policy",
            outcome="failure",
            details={**details, "error": err.reason},
        )
        raise
    await audit(
        identity, request, "admin.policy.reject", actor=admin.actor, subject="policy", details=details
    )
    return ProposalDecision(proposal=_proposal_json(await proposals.get(number)))


# -- pages ----------------------------------------------------------------------------------------


class PolicyPage(msgspec.Struct, kw_only=True):
    version: int
    created_at: datetime | None
    csv: str
    rules: list[StoredPermissionRule]
    links: list[StoredRoleLink]
    history: list[VersionInfo]
    proposals: list[ProposalView]
    approvals: int
    sample_hours: int


async def _policy_page(policy: LivePolicy, services: Services, config: CurrentConfig) -> PolicyPage:
    stored = await policy.store.current()
    shown = [rule_json(rule) for rule in stored.rules]
    history = [version_info(info) for info in await policy.store.history(20)]
    proposals = await proposal_list(policy, services, config, open_only=True)
    retention_hours = int(float(config.settings.admin.sample_retention) // 3600)
    return PolicyPage(
        version=stored.version,
        created_at=stored.created_at,
        csv=stored.csv,
        rules=[r for r in shown if isinstance(r, StoredPermissionRule)],
        links=[r for r in shown if isinstance(r, StoredRoleLink)],
        history=history,
        proposals=proposals.proposals,
        approvals=proposals.approvals,
        sample_hours=max(1, min(24, retention_hours, MAX_HOURS)),
    )


@get("/policies", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def policies_page(
    request: Request[Any, Any, Any], live_policy: Policy, services: AdminServices, config: Config
) -> Template:
    view = await _policy_page(live_policy, services, config)
    return page(request, "policies.html", title="Policies", section="policies", view=view)


class VersionPage(msgspec.Struct, kw_only=True):
    info: VersionInfo
    diff: str
    csv: str
    current: int
    approvals: int


@get("/policies/versions/{version:str}", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def version_page(
    request: Request[Any, Any, Any], live_policy: Policy, config: Config, version: VersionId
) -> Template:
    number = parse_id(version, what="version")
    info = await live_policy.store.describe(number)
    stored = await live_policy.store.get(number)
    view = VersionPage(
        info=version_info(info),
        diff=info.diff,
        csv=stored.csv,
        current=await live_policy.store.version(),
        approvals=config.settings.admin.approvals,
    )
    return page(
        request, "policy_version.html", title=f"Policy version {number}", section="policies", view=view
    )


HANDLERS = (
    validate_draft,
    diff_draft_json,
    test_draft_json,
    what_if_json,
    list_proposals,
    propose,
    approve,
    reject,
    policies_page,
    version_page,
)
