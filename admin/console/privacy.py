"""Privacy: the register of data-subject requests, legal holds, the retention rules, and the rights an
admin exercises for a person (``/privacy``, ``/privacy/requests/{ref}`` and their twins under
``/api/privacy``; the per-person actions are also on the user's page).

Every right is the :class:`~gateway.privacy.service.Privacy` service's own operation, the one the
account portal and ``gateway privacy …`` call, here with channel ``admin``, the signed-in admin as the
actor and, as ``verified_by``, what the admin writes about how they verified the person who asked. So
the register row, the ``privacy.<kind>`` audit event and the erasure itself are the same whichever
way a right arrives. Beside each, an ``admin.privacy.<action>`` event carries the admin's reason and
outcome, also when the action is refused (``export``, ``rectify``, ``restrict``, ``close``,
``erase``, ``object``, ``withdraw_consent``, ``verify``, ``reject``, ``hold.place``, ``hold.release``).

An objection or a consent withdrawal that reaches the organisation by email, phone or letter is
recorded here for the person (``object``, ``withdraw_consent``) through the service method their own
portal calls, so the effect is theirs: the purpose stops for their sessions at once (an objection to
``policy_analytics`` keeps their requests out of the decision sample). The register row's
``verified_by`` is what the admin wrote followed by the admin. Neither asks for a recent second
factor: both only stop processing, and the person can undo them from their portal.

Erasing someone and releasing a legal hold are destructive: they need a reason and a second factor used
within ``admin.destructive_reauth_max_age``. Restricting (or lifting a restriction) and closing an
account need that second factor too: they decide who may sign in and end sessions, as disabling and
enabling an account do, so they must not be a way around those. Releasing a hold carries out at once the erasures it held
back (what the people asked for; only the hold stood in the way). An admin cannot restrict, close or
erase their own account here (their session would end with it): the account portal does that.

The retention rules are read from ``privacy.retention``; what a run would do now is the retention
engine's own plan (:meth:`gateway.privacy.retention.Retention.plan`, as ``gateway retention plan``),
computed here without running anything.

Lists of many people (the register, the holds, the plan's next accounts) show each name masked
(:func:`admin.console.masking.mask_person`) and no free text about the person; a request's own page
shows it in full. What an admin writes as ``verified_by`` or a reason stays in the register and the
audit trail after the person is erased: it should say how, not who.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from litestar import MediaType, Request, get, post
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Response, Template

from admin.access import Admin
from admin.actions import admin_of, audit, client_ip, confirm_destructive
from admin.console.masking import mask_person
from admin.console.render import PAGE_OPT, page
from admin.console.users import refuse_admin_takeover
from admin.deps import AdminServices, Policy
from gateway.audit.query import parse_time
from gateway.errors import BadRequest, GatewayError
from gateway.identity.accounts import InvalidAccount, UnknownAccount
from gateway.identity.models import User
from gateway.identity.names import canonical_email, canonical_username
from gateway.privacy.holds import DATA_CLASSES, HoldView
from gateway.privacy.register import OPEN, Channel, RequestView, Status, is_ref
from gateway.privacy.retention import VERBS, ClassPlan, Retention
from gateway.reasons import OPTIONAL_REASON_PATTERN, REASON_PATTERN
from gateway.services import Services
from gateway.settings.schema import PRIVACY_LAWS, PrivacySettings
from gateway.store.ids import parse_id
from gateway.threat.incidents import IncidentStore
from gateway.web.deps import Config

__all__ = [
    "HANDLERS",
    "HoldList",
    "RequestDetail",
    "RequestList",
    "RetentionPlan",
    "RetentionView",
    "hold_list",
    "request_detail",
    "request_list",
    "retention_plan",
    "retention_view",
]

logger = logging.getLogger("gateway.admin")

#: At most this many open requests are listed (oldest due first); a register with more open
#: requests than this has a bigger problem than a long page.
OPEN_LIMIT: Final = 1000
_DAY: Final = 86400
_T = TypeVar("_T")
_STATUSES: Final = ("all", "open", "overdue", *(str(s) for s in Status))

# -- errors -----------------------------------------------------------------------------------------


class BadRequestRef(BadRequest):
    """Not a request reference's shape (``PR-`` and 10 base32 characters): 400, nothing looked up."""

    reason = "bad-privacy-request-ref"
    title = "Malformed request reference"


class UnknownLaw(BadRequest):
    """A law with no due time in ``privacy.due``: 400, nothing recorded."""

    reason = "unknown-law"
    title = "Unknown law"


class OwnAccount(GatewayError):
    """An admin restricting, closing or erasing their own account: 409, nothing changed."""

    status = 409
    reason = "privacy-own-account"
    title = "Not on your own account"


# -- parameters and bodies --------------------------------------------------------------------------

RequestRef = Annotated[
    str,
    PathParameter(
        description="A request's reference as the register lists it (PR- and 10 characters).", max_length=40
    ),
]
UserId = Annotated[
    str, PathParameter(description="The account's id (GET /api/users/{username} answers it).", max_length=16)
]
HoldRef = Annotated[
    str,
    PathParameter(
        description="The legal hold's reference, as GET /api/privacy/holds lists it.", max_length=200
    ),
]
# At least one character that is not white space: an empty-looking reason explains nothing.
Reason = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        pattern=REASON_PATTERN,
        max_length=2000,
        description="Why: kept in the audit trail (also after an erasure: say why, not who).",
    ),
]
VerifiedBy = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=500,
        pattern=r"\S",
        description=(
            'How you verified that the person asking is the account holder ("video call, ID checked"). '
            "Kept in the register."
        ),
    ),
]
Law = Annotated[
    str | None,
    msgspec.Meta(
        description="The law the request falls under (gdpr, ccpa or dpdp); default privacy.default_law."
    ),
]
# As the accounts service checks a display name: no control characters, no bidi overrides.
DisplayName = Annotated[
    str, msgspec.Meta(max_length=128, pattern=r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*\Z")
]


class VerifyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    by: VerifiedBy


class RejectRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            pattern=REASON_PATTERN,
            max_length=2000,
            description="Why it is refused: the request's outcome, which the person is told.",
        ),
    ]


class ExportRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    verified_by: VerifiedBy
    law: Law = None


class Rectify(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Correct the email and/or display name; a field left out stays as it is ("" removes the email)."""

    email: Annotated[str, msgspec.Meta(max_length=254)] | None = None
    display_name: DisplayName | None = None
    verified_by: VerifiedBy
    reason: Annotated[str, msgspec.Meta(max_length=2000, pattern=OPTIONAL_REASON_PATTERN)] = ""
    law: Law = None


class Restrict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    restricted: Annotated[
        bool,
        msgspec.Meta(description="true: restrict (no sign-in, sessions end, data kept); false: lift it."),
    ]
    verified_by: VerifiedBy
    reason: Reason
    law: Law = None


class RightChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    verified_by: VerifiedBy
    reason: Reason
    law: Law = None


class PurposeChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A choice the person made outside the gateway, recorded for them."""

    purpose: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=64, description="The purpose's name, as privacy.purposes names it."
        ),
    ]
    verified_by: VerifiedBy
    reason: Reason
    law: Law = None


class PlaceHold(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A legal hold on a person (``username``) or a data class (``data_class``): exactly one of them."""

    reference: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=200,
            # A path segment of the release URL: no "/" (and no control characters).
            pattern=r"^(?=.*\S)[^/\x00-\x1f\x7f]+\Z",
            description="The order's reference (case number), unique; no '/'.",
        ),
    ]
    reason: Reason
    username: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=320,
                description="The person (username or email); also someone already erased, by their username.",
            ),
        ]
        | None
    ) = None
    data_class: Annotated[str, msgspec.Meta(description="One of " + ", ".join(DATA_CLASSES) + ".")] | None = (
        None
    )


class ReleaseHold(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason


# -- answers ----------------------------------------------------------------------------------------


class RequestRow(msgspec.Struct, kw_only=True):
    ref: str
    kind: str
    law: str
    # Masked (a list of many people): the request's own page names them.
    subject: str
    channel: str
    status: str
    received_at: datetime
    verified: bool
    due_at: datetime
    completed_at: datetime | None
    # Still open after its due date; by how many whole days (0: less than one).
    overdue: bool
    days_overdue: int
    # Days until it is due, rounded up (open requests that are not overdue), else None.
    days_left: int | None
    hold_ref: str


class RequestList(msgspec.Struct, kw_only=True):
    # Open requests first, the oldest due first (so the overdue ones lead), then closed ones newest first.
    requests: list[RequestRow]
    status: str
    open: int
    overdue: int
    limit: int
    # Older closed requests exist beyond ``limit``.
    more: bool


class TimelineEntry(msgspec.Struct, kw_only=True):
    what: str
    at: datetime | None
    # done (it happened), due (a date ahead), overdue (a date passed with the request open), waiting.
    state: Literal["done", "due", "overdue", "waiting"]
    note: str = ""


class RequestDetail(msgspec.Struct, kw_only=True):
    ref: str
    kind: str
    law: str
    # The username, or ``[erased:<pseudonym>]`` once the person was erased.
    subject: str
    # The account while it exists (a link to the user's page), else None.
    user_id: int | None
    channel: str
    status: str
    received_at: datetime
    verified_at: datetime | None
    verified_by: str
    due_at: datetime
    completed_at: datetime | None
    details: dict[str, Any]
    outcome: str
    hold_ref: str
    overdue: bool
    days_overdue: int
    days_left: int | None
    timeline: list[TimelineEntry]


class RequestResult(msgspec.Struct, kw_only=True):
    ref: str
    status: str
    message: str


class RightResult(msgspec.Struct, kw_only=True):
    """What a right exercised for a person did: its register row and, held, the hold."""

    ref: str
    kind: str
    # completed, or on_hold (an erasure a legal hold suspends: ``hold`` names it).
    status: str
    message: str
    hold: str | None = None


class HoldRow(msgspec.Struct, kw_only=True):
    reference: str
    # person | class
    scope: str
    # The person, masked in the list ("" for a class hold).
    subject: str
    data_class: str
    reason: str
    placed_by: str
    placed_at: datetime
    released_by: str
    released_at: datetime | None
    active: bool


class HoldList(msgspec.Struct, kw_only=True):
    # Active holds first, then released ones; each newest first.
    holds: list[HoldRow]
    active: int
    data_classes: list[str]


class HoldPlaced(msgspec.Struct, kw_only=True):
    hold: HoldRow
    # Person holds: whether an account has that name now (a hold on someone erased is legitimate, a
    # typo is not; the answer says which).
    account_exists: bool | None
    message: str


class HoldReleased(msgspec.Struct, kw_only=True):
    reference: str
    # The held erasures carried out now, by request reference.
    resumed: list[str]
    message: str


class RetentionRule(msgspec.Struct, kw_only=True):
    data_class: str
    # privacy.retention.<data_class>, in seconds, and in words.
    keep_for: float
    keep_for_text: str
    what: str
    # Active class holds suspending this rule.
    held_by: list[str]


class RetentionView(msgspec.Struct, kw_only=True):
    rules: list[RetentionRule]
    # privacy.retention.interval: how often the purge runs (once per period across replicas).
    interval: float
    interval_text: str
    # Active person holds (each keeps one person's data past these rules).
    person_holds: int


class PlanItem(msgspec.Struct, kw_only=True):
    # A request reference, an audit record's position, an incident id; a person's name masked.
    what: str
    due_at: datetime


class PlanClass(msgspec.Struct, kw_only=True):
    data_class: str
    keep_for_text: str
    # What the run does to an item: "erased", "deleted", "personal fields erased".
    action: str
    # Items due now that a run would remove, and the earliest due date among the due and held ones.
    due_now: int
    oldest_due_at: datetime | None
    # Hold reference → items due now it keeps.
    held: dict[str, int]
    # The next items to fall due (at most 5), and how many are not due yet in all.
    next: list[PlanItem]
    later: int
    # The store could not answer for this class (the others are still planned).
    error: str | None


class RetentionPlan(msgspec.Struct, kw_only=True):
    at: datetime
    classes: list[PlanClass]
    # Held erasures whose hold is gone: the next run carries them out.
    resumable_erasures: list[str]


# -- reading ----------------------------------------------------------------------------------------

_RULES: Final = {
    "registration": "Closed accounts (registration cancelled or withdrawn) are erased this long after closure.",
    "removed_content": (
        "What an erasure removed, kept encrypted and restricted for investigation, is deleted this long after."
    ),
    "audit_events": (
        "Personal fields of older audit records are erased; the records stay, so the chain still verifies."
    ),
    "incidents": (
        "Threat detections older than this, and incident records closed longer ago than this (with their "
        "timelines), are deleted; open incidents are kept."
    ),
    "privacy_requests": "Completed and rejected requests leave the register this long after they were closed.",
}


def _check_ref(ref: str) -> str:
    if not is_ref(ref):
        raise BadRequestRef(
            "A request reference is PR- and 10 characters (A-Z, 2-7), as the register lists it."
        )
    return ref


def _law(law: str | None) -> str | None:
    if law is not None and law not in PRIVACY_LAWS:
        raise UnknownLaw(f"Unknown law {law[:20]!r}; expected one of {', '.join(sorted(PRIVACY_LAWS))}.")
    return law


def _span(seconds: float) -> str:
    """A retention period in words: "180 days", "3 years", "12 hours"."""
    whole = int(seconds)
    for unit, size in (("year", 365 * _DAY), ("day", _DAY), ("hour", 3600), ("minute", 60)):
        if whole >= size and whole % size == 0:
            count = whole // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} seconds"


def _timing(view: RequestView, now: datetime) -> tuple[bool, int, int | None]:
    """Overdue, whole days overdue, whole days left (open and not overdue)."""
    if view.overdue(now):
        return True, (now - view.due_at).days, None
    if view.status in OPEN:
        # Rounded up: 26.9 days left is "due in 27 days", as a person counts the days to a date.
        return False, 0, math.ceil((view.due_at - now).total_seconds() / _DAY)
    return False, 0, None


def _row(view: RequestView, now: datetime) -> RequestRow:
    overdue, days_overdue, days_left = _timing(view, now)
    return RequestRow(
        ref=view.ref,
        kind=view.kind,
        law=view.law,
        subject=mask_person(view.subject),
        channel=view.channel,
        status=view.status,
        received_at=view.received_at,
        verified=view.verified_at is not None,
        due_at=view.due_at,
        completed_at=view.completed_at,
        overdue=overdue,
        days_overdue=days_overdue,
        days_left=days_left,
        hold_ref=view.hold_ref,
    )


async def request_list(
    services: Services, *, status: str = "all", user_id: int | None = None, limit: int = 100
) -> RequestList:
    """What the register shows; the page and ``GET /api/privacy/requests`` both answer with it.

    Raises:
        BadRequest: an unknown ``status``.
    """
    if status not in _STATUSES:
        raise BadRequest(f"Unknown status {status[:20]!r}; expected one of {', '.join(_STATUSES)}.")
    register = services.privacy.register
    now = services.identity.clock.now()
    # An account's own requests: SQLite gives a deleted account's id to the next new one, and the
    # register outlives accounts. The id of an account that no longer exists lists what it left.
    owner = None
    if user_id is not None:
        with contextlib.suppress(UnknownAccount):
            owner = await services.privacy.user(user_id)
    open_views = sorted(
        await register.find(user_id=user_id, owner=owner, status="open", limit=OPEN_LIMIT),
        key=lambda v: v.due_at,
    )
    more = False
    if status in ("all", "open", "overdue"):
        views = [v for v in open_views if status != "overdue" or v.overdue(now)]
        if status == "all":
            recent = await register.find(user_id=user_id, owner=owner, limit=limit)
            more = len(recent) == limit
            views += [v for v in recent if v.status not in OPEN]
    else:
        views = await register.find(user_id=user_id, owner=owner, status=status, limit=limit)
        more = len(views) == limit
    return RequestList(
        requests=[_row(v, now) for v in views],
        status=status,
        open=len(open_views),
        overdue=sum(v.overdue(now) for v in open_views),
        limit=limit,
        more=more,
    )


def _timeline(view: RequestView, now: datetime, overdue: bool) -> list[TimelineEntry]:
    entries = [TimelineEntry(what="Received", at=view.received_at, state="done", note=f"via {view.channel}")]
    if view.verified_at is not None:
        entries.append(
            TimelineEntry(what="Identity verified", at=view.verified_at, state="done", note=view.verified_by)
        )
    elif view.status in OPEN:
        entries.append(TimelineEntry(what="Identity verified", at=None, state="waiting", note="not yet"))
    if view.hold_ref:
        entries.append(
            TimelineEntry(what="On hold", at=None, state="done", note=f"legal hold {view.hold_ref}")
        )
    if view.status in OPEN:
        entries.append(TimelineEntry(what="Due", at=view.due_at, state="overdue" if overdue else "due"))
    else:
        late = view.completed_at is not None and view.completed_at > view.due_at
        what = "Completed" if view.status == Status.COMPLETED else "Rejected"
        entries.append(TimelineEntry(what="Due", at=view.due_at, state="done"))
        entries.append(
            TimelineEntry(
                what=what, at=view.completed_at, state="done", note="after the due date" if late else ""
            )
        )
    return entries


async def request_detail(services: Services, ref: str) -> RequestDetail:
    """What a request's page shows; the page and ``GET /api/privacy/requests/{ref}`` answer with it.

    Raises:
        BadRequestRef: not a reference's shape (400).
        UnknownRequest: no such request (404).
    """
    view = await services.privacy.register.get(_check_ref(ref))
    now = services.identity.clock.now()
    overdue, days_overdue, days_left = _timing(view, now)
    return RequestDetail(
        ref=view.ref,
        kind=view.kind,
        law=view.law,
        subject=view.subject,
        user_id=view.user_id,
        channel=view.channel,
        status=view.status,
        received_at=view.received_at,
        verified_at=view.verified_at,
        verified_by=view.verified_by,
        due_at=view.due_at,
        completed_at=view.completed_at,
        details=view.details,
        outcome=view.outcome,
        hold_ref=view.hold_ref,
        overdue=overdue,
        days_overdue=days_overdue,
        days_left=days_left,
        timeline=_timeline(view, now, overdue),
    )


def _hold_row(hold: HoldView, *, masked: bool = True) -> HoldRow:
    return HoldRow(
        reference=hold.reference,
        scope=hold.scope,
        subject=mask_person(hold.subject) if masked else hold.subject,
        data_class=hold.data_class,
        reason=hold.reason,
        placed_by=hold.placed_by,
        placed_at=hold.placed_at,
        released_by=hold.released_by,
        released_at=hold.released_at,
        active=hold.active,
    )


async def hold_list(services: Services) -> HoldList:
    """The legal holds; the page and ``GET /api/privacy/holds`` both answer with it."""
    holds = await services.privacy.holds.find()
    holds.sort(key=lambda h: not h.active)  # stable: each group stays newest first
    return HoldList(
        holds=[_hold_row(h) for h in holds],
        active=sum(h.active for h in holds),
        data_classes=list(DATA_CLASSES),
    )


async def retention_view(services: Services, settings: PrivacySettings) -> RetentionView:
    """The retention rules in force; the page and ``GET /api/privacy/retention`` answer with it."""
    active = await services.privacy.holds.find(active_only=True)
    retention = settings.retention
    rules = []
    for data_class in DATA_CLASSES:
        seconds = float(getattr(retention, data_class))
        rules.append(
            RetentionRule(
                data_class=data_class,
                keep_for=seconds,
                keep_for_text=_span(seconds),
                what=_RULES[data_class],
                held_by=[h.reference for h in active if h.scope == "class" and h.data_class == data_class],
            )
        )
    return RetentionView(
        rules=rules,
        interval=float(retention.interval),
        interval_text=_span(float(retention.interval)),
        person_holds=sum(h.scope == "person" for h in active),
    )


def _retention(services: Services, settings: PrivacySettings) -> Retention:
    # The engine every worker's chores run, built here to plan only (the admin role runs no purge).
    return Retention(
        services.db,
        services.privacy,
        keyring=services.identity.keyring,
        audit=services.identity.audit,
        incidents=IncidentStore(services.fast),
        settings=lambda: settings,
        clock=services.identity.clock,
    )


def _plan_class(plan: ClassPlan) -> PlanClass:
    survey = plan.survey
    # Registration items are people (their usernames): masked, as every list of many people here.
    show = mask_person if plan.data_class == "registration" else str
    return PlanClass(
        data_class=plan.data_class,
        keep_for_text=_span(plan.keep.total_seconds()),
        action=VERBS.get(plan.data_class, ""),
        due_now=len(survey.due),
        oldest_due_at=survey.oldest_due,
        held=dict(survey.held),
        next=[PlanItem(what=show(i.label), due_at=i.due_at) for i in survey.upcoming],
        later=survey.later,
        error=plan.error,
    )


async def retention_plan(
    services: Services, settings: PrivacySettings, at: datetime | None = None
) -> RetentionPlan:
    """What a retention run at ``at`` (now by default) would remove, per class; what holds keep; what
    falls due next (:meth:`gateway.privacy.retention.Retention.plan`, as ``gateway retention plan``)."""
    when = at if at is not None else services.identity.clock.now()
    plan = await _retention(services, settings).plan(when)
    return RetentionPlan(
        at=plan.at, classes=[_plan_class(c) for c in plan.classes], resumable_erasures=list(plan.resumable)
    )


# -- changing ---------------------------------------------------------------------------------------


class _About:
    """Whom an action's audit record names, as the action finds out (an id, then the username, then
    the pseudonym once erased: a record written after an erasure must not name the person)."""

    __slots__ = ("subject",)

    def __init__(self, subject: str) -> None:
        self.subject = subject


async def _act(
    request: Request[Any, Any, Any],
    services: Services,
    action: str,
    *,
    subject: str,
    details: dict[str, object],
    work: Callable[[Admin, _About], Awaitable[_T]],
) -> _T:
    """Run ``work`` as this request's admin and record ``admin.privacy.<action>``, also when refused.

    ``work`` may add to ``details`` (never a secret, never the person's data) and moves ``subject``."""
    admin = admin_of(request)
    about = _About(subject)
    try:
        result = await work(admin, about)
    except GatewayError as err:
        await audit(
            services.identity, request, f"admin.privacy.{action}", actor=admin.actor, outcome="failure",
            subject=about.subject, details={**details, "error": err.reason},
        )  # fmt: skip
        raise
    await audit(
        services.identity, request, f"admin.privacy.{action}", actor=admin.actor, subject=about.subject,
        details=details,
    )  # fmt: skip
    return result


async def _person(services: Services, user_id: str, about: _About) -> User:
    user = await services.privacy.user(parse_id(user_id, what="user id"))
    about.subject = user.username
    return user


def _not_own(user: User, admin: Admin, what: str) -> None:
    if user.id == admin.session.user_id:
        raise OwnAccount(
            f"You cannot {what} your own account from the console (your session would end with it): "
            "use the account portal."
        )


def _right(view: RequestView, message: str) -> RightResult:
    return RightResult(
        ref=view.ref, kind=view.kind, status=view.status, message=message, hold=view.hold_ref or None
    )


def _user_ref(user_id: str) -> str:
    # Before the account is found: its id as given, never mistaken for a username or an actor.
    return f"user #{user_id[:16]}"


# -- the JSON API: the register ---------------------------------------------------------------------


@get("/api/privacy/requests", cache=False, tags=["privacy"])
async def requests_json(
    services: AdminServices,
    status: Annotated[
        str,
        QueryParameter(
            max_length=20,
            description="all (default), open, overdue, received, verified, on_hold, completed or rejected.",
        ),
    ] = "all",
    user_id: Annotated[
        int | None, QueryParameter(ge=1, le=2**31 - 1, description="Only this account's requests.")
    ] = None,
    limit: Annotated[
        int, QueryParameter(ge=1, le=1000, description="At most this many closed requests.")
    ] = 100,
) -> RequestList:
    """The register: open requests first (the oldest due first, so overdue ones lead, each with
    ``overdue`` and ``days_overdue``), then closed ones, newest first. Names are masked; a request's
    own answer has them."""
    return await request_list(services, status=status, user_id=user_id, limit=limit)


@get("/api/privacy/requests/{ref:str}", cache=False, tags=["privacy"])
async def request_json(services: AdminServices, ref: RequestRef) -> RequestDetail:
    """One request: what was asked, by whom (in full), how identity was verified, its dates as a
    timeline, the outcome and the legal hold holding it. 404 ``unknown-privacy-request``."""
    return await request_detail(services, ref)


@post("/api/privacy/requests/{ref:str}/verify", status_code=200, tags=["privacy"])
async def verify_request(
    request: Request[Any, Any, Any], services: AdminServices, ref: RequestRef, data: JSONBody[VerifyRequest]
) -> RequestResult:
    """Record that the requester's identity was verified, and how (``by``). Only a request still
    ``received``: 409 ``privacy-request-not-pending`` otherwise."""
    register = services.privacy.register

    async def work(admin: Admin, about: _About) -> RequestResult:
        view = await register.get(_check_ref(ref))
        about.subject = view.subject
        # The register refuses a request past that step (409), in the same statement as the change.
        done = await services.privacy.verify_request(view.ref, by=data.by.strip(), actor=admin.actor)
        return RequestResult(ref=done.ref, status=done.status, message=f"{done.ref}: identity verified.")

    details: dict[str, object] = {"request": ref[:40], "by": data.by}
    return await _act(request, services, "verify", subject=ref[:40], details=details, work=work)


@post("/api/privacy/requests/{ref:str}/reject", status_code=200, tags=["privacy"])
async def reject_request(
    request: Request[Any, Any, Any], services: AdminServices, ref: RequestRef, data: JSONBody[RejectRequest]
) -> RequestResult:
    """Close an open request as refused; ``reason`` becomes its outcome, which the person is told.
    409 ``privacy-request-not-pending`` for a closed one. A rejected held erasure leaves the account
    restricted: lift that on the user's page if they may sign in again."""
    register = services.privacy.register

    async def work(admin: Admin, about: _About) -> RequestResult:
        view = await register.get(_check_ref(ref))
        about.subject = view.subject
        done = await services.privacy.reject_request(view.ref, reason=data.reason.strip(), actor=admin.actor)
        return RequestResult(ref=done.ref, status=done.status, message=f"{done.ref} is rejected.")

    details: dict[str, object] = {"request": ref[:40], "reason": data.reason}
    return await _act(request, services, "reject", subject=ref[:40], details=details, work=work)


# -- the JSON API: rights exercised for a person ----------------------------------------------------


@post("/api/privacy/users/{user_id:str}/export", status_code=200, tags=["privacy"], media_type=MediaType.JSON)
async def export_user(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    user_id: UserId,
    data: JSONBody[ExportRequest],
) -> Response[dict[str, Any]]:
    """Everything held about the person (``gateway/privacy/export.schema.json``), as a download
    (``personal-data-<ref>.json``), registered as a completed access request (channel ``admin``;
    ``X-Privacy-Request`` names it). A POST with a JSON body, because it records a request: the admin
    API's CSRF defence then covers it like every other change (a GET relied on fetch metadata, which
    older browsers do not send)."""
    settings = config.settings.privacy

    async def work(admin: Admin, about: _About) -> Response[dict[str, Any]]:
        chosen = _law(data.law)
        user = await _person(services, user_id, about)
        view, document = await services.privacy.export(
            user, settings=settings, channel=Channel.ADMIN, actor=admin.actor,
            verified_by=data.verified_by.strip(), law=chosen,
        )  # fmt: skip
        details["request"] = view.ref
        headers = {
            "content-disposition": f'attachment; filename="personal-data-{view.ref}.json"',
            "x-privacy-request": view.ref,
        }
        return Response(document, media_type=MediaType.JSON, headers=headers)

    details: dict[str, object] = {"verified_by": data.verified_by, "law": data.law or ""}
    return await _act(request, services, "export", subject=_user_ref(user_id), details=details, work=work)


@post("/api/privacy/users/{user_id:str}/rectify", status_code=200, tags=["privacy"])
async def rectify_user(
    request: Request[Any, Any, Any], services: AdminServices, live_policy: Policy, config: Config,
    user_id: UserId, data: JSONBody[Rectify],
) -> RightResult:  # fmt: skip
    """Correct the email and/or display name (``""`` removes the email). 409
    ``field-owned-by-identity-provider`` for an account that signs in through an identity provider
    (correct it there), 409 ``account-exists`` for an email another account has, 400 for a malformed
    one (nothing recorded). A new email needs a recent second factor and, under ``admin.approvals: 2``,
    is refused for another admin's account (403 ``second-admin-required``)."""
    settings = config.settings.privacy

    async def work(admin: Admin, about: _About) -> RightResult:
        if data.email is None and data.display_name is None:
            raise BadRequest("Give email and/or display_name: there is nothing to correct.")
        if data.email is not None and data.email.strip():
            try:
                canonical_email(data.email)
            except ValueError as exc:
                raise InvalidAccount(str(exc)) from exc
        chosen = _law(data.law)
        user = await _person(services, user_id, about)
        if data.email is not None and data.email != user.email:
            # The address is how an identity provider's sign-in finds an account that has no link yet
            # (identity/oidc/links.py): whoever owns the new one could sign in as this person. An
            # attack run took a second admin's account that way and approved alone.
            confirm_destructive(admin, config, services.identity.clock)
            await refuse_admin_takeover(
                services,
                live_policy,
                config,
                user,
                "change the email address",
                on_host="gateway privacy rectify",
            )
        view = await services.privacy.rectify(
            user, settings=settings, channel=Channel.ADMIN, actor=admin.actor,
            verified_by=data.verified_by.strip(), email=data.email, display_name=data.display_name, law=chosen,
        )  # fmt: skip
        details["request"] = view.ref
        return _right(view, f"{view.outcome} ({view.ref})")

    # The fields asked for, never their values (the new address is personal data).
    fields = [n for n, v in (("email", data.email), ("display_name", data.display_name)) if v is not None]
    details: dict[str, object] = {
        "fields": " ".join(fields), "verified_by": data.verified_by, "reason": data.reason,
    }  # fmt: skip
    return await _act(request, services, "rectify", subject=_user_ref(user_id), details=details, work=work)


@post("/api/privacy/users/{user_id:str}/restrict", status_code=200, tags=["privacy"])
async def restrict_user(
    request: Request[Any, Any, Any], services: AdminServices, live_policy: Policy, config: Config, user_id: UserId,
    data: JSONBody[Restrict],
) -> RightResult:  # fmt: skip
    """Restrict processing (``restricted: true``: no sign-in, every session ends, the data is kept
    unchanged, no optional processing) or lift the restriction (``false``). Either needs a recent
    second factor, as disabling and enabling do."""
    settings = config.settings.privacy

    async def work(admin: Admin, about: _About) -> RightResult:
        chosen = _law(data.law)
        # Either way it decides who may sign in, as disabling and enabling do.
        confirm_destructive(admin, config, services.identity.clock)
        user = await _person(services, user_id, about)
        if data.restricted:
            _not_own(user, admin, "restrict")
            await refuse_admin_takeover(
                services,
                live_policy,
                config,
                user,
                "restrict the account",
                on_host="gateway privacy restrict",
            )
        view = await services.privacy.restrict(
            user, data.restricted, settings=settings, channel=Channel.ADMIN, actor=admin.actor,
            verified_by=data.verified_by.strip(), law=chosen,
        )  # fmt: skip
        details["request"] = view.ref
        return _right(view, f"{view.outcome} ({view.ref})")

    details: dict[str, object] = {
        "restricted": data.restricted, "verified_by": data.verified_by, "reason": data.reason,
    }  # fmt: skip
    return await _act(request, services, "restrict", subject=_user_ref(user_id), details=details, work=work)


@post("/api/privacy/users/{user_id:str}/close", status_code=200, tags=["privacy"])
async def close_user(
    request: Request[Any, Any, Any], services: AdminServices, live_policy: Policy, config: Config, user_id: UserId,
    data: JSONBody[RightChange],
) -> RightResult:  # fmt: skip
    """Close the account (the registration is cancelled): no sign-in from now, every session ends, and
    the data is erased ``privacy.retention.registration`` later. 409 ``account-closed-already`` for a
    closed one (closing again would restart that period). Needs a recent second factor."""
    settings = config.settings.privacy

    async def work(admin: Admin, about: _About) -> RightResult:
        chosen = _law(data.law)
        confirm_destructive(admin, config, services.identity.clock)
        user = await _person(services, user_id, about)
        _not_own(user, admin, "close")
        # Closed, the account is erased after privacy.retention.registration: the other approver gone.
        await refuse_admin_takeover(
            services, live_policy, config, user, "close the account", on_host="gateway privacy close"
        )
        view = await services.privacy.close(
            user, settings=settings, channel=Channel.ADMIN, actor=admin.actor,
            verified_by=data.verified_by.strip(), law=chosen,
        )  # fmt: skip
        details["request"] = view.ref
        return _right(view, f"{view.outcome} ({view.ref})")

    details: dict[str, object] = {"verified_by": data.verified_by, "reason": data.reason}
    return await _act(request, services, "close", subject=_user_ref(user_id), details=details, work=work)


@post("/api/privacy/users/{user_id:str}/erase", status_code=200, tags=["privacy"])
async def erase_user(
    request: Request[Any, Any, Any], services: AdminServices, live_policy: Policy, config: Config,
    user_id: UserId, data: JSONBody[RightChange],
) -> RightResult:  # fmt: skip
    """Erase the person now: the account, its factors and sessions go, their audit fields are
    tombstoned (the chain still verifies; what they did as an admin to others keeps their name) and the
    register and holds keep a pseudonym;
    what was removed is kept encrypted for ``privacy.retention.removed_content``.

    ``status`` is ``completed``, or ``on_hold`` when a legal hold covers the person or registration
    data: ``hold`` names it, the account is restricted meanwhile, and the erasure is carried out when
    the hold is released. Destructive: needs a reason and a recent second factor; under
    ``admin.approvals: 2`` another admin's account is erased on the host (403 ``second-admin-required``)."""
    settings = config.settings.privacy

    async def work(admin: Admin, about: _About) -> RightResult:
        chosen = _law(data.law)
        confirm_destructive(admin, config, services.identity.clock)
        user = await _person(services, user_id, about)
        _not_own(user, admin, "erase")
        # The other approver gone, and their trail as a person with them: on the host, not by one admin.
        await refuse_admin_takeover(
            services, live_policy, config, user, "erase the account", on_host="gateway privacy erase"
        )
        view = await services.privacy.erase(
            user, settings=settings, channel=Channel.ADMIN, actor=admin.actor,
            verified_by=data.verified_by.strip(), law=chosen,
        )  # fmt: skip
        details.update(request=view.ref, status=view.status)
        if view.status == Status.ON_HOLD:
            details["hold"] = view.hold_ref
            return _right(
                view,
                f"On hold ({view.ref}): legal hold {view.hold_ref} suspends the erasure. The account is "
                "restricted meanwhile; the erasure is carried out when the hold is released.",
            )
        # The register now names the pseudonym, and so does this record (the erasure is done).
        about.subject = view.subject
        return _right(view, f"{view.outcome} ({view.ref})")

    details: dict[str, object] = {"verified_by": data.verified_by, "reason": data.reason}
    return await _act(request, services, "erase", subject=_user_ref(user_id), details=details, work=work)


def _for_person(admin: Admin, request: Request[Any, Any, Any], data: PurposeChange) -> dict[str, Any]:
    """The privacy service's arguments for a choice recorded by ``admin`` for the person."""
    return {
        "channel": Channel.ADMIN,
        "actor": admin.actor,
        # Who verified is part of how: the register keeps both.
        "verified_by": f"{data.verified_by.strip()} ({admin.actor})",
        "method": f"admin:{admin.session.username}",
        "ip": client_ip(request),
        "reason": data.reason.strip(),
    }


@post("/api/privacy/users/{user_id:str}/object", status_code=200, tags=["privacy"])
async def object_for_user(
    request: Request[Any, Any, Any], services: AdminServices, config: Config, user_id: UserId,
    data: JSONBody[PurposeChange],
) -> RightResult:  # fmt: skip
    """Record the person's objection to a legitimate-interest purpose, received by email, phone or
    letter: as if they objected on their portal, the purpose is no longer processed for them from
    their sessions' next request on (``policy_analytics``: their requests stay out of the decision
    sample; ``geolocation``: no sign-in location checks). Registered as a completed ``objection``
    request. 422 ``unknown-purpose`` for a name ``privacy.purposes`` does not have, 409
    ``not-objectable`` for a purpose that cannot be objected to (a consent is withdrawn instead):
    nothing recorded then."""
    settings = config.settings.privacy

    async def work(admin: Admin, about: _About) -> RightResult:
        chosen = _law(data.law)
        user = await _person(services, user_id, about)
        view = await services.privacy.object(
            user, data.purpose, settings=settings, law=chosen, **_for_person(admin, request, data)
        )
        details["request"] = view.ref
        return _right(view, f"{view.outcome} ({view.ref})")

    details: dict[str, object] = {
        "purpose": data.purpose, "verified_by": data.verified_by, "reason": data.reason,
    }  # fmt: skip
    return await _act(request, services, "object", subject=_user_ref(user_id), details=details, work=work)


@post("/api/privacy/users/{user_id:str}/withdraw-consent", status_code=200, tags=["privacy"])
async def withdraw_consent_for_user(
    request: Request[Any, Any, Any], services: AdminServices, config: Config, user_id: UserId,
    data: JSONBody[PurposeChange],
) -> RightResult:  # fmt: skip
    """Record the withdrawal of the person's consent to a consent-based purpose, received by email,
    phone or letter: as if they withdrew it on their portal (a ``withdrawn`` answer to the current
    notice), the purpose is no longer processed for them from their sessions' next request on.
    Registered as a completed ``consent_withdrawal`` request. 422 ``unknown-purpose``, 409
    ``not-consent-based`` for a purpose that does not rest on consent (object to it instead):
    nothing recorded then."""
    settings = config.settings.privacy

    async def work(admin: Admin, about: _About) -> RightResult:
        chosen = _law(data.law)
        user = await _person(services, user_id, about)
        view = await services.privacy.withdraw_consent(
            user, data.purpose, settings=settings, law=chosen, **_for_person(admin, request, data)
        )
        details["request"] = view.ref
        return _right(view, f"{view.outcome} ({view.ref})")

    details: dict[str, object] = {
        "purpose": data.purpose, "verified_by": data.verified_by, "reason": data.reason,
    }  # fmt: skip
    return await _act(
        request, services, "withdraw_consent", subject=_user_ref(user_id), details=details, work=work
    )


# -- the JSON API: legal holds ----------------------------------------------------------------------


@get("/api/privacy/holds", cache=False, tags=["privacy"])
async def holds_json(services: AdminServices) -> HoldList:
    """Legal holds, active first: reference, scope (``person`` or ``class``), whom (masked) or which
    data class, reason, who placed and released it and when."""
    return await hold_list(services)


@post("/api/privacy/holds", status_code=201, tags=["privacy"])
async def place_hold(
    request: Request[Any, Any, Any], services: AdminServices, data: JSONBody[PlaceHold]
) -> HoldPlaced:
    """Place a legal hold on a person (``username``: no erasure, closure purge or removed-content
    deletion of theirs until it is released; also for someone already erased, whose removed content
    it then keeps) or on a data class (``data_class``: the retention run deletes none of it). 409
    ``legal-hold-exists`` for a reference in use; 400 for neither or both, or an unknown class."""

    async def work(admin: Admin, about: _About) -> HoldPlaced:
        username: str | None = None
        exists: bool | None = None
        # Holds.place refuses neither or both (400), whoever asks.
        if data.username is not None:
            user = await services.identity.accounts.find(data.username)
            if user is not None:
                username, exists = user.username, True
            else:
                try:
                    username, exists = canonical_username(data.username), False
                except ValueError as exc:
                    raise InvalidAccount(f"{exc} (no account has that name either)") from exc
            about.subject = username
        hold = await services.privacy.holds.place(
            data.reference, reason=data.reason, by=admin.actor, username=username, data_class=data.data_class
        )
        covers = f"everything of {username}" if username is not None else f"all {hold.data_class} data"
        note = "" if exists is not False else " No account has that name now: check it is the right person."
        return HoldPlaced(
            hold=_hold_row(hold, masked=False),
            account_exists=exists,
            message=f"Legal hold {hold.reference} placed: {covers} is kept until it is released.{note}",
        )

    details: dict[str, object] = {
        "reference": data.reference, "reason": data.reason, "data_class": data.data_class or "",
    }  # fmt: skip
    subject = data.username[:80] if data.username is not None else _hold_subject(data.reference)
    return await _act(request, services, "hold.place", subject=subject, details=details, work=work)


def _hold_subject(reference: str) -> str:
    """A hold as an audit record's subject: ``hold:`` and its reference, which no username can be (a
    re-attack run named an account after a hold's reference, exported the admin's reason for it and
    erased the record of it)."""
    return f"hold:{reference[:200]}"


@post("/api/privacy/holds/{reference:str}/release", status_code=200, tags=["privacy"])
async def release_hold(
    request: Request[Any, Any, Any], services: AdminServices, config: Config, reference: HoldRef,
    data: JSONBody[ReleaseHold],
) -> HoldReleased:  # fmt: skip
    """Release an active legal hold; the erasures it held back are carried out now (``resumed``), and
    what it kept past its retention period goes with the next retention run. 404
    ``unknown-legal-hold`` for no active hold of that reference. Destructive: a reason and a recent
    second factor."""
    privacy = services.privacy

    async def work(admin: Admin, about: _About) -> HoldReleased:
        confirm_destructive(admin, config, services.identity.clock)
        released = await privacy.holds.release(reference, by=admin.actor)
        later = ""
        resumed: list[str] = []
        try:
            resumed = [
                v.ref
                for v in await privacy.resume_held_erasures(
                    settings=config.settings.privacy, actor=admin.actor
                )
            ]
        except GatewayError:
            # The hold is released either way; the retention run resumes what is left.
            logger.exception("privacy: resuming held erasures after releasing %s failed", released.reference)
            later = " The erasures it held back could not be carried out now: the next retention run does it."
        # Whom it held, as the holds name them now: the pseudonym if the person was just erased.
        now_named = {h.reference: h for h in await privacy.holds.find()}.get(released.reference, released)
        about.subject = now_named.subject or _hold_subject(released.reference)
        details["resumed"] = " ".join(resumed)
        done = f" Erasures carried out now: {', '.join(resumed)}." if resumed else ""
        return HoldReleased(
            reference=released.reference,
            resumed=resumed,
            message=f"Legal hold {released.reference} released.{done}{later}",
        )

    details: dict[str, object] = {"reference": reference[:200], "reason": data.reason}
    return await _act(
        request, services, "hold.release", subject=_hold_subject(reference), details=details, work=work
    )


# -- the JSON API: retention ------------------------------------------------------------------------


@get("/api/privacy/retention", cache=False, tags=["privacy"])
async def retention_json(services: AdminServices, config: Config) -> RetentionView:
    """The retention rules in force (``privacy.retention``): per data class how long it is kept, what
    happens then, and the active class holds suspending the rule; how often the purge runs."""
    return await retention_view(services, config.settings.privacy)


@get("/api/privacy/retention/plan", cache=False, tags=["privacy"])
async def retention_plan_json(
    services: AdminServices,
    config: Config,
    at: Annotated[
        str | None,
        QueryParameter(
            max_length=64,
            description="Plan a run at this time (ISO 8601, UTC without an offset); default now.",
        ),
    ] = None,
) -> RetentionPlan:
    """What a retention run would do now (or ``at``, to look ahead), per data class: how many items are
    due, the earliest due date, what each legal hold keeps, the next items to fall due (people's names
    masked), and the held erasures whose hold is gone. Changes nothing."""
    when: datetime | None = None
    if at is not None:
        try:
            when = parse_time(at)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
    return await retention_plan(services, config.settings.privacy, when)


# -- the pages --------------------------------------------------------------------------------------


@get("/privacy", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def privacy_page(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    status: Annotated[str, QueryParameter(max_length=20)] = "all",
    user_id: Annotated[int | None, QueryParameter(ge=1, le=2**31 - 1)] = None,
) -> Template:
    settings = config.settings.privacy
    return page(
        request, "privacy.html", title="Privacy", section="privacy",
        view=await request_list(services, status=status, user_id=user_id),
        holds=await hold_list(services), retention=await retention_view(services, settings),
        plan={c.data_class: c for c in (await retention_plan(services, settings)).classes},
        statuses=_STATUSES, user_id=user_id,
        destructive_minutes=max(1, int(config.settings.admin.destructive_reauth_max_age) // 60),
    )  # fmt: skip


@get("/privacy/requests/{ref:str}", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def request_page(request: Request[Any, Any, Any], services: AdminServices, ref: RequestRef) -> Template:
    view = await request_detail(services, ref)
    return page(request, "privacy_request.html", title=f"Request {view.ref}", section="privacy", view=view)


HANDLERS = (
    requests_json,
    request_json,
    verify_request,
    reject_request,
    export_user,
    rectify_user,
    restrict_user,
    close_user,
    erase_user,
    object_for_user,
    withdraw_consent_for_user,
    holds_json,
    place_hold,
    release_hold,
    retention_json,
    retention_plan_json,
    privacy_page,
    request_page,
)
