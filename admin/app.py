"""The admin app: the policy API under ``/api/`` (OpenAPI at ``/api/schema``), on its own listener.

Every ``/api/`` request needs a signed-in admin with a fresh second factor, and every change is
CSRF-checked (see :mod:`admin.access`). Changes go through the :class:`~gateway.authz.store.PolicyStore`,
which validates them, stores a new version and records ``policy.changed``; this app records an
``admin.<action>`` event beside it, also for a refused change. A change made here is live in every
gateway worker within one broadcast (or one poll interval).

Rules travel as JSON objects, named for what they mean rather than casbin's field names::

    {"ptype": "p", "subject": "role:editor", "route": "app", "path": "/docs/*", "methods": "GET|HEAD",
     "effect": "allow"}
    {"ptype": "g", "member": "user:alice", "role": "editor"}

(``p, <subject>, <route>, <path>, <methods>, <effect>`` and ``g, <member>, <role>`` in the CSV.)
Answers to a rule listing add ``line`` (its line in the stored CSV) and ``csv`` (the line itself).

Errors have the gateway's JSON shape, ``{"error", "message", "status", "request_id"}``, plus
``location`` when a page can fix it (sign-in, step-up) and ``findings`` when validation refused a
policy (422).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Litestar, MediaType, Request, delete, get, post, put
from litestar.background_tasks import BackgroundTask
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import YamlRenderPlugin
from litestar.params import JSONBody, QueryParameter
from litestar.response import Response
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from admin import console
from admin.access import (
    Admin,
    AdminRoleRequired,
    LockdownPasskeyRequired,
    admin_origin,
    authenticate,
    check_csrf,
    require_lockdown_passkey,
)
from admin.actions import ADMIN_KEY, CLIENT_IP_KEY, client_ip, confirm_destructive, keeps_admin
from admin.actions import admin_of as _admin_of
from admin.actions import audit as _audit
from admin.console.render import CONSOLE_CSP, PAGE_OPT_KEY, PUBLIC_URL_KEY
from admin.deps import LocalMetrics, MetricsScraper, Policy
from admin.lockdown import HANDLERS as LOCKDOWN
from admin.machine import HANDLERS as MACHINE
from admin.policy_json import (
    ChangeResult,
    Field,
    PermissionRule,
    Reason,
    RoleLink,
    StoredPermissionRule,
    StoredRoleLink,
    VersionId,
    VersionInfo,
    finding_json,
    rule_json,
    version_info,
)
from gateway.authz.live import LivePolicy
from gateway.authz.proposals import ApprovalRequired
from gateway.authz.rules import PolicyError, PolicyRules, Rule, parse_policy
from gateway.authz.store import Keep, PolicyRejected
from gateway.authz.validate import validate
from gateway.errors import BadPath, BadRequest, Forbidden, GatewayError
from gateway.identity.cookies import read_cookie
from gateway.names import hidden_character
from gateway.observe.metrics import CONTENT_TYPE, Scraper
from gateway.pipeline.authorize import AUTHENTICATED
from gateway.pipeline.canonical import canonicalize, refuse_unless_canonical
from gateway.pipeline.headers import forwarding_for, new_request_id
from gateway.reasons import LINE_RULE, OPTIONAL_REASON_PATTERN, REASON_PATTERN
from gateway.response.workflow import RecoveryChecksFailed
from gateway.services import IdentityServices, Services
from gateway.settings.current import CurrentConfig, LiveConfig
from gateway.settings.trusted import may_see_internals
from gateway.store.fast import FastState
from gateway.store.ids import parse_id
from gateway.threat.blocks import BlockListFiles, BlockStore, IpBlocked, IpBlocks
from gateway.threat.lockdown import LockdownStore
from gateway.web.api_reference import ReferencePage
from gateway.web.deps import Config, Identity, constant
from gateway.web.error_pages import FrameworkRefusal
from gateway.web.requests import GatewayRequest

__all__ = ["create_admin_app", "dependencies"]

logger = logging.getLogger("gateway.admin")

_PUBLIC = "public"  # handler opt: no session needed (health)
# Methods that only read: open to a signed-in admin during a lockdown too (every other one needs a passkey).
_READING: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: Seconds between two ``admin.refused`` records of one account.
REFUSAL_RECORD_EVERY: Final = 60.0
_REQUEST_ID = "request_id"
# casbin's field names, as PolicyError messages use them, and what this API calls them.
_FIELD_NAMES = "sub=subject, dom=route, obj=path, act=methods, eft=effect"

# -- request and response bodies ------------------------------------------------------------------


class RulesChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rules: Annotated[list[PermissionRule | RoleLink], msgspec.Meta(min_length=1, max_length=10_000)]
    reason: Reason


class PolicyReplace(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    csv: Annotated[str, msgspec.Meta(description="The whole new policy, casbin CSV.")]
    reason: Reason
    expected_version: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=2147483647,
                description="Store it only on top of this version: an editor opened on an older one is "
                "refused with 409 instead of undoing the changes stored since.",
            ),
        ]
        | None
    ) = None


class RestoreRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason


class RoleChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    member: Field
    role: Field
    reason: Reason


class ExplainRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A hypothetical request. Give ``principals`` or ``username`` (not both)."""

    route: Field
    method: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{1,20}\Z", description="As sent: GET, POST, …")]
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    principals: list[Field] | None = None
    username: Field | None = None


