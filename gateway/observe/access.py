"""The access log: one ECS JSON event per request, and the audit trail's security events, to the sinks.

The observer and the audit listener run on the request's event loop, so they only wrap the record in
an entry and enqueue it (:meth:`SinkHub.publish`). The JSON is built later, once, by the first sink
task that needs it; records are not changed after the data plane hands them to observers.

Field names follow the Elastic Common Schema (nested objects: ``event.kind`` is ``{"event": {"kind"}}``);
gateway-specific facts live under ``gateway.*`` and ``upstream.*``. Durations are nanoseconds, as ECS
defines ``event.duration``. Nothing secret is written: the data plane never puts headers, cookies or
bodies in the record, the query string and path go through :mod:`gateway.observe.redact`, and the
session appears only as the prefix of its id's SHA-256.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec

from gateway.observe.record import AccessDecision
from gateway.observe.redact import (
    REDACTED,
    looks_secret,
    redact_details,
    redact_path,
    redact_query,
    redact_words,
)

if TYPE_CHECKING:
    from gateway.audit.trail import AuditListener, SecurityEvent
    from gateway.observe.record import Observer, RequestRecord
    from gateway.observe.sinks import SinkHub

__all__ = [
    "UNENCODABLE",
    "AccessEntry",
    "Entry",
    "SecurityEntry",
    "access_observer",
    "audit_listener",
    "unencodable_events",
]

logger = logging.getLogger("gateway.observe")

ECS_VERSION: Final = "8.11.0"
_ENCODER: Final = msgspec.json.Encoder()
_FAILED_DECISIONS: Final = frozenset(
    {AccessDecision.DENY, AccessDecision.UNAUTHENTICATED, AccessDecision.INVALID, AccessDecision.ERROR}
)
# Audit kinds that are detections or lock-outs rather than plain facts: ECS "alert" events.
_ALERT_PREFIXES: Final = ("threat.", "alert.", "anomaly.")
_ALERT_MARKERS: Final = ("locked", "lockout", "brute", "replay", "tamper")
_MAX_USER_AGENT: Final = 512
# The Host's name as logged: a DNS name is at most 255 characters. Any client can send a 30 KB Host
# (latin-1 decoded, so C1 bytes grow to six escaped bytes each): cut like the User-Agent, it no
# longer makes a line of 120 KB per sink per request (an attack run).
_MAX_HOST: Final = 255
#: The tag of the stand-in for an event that could not be encoded (see :meth:`Entry.json`).
UNENCODABLE: Final = "unencodable"
# Seconds between two warnings that an event could not be encoded.
_WARN_EVERY: Final = 60.0
# Events sent as an UNENCODABLE stand-in since start, and when that was last said.
_unencodable = 0
_unencodable_warned_at: float | None = None


def unencodable_events() -> int:
    """How many events this process sent as an ``unencodable`` stand-in (see :meth:`Entry.json`)."""
    return _unencodable


def _note_unencodable(stream: str, exc: Exception) -> None:
    """Count an event that could not be encoded; warn at most once a minute."""
    global _unencodable, _unencodable_warned_at
    _unencodable += 1
    now = time.monotonic()
    if _unencodable_warned_at is None or now - _unencodable_warned_at >= _WARN_EVERY:
        _unencodable_warned_at = now
        # The exception's type only: its message may quote the event's content.
        logger.warning(
            "a %s event could not be encoded (%s); the log sinks got a minimal event tagged %r in its "
            "place (%d so far)",
            stream,
            type(exc).__name__,
            UNENCODABLE,
            _unencodable,
        )


def _printable(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (which JSON escapes can smuggle into audit
    details and msgspec refuses to encode) becomes ``?``."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _milliseconds(at: float) -> int:
    """``at`` in whole milliseconds, as ``datetime`` rounds it: to the microsecond (half to even), then cut."""
    fraction, whole = math.modf(at)  # the rounding datetime.fromtimestamp does
    return int(whole) * 1000 + round(fraction * 1_000_000) // 1000


def _iso_milliseconds(milliseconds: int) -> str:
    seconds, millis = divmod(milliseconds, 1000)
    global _last_second
    last, prefix = _last_second
    if seconds != last:
        # Formatting a datetime is ~2 µs; requests in the same second share the prefix.
        prefix = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (seconds, prefix)  # one assignment: a reader in a thread sees both or neither
    return f"{prefix}.{millis:03d}Z"


def _timestamp(at: float) -> str:
    """ISO 8601 UTC with milliseconds, as ``datetime.isoformat`` writes it (rounded to µs, then cut)."""
    return _iso_milliseconds(_milliseconds(at))


_last_second: tuple[int, str] = (-1, "")

# The access log's last timestamp and the times that certainly write the same: those 2 µs or more
# inside its millisecond. A busy gateway logs several requests per millisecond: two comparisons
# instead of rounding and formatting (measured 2026-12-05: 190 ns against 1,240 at ten requests per
# millisecond, 1,000 against 1,240 at one). Below 2**32 s (the year 2106) a double is exact to a
# microsecond, so the window's ends are off by less than their margin.
# One tuple, replaced in one assignment: a sink that builds events in a thread sees a whole window.
_window: tuple[float, float, bytes] = (0.0, 0.0, b"")


def _timestamp_bytes(at: float) -> bytes:
    """:func:`_timestamp` as ASCII bytes, for the access log's JSON."""
    global _window
    start, end, text = _window
    if start <= at < end:
        return text
    milliseconds = _milliseconds(at)
    text = _iso_milliseconds(milliseconds).encode("ascii")
    if at < 2**32:
        first = milliseconds / 1000
        _window = (first + 0.000_002, first + 0.000_998, text)
    return text


