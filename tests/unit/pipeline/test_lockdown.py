"""The lockdown refusal: how it is recorded, and its answer to a browser (the maintenance page) and to
a script (the gateway's JSON error shape), both 503 with Retry-After and the hardening headers."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from gateway.observe.record import AccessDecision, RequestKind, RequestRecord
from gateway.pipeline.context import RequestContext
from gateway.pipeline.lockdown import LockedDown
from gateway.pipeline.refusal import answer_error, note_refusal
from gateway.settings.schema import Duration, LockdownSettings
from gateway.web.error_pages import HARDENING_HEADER_NAMES

SETTINGS = LockdownSettings(
    title="Back <soon>",
    message="Closed while we investigate & fix.",
    retry_after=Duration(120),
)
SIGN_IN = "https://auth.example.com/.gateway/login?rd=https%3A%2F%2Fapp.example.com%2F%22x"


async def answer(accept: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    ctx = RequestContext(RequestKind.HTTP, "GET")
    ctx.accept = accept
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await answer_error(send, LockedDown(SETTINGS, sign_in=SIGN_IN), ctx)
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


def test_a_lockdown_is_a_decision_not_a_failure() -> None:
    rec = RequestRecord(at=0.0, kind=RequestKind.HTTP)
    note_refusal(rec, LockedDown(SETTINGS, sign_in=SIGN_IN))
    assert (rec.decision, rec.reason) == (AccessDecision.DENY, "lockdown")


async def test_a_script_gets_the_json_error_shape() -> None:
    status, headers, body = await answer(b"application/json")
    assert status == 503
    assert headers[b"retry-after"] == b"120"
    assert headers[b"content-type"] == b"application/json"
    document = json.loads(body)
    assert set(document) == {"error", "message", "status", "request_id"}
    assert (document["error"], document["status"]) == ("lockdown", 503)
    # The operator's text, not the generic "service unavailable" sentence of a failure.
    assert document["message"] == "Closed while we investigate & fix."
    assert set(headers) >= HARDENING_HEADER_NAMES


@pytest.mark.parametrize("accept", [b"text/html,application/xhtml+xml;q=0.9", b"text/html"])
async def test_a_browser_gets_the_maintenance_page(accept: bytes) -> None:
    status, headers, body = await answer(accept)
    page = body.decode()
    assert status == 503
    assert headers[b"retry-after"] == b"120"
    assert headers[b"content-type"].startswith(b"text/html")
    assert int(headers[b"content-length"]) == len(body)
    # The operator's words, escaped; no "Error 503" banner: it is a maintenance page.
    assert "<h1>Back &lt;soon&gt;</h1>" in page
    assert "Closed while we investigate &amp; fix." in page
    assert "Error 503" not in page
    assert 'href="https://auth.example.com/.gateway/login?rd=https%3A%2F%2Fapp.example.com%2F%22x"' in page
    assert "<script" not in page
    assert set(headers) >= HARDENING_HEADER_NAMES


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    short = LockdownSettings(retry_after=Duration(0.2))
    assert LockedDown(short, sign_in=SIGN_IN).retry_after == 1
    assert LockedDown(LockdownSettings(), sign_in=SIGN_IN).retry_after == 300