class PolicyView(msgspec.Struct, kw_only=True):
    version: int
    created_at: datetime | None
    rules: list[StoredPermissionRule | StoredRoleLink]
    csv: str


class History(msgspec.Struct, kw_only=True):
    versions: list[VersionInfo]


class VersionView(VersionInfo, kw_only=True):
    diff: str
    csv: str
    rules: list[StoredPermissionRule | StoredRoleLink]


class RolesView(msgspec.Struct, kw_only=True):
    version: int
    admin_role: str
    roles: list[StoredRoleLink]


class ExplainResult(msgspec.Struct, kw_only=True):
    allowed: bool
    reason: str
    explanation: str
    rule: StoredPermissionRule | None
    principal: str | None
    version: int
    principals: list[str]
    route: str
    method: str
    path: str
    note: str | None = None


# -- conversions ----------------------------------------------------------------------------------


def rule_of(item: PermissionRule | RoleLink) -> Rule:
    if isinstance(item, PermissionRule):
        return Rule("p", (item.subject, item.route, item.path, item.methods, item.effect))
    return Rule.link(item.member, item.role)


def checked_rules(items: Iterable[PermissionRule | RoleLink], key: str = "rules") -> list[Rule]:
    """The rules, each checked as a policy line would be. Raises BadRequest naming the bad one."""
    rules: list[Rule] = []
    for i, item in enumerate(items):
        rule = rule_of(item)
        try:
            PolicyRules.from_rules([rule])
        except PolicyError as exc:
            hint = f" (casbin field names: {_FIELD_NAMES})" if "field '" in exc.detail else ""
            raise BadRequest(
                f"{key}[{i}] ({rule.to_csv()}): {exc.detail}{hint}; nothing was changed"
            ) from exc
        rules.append(rule)
    return rules


# -- request ids, client addresses, guard -------------------------------------------------------


class RequestContext(ASGIMiddleware):
    """Give each request an id and its client address (trusted proxies honoured); harden responses."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, live: LiveConfig) -> None:
        self.live = live

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        client = scope.get("client")
        headers = list(scope["headers"])
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "")
        fwd = forwarding_for(
            peer_ip=client[0] if client else "",
            scheme=scope.get("scheme", "http"),
            host=host,
            headers=headers,
            trusted=self.live.current.trusted,
        )
        state = scope.setdefault("state", {})
        state[_REQUEST_ID] = fwd.request_id
        state[CLIENT_IP_KEY] = fwd.client_ip
        state[PUBLIC_URL_KEY] = self.live.current.public_url

        path = scope.get("path", "")
        csp = _csp_for(path)

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *_response_headers(fwd.request_id, csp)]
            await send(message)

        if hidden_character(path) is not None:
            # A file name with NUL made the static files router fail with a traceback (an attack run);
            # no path of this listener holds a control character, or another one a reader cannot see.
            await _refuse_path(scope, receive, send_hardened, BadPath(_HIDDEN_IN_PATH))
            return
        try:
            # The router reads the decoded path with '//' merged: 'H1%2F' named the hold 'H1'.
            refuse_unless_canonical(scope.get("raw_path") or path.encode("utf-8"))
        except BadPath as exc:
            await _refuse_path(scope, receive, send_hardened, exc)
            return
        await next_app(scope, receive, send_hardened)


_API_CSP: Final = b"default-src 'none'; frame-ancestors 'none'"


_HIDDEN_IN_PATH: Final = (
    "The path holds a control character or another one a reader cannot see; nothing was changed."
)


async def _refuse_path(scope: Scope, receive: Receive, send: Send, err: BadPath) -> None:
    """A 400 for a path no handler may see, in the API's error shape."""
    state = scope.get("state", {})
    body = msgspec.json.encode(_error_body(err, str(state.get(_REQUEST_ID, ""))))
    response = ASGIResponse(body=body, status_code=err.status, media_type="application/json")
    await response(scope, receive, send)