class Entry:
    """One event queued for the sinks; serialised lazily and only once, whichever sink asks first.

    Neither :meth:`document` nor :meth:`json` raises: an event that cannot be built or encoded (a lone
    surrogate in audit details, which msgspec refuses) is replaced by a minimal one (its time, what
    happened, who, tagged :data:`UNENCODABLE`) and counted. Before, one such event failed its whole
    batch in every sink, and the batch was dropped after its retries (an attack run).
    """

    __slots__ = ("_document", "_json")

    stream: str = ""  # "access" or "security": syslog MSGID, Loki label, Elasticsearch dataset
    # A security event a full sink queue drops before others (gateway.observe.sinks.base): a refusal.
    expendable: bool = False

    def __init__(self) -> None:
        self._document: dict[str, Any] | None = None
        self._json: bytes | None = None

    @property
    def at(self) -> float:
        """When it happened, Unix seconds."""
        raise NotImplementedError

    @property
    def severity(self) -> int:
        """Syslog severity: 6 informational, 4 warning (alerts)."""
        return 6

    def document(self) -> dict[str, Any]:
        """The ECS document as plain dicts and lists (built on first use)."""
        if self._document is None:
            try:
                self._document = self._build()
            except Exception as exc:  # noqa: BLE001 - one bad event must not fail its batch
                self._json = self._unencodable(exc)
        assert self._document is not None  # built, or the stand-in
        return self._document

    def json(self) -> bytes:
        """The document as compact UTF-8 JSON, no trailing newline."""
        if self._json is None:
            try:
                self._json = _ENCODER.encode(self._document if self._document is not None else self._build())
            except Exception as exc:  # noqa: BLE001 - one bad event must not fail its batch
                self._json = self._unencodable(exc)
        return self._json

    def _build(self) -> dict[str, Any]:
        raise NotImplementedError

    def _unencodable(self, exc: Exception) -> bytes:
        """Count the failure, keep the stand-in as the document and return its JSON."""
        _note_unencodable(self.stream, exc)
        try:
            document = self._minimal()
            document["tags"] = [UNENCODABLE]
            document["error"] = {"message": f"the event could not be encoded ({type(exc).__name__})"}
            data = _ENCODER.encode(document)
        except Exception:  # noqa: BLE001 - the stand-in must not fail either: the bare minimum then
            document = {"ecs": {"version": ECS_VERSION}, "tags": [UNENCODABLE]}
            data = _ENCODER.encode(document)
        self._document = document
        return data

    def _minimal(self) -> dict[str, Any]:
        """The stand-in's fields: when, and what happened to whom, with every string made encodable."""
        raise NotImplementedError


