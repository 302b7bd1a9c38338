"""The receive stage: the request line and headers as the client sent them, checked before anything reads them.

One pass over the header list: its size, exactly one ``Host``, the body framing (RFC 9112 §6), and
who the client is (the address comes from ``X-Forwarded-For`` only through trusted proxies; see
:mod:`gateway.pipeline.headers`). A blocked client address is refused here, before any other work.
Returns the raw request target's path for the canonical stage.
"""

from __future__ import annotations

from itertools import chain
from operator import itemgetter

from gateway.errors import BadHeaders, BadRequest, ErrorReason, HeadersTooLarge
from gateway.pipeline.asgi import Scope
from gateway.pipeline.context import RequestContext
from gateway.pipeline.headers import forwarding_for
from gateway.pipeline.proxy import UNSIZED, BodyFraming
from gateway.pipeline.snapshot import Snapshot
from gateway.threat.blocks import IpBlocked, IpBlocks

__all__ = ["BadFraming", "BadMethod", "BrokenBody", "body_framing", "receive_request"]

_NAME = itemgetter(0)


class BadFraming(BadHeaders):
    """The request's body framing is ambiguous (RFC 9112 §6): answered with 400, then the connection closes."""

    reason: str = ErrorReason.BAD_FRAMING
    title = "Ambiguous request framing"


class BadMethod(BadRequest):
    """The method has a lower-case letter (``delete``, ``Get``), or is CONNECT: see ``receive_request``."""

    reason: str = "bad-method"
    title = "Request method not accepted"


class BrokenBody(BadFraming):
    """The chunked body is malformed, or the body ended before its framing said it would."""

    reason: str = ErrorReason.BAD_BODY
    title = "Malformed request body"


def body_framing(lengths: list[bytes], codings: list[bytes]) -> BodyFraming:
    """How the body ends, from every ``Content-Length`` and ``Transfer-Encoding`` value sent.

    Raises:
        BadFraming: the framing is ambiguous or malformed.
    """
    # Request smuggling lives in disagreements about where a body ends (RFC 9112 §6.3): refuse both
    # framings at once, several different lengths, and anything that is not a plain decimal.
    if codings:
        if lengths:
            raise BadFraming("The request has both Content-Length and Transfer-Encoding.")
        # The only coding accepted is one `chunked` alone (§6.1: it is final, applied once; names are
        # case-insensitive). granian frames `identity, chunked`, `gzip, chunked` or two fields as
        # chunked, but a proxy in front may read them otherwise and see a different end of body,
        # and the upstream would get a gzip body labelled as plain: refuse rather than guess.
        if len(codings) != 1 or codings[0].strip().lower() != b"chunked":
            raise BadFraming("The request's Transfer-Encoding must be exactly 'chunked'.")
        return BodyFraming(chunked=True)
    values = {v.strip() for v in lengths}
    if len(values) != 1 or not next(iter(values)).isdigit() or len(next(iter(values))) > 18:
        raise BadFraming("The request's Content-Length is malformed.")
    return BodyFraming(content_length=int(next(iter(values))))


def _method_refused(method: str) -> str:
    if method == "CONNECT":
        return "The gateway is a reverse proxy, not a tunnel: CONNECT is not accepted."
    return f"The method {method[:20]!r} is not upper case; send it as {method[:20].upper()!r}."


def receive_request(scope: Scope, snap: Snapshot, ctx: RequestContext, blocks: IpBlocks) -> bytes:
    """Check the request's headers and note what later stages need; return the raw path.

    Raises:
        IpBlocked: the client's address is blocked (403).
        HeadersTooLarge: the header block is over ``limits.max_header_bytes`` (431).
        BadHeaders: no ``Host`` or more than one (400).
        BadFraming: the body framing is ambiguous (400, connection closed).
    """
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    # Every look at the header list is made in C (a dict, counts, sums): the Python loop it replaces
    # was ~230 of the request's ~3,800 bytecodes. The dict keeps the last value of a repeated name.
    # ASGI servers give header names in lower case.
    by_name = dict(headers)
    if len(by_name) == len(headers):  # no name twice: the usual request
        hosts = 1 if b"host" in by_name else 0
        cookie = by_name.get(b"cookie")
        ctx.cookies = () if cookie is None else (cookie,)
    else:
        names = list(map(_NAME, headers))
        hosts = names.count(b"host")
        ctx.cookies = tuple([value for name, value in headers if name == b"cookie"])
    ctx.host_raw = by_name.get(b"host", b"")
    ctx.accept = by_name.get(b"accept", b"")
    ctx.user_agent = by_name.get(b"user-agent", b"")
    client = scope.get("client")
    fwd = ctx.fwd = forwarding_for(
        peer_ip=client[0] if client else "",
        scheme=scope.get("scheme", "http").replace("ws", "http"),
        host=ctx.host_raw.decode("latin-1"),
        headers=headers,
        trusted=snap.trusted,
    )
    ctx.proto = fwd.proto
    # One in-process look-up (empty set: one check); the threat detector keeps it current.
    if fwd.client_ip in blocks:
        raise IpBlocked("Access from your address is blocked.")
    limit = snap.settings.limits.max_header_bytes
    # Each header counts as "name: value\r\n" on the wire.
    if sum(map(len, chain.from_iterable(headers))) + 4 * len(headers) > limit:
        raise HeadersTooLarge(f"Request headers exceed {limit} bytes.")
    if hosts != 1:
        # Zero or several Host headers: components could disagree about the target (smuggling).
        raise BadHeaders("The request must carry exactly one Host header.")
    if not ctx.method.isupper() or ctx.method == "CONNECT":
        # Methods are case-sensitive (RFC 9110 §9.1), so a rule about DELETE says nothing of "delete";
        # but Flask, Django and Rails upper-case the method they are given, and would run the DELETE
        # the rule refused. Refused, as nginx does, rather than upper-cased: no registered method has
        # a lower-case letter, so only a client probing for that gap sends one.
        # CONNECT asks for a tunnel (RFC 9110 §9.3.6), which a reverse proxy does not make: forwarded,
        # an app's 2xx turned the pooled upstream connection into a tunnel that the next request,
        # another person's with their identity headers, would have gone into (an attack run), while
        # the server sent the client nothing. Refused before any stage, as nginx does.
        raise BadMethod(_method_refused(ctx.method))
    if b"content-length" in by_name or b"transfer-encoding" in by_name:
        lengths = [value for name, value in headers if name == b"content-length"]
        codings = [value for name, value in headers if name == b"transfer-encoding"]
        ctx.framing = body_framing(lengths, codings)
    elif scope.get("http_version") == "2":
        ctx.framing = UNSIZED  # a body may end with the stream instead (RFC 9113 §8.1.1)
    ctx.query = scope.get("query_string", b"")
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    return raw