def _csp_for(path: str) -> bytes:
    # The API answers data and runs nothing; the console's pages run their own script and styles.
    return _API_CSP if path.startswith("/api/") or path in ("/api", "/metrics", "/health") else CONSOLE_CSP


def _response_headers(request_id: str, csp: bytes = _API_CSP) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-request-id", request_id.encode()),
        # Policy and history are not for shared caches, nor for framing by another page.
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", csp),
    ]


def _request_id(connection: ASGIConnection[Any, Any, Any, Any]) -> tuple[str, dict[str, str]]:
    """The request's id, and the headers an error response must add itself.

    Requests that matched no route (404, 405) never pass the route middleware: their error answer
    gets its id and the hardening headers here instead.
    """
    found = connection.scope.get("state", {}).get(_REQUEST_ID)
    if found:
        return str(found), {}
    request_id = new_request_id()
    return request_id, {k.decode(): v.decode() for k, v in _response_headers(request_id)}


def _error_body(err: GatewayError, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": err.reason,
        "message": err.public_detail,
        "status": err.status,
        "request_id": request_id,
    }
    if err.location:
        body["location"] = err.location
    if isinstance(err, PolicyRejected):
        body["findings"] = [msgspec.structs.asdict(finding_json(f)) for f in err.findings]
    if isinstance(err, RecoveryChecksFailed):
        # Closing refused: the whole checklist, so the team sees what to fix.
        body["checks"] = [c.as_dict() for c in err.checks]
    return body


# -- the app ----------------------------------------------------------------------------------------
#
# (The module docstring is the API's OpenAPI description.) Handlers are module-level functions that
# declare what they use as typed parameters, provided once for the whole app by Litestar's dependency
# injection (dependencies() below): ``identity``, ``live_policy``, ``config`` (the configuration in
# force, read once per request), ``local_metrics`` and ``scraper``. No request body field may share a
# dependency's name: Litestar takes a body error at that name for the dependency's and answers 500
# (a draft's ``policy`` field did; tests/unit/admin/test_dependency_names.py keeps it so). A new call
# declares the ones it needs, goes into ``HANDLERS``, and records an ``admin.<action>`` event (see _change).


