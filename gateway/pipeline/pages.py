"""Error answers of the data plane: a finished-looking HTML page for browsers, JSON for API clients.

Every answer carries the reason id and the request id, so a user's screenshot leads to the log line.
"""

from __future__ import annotations

import html
import json

from gateway.errors import GatewayError

__all__ = ["error_response", "wants_html"]

_HINTS = {
    400: "The request was refused before it reached the application. Check the address for unusual characters.",
    401: "Sign in to continue.",
    403: "You are signed in, but your role does not allow this request. Ask an administrator if you need it.",
    404: "No application is published at this address. Check the link, or ask an administrator.",
    413: "The upload is larger than this application accepts.",
    431: "The request headers are too large. Clearing this site's cookies usually helps.",
    502: "The application behind the gateway did not answer properly. Try again in a moment.",
    503: "The application is temporarily unavailable. Try again in a moment.",
    504: "The application took too long to answer. Try again in a moment.",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex">
<title>{status} · {title}</title>
<style>
:root{{color-scheme:light dark}}
body{{margin:0;min-height:100vh;display:grid;place-items:center;background:#f4f5f8;color:#1d2433;
font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}}
main{{max-width:520px;margin:24px;padding:36px 40px;background:#fff;border-radius:14px;
box-shadow:0 1px 2px rgba(16,24,40,.06),0 8px 24px rgba(16,24,40,.08)}}
.code{{font-size:.8rem;font-weight:600;letter-spacing:.08em;text-transform:uppercase;color:{accent}}}
h1{{margin:.35rem 0 .75rem;font-size:1.5rem}}
p{{line-height:1.55;color:#454f63;margin:.5rem 0}}
.meta{{margin-top:1.5rem;padding-top:1rem;border-top:1px solid #eceef3;font-size:.8rem;color:#6b7385;
font-family:ui-monospace,SFMono-Regular,Menlo,monospace}}
@media (prefers-color-scheme:dark){{body{{background:#12151c;color:#e6e9ef}}main{{background:#1b2029;
box-shadow:none}}p{{color:#b4bccb}}.meta{{border-color:#2a303c;color:#8d96a8}}}}
</style></head>
<body><main role="main">
<div class="code">Error {status}</div>
<h1>{title}</h1>
<p>{detail}</p>
<p>{hint}</p>
<div class="meta">reason: {reason}<br>request id: {request_id}</div>
</main></body></html>
"""


def wants_html(accept: bytes) -> bool:
    """Browsers ask for text/html; API clients and scripts don't."""
    return b"text/html" in accept


def error_response(
    err: GatewayError, *, request_id: str, html_page: bool
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Render an error as (status, headers, body)."""
    status = err.status
    if html_page:
        accent = "#b42318" if status >= 500 else "#b54708"
        body = _PAGE.format(
            status=status,
            title=html.escape(err.title),
            detail=html.escape(err.detail) if err.detail != err.title else "",
            hint=html.escape(_HINTS.get(status, "")),
            reason=html.escape(err.reason),
            request_id=html.escape(request_id),
            accent=accent,
        ).encode()
        ctype = b"text/html; charset=utf-8"
    else:
        body = json.dumps(
            {"error": err.reason, "message": err.detail, "status": status, "request_id": request_id}
        ).encode()
        ctype = b"application/json"
    headers = [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-request-id", request_id.encode()),
    ]
    return status, headers, body
