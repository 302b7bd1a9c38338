"""Error answers of the data plane and the control app: a finished-looking HTML page for browsers, JSON for scripts.

Every answer carries the reason id and the request id, so a user's screenshot leads to the log line.
A server-side failure (5xx) shows a plain sentence, never its detail (``GatewayError.public_detail``):
exception names, errno values and backend addresses are for the log only.

Every answer the gateway writes itself carries the same hardening headers (:func:`hardening_headers`);
the control app adds them in one hook (``gateway/web/hardening.py``), the data plane's error answers
here. The proxied application's answers are its own and are never changed.
"""

from __future__ import annotations

import html
import json
from typing import Final

from gateway.authz.decision import Reason
from gateway.errors import ErrorReason, GatewayError

__all__ = [
    "ERROR_PAGE_CSP",
    "HARDENING_HEADER_NAMES",
    "FrameworkRefusal",
    "error_response",
    "hardening_headers",
    "wants_html",
]

# The error page has no script, no form and one stylesheet from its own origin (served by the control
# app on every host). frame-ancestors: no other site may frame it (clickjacking); base-uri: injected
# markup cannot re-point relative URLs.
ERROR_PAGE_CSP: Final = (
    b"default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    b"form-action 'none'; frame-ancestors 'none'"
)

#: The headers :func:`hardening_headers` sets; a response that already has one gets it replaced.
HARDENING_HEADER_NAMES: Final = frozenset(
    {
        b"cache-control",
        b"content-security-policy",
        b"x-frame-options",
        b"referrer-policy",
        b"x-content-type-options",
    }
)


def hardening_headers(csp: bytes, *, cache_control: bytes = b"no-store") -> list[tuple[bytes, bytes]]:
    """The headers every answer the gateway writes itself carries.

    Args:
        csp: The Content-Security-Policy of this answer.
        cache_control: ``no-store`` (pages carry personal data, codes and CSRF tokens that no shared
            or browser cache may keep), or a caching policy for static assets.
    """
    return [
        (b"cache-control", cache_control),
        (b"content-security-policy", csp),
        # For browsers that predate CSP's frame-ancestors; both say "never in a frame".
        (b"x-frame-options", b"DENY"),
        # Gateway URLs carry hand-off codes and return URLs: never send them on to another origin.
        # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with the
        # pages' own form posts, which cannot be told from a forged one where no Sec-Fetch-Site
        # speaks for it (plain HTTP off localhost: an attack run's page on another port of the host
        # took a person's recovery codes and removed a factor). See pipeline.origins.check_own_origin.
        (b"referrer-policy", b"same-origin"),
        (b"x-content-type-options", b"nosniff"),
    ]


_HINTS = {
    400: "The request was refused before it reached the application. Check the address for unusual characters.",
    401: "Sign in to continue.",
    403: "This request is not allowed. Ask an administrator if you need it.",
    404: "No application is published at this address. Check the link, or ask an administrator.",
    413: "The upload is larger than this application accepts.",
    431: "The request headers are too large. Clearing this site's cookies usually helps.",
}
_SERVER_HINT = "Try again in a moment. If it keeps happening, give an administrator the request id below."

# Keyed by reason, for refusals whose status alone would say something untrue: an IP block refuses
# before anyone is identified, so it must not tell an anonymous visitor "you are signed in"; only the
# authorize stage, which runs after the session is known, may say so.
_REASON_HINTS: Final[dict[str, str]] = {
    ErrorReason.IP_BLOCKED: "Requests from your network address are blocked. If you think this is a mistake, "
    "give an administrator the request id below.",
    Reason.POLICY_DENY: "You are signed in, but your role does not allow this request. "
    "Ask an administrator if you need it.",
    Reason.NO_MATCHING_RULE: "You are signed in, but your role does not allow this request. "
    "Ask an administrator if you need it.",
}

# Like every gateway page, it links the privacy notice (GDPR Art. 12: easily accessible). Relative, like
# the stylesheet: the control app serves both on the auth host and every route's host.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex">
<title>{status} · {title}</title>
<link rel="icon" href="/.gateway/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/.gateway/static/error.css">
</head>
<body><main role="main">
<div class="code{server}">Error {status}</div>
<h1>{title}</h1>
<p>{detail}</p>
<p>{hint}</p>
<div class="meta">reason: {reason}<br>request id: {request_id}</div>
<footer><a href="/.gateway/privacy">Privacy</a></footer>
</main></body></html>
"""


def wants_html(accept: bytes) -> bool:
    """Browsers ask for text/html; API clients and scripts don't."""
    return b"text/html" in accept


def _hint(err: GatewayError) -> str:
    if err.reason in _REASON_HINTS:
        return _REASON_HINTS[err.reason]
    return _SERVER_HINT if err.status >= 500 else _HINTS.get(err.status, "")


class FrameworkRefusal(GatewayError):
    """What Litestar itself refused (no such page, a method a page does not take, a failed CSRF check),
    as an error page for a browser: both apps gave it raw JSON with no next step (a first-day run)."""

    REASONS: Final = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}
    _TITLES: Final = {404: "Page not found", 405: "Not available this way"}

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail, reason=self.REASONS.get(status, "error"))
        self.status = status
        self.title = self._TITLES.get(status, "Request refused")


def error_response(
    err: GatewayError, *, request_id: str, html_page: bool
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Render an error as (status, headers, body); the caller logs a 5xx's detail."""
    status = err.status
    message = err.public_detail
    if html_page:
        body = _PAGE.format(
            status=status,
            title=html.escape(err.title),
            detail=html.escape(message) if message != err.title else "",
            hint=html.escape(_hint(err)),
            reason=html.escape(err.reason),
            request_id=html.escape(request_id),
            server=" server" if status >= 500 else "",
        ).encode()
        ctype = b"text/html; charset=utf-8"
    else:
        body = json.dumps(
            {"error": err.reason, "message": message, "status": status, "request_id": request_id}
        ).encode()
        ctype = b"application/json"
    headers = [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
        *hardening_headers(ERROR_PAGE_CSP),
        (b"x-request-id", request_id.encode()),
    ]
    return status, headers, body