class AdminGuard:
    """The CSRF check, then the admin check, then during a lockdown the passkey check of a change (see
    :mod:`admin.access`); stores the Admin."""

    __slots__ = (
        "_blocks",
        "_fast",
        "_file_blocks",
        "_files",
        "_identity",
        "_live",
        "_lockdown",
        "_origins",
        "_policy",
    )

    def __init__(
        self, identity: IdentityServices, policy: LivePolicy, live: LiveConfig, fast: FastState
    ) -> None:
        self._identity = identity
        self._policy = policy
        self._live = live
        self._fast = fast
        self._blocks = BlockStore(fast, identity.clock, db=identity.audit.db)
        # Read-only here (no audit log): the switch as the gateway workers apply it.
        self._lockdown = LockdownStore(fast, identity.clock, db=identity.audit.db)
        # The block-list files (threat.block_lists) too: an attack run reached the console from an
        # address a feed listed, which the data plane refused.
        self._file_blocks = IpBlocks(identity.clock)
        self._files = BlockListFiles(
            self._file_blocks, lambda: self._live.current.settings.threat.block_lists
        )
        config = live.current
        if config.settings.admin.listen is None:
            raise GatewayError("admin.listen is null: the admin API is disabled in this configuration")
        self._origins = frozenset({admin_origin(config.public_url, config.settings.admin.listen)})

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        # Blocks first, also for the public paths (/metrics, the console's page and assets): the README
        # says a block holds on the admin listener, and an attack run still scraped /metrics blocked.
        await self._refuse_blocked(connection.scope.get("state", {}).get(CLIENT_IP_KEY, ""))
        if handler.opt.get(_PUBLIC):
            return
        headers = connection.headers
        try:
            check_csrf(
                method=str(connection.scope.get("method", "GET")),
                content_type=headers.get("content-type"),
                origin=headers.get("origin"),
                sec_fetch_site=headers.get("sec-fetch-site"),
                allowed_origins=self._origins,
            )
        except GatewayError as err:
            await self._record_csrf_refusal(connection, err)
            raise
        config = self._live.current
        try:
            admin = await authenticate(
                headers=list(connection.scope["headers"]),
                cookie_name=config.cookie_name,
                sessions=self._identity.sessions,
                index=self._policy.authorizer.index,
                role=config.settings.admin.role,
                reauth_max_age=float(config.settings.admin.reauth_max_age),
                public_url=config.public_url,
                now=self._identity.clock.time(),
                # A page comes back to itself after the sign-in or step-up; an API call to the console.
                back=next(iter(self._origins)) + _page_path(connection),
            )
        except AdminRoleRequired as err:
            # A signed-in non-admin probing the admin API is worth a line in the trail, but one a
            # minute per account: else anyone signed in could fill the trail and bury real events.
            if await self._first_refusal(err.username):
                await _audit(
                    self._identity, connection, "admin.refused", actor=f"user:{err.username}",
                    subject=connection.url.path[:200], outcome="failure",
                    details={"error": err.reason, "path": connection.url.path},
                )  # fmt: skip
            raise
        await self._refuse_phishable_change(connection, admin)
        connection.scope.setdefault("state", {})[ADMIN_KEY] = admin

    async def _refuse_phishable_change(
        self, connection: ASGIConnection[Any, Any, Any, Any], admin: Admin
    ) -> None:
        """403 ``lockdown-passkey-required`` for a change while a lockdown is on, unless the session used
        a passkey within ``lockdown.max_factor_age`` (:func:`admin.access.require_lockdown_passkey`).

        An attack run switched the lockdown off, and could have lifted incidents or unblocked addresses,
        with an admin session holding only a password and an authenticator code: what a phishing page
        takes. Reading stays open; the host's ``gateway lockdown off`` is the fallback. A switch that
        cannot be read refuses the change (StateUnavailable, 503): it may be on.
        """
        if str(connection.scope.get("method", "GET")).upper() in _READING:
            return
        if not (await self._lockdown.read()).on:
            return
        config = self._live.current
        try:
            require_lockdown_passkey(
                admin,
                now=self._identity.clock.time(),
                max_age=float(config.settings.lockdown.max_factor_age),
                public_url=config.public_url,
                back=next(iter(self._origins)) + _page_path(connection),
            )
        except LockdownPasskeyRequired as err:
            # Once a minute per account, as the other refusals: a script retrying must not bury the trail.
            if await self._first_refusal(f"lockdown:{admin.session.username}"):
                await _audit(
                    self._identity, connection, "admin.refused", actor=admin.actor,
                    subject=connection.url.path[:200], outcome="failure",
                    details={
                        "error": err.reason,
                        "path": connection.url.path,
                        "method": str(connection.scope.get("method", "")),
                    },
                )  # fmt: skip
            raise

    async def _record_csrf_refusal(
        self, connection: ASGIConnection[Any, Any, Any, Any], err: GatewayError
    ) -> None:
        """A change sent from another origin, or not as JSON, is what a forged request looks like: it
        goes in the trail (an attack run found no record of one), naming the admin whose cookie it
        carried, if any. Once a minute per address, like a non-admin's refusals: a page that fires
        them in a loop must not bury the trail."""
        ip = client_ip(connection)
        if not await self._first_refusal(f"csrf:{ip}"):
            return
        actor = "anonymous"
        session_id = read_cookie(list(connection.scope["headers"]), self._live.current.cookie_name)
        try:
            session = await self._identity.sessions.get(session_id) if session_id else None
        except GatewayError:
            session = None
        if session is not None:
            actor = f"user:{session.username}"
        origin = connection.headers.get("origin") or ""
        await _audit(
            self._identity, connection, "admin.refused", actor=actor, subject=connection.url.path[:200],
            outcome="failure",
            details={
                "error": err.reason,
                "path": connection.url.path,
                "method": str(connection.scope.get("method", "")),
                "origin": origin[:200],
            },
        )  # fmt: skip

    async def _refuse_blocked(self, ip: str) -> None:
        """403 ``ip-blocked`` for an address the shared block list holds, as on the data plane: else an
        admin whose address detection or another admin blocked could lift the block from the
        console. Read per request (admin requests are few); the host's ``gateway incident`` commands
        still reach the list."""
        blocks = IpBlocks(self._identity.clock)
        await self._blocks.refresh(blocks)
        # A stat of each file per request, a re-read only when one changed (admin requests are few).
        self._files.poll()
        if ip and (ip in blocks or ip in self._file_blocks):
            raise IpBlocked("Access from your address is blocked.")

    async def _first_refusal(self, username: str) -> bool:
        """Whether this is the account's first refusal in :data:`REFUSAL_RECORD_EVERY` (shared by every
        process and replica); when the fast state cannot say, the refusal is recorded."""
        key = f"admin:refused:{hashlib.sha256(username.encode()).hexdigest()[:32]}"
        try:
            return await self._fast.set(key, b"1", ttl=REFUSAL_RECORD_EVERY, only_if_absent=True)
        except GatewayError:
            return True