class AccessEntry(Entry):
    """The access-log event of one request."""

    __slots__ = ("record",)
    stream = "access"

    def __init__(self, record: RequestRecord) -> None:
        super().__init__()
        self.record = record

    @property
    def at(self) -> float:
        return self.record.at

    def json(self) -> bytes:
        if self._json is None:
            try:
                self._json = _access_json(self.record)
            except Exception as exc:  # noqa: BLE001 - one bad event must not fail its batch
                self._json = self._unencodable(exc)
        return self._json

    def _build(self) -> dict[str, Any]:
        # Only the Splunk sink asks for the document; every sink wants the JSON, written once.
        document: dict[str, Any] = msgspec.json.decode(self.json())
        return document

    def _minimal(self) -> dict[str, Any]:
        rec = self.record
        document: dict[str, Any] = {
            "@timestamp": _timestamp(rec.at),
            "ecs": {"version": ECS_VERSION},
            "event": {"kind": "event", "category": ["web"], "dataset": "gateway.access"},
            "http": {"request": {"method": _printable(rec.method)}, "response": {"status_code": rec.status}},
        }
        if rec.client_ip:
            document["source"] = {"ip": _printable(rec.client_ip)}
        if rec.user:
            document["user"] = {"name": _printable(rec.user)}
        return document


# The access event is written for every request, so its JSON is put together from byte strings in the
# ECS shape rather than built as nested objects and encoded: every value that can come from outside
# (path, query, host, user agent, request id, user, upstream) and every name is encoded by msgspec, so
# escaping is msgspec's. Measured 2026-12-03 on the benchmark's record: 3.5 µs of CPU per entry against
# 5.2 µs for nested msgspec structs (which had halved the 6.9 µs of dicts); Python bytecodes of the
# log's background work per request 670 -> 609 (loadtests.stages), so most of the gain is in C.
# tests/unit/observe/test_access_json.py holds the shape as a plain nested document and checks the
# bytes against it for generated records.
_HEAD: Final = (
    b'{"@timestamp":"%s","ecs":{"version":"' + ECS_VERSION.encode() + b'"},'
    b'"event":{"kind":"event","category":["web"],"type":%s,"dataset":"gateway.access","outcome":%s,'
    b'"duration":%d},'
    b'"http":{"request":{"method":%s,"body":{"bytes":%d}%s},'
    b'"response":{"status_code":%d,"body":{"bytes":%d}}},'
    b'"url":{"path":%s%s%s'
)
_ALLOWED_TYPE: Final = b'["access","allowed"]'
_DENIED_TYPE: Final = b'["access","denied"]'
_SUCCESS: Final = b'"success"'
_FAILURE: Final = b'"failure"'


def _access_json(rec: RequestRecord) -> bytes:
    encode = _ENCODER.encode
    refused = rec.decision in _FAILED_DECISIONS
    query = rec.query
    request_id = encode(rec.request_id) if rec.request_id else b""
    head = _HEAD % (
        _timestamp_bytes(rec.at),
        _DENIED_TYPE if refused else _ALLOWED_TYPE,
        _FAILURE if refused or rec.status >= 500 else _SUCCESS,
        round(rec.total_seconds * 1e9),
        encode(rec.method),
        rec.bytes_in,
        b',"id":' + request_id if request_id else b"",
        rec.status,
        rec.bytes_out,
        _redacted_path(rec.path)
        if not rec.original_path
        else _redacted_path(rec.path) + b',"original":' + encode(redact_path(rec.original_path)),
        b',"query":' + encode(redact_query(query)) if query else b"",
        _client_part(rec.host, rec.user_agent),
    )
    authz = rec.authz_seconds
    tail = [
        head,
        _gateway_part(rec),
        b"}" if authz is None else b',"authz":{"duration":%d}}' % round(authz * 1e9),
        _identity_part(rec),
    ]
    if rec.upstream:
        seconds = rec.upstream_seconds
        duration = b"" if seconds is None else b',"duration":%d' % round(seconds * 1e9)
        tail.append(b',"upstream":{"address":%s%s}' % (encode(rec.upstream), duration))
    # The OpenTelemetry trace when tracing is on; else the request id, as before tracing existed.
    if rec.trace_id:
        tail.append(b',"trace":{"id":%s}' % encode(rec.trace_id))
    elif request_id:
        tail.append(b',"trace":{"id":%s}' % request_id)
    if rec.span_id:
        tail.append(b',"span":{"id":%s}' % encode(rec.span_id))
    tail.append(b"}")
    return b"".join(tail)


# Parts of the event that repeat from request to request are remembered, for short values and up to a
# bound (a client sending ever new paths or addresses costs a cleared cache, not memory): the path,
# the host with the user agent (one client's), the gateway's verdict (route, decision, reason, policy
# version: a handful of combinations) and who sent it (address, user, session: the same for every
# request of a session). Measured on the benchmark's record 2026-12-05, with the timestamp's window
# above: 3.5 -> 2.2 µs per event, 39.2 k -> 25.9 k instructions (callgrind) at ten per millisecond.
_K = TypeVar("_K", bound=Hashable)
_MEMO_LIMIT: Final = 4096
_MEMO_LONGEST: Final = 256
_paths: dict[str, bytes] = {}
_clients: dict[tuple[str, str], bytes] = {}
_verdicts: dict[tuple[str, str, str, str, int, str], bytes] = {}
_senders: dict[tuple[str, str, str], bytes] = {}


