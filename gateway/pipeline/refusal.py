"""How a refusal is recorded (decision and reason) and answered to an HTTP client.

Every stage refuses by raising a :class:`~gateway.errors.GatewayError`; the error's class says who
refused (:func:`decision_for`) and its ``reason`` is the id the page, the JSON body and the access log
all carry. A browser is sent where it can fix the problem (sign-in, MFA) with a 302; everyone else
gets the error page or JSON (:mod:`gateway.web.error_pages`).
"""

from __future__ import annotations

from gateway.errors import AuthenticationRequired, BodyTimeout, Forbidden, GatewayError
from gateway.observe.record import AccessDecision, RequestRecord
from gateway.pipeline.asgi import Send
from gateway.pipeline.bearer import BearerChallenge
from gateway.pipeline.context import RequestContext
from gateway.pipeline.lockdown import LockedDown
from gateway.pipeline.receive import BadFraming
from gateway.web.error_pages import error_response, wants_html
from gateway.web.maintenance import maintenance_response

__all__ = ["answer_error", "decision_for", "note_refusal"]


def decision_for(err: GatewayError) -> AccessDecision:
    """Who refused: no session (unauthenticated), the policy or MFA (deny), the request (invalid), or a failure."""
    if isinstance(err, AuthenticationRequired):
        return AccessDecision.UNAUTHENTICATED
    # A lockdown is a decision the operator made about this request, not a failure of the gateway.
    if isinstance(err, Forbidden | LockedDown):
        return AccessDecision.DENY
    return AccessDecision.INVALID if err.status < 500 else AccessDecision.ERROR


def note_refusal(rec: RequestRecord, err: GatewayError) -> None:
    """Note why a request was refused: who refused it (the decision) and the reason id."""
    rec.reason = err.reason
    rec.decision = decision_for(err)


async def answer_error(send: Send, err: GatewayError, ctx: RequestContext) -> None:
    """Answer an HTTP request with ``err``: a redirect for a browser that can fix it, else the error page."""
    request_id = ctx.fwd.request_id if ctx.fwd else ""
    if err.location and wants_html(ctx.accept):
        # A browser is sent where it can fix this (sign-in, MFA); scripts get the status and reason.
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [
                    (b"location", err.location.encode("latin-1")),
                    (b"cache-control", b"no-store"),
                    (b"content-length", b"0"),
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if isinstance(err, LockedDown):
        status, headers, body = maintenance_response(
            title=err.page_title,
            message=err.detail,
            retry_after=err.retry_after,
            sign_in=err.sign_in,
            request_id=request_id,
            html_page=wants_html(ctx.accept),
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    status, headers, body = error_response(err, request_id=request_id, html_page=wants_html(ctx.accept))
    if isinstance(err, BearerChallenge):
        # RFC 6750 §3: how to authenticate (and what was wrong with the token).
        headers.append((b"www-authenticate", err.challenge))
    if isinstance(err, BadFraming | BodyTimeout):
        # The server and a proxy in front may disagree on where this body ends: no byte after
        # it on this connection may be read as another request (smuggling).
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