async def _change(
    request: Request[Any, Any, Any],
    identity: IdentityServices,
    policy: LivePolicy,
    action: str,
    details: Mapping[str, object],
    make: Callable[[str, Keep], Awaitable[int]],
    *,
    config: CurrentConfig,
) -> ChangeResult:
    """Run one policy change as this admin, audit it (also when refused), make it live here.

    With ``admin.approvals: 2`` no change is made directly: it is proposed and another admin approves
    it (``/api/policy/proposals``). Every change needs a second factor used within
    ``admin.destructive_reauth_max_age``: adding or removing rules and role links reaches any policy a
    replace does (allow everything, make someone an admin, remove every rule).
    """
    admin = _admin_of(request)
    store = policy.store
    previous = await store.version()
    settings = config.settings.admin
    try:
        if settings.approvals > 1:
            raise ApprovalRequired(
                "This gateway needs two admins for a policy change (admin.approvals: 2): propose it with "
                "POST /api/policy/proposals (the console's Policies page), and another admin approves it."
            )
        confirm_destructive(admin, config, identity.clock)
        version = await make(admin.actor, keeps_admin(admin, settings.role))
    except GatewayError as err:
        await _audit(
            identity, request, f"admin.{action}", actor=admin.actor, subject="policy", outcome="failure",
            details={**details, "error": err.reason},
        )  # fmt: skip
        raise
    # This process decides who is an admin and answers explain: it must see its own change now.
    await policy.load()
    await _audit(
        identity, request, f"admin.{action}", actor=admin.actor, subject="policy",
        details={**details, "version": version},
    )  # fmt: skip
    stored = await store.get(version) if version else None
    findings = validate(stored.rules) if stored is not None else []
    return ChangeResult(
        version=version,
        previous=previous,
        changed=version != previous,
        warnings=[finding_json(f) for f in findings if f.severity != "error"],
    )


# -- reading --------------------------------------------------------------------------------------


@get("/health", media_type=MediaType.JSON, cache=False, opt={_PUBLIC: True}, include_in_schema=False)
async def health() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


@get("/api/policy", cache=False, tags=["policy"])
async def current_policy(live_policy: Policy) -> PolicyView:
    """The current policy: version, rules (with their CSV lines) and the CSV text."""
    stored = await live_policy.store.current()
    return PolicyView(
        version=stored.version,
        created_at=stored.created_at,
        rules=[rule_json(rule) for rule in stored.rules],
        csv=stored.csv,
    )


@get("/api/policy/history", cache=False, tags=["policy"])
async def history(live_policy: Policy, limit: Annotated[int, QueryParameter(ge=1, le=500)] = 20) -> History:
    """The latest changes, newest first (``?limit=``, default 20)."""
    return History(versions=[version_info(info) for info in await live_policy.store.history(limit)])


@get("/api/policy/versions/{version:str}", cache=False, tags=["policy"])
async def version_view(live_policy: Policy, version: VersionId) -> VersionView:
    """One version: who, when, why, its CSV, its rules and the diff against the version before."""
    number = parse_id(version, what="version")
    info = await live_policy.store.describe(number)
    stored = await live_policy.store.get(number)
    return VersionView(
        **msgspec.structs.asdict(version_info(info)),
        diff=info.diff,
        csv=stored.csv,
        rules=[rule_json(rule) for rule in stored.rules],
    )


@get("/api/policy/roles", cache=False, tags=["roles"])
async def roles(live_policy: Policy, config: Config) -> RolesView:
    """Role assignments (the policy's ``g`` lines) and the role that makes an admin."""
    stored = await live_policy.store.current()
    return RolesView(
        version=stored.version,
        admin_role=config.settings.admin.role,
        roles=[_link_json(rule) for rule in stored.rules.links],
    )


# -- changing -------------------------------------------------------------------------------------


