"""Header hygiene for both directions of the proxy (invariant 3 of DESIGN.md).

Request side, in this order:
1. drop hop-by-hop headers (RFC 9110 §7.6.1) and every header the client names in ``Connection``;
2. drop every incoming identity header (``X-Gateway-*``) in every spelling: the name is compared
   lower-cased with ``_`` read as ``-``, because many frameworks (CGI/WSGI ``HTTP_X_GATEWAY_USER``,
   Django, Rails) fold both spellings into the same variable;
3. drop the forwarding family (``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``, ``X-Request-Id``) in
   every spelling, then re-create it: trusted values are extended, untrusted ones replaced.

Only after that does the gateway add its own headers, so ``Connection: X-Forwarded-For`` (or any other
name) can never remove something the gateway sets.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "Forwarding",
    "TrustedProxies",
    "clean_response_headers",
    "forwarding_for",
    "normalize_name",
    "upstream_request_headers",
]

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"http2-settings",
    }
)
# Headers whose meaning depends on who set them. Compared after normalize_name().
_FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-method",
        b"x-forwarded-uri",
        b"x-forwarded-server",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"forwarded",
        b"x-real-ip",
        b"x-client-ip",
        b"x-original-forwarded-for",
        b"x-request-id",
        # Path and method overrides: frameworks that honour them (Symfony and Zend read X-Original-URL
        # and X-Rewrite-URL; Express, Rails and Spring apps read the method overrides) would serve a
        # path or method other than the one the policy allowed.
        b"x-original-url",
        b"x-original-uri",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    }
)
_IDENTITY_PREFIX = b"x-gateway-"
_FRAMING = frozenset({b"content-length", b"host"})
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_FWD_HOST_RE = re.compile(rb"^[A-Za-z0-9.:\[\]_-]{1,255}$")


def normalize_name(name: bytes) -> bytes:
    """Lower-case and read ``_`` as ``-``: the spelling-insensitive form used for security checks."""
    return name.lower().replace(b"_", b"-")


class TrustedProxies:
    """The networks whose ``X-Forwarded-*`` / ``Forwarded`` headers the gateway believes."""

    __slots__ = ("_networks", "is_trusted")

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

        @lru_cache(maxsize=4096)
        def is_trusted(ip: str) -> bool:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return any(addr in net for net in self._networks)

        self.is_trusted = is_trusted

    def __bool__(self) -> bool:
        return bool(self._networks)


@dataclass(frozen=True, slots=True)
class Forwarding:
    """Who the client is and how it reached us, after deciding what to trust."""

    client_ip: str
    peer_trusted: bool
    proto: str
    host: str
    chain: tuple[str, ...]  # the X-Forwarded-For list to send upstream (client first)
    request_id: str


# Request ids correlate log lines; they are not secrets, and os.urandom is a system call per request
# (measurably slow in sandboxed kernels), so a PRNG seeded from the OS once per process is enough.
_ids = random.Random(secrets.randbits(128))  # noqa: S311 - correlation ids, not secrets
# Worker processes are forked: each must draw its own sequence, or two workers would repeat ids.
os.register_at_fork(after_in_child=lambda: _ids.seed(secrets.randbits(128)))


def new_request_id() -> str:
    """32 hex characters, unique enough to correlate one request across logs."""
    return f"{_ids.getrandbits(128):032x}"


def _parse_xff(values: Sequence[bytes]) -> list[str]:
    # Only well-formed addresses survive: a value like 'unknown' or '1.2.3.4;proto=http' must not be
    # echoed into the upstream's Forwarded header or the access log.
    out: list[str] = []
    for value in values:
        for part in value.split(b","):
            item = part.strip().decode("latin-1")
            try:
                out.append(str(ipaddress.ip_address(item)))
            except ValueError:
                continue
    return out


def forwarding_for(
    *,
    peer_ip: str,
    scheme: str,
    host: str,
    headers: Headers,
    trusted: TrustedProxies,
) -> Forwarding:
    """Work out the client address, protocol and request id, trusting headers only from trusted peers.

    The client is the right-most address in ``X-Forwarded-For`` that is not itself a trusted proxy
    (anything to its left was written by the client and proves nothing).
    """
    peer_trusted = bool(trusted) and trusted.is_trusted(peer_ip)
    xff: list[bytes] = []
    proto = scheme
    fwd_host = host
    request_id = ""
    if peer_trusted:
        for name, value in headers:
            lname = normalize_name(name)
            if lname == b"x-forwarded-for":
                xff.append(value)
            elif lname == b"x-forwarded-proto":
                candidate = value.strip().lower()
                if candidate in (b"http", b"https"):
                    proto = candidate.decode()
            elif lname == b"x-forwarded-host" and _FWD_HOST_RE.match(value.strip()):
                fwd_host = value.strip().decode("latin-1")
            elif lname == b"x-request-id" and _REQUEST_ID_RE.match(value):
                request_id = value.decode()
    chain = _parse_xff(xff) if peer_trusted else []
    chain.append(peer_ip)
    client_ip = peer_ip
    for hop in reversed(chain):
        client_ip = hop
        if not trusted.is_trusted(hop):
            break
    return Forwarding(
        client_ip=client_ip,
        peer_trusted=peer_trusted,
        proto=proto,
        host=fwd_host,
        chain=tuple(chain),
        request_id=request_id or new_request_id(),
    )


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return tokens


def upstream_request_headers(
    headers: Headers,
    *,
    fwd: Forwarding,
    extra: Sequence[tuple[bytes, bytes]] = (),
    identity: Sequence[tuple[bytes, bytes]] = (),
    websocket: bool = False,
    own_cookies: frozenset[bytes] = frozenset(),
) -> Headers:
    """Build the header list sent upstream. See the module docstring for the order of operations.

    The client's ``host`` is kept (first); the proxy replaces it with the target's unless the route
    preserves the host.
    """
    # `Connection` may not nominate message framing (that would desynchronise the body) nor anything
    # the route sets; headers the route sets replace the client's of the same name.
    nominated = _connection_tokens(headers) - _FRAMING
    overridden = {name for name, _ in extra}
    out: Headers = []
    client_host = b""
    for name, value in headers:
        lname = name.lower()
        if lname == b"host":
            client_host = value
            continue
        if lname in HOP_BY_HOP or lname in nominated or lname in overridden:
            continue
        if websocket and lname.startswith(b"sec-websocket-"):
            continue  # the client library negotiates its own handshake with the upstream
        norm = lname.replace(b"_", b"-") if b"_" in lname else lname
        if norm.startswith(_IDENTITY_PREFIX) or norm in _FORWARDING:
            continue
        if lname == b"cookie" and own_cookies:
            # The gateway's session and CSRF cookies are for the gateway only: an app that logs or
            # leaks its Cookie header must not hand out a session that works on every other app.
            value = _without_cookies(value, own_cookies)
            if not value:
                continue
        out.append((lname, value))
    out.insert(0, (b"host", client_host))
    proto = fwd.proto.encode()
    host = fwd.host.encode("latin-1")
    out.append((b"x-forwarded-for", ", ".join(fwd.chain).encode("latin-1")))
    out.append((b"x-forwarded-proto", proto))
    out.append((b"x-forwarded-host", host))
    out.append((b"forwarded", _forwarded(fwd).encode("latin-1")))
    out.append((b"x-request-id", fwd.request_id.encode()))
    out.extend(extra)
    out.extend(identity)
    return out


def _without_cookies(value: bytes, names: frozenset[bytes]) -> bytes:
    kept = [part for part in value.split(b";") if part.strip().partition(b"=")[0] not in names]
    return b";".join(kept).strip()


def _forwarded_node(ip: str) -> str:
    # RFC 7239 §6: IPv6 addresses are bracketed and the whole value quoted.
    return f'"[{ip}]"' if ":" in ip else ip


def _forwarded(fwd: Forwarding) -> str:
    elements = [f"for={_forwarded_node(ip)}" for ip in fwd.chain]
    host = fwd.host.replace('"', "")
    elements[-1] += f';host="{host}";proto={fwd.proto}'
    return ", ".join(elements)


def clean_response_headers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    extra: Sequence[tuple[bytes, bytes]] = (),
    request_id: str,
) -> Headers:
    """Drop hop-by-hop headers from an upstream response and add the route's and the gateway's own."""
    items = list(raw)
    nominated = _connection_tokens(items)
    overridden = {name for name, _ in extra}
    out: Headers = []
    for name, value in items:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in nominated or lname in overridden or lname == b"x-request-id":
            continue
        out.append((lname, value))
    out.extend(extra)
    out.append((b"x-request-id", request_id.encode()))
    return out
