"""What a half-finished sign-in may do on the gateway's own pages: one guard for the control app.

A session can be signed in and still not be done: its owner must change a one-time password, prove
the second factor they have, or enroll their first one. Until that step is done the session reaches
only the pages of that step and sign-out, on every host; everything else answers as "second factor
required" (a redirect to the step for browsers, 403 for scripts). Otherwise a stolen password alone
would list the owner's sessions with their addresses, sign the owner out everywhere else, or mint
recovery codes that then pass the second factor.

Deny by default: a handler admits no pending step unless it says so in its ``opt``::

    @get("/.gateway/mfa", opt=admits(Step.SECOND_FACTOR, Step.ENROLL))   # this step's own pages
    @get("/.gateway/login", opt=PUBLIC)                                   # no session needed at all

Steps, in the order they must be done::

    password-change   the account still has a one-time password (``Session.password_change``)
    second-factor     one-factor session, and the user has a second factor
    enroll            one-factor session, and the user has none yet
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final
from urllib.parse import quote

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway.errors import Forbidden
from gateway.identity.cookies import read_cookie
from gateway.identity.handoff import normalise_host
from gateway.identity.sessions import Session, fits_host
from gateway.services import IdentityServices
from gateway.settings.current import LiveConfig
from gateway.web.flows import owed_step

__all__ = ["PUBLIC", "Step", "StepRequired", "admits", "pending_step", "step_guard", "step_location"]

_OPT: Final = "gateway_admits"


class Step(StrEnum):
    """A sign-in step the session still has to complete."""

    PASSWORD_CHANGE = "password-change"  # noqa: S105 - a step name, not a secret
    SECOND_FACTOR = "second-factor"
    ENROLL = "enroll"


_PAGES: Final = {
    Step.PASSWORD_CHANGE: "/.gateway/account/password",
    Step.SECOND_FACTOR: "/.gateway/mfa",
    Step.ENROLL: "/.gateway/account/enroll",
}

#: ``opt`` of a handler that needs no session (sign-in, sign-out, health, static files).
PUBLIC: Final[dict[str, Any]] = {_OPT: "public"}

#: ``opt`` of a public answer that is never a page (static files, the key set, health): no CSRF cookie
#: is set on it. A shared cache keeps what the key set and static files answer (``public``), and an
#: attack run saw the cookie on them: one token for everyone the cache serves.
PUBLIC_RESOURCE: Final[dict[str, Any]] = {**PUBLIC, "exclude_from_csrf": True}


def admits(*steps: Step) -> dict[str, Any]:
    """``opt`` of a handler that a session with one of these steps pending may use."""
    return {_OPT: frozenset(steps)}


class StepRequired(Forbidden):
    """The session has a sign-in step to finish first (403; browsers are sent to the step's page)."""

    title = "Finish signing in first"

    def __init__(self, step: Step, *, back: str) -> None:
        """Build the refusal.

        Args:
            step: What is pending.
            back: The path (with query) to return to after the step.
        """
        reason = "password-change-required" if step is Step.PASSWORD_CHANGE else "mfa-required"
        detail = {
            Step.PASSWORD_CHANGE: "Choose a new password first.",
            Step.SECOND_FACTOR: "Use your second factor first.",
            Step.ENROLL: "Add a second factor first.",
        }[step]
        super().__init__(detail, reason=reason, location=step_location(step, back))
        self.step = step


def step_location(step: Step, back: str) -> str:
    """The page of ``step``, returning to ``back`` afterwards."""
    return f"{_PAGES[step]}?rd={quote(back, safe='')}"


async def pending_step(session: Session, identity: IdentityServices) -> Step | None:
    """The step this session must finish before anything else (:func:`gateway.web.flows.owed_step`),
    or None when it is complete."""
    owed = await owed_step(identity, session)
    return None if owed is None else Step(owed)


def step_guard(identity: IdentityServices, live: LiveConfig) -> Any:
    """The control app's guard: refuse a session with a pending step outside that step's pages."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        allowed = handler.opt.get(_OPT, frozenset())
        if allowed == "public":
            return
        session_id = read_cookie(list(connection.scope["headers"]), live.current.cookie_name)
        if not session_id:
            return  # no session: every handler sends its own sign-in answer
        session = await identity.sessions.get(session_id)
        host = connection.headers.get("host") or ""
        if session is None or not fits_host(session, normalise_host(host)):
            return  # signed out here: the handler answers as for no session (flows.current agrees)
        step = await pending_step(session, identity)
        if step is None or step in allowed:
            return
        query = connection.scope.get("query_string", b"").decode("latin-1")
        back = connection.url.path + (f"?{query}" if query else "")
        if connection.scope.get("method", "GET") != "GET":
            back = "/.gateway/account"  # never return to a form post
        raise StepRequired(step, back=back)

    return guard
