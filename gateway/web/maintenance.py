"""The maintenance answer of a lockdown: a calm, finished page for people, a JSON 503 for scripts.

Everyone a lockdown stops (:mod:`gateway.pipeline.lockdown`) gets HTTP 503 with ``Retry-After``.
Browsers see the operator's title and message (``lockdown.title`` / ``lockdown.message``), a link for
administrators to sign in (or prove a passkey) and the request id; scripts get the gateway's JSON
error shape, ``{"error": "lockdown", "message", "status", "request_id"}``. The page carries the same
hardening headers and stylesheet as the gateway's error pages (:mod:`gateway.web.error_pages`); it has
no script and no form, so it works under their Content-Security-Policy.
"""

from __future__ import annotations

import html
import json
from typing import Final

from gateway.web.error_pages import ERROR_PAGE_CSP, hardening_headers

__all__ = ["REASON", "maintenance_response"]

#: The reason id on the wire (JSON ``error``, the access log, ``X-Gateway-Reason``).
REASON: Final = "lockdown"

_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<link rel="stylesheet" href="/.gateway/static/error.css">
</head>
<body><main role="main" class="maintenance">
<div class="code maintenance">Temporarily closed</div>
<h1>{title}</h1>
<p>{message}</p>
<p class="admin"><a href="{sign_in}">Administrator sign-in</a></p>
<div class="meta">reason: lockdown<br>request id: {request_id}</div>
<footer><a href="/.gateway/privacy">Privacy</a></footer>
</main></body></html>
"""


def maintenance_response(
    *, title: str, message: str, retry_after: int, sign_in: str, request_id: str, html_page: bool
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Render the lockdown answer as (status, headers, body).

    Args:
        title: The page's heading (``lockdown.title``).
        message: What everyone is told (``lockdown.message``); also the JSON ``message``.
        retry_after: Seconds for ``Retry-After``.
        sign_in: Where an administrator signs in or proves a passkey (already URL-safe).
        request_id: The request's id, shown so a report leads to the log line.
        html_page: A browser (the page) or a script (JSON).
    """
    if html_page:
        body = _PAGE.format(
            title=html.escape(title),
            message=html.escape(message),
            sign_in=html.escape(sign_in, quote=True),
            request_id=html.escape(request_id),
        ).encode()
        ctype = b"text/html; charset=utf-8"
    else:
        body = json.dumps(
            {"error": REASON, "message": message, "status": 503, "request_id": request_id}
        ).encode()
        ctype = b"application/json"
    headers = [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
        *hardening_headers(ERROR_PAGE_CSP),
        (b"x-request-id", request_id.encode()),
    ]
    return 503, headers, body
