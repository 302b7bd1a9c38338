"""Forward-auth: deciding for a proxy that keeps its own routing (``/.gateway/auth``).

nginx ``auth_request``, Traefik ForwardAuth, Caddy ``forward_auth`` and Envoy's HTTP ext_authz send the
gateway a sub-request describing the original one in ``X-Forwarded-Method``, ``-Proto``, ``-Host`` and
``-Uri``, with the client's own headers (its cookie). The gateway decides it with the same route,
identify, MFA and authorize stages as a proxied request, on the same canonical path.

Those headers are believed only from a trusted proxy (``trusted_proxies``): from anyone else they are
a forgery, and the answer is 403. Missing, repeated or malformed values are 400. The answer is 200 —
with the identity headers for the proxy to copy — only for an explicit allow (or a public path);
everything else is 401 (with ``Location``, the sign-in or MFA page) or 403, so a proxy that treats
"not 2xx" as "deny" can never be talked into letting a request through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import BadHeaders, Forbidden
from gateway.pipeline.headers import normalize_name

__all__ = ["FORWARD_AUTH_PATH", "ForwardedRequest", "UntrustedProxy", "forwarded_request"]

FORWARD_AUTH_PATH = "/.gateway/auth"

_METHOD = re.compile(rb"[A-Z]{1,20}")
_PROTO = (b"http", b"https")
_WANTED = {
    b"x-forwarded-method": "method",
    b"x-forwarded-proto": "proto",
    b"x-forwarded-host": "host",
    b"x-forwarded-uri": "uri",
}


class UntrustedProxy(Forbidden):
    """A forward-auth request from an address that is not a trusted proxy (403)."""

    reason = "untrusted-proxy"
    title = "Not a trusted proxy"


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """The original request a proxy asks about."""

    method: str
    proto: str
    host: bytes
    raw_path: bytes
    query: bytes


def forwarded_request(headers: list[tuple[bytes, bytes]], *, peer_trusted: bool) -> ForwardedRequest:
    """Read the original request from the forward-auth headers.

    ``X-Forwarded-Host`` falls back to ``Host`` (nginx passes the original Host along when told to).

    Raises:
        UntrustedProxy: the sender is not a trusted proxy.
        BadHeaders: a header is missing, repeated or malformed.
    """
    if not peer_trusted:
        raise UntrustedProxy("Forward-auth answers only the proxies listed in trusted_proxies.")
    seen: dict[str, bytes] = {}
    host_header = b""
    for name, value in headers:
        key = _WANTED.get(normalize_name(name))
        if key is None:
            if name == b"host":
                host_header = value
            continue
        if key in seen:
            # Two values: the proxy and something before it disagree about the request. Refuse.
            raise BadHeaders(f"Forward-auth got more than one X-Forwarded-{key.title()} header.")
        seen[key] = value.strip()
    method = seen.get("method", b"")
    if not _METHOD.fullmatch(method):
        raise BadHeaders("Forward-auth needs X-Forwarded-Method with the original request's method.")
    proto = seen.get("proto", b"http").lower()
    if proto not in _PROTO:
        raise BadHeaders("X-Forwarded-Proto must be http or https.")
    uri = seen.get("uri", b"")
    if not uri.startswith(b"/") or uri.startswith(b"//"):
        # Absolute or scheme-relative URIs name another authority: never guess which one counts.
        raise BadHeaders("Forward-auth needs X-Forwarded-Uri with the original path (starting with '/').")
    if b"#" in uri or any(c < 0x21 or c == 0x7F for c in uri):
        raise BadHeaders("X-Forwarded-Uri contains characters a request target cannot have.")
    raw_path, _, query = uri.partition(b"?")
    return ForwardedRequest(
        method=method.decode(),
        proto=proto.decode(),
        host=seen.get("host", host_header),
        raw_path=raw_path,
        query=query,
    )