def _remember(memo: dict[_K, bytes], key: _K, part: bytes, size: int) -> bytes:
    """Keep ``part`` under ``key`` if its values (``size`` characters) are short; a full memo is cleared."""
    if size <= _MEMO_LONGEST:
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = part
    return part


def _gateway_part(rec: RequestRecord) -> bytes:
    """``"gateway":{...`` up to the optional ``authz`` member (the object is left open)."""
    key = (rec.kind, rec.route, rec.decision, rec.reason, rec.policy_version, rec.auth)
    known = _verdicts.get(key)
    if known is None:
        encode = _ENCODER.encode
        known = b'"gateway":{"kind":%s,"route":%s,"decision":%s,"reason":%s,"policy_version":%d,"auth":%s' % (
            encode(rec.kind),
            encode(rec.route),
            encode(rec.decision),
            encode(rec.reason),
            rec.policy_version,
            encode(rec.auth),
        )
        known = _remember(_verdicts, key, known, len(rec.route) + len(rec.reason))
    return known


def _identity_part(rec: RequestRecord) -> bytes:
    """The ``source``, ``user`` and ``session`` members that are set, each with its leading comma."""
    key = (rec.client_ip, rec.user, rec.session)
    known = _senders.get(key)
    if known is None:
        encode = _ENCODER.encode
        known = b"".join(
            (
                b',"source":{"ip":%s}' % encode(rec.client_ip) if rec.client_ip else b"",
                b',"user":{"name":%s}' % encode(rec.user) if rec.user else b"",
                b',"session":{"id":%s}' % encode(rec.session) if rec.session else b"",
            )
        )
        known = _remember(_senders, key, known, len(rec.client_ip) + len(rec.user) + len(rec.session))
    return known


def _redacted_path(path: str) -> bytes:
    known = _paths.get(path)
    if known is None:
        known = _remember(_paths, path, _ENCODER.encode(redact_path(path)), len(path))
    return known


def _client_part(host: str, user_agent: str) -> bytes:
    """The ``url.domain`` and ``url.port`` members (each with its leading comma, if any), the end of
    ``url`` and the ``user_agent`` object."""
    key = (host, user_agent)
    known = _clients.get(key)
    if known is None:
        name, port = _split_host(host)
        if name is not None:
            name = name[:_MAX_HOST]  # only for a new Host: the memo holds the usual ones
            if looks_secret(name):
                name = REDACTED  # a token sent as the Host (an attack run found it in the log)
        known = b'%s%s},"user_agent":{"original":%s},' % (
            b"" if name is None else b',"domain":' + _ENCODER.encode(name),
            b"" if port is None else b',"port":%d' % port,
            # Redacted once per distinct User-Agent (memoised here): a script may put a token in it.
            _ENCODER.encode(redact_words(user_agent[:_MAX_USER_AGENT])),
        )
        known = _remember(_clients, key, known, len(host) + len(user_agent))
    return known