@post("/api/policy/rules", status_code=200, tags=["policy"])
async def add_rules(
    request: Request[Any, Any, Any],
    identity: Identity,
    live_policy: Policy,
    config: Config,
    data: JSONBody[RulesChange],
) -> ChangeResult:
    """Add rules (400 if one is already there; 422 if the result fails validation)."""
    rules = checked_rules(data.rules)
    details = {"reason": data.reason, "rules": [r.to_csv() for r in rules]}
    return await _change(
        request,
        identity,
        live_policy,
        "policy.add",
        details,
        lambda actor, keep: live_policy.store.add(rules, actor=actor, reason=data.reason, keep=keep),
        config=config,
    )


@delete("/api/policy/rules", status_code=200, tags=["policy"])
async def remove_rules(
    request: Request[Any, Any, Any],
    identity: Identity,
    live_policy: Policy,
    config: Config,
    data: JSONBody[RulesChange],
) -> ChangeResult:
    """Remove rules (400 if one is not there; 422 if the result fails validation)."""
    rules = checked_rules(data.rules)
    details = {"reason": data.reason, "rules": [r.to_csv() for r in rules]}
    return await _change(
        request,
        identity,
        live_policy,
        "policy.remove",
        details,
        lambda actor, keep: live_policy.store.remove(rules, actor=actor, reason=data.reason, keep=keep),
        config=config,
    )


@put("/api/policy", status_code=200, tags=["policy"])
async def replace_policy(
    request: Request[Any, Any, Any],
    identity: Identity,
    live_policy: Policy,
    config: Config,
    data: JSONBody[PolicyReplace],
) -> ChangeResult:
    """Replace the whole policy with CSV text (400 names a malformed line; 422: validation).

    ``expected_version`` (optional) makes it a compare-and-set: 409 when the policy moved on since.
    Destructive: needs a second factor used within ``admin.destructive_reauth_max_age``; refused (403)
    when ``admin.approvals`` is 2 (propose it instead).
    """
    try:
        rules = parse_policy(data.csv, source="csv")
    except PolicyError as exc:
        raise BadRequest(f"{exc}; nothing was changed") from exc
    details = {"reason": data.reason, "lines": len(rules)}
    return await _change(
        request,
        identity,
        live_policy,
        "policy.replace",
        details,
        lambda actor, keep: live_policy.store.replace(
            rules, actor=actor, reason=data.reason, expected_version=data.expected_version, keep=keep
        ),
        config=config,
    )


@post("/api/policy/restore/{version:str}", status_code=200, tags=["policy"])
async def restore(
    request: Request[Any, Any, Any],
    identity: Identity,
    live_policy: Policy,
    config: Config,
    version: VersionId,
    data: JSONBody[RestoreRequest],
) -> ChangeResult:
    """Store a new version with the policy of an old one (404 if there is no such version).

    Destructive, like a replace; refused (403) when ``admin.approvals`` is 2 (propose it instead).
    """
    number = parse_id(version, what="version")
    details = {"reason": data.reason, "restored_from": number}
    return await _change(
        request,
        identity,
        live_policy,
        "policy.restore",
        details,
        lambda actor, keep: live_policy.store.restore(number, actor=actor, reason=data.reason, keep=keep),
        config=config,
    )


@post("/api/policy/roles", status_code=200, tags=["roles"])
async def add_role(
    request: Request[Any, Any, Any],
    identity: Identity,
    live_policy: Policy,
    config: Config,
    data: JSONBody[RoleChange],
) -> ChangeResult:
    """Give ``member`` the role ``role``."""
    rules = checked_rules([RoleLink(member=data.member, role=data.role)], key="roles")
    details = {"reason": data.reason, "member": data.member, "role": data.role}
    return await _change(
        request,
        identity,
        live_policy,
        "role.add",
        details,
        lambda actor, keep: live_policy.store.add(rules, actor=actor, reason=data.reason, keep=keep),
        config=config,
    )


@delete("/api/policy/roles", status_code=200, tags=["roles"])
async def remove_role(
    request: Request[Any, Any, Any],
    identity: Identity,
    live_policy: Policy,
    config: Config,
    data: JSONBody[RoleChange],
) -> ChangeResult:
    """Take the role ``role`` from ``member``."""
    rules = checked_rules([RoleLink(member=data.member, role=data.role)], key="roles")
    details = {"reason": data.reason, "member": data.member, "role": data.role}
    return await _change(
        request,
        identity,
        live_policy,
        "role.remove",
        details,
        lambda actor, keep: live_policy.store.remove(rules, actor=actor, reason=data.reason, keep=keep),
        config=config,
    )


