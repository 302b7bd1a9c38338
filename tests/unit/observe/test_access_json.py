"""The access event's JSON, put together from bytes for speed, against its ECS shape written out plainly.

``expected`` below is the document as nested dicts, the way a reader of the access log sees it; the
gateway's writer must produce exactly this, byte for byte once encoded, for any record: strings with
quotes, backslashes, control characters and non-ASCII (which only msgspec may escape), every optional
part present or absent, refusals and 5xx.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.observe.access import ECS_VERSION, AccessEntry
from gateway.observe.record import AccessDecision, AuthKind, RequestKind, RequestRecord
from gateway.observe.redact import looks_secret, redact_path, redact_query, redact_words

_FAILED = {AccessDecision.DENY, AccessDecision.UNAUTHENTICATED, AccessDecision.INVALID, AccessDecision.ERROR}


def expected(rec: RequestRecord) -> dict[str, Any]:
    """The ECS document of ``rec``, written the plain way (the shape the README documents)."""
    refused = rec.decision in _FAILED
    name, port = _split(rec.host)
    url: dict[str, Any] = {"path": redact_path(rec.path)}
    if rec.original_path:
        url["original"] = redact_path(rec.original_path)
    if rec.query:
        url["query"] = redact_query(rec.query)
    if name:
        url["domain"] = "[REDACTED]" if looks_secret(name) else name
    if port is not None:
        url["port"] = port
    request: dict[str, Any] = {"method": rec.method, "body": {"bytes": rec.bytes_in}}
    if rec.request_id:
        request["id"] = rec.request_id
    gateway: dict[str, Any] = {
        "kind": str(rec.kind),
        "route": rec.route,
        "decision": str(rec.decision),
        "reason": rec.reason,
        "policy_version": rec.policy_version,
        "auth": str(rec.auth),
    }
    if rec.authz_seconds is not None:
        gateway["authz"] = {"duration": round(rec.authz_seconds * 1e9)}
    at = datetime.fromtimestamp(rec.at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    doc: dict[str, Any] = {
        "@timestamp": at,
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "event",
            "category": ["web"],
            "type": ["access", "denied" if refused else "allowed"],
            "dataset": "gateway.access",
            "outcome": "failure" if refused or rec.status >= 500 else "success",
            "duration": round(rec.total_seconds * 1e9),
        },
        "http": {
            "request": request,
            "response": {"status_code": rec.status, "body": {"bytes": rec.bytes_out}},
        },
        "url": url,
        "user_agent": {"original": redact_words(rec.user_agent[:512])},
        "gateway": gateway,
    }
    if rec.client_ip:
        doc["source"] = {"ip": rec.client_ip}
    if rec.user:
        doc["user"] = {"name": rec.user}
    if rec.session:
        doc["session"] = {"id": rec.session}
    if rec.upstream:
        doc["upstream"] = {"address": rec.upstream}
        if rec.upstream_seconds is not None:
            doc["upstream"]["duration"] = round(rec.upstream_seconds * 1e9)
    if rec.trace_id or rec.request_id:
        doc["trace"] = {"id": rec.trace_id or rec.request_id}
    if rec.span_id:
        doc["span"] = {"id": rec.span_id}
    return doc


def _split(host: str) -> tuple[str, int | None]:
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        text = rest[1:] if rest.startswith(":") else ""
    elif ":" in host:
        name, _, text = host.rpartition(":")
    else:
        name, text = host, ""
    port = int(text) if text.isdigit() and 0 < int(text) < 65536 else None
    return name, port


_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
_SECONDS = st.floats(min_value=0, max_value=100, allow_nan=False)
_HOSTS = st.one_of(
    _TEXT,
    st.sampled_from(
        [
            "app.example.com",
            "app.example.com:8443",
            "[2001:db8::1]:443",
            "[::1]",
            "h:0",
            "h:99999",
            "gwt_Q7xkP2mZ9vLq4RtY8wNb3JcH6dF1sKe5GaX0uTo2iPl:443",
        ]
    ),
)
_PATHS = st.one_of(
    _TEXT.map(lambda t: "/" + t),
    st.sampled_from(["/reports", "/a/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "/.gateway/invite/abc"]),
)

records = st.builds(
    RequestRecord,
    at=st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False),
    kind=st.sampled_from(list(RequestKind)),
    request_id=st.one_of(st.just(""), _TEXT),
    client_ip=st.one_of(st.just(""), st.just("192.0.2.7"), _TEXT),
    user_agent=st.one_of(
        _TEXT, st.just("x" * 600), st.just("curl gwt_ldkg2ZAz9JNoeHusijFpQvuHz0lUHirYnKH-vSg5CRA")
    ),
    host=_HOSTS,
    method=st.one_of(st.sampled_from(["GET", "POST"]), _TEXT),
    path=_PATHS,
    original_path=st.one_of(st.just(""), _PATHS),
    query=st.one_of(st.just(""), _TEXT, st.just("page=2&access_token=s3cr3t")),
    route=_TEXT,
    user=st.one_of(st.just(""), _TEXT),
    session=st.one_of(st.just(""), st.just("ab12cd34")),
    status=st.integers(min_value=100, max_value=599),
    bytes_in=st.integers(min_value=0, max_value=2**40),
    bytes_out=st.integers(min_value=0, max_value=2**40),
    upstream=st.one_of(st.just(""), _TEXT),
    upstream_seconds=st.one_of(st.none(), _SECONDS),
    authz_seconds=st.one_of(st.none(), _SECONDS),
    total_seconds=_SECONDS,
    decision=st.sampled_from(list(AccessDecision)),
    reason=_TEXT,
    policy_version=st.integers(min_value=0, max_value=2**31),
    auth=st.sampled_from(list(AuthKind)),
    trace_id=st.one_of(st.just(""), st.just("0af7651916cd43dd8448eb211c80319c")),
    span_id=st.one_of(st.just(""), st.just("b7ad6b7169203331")),
)


@settings(max_examples=400, deadline=None)
@given(records)
def test_the_written_json_is_the_plain_document(rec: RequestRecord) -> None:
    entry = AccessEntry(rec)
    written = entry.json()
    # Same bytes as encoding the plain document (key order, escaping, numbers), so a reader can
    # never tell how it was made.
    assert written == msgspec.json.encode(expected(rec))
    assert json.loads(written) == expected(rec)  # and any JSON parser reads it back
    assert AccessEntry(rec).document() == expected(rec)


def test_a_hostile_user_agent_cannot_break_out_of_its_string() -> None:
    rec = RequestRecord(
        at=1.0, kind=RequestKind.HTTP, user_agent='x","user":{"name":"admin"},"y":"\n', host="h", path="/"
    )
    doc = json.loads(AccessEntry(rec).json())
    assert "user" not in doc
    assert doc["user_agent"]["original"] == rec.user_agent
    assert b"\n" not in AccessEntry(rec).json()  # one event per line, always


@pytest.mark.parametrize("host", ["a:\u00b2", "a:\u0661\u0662", "[2001:db8::1]:\u00b3", "a:99999", "a:"])
def test_a_host_whose_port_is_no_port_is_written_without_one(host: str) -> None:
    # "²".isdigit() is true and int("²") fails: such a Host broke the log line (a fuzzing run's kin).
    rec = RequestRecord(at=1.0, kind=RequestKind.HTTP, user_agent="ua", host=host, path="/")
    doc = json.loads(AccessEntry(rec).json())
    assert "port" not in doc["url"]


def test_a_token_in_the_user_agent_is_not_written() -> None:
    """An attack run sent its API token in the User-Agent and found it in the access log."""
    token = "gwt_ldkg2ZAz9JNoeHusijFpQvuHz0lUHirYnKH-vSg5CRA"
    rec = RequestRecord(
        at=1.0, kind=RequestKind.HTTP, user_agent=f"deploy-bot/1.2 {token}", host="h", path="/"
    )
    written = AccessEntry(rec).json()
    assert token.encode() not in written
    assert json.loads(written)["user_agent"]["original"] == "deploy-bot/1.2 [REDACTED]"
    browser = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
    rec = RequestRecord(at=1.0, kind=RequestKind.HTTP, user_agent=browser, host="h", path="/")
    assert json.loads(AccessEntry(rec).json())["user_agent"]["original"] == browser


def test_what_the_writer_remembers_is_bounded_by_distinct_clients() -> None:
    """A client sending ever new hosts, user agents, addresses and paths clears the remembered parts
    instead of growing them."""
    from gateway.observe import access

    base = RequestRecord(
        at=1.0, kind=RequestKind.HTTP, host="h", path="/", route="app", user="u", session="s"
    )
    for i in range(access._MEMO_LIMIT * 2 + 10):
        rec = msgspec.structs.replace(
            base,
            host=f"h{i}.test",
            user_agent=f"agent {i}",
            client_ip=f"10.0.{i // 256}.{i % 256}",
            path=f"/{i}",
        )
        assert json.loads(AccessEntry(rec).json())["user_agent"]["original"] == f"agent {i}"
    for memo in (access._clients, access._senders, access._paths, access._verdicts):
        assert 0 < len(memo) <= access._MEMO_LIMIT


def test_one_sessions_remembered_identity_never_appears_in_anothers_event() -> None:
    alice = RequestRecord(
        at=1.0, kind=RequestKind.HTTP, host="h", path="/", client_ip="192.0.2.1", user="alice", session="aa"
    )
    bob = msgspec.structs.replace(alice, user="bob", session="bb")
    anonymous = msgspec.structs.replace(alice, user="", session="")
    for rec in (alice, bob, anonymous, alice, bob, anonymous):
        assert AccessEntry(rec).document() == expected(rec)