def _split_host(host: str) -> tuple[str | None, int | None]:
    """``Host`` as the client sent it, split into ECS ``url.domain`` and ``url.port``."""
    if host.startswith("["):  # [2001:db8::1]:8443
        name, _, rest = host[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, colon, port_text = host.rpartition(":")
        if not colon:
            name, port_text = host, ""
    # ASCII digits only: "²".isdigit() is true and int("²") fails (a Host of "a:²" broke the log line).
    digits = port_text.isascii() and port_text.isdigit()
    port = int(port_text) if digits and 0 < int(port_text) < 65536 else None
    return (name or None), port


class SecurityEntry(Entry):
    """One audit-trail event (sign-in, MFA, lock-out, admin change), details redacted."""

    __slots__ = ("event",)
    stream = "security"

    def __init__(self, event: SecurityEvent) -> None:
        super().__init__()
        self.event = event

    @property
    def at(self) -> float:
        return self.event.at.timestamp()

    @property
    def severity(self) -> int:
        return 4 if is_alert(self.event.kind) else 6

    @property
    def expendable(self) -> bool:  # type: ignore[override]
        """A refusal (a failure that is no alert): anyone can cause them by the thousand, so a full
        queue of security events drops these before a checkpoint, an alert, a lock-out or a change."""
        return self.event.outcome == "failure" and not is_alert(self.event.kind)

    def _build(self) -> dict[str, Any]:
        ev = self.event
        try:
            details = redact_details(json.loads(ev.details)) if ev.details else {}
        except ValueError:
            details = REDACTED  # not JSON: cannot tell what is secret inside, so show nothing
        doc: dict[str, Any] = {
            "@timestamp": _timestamp(self.at),
            "ecs": {"version": ECS_VERSION},
            "event": {
                "kind": "alert" if is_alert(ev.kind) else "event",
                "category": [_category(ev.kind)],
                "action": ev.kind,
                "dataset": "gateway.audit",
                "outcome": _outcome(ev.outcome),
            },
            "gateway": {"actor": ev.actor, "subject": ev.subject, "outcome": ev.outcome, "details": details},
        }
        if ev.ip:
            doc["source"] = {"ip": ev.ip}
        if ev.subject:
            doc["user"] = {"name": ev.subject}
        return doc

    def _minimal(self) -> dict[str, Any]:
        ev = self.event
        subject = _printable(ev.subject)
        doc: dict[str, Any] = {
            "@timestamp": _timestamp(self.at),
            "ecs": {"version": ECS_VERSION},
            "event": {
                "kind": "alert" if is_alert(ev.kind) else "event",
                "category": [_category(ev.kind)],
                "action": _printable(ev.kind),
                "dataset": "gateway.audit",
                "outcome": _outcome(ev.outcome),
            },
            # The details are what failed: left out, the rest says who did what.
            "gateway": {"actor": _printable(ev.actor), "subject": subject, "outcome": _printable(ev.outcome)},
        }
        if ev.ip:
            doc["source"] = {"ip": _printable(ev.ip)}
        if subject:
            doc["user"] = {"name": subject}
        return doc


class CheckpointEntry(Entry):
    """A signed audit-chain checkpoint (or a ``audit.chain_broken`` alert) on its way out of the database.

    Sent to the sinks so the SIEM holds proof of the chain's head: a trail truncated later no longer
    reaches the last checkpoint it received (``gateway audit verify --checkpoint``).
    """

    __slots__ = ("_at", "checkpoint")
    stream = "security"

    def __init__(self, checkpoint: dict[str, Any], at: float) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self._at = at

    @property
    def at(self) -> float:
        return self._at

    @property
    def severity(self) -> int:
        return 4 if self.checkpoint.get("type") == "audit.chain_broken" else 6

    def _build(self) -> dict[str, Any]:
        return {**self._minimal(), "gateway": {"checkpoint": self.checkpoint}}

    def _minimal(self) -> dict[str, Any]:
        broken = self.checkpoint.get("type") == "audit.chain_broken"
        return {
            "@timestamp": _timestamp(self._at),
            "ecs": {"version": ECS_VERSION},
            "event": {
                "kind": "alert" if broken else "event",
                "category": ["database"],
                "action": "audit.chain_broken" if broken else "audit.checkpoint",
                "dataset": "gateway.audit",
            },
        }


def is_alert(kind: str) -> bool:
    """Whether an audit kind is a detection or lock-out (``event.kind: alert``) rather than a fact."""
    return kind.startswith(_ALERT_PREFIXES) or any(marker in kind for marker in _ALERT_MARKERS)


def _category(kind: str) -> str:
    head = kind.partition(".")[0]
    if head in ("signin", "signout", "session", "mfa", "account", "passkey", "totp", "webauthn"):
        return "authentication"
    if head in ("user", "role", "group"):
        return "iam"
    if head in ("policy", "config", "route", "admin"):
        return "configuration"
    if head in ("threat", "alert", "anomaly"):
        return "intrusion_detection"
    return "authentication"


def _outcome(outcome: str) -> str:
    if outcome in ("success", "failure"):
        return outcome
    return "failure" if outcome in ("denied", "refused", "error", "locked") else "unknown"


def access_observer(hub: SinkHub) -> Observer:
    """The request observer: wrap the record and enqueue it for every sink (no I/O, never blocks)."""
    publish = hub.publish

    def observe(record: RequestRecord) -> None:
        publish(AccessEntry(record))

    return observe


def audit_listener(hub: SinkHub) -> AuditListener:
    """The audit-trail listener: enqueue each stored security event for every sink."""
    publish = hub.publish

    def listen(event: SecurityEvent) -> None:
        publish(SecurityEntry(event))

    return listen
