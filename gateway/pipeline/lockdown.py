"""The lockdown stage: while an emergency lockdown covers the route, only break-glass sessions pass.

Runs right after the route stage, for every entry (HTTP, forward-auth, WebSocket) and for public
paths too, so nothing on a locked route is served by accident. The switch is the worker's in-memory
copy (:class:`gateway.threat.lockdown.Lockdown`): when no lockdown is on, the stage costs one
attribute read and is not even called. Under a lockdown the request's session is read (the same
in-process cache the identify stage uses) and must pass :func:`gateway.threat.lockdown.is_break_glass`;
everyone else, signed in or not, gets the maintenance answer (503 ``lockdown`` with ``Retry-After``).

A break-glass session still goes through the MFA and authorize stages afterwards: a lockdown only
ever narrows who gets in, never widens it.
"""

from __future__ import annotations

from urllib.parse import quote

from gateway.authz.live import LivePolicy
from gateway.errors import ErrorReason, ServiceUnavailable
from gateway.identity.cookies import cookie_in
from gateway.identity.sessions import SessionStore
from gateway.observe.tracing import Stage
from gateway.pipeline.context import RequestContext
from gateway.settings.schema import LockdownSettings
from gateway.threat.lockdown import breaks_glass

__all__ = ["LockedDown", "breaks_glass", "enforce_lockdown"]


class LockedDown(ServiceUnavailable):
    """The route is locked down and this request's session may not pass: 503 ``lockdown``.

    Not an error of the gateway: the page is the operator's maintenance text, never logged as a failure.
    """

    reason: str = ErrorReason.LOCKDOWN
    title = "Temporarily closed"

    def __init__(self, settings: LockdownSettings, *, sign_in: str) -> None:
        super().__init__(settings.message)
        self.page_title = settings.title
        self.retry_after = max(1, round(float(settings.retry_after)))
        # Where an administrator signs in (no session) or proves a passkey (signed in).
        self.sign_in = sign_in

    @property
    def public_detail(self) -> str:
        # The operator's own words, written for everyone: not a backend's text like other 503s.
        return self.detail


async def enforce_lockdown(
    *,
    cookie_name: str,
    sessions: SessionStore,
    policy: LivePolicy,
    settings: LockdownSettings,
    now: float,
    public_url: str,
    request: RequestContext,
    by_token: bool,
) -> None:
    """Return if this request's session is a break-glass session; raise :class:`LockedDown` otherwise.

    ``by_token``: the route decides this request by a bearer token, not by the session (a machine
    client's, or a break-glass person's cookie sent along with one, as an attack run read it): refused,
    as the long-exchange check refuses a token's connection under a lockdown.

    Raises:
        LockedDown: no session, or one that is not in the break-glass group or used no recent
            WebAuthn factor.
        StateUnavailable: the session store cannot be reached (503, as in the identify stage).
    """
    if request.trace is not None:
        request.trace.enter(Stage.LOCKDOWN)
    session_id = None if by_token else cookie_in(request.cookies, cookie_name)
    session = await sessions.get(session_id) if session_id else None
    if session is not None and breaks_glass(session, policy=policy, settings=settings, now=now):
        return
    # Where an administrator goes next: sign in (no session), or prove a passkey (signed in).
    step = "login?" if session is None else "mfa?need=webauthn&"
    rd = quote(request.original_url(), safe="")
    raise LockedDown(settings, sign_in=f"{public_url}/.gateway/{step}rd={rd}")