@post("/api/policy/explain", status_code=200, tags=["policy"])
async def explain(
    identity: Identity, live_policy: Policy, config: Config, data: JSONBody[ExplainRequest]
) -> ExplainResult:
    """Decide a hypothetical request with the current policy, and say which rule decided it.

    The path is canonicalised first, exactly as the gateway does before asking the policy.
    """
    if (data.principals is None) == (data.username is None):
        raise BadRequest("Give either 'principals' (a list) or 'username', not both and not neither.")
    routes = config.settings.routes
    route = next((r for r in routes if r.name == data.route), None)
    if route is None:
        names = ", ".join(sorted(r.name for r in routes)) or "none"
        raise BadRequest(f"There is no route named {data.route!r} (routes: {names}).")
    canon = canonicalize(data.path.encode())
    if canon.has_path_params and not route.allow_path_params:
        raise BadRequest(
            f"The gateway refuses ';' path parameters on route {route.name!r} before asking the policy."
        )
    note = None
    if data.username is not None:
        user = await identity.accounts.find(data.username)
        if user is None:
            raise BadRequest(f"There is no account named {data.username!r}.")
        principals = frozenset((f"user:{user.username}", AUTHENTICATED, *user.roles.split()))
        note = (
            "The principals of the local account; groups an identity provider asserts at sign-in "
            "are not known here (pass 'principals' to include them)."
        )
        if user.disabled:
            note += " The account is disabled: it cannot sign in, whatever the policy says."
    else:
        principals = frozenset(data.principals or ())
    await live_policy.load()
    decision = live_policy.authorizer.index.decide_request(principals, route.name, data.method, canon.path)
    rule = rule_json(decision.rule) if decision.rule is not None else None
    return ExplainResult(
        allowed=decision.allowed,
        reason=str(decision.reason),
        explanation=decision.explain(),
        rule=rule if isinstance(rule, StoredPermissionRule) else None,
        principal=decision.principal,
        version=decision.version,
        principals=sorted(principals),
        route=route.name,
        method=data.method,
        path=canon.path,
        note=note,
    )


@get("/metrics", cache=False, opt={_PUBLIC: True}, include_in_schema=False)
async def metrics(
    request: Request[Any, Any, Any], config: Config, local_metrics: LocalMetrics, scraper: MetricsScraper
) -> Response[bytes]:
    """Prometheus metrics of the whole gateway (see :mod:`gateway.observe.metrics`).

    No session: a Prometheus server has none. Instead only the loopback and the trusted proxies
    (the direct peer, not a forwarded address) may scrape, like the gateway's other internals;
    route counts and policy versions say too much about the deployment to be public.
    """
    client = request.scope.get("client")
    if not may_see_internals(config.trusted, client[0] if client else ""):
        raise Forbidden("Metrics are served to the loopback and trusted proxies only.")
    body = await scraper.render(settings=config.settings, local=local_metrics)
    return Response(body, media_type=CONTENT_TYPE)


#: The admin app's handlers, in registration order.
HANDLERS: Final = (
    health,
    current_policy,
    history,
    version_view,
    roles,
    add_rules,
    remove_rules,
    replace_policy,
    restore,
    add_role,
    remove_role,
    explain,
    metrics,
)


# -- errors ---------------------------------------------------------------------------------------


def _gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    request_id, headers = _request_id(request)
    if _is_page(request):
        return console.error_page(request, exc, request_id, headers)
    return Response(_error_body(exc, request_id), status_code=exc.status, headers=headers)


def _is_page(request: Request[Any, Any, Any]) -> bool:
    # A console page (not the API a script or the page's own script calls) answers errors in HTML.
    handler: Any = request.scope.get("route_handler")
    if handler is not None:
        return bool(handler.opt.get(PAGE_OPT_KEY))
    # No route matched (404, 405): a page if a browser asked for one.
    return "text/html" in request.headers.get("accept", "") and not request.url.path.startswith("/api")


# msgspec names the pattern a field missed; a reason's is a character class of some forty ranges.
_PATTERN_RULES: Final = {
    repr(REASON_PATTERN): "say why, in words: " + LINE_RULE,
    repr(OPTIONAL_REASON_PATTERN): "if given, " + LINE_RULE,
}


def _readable(message: str) -> str:
    """``message`` with a reason's pattern said in words."""
    for pattern, rule in _PATTERN_RULES.items():
        if pattern in message:
            return rule
    return message


def _validation_error(
    identity: IdentityServices,
) -> Callable[[Request[Any, Any, Any], ValidationException], Response[Any]]:
    """The 400 for a request whose parameters or body did not parse, saying exactly what to fix."""

    def handle(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
        # Litestar lists each problem with where it is (``rules[0].path``).
        problems = []
        for item in exc.extra if isinstance(exc.extra, list) else []:
            if isinstance(item, dict):
                key = item.get("key")
                message = _readable(str(item.get("message")))
                problems.append(f"{key}: {message}" if key else message)
        detail = "; ".join(problems) or str(exc.detail)
        response = _gateway_error(
            request, BadRequest("The request is not valid; nothing was changed. " + detail)
        )
        admin = request.scope.get("state", {}).get(ADMIN_KEY)
        if isinstance(admin, Admin) and request.method not in ("GET", "HEAD", "OPTIONS"):
            # A change refused before its handler ran (a body that did not parse, a reason of
            # spaces): the handler's own record never happens, so it is made here, after the answer
            # (an attack run found none for these).
            response.background = BackgroundTask(
                _audit, identity, request, "admin.refused", actor=admin.actor,
                subject=request.url.path[:200], outcome="failure",
                details={"error": "bad-request", "path": request.url.path, "method": request.method},
            )  # fmt: skip
        return response

    return handle


def _page_path(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The console page a browser asked for (to come back to), or ``/`` for the API and changes."""
    path = connection.url.path
    if connection.scope.get("method") != "GET" or path.startswith("/api"):
        return "/"
    return path


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    reason = FrameworkRefusal.REASONS.get(exc.status_code, "error")
    if exc.status_code < 500 and _is_page(request):
        # A browser gets the console's error page with a way back, not raw JSON (a first-day run).
        return _gateway_error(request, FrameworkRefusal(exc.status_code, exc.detail))
    request_id, headers = _request_id(request)
    body = {"error": reason, "message": exc.detail, "status": exc.status_code, "request_id": request_id}
    return Response(body, status_code=exc.status_code, headers={**(exc.headers or {}), **headers})


def _too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    # The JSON decoder recurses once per level: a body of 100,000 brackets is a malformed request
    # (400, nothing changed), not a server failure.
    logger.warning("recursion limit in %s %s: %s", request.method, request.url.path, exc)
    return _gateway_error(request, BadRequest("The request body is nested too deeply; nothing was changed."))


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Fail closed with a clear 500 and the request id; the traceback goes to the log only.
    logger.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _gateway_error(request, GatewayError("An internal error occurred."))


def dependencies(services: Services) -> Mapping[str, Provide]:
    """What the admin handlers may declare as parameters, by name."""
    live = services.live

    def config() -> CurrentConfig:
        # Per request: a reload between two requests is seen by the second.
        return live.current

    return {
        "config": Provide(config, sync_to_thread=False),
        "identity": constant(services.identity),
        "live_policy": constant(services.policy),
        "services": constant(services),
        "local_metrics": constant(services.metrics),
        # One per app: the session counter (Redis) is created on the first scrape.
        "scraper": constant(Scraper()),
    }


def create_admin_app(services: Services) -> Litestar:
    """Build the admin app on the admin process's started services.

    Raises:
        GatewayError: ``admin.listen`` is null (the configuration serves no admin API).
    """
    guard = AdminGuard(services.identity, services.policy, services.live, services.fast)
    return Litestar(
        request_class=GatewayRequest,
        # The process's logging is the CLI's (one format for the master, workers and admin child);
        # Litestar's default would reconfigure the root logger in every worker with its own format.
        logging_config=None,
        route_handlers=[*HANDLERS, *LOCKDOWN, *MACHINE, *console.HANDLERS, console.static_router()],
        template_config=console.template_config(),
        dependencies=dict(dependencies(services)),
        guards=[guard],
        middleware=[RequestContext(services.live)],
        exception_handlers={
            GatewayError: _gateway_error,
            ValidationException: _validation_error(services.identity),
            HTTPException: _http_error,
            RecursionError: _too_deep,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(
            title="Gateway admin API",
            version="1",
            path="/api/schema",
            description=__doc__,
            # Litestar's default viewer loads Redoc from a CDN: blank under this listener's CSP.
            render_plugins=[ReferencePage(path="/"), YamlRenderPlugin()],
        ),
        debug=False,
    )


def _link_json(rule: Rule) -> StoredRoleLink:
    return StoredRoleLink(member=rule.member, role=rule.role, line=rule.line, csv=rule.to_csv())
