"""Header hygiene for both directions of the proxy (invariant 3 of docs/architecture.md).

Request side, in this order:
1. drop hop-by-hop headers (RFC 9110 §7.6.1) and every header the client names in ``Connection``;
2. drop every incoming identity header (``X-Gateway-*``, and the names ``identity_headers`` gives
   them, such as ``Remote-User``) in every spelling: the name is compared lower-cased with every
   character but letters and digits read as ``-``, because many frameworks (CGI/WSGI
   ``HTTP_X_GATEWAY_USER``, Django, Rails, PHP, which also folds ``.``) fold them into one variable;
3. drop the forwarding family (``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``, ``X-Request-Id``) in
   every spelling, then re-create it: trusted values are extended, untrusted ones replaced.

Only after that does the gateway add its own headers, so ``Connection: X-Forwarded-For`` (or any other
name) can never remove something the gateway sets.

The gateway's own credentials never reach an app, as its cookies do not: an ``Authorization: Bearer
gwt_…`` (one of its API tokens) is dropped from every request it did not authenticate, so a client that
sends its token with every request to a host (a public path, a route browsed with a session) does not
hand it to an app that could use it on the route it was made for (an attack run did).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import random
import re
import secrets
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Final, NamedTuple, cast

from gateway.identity.oidc.tokens import MAX_TOKEN_BYTES
from gateway.machine.tokens import meant_as_gateway_token
from gateway.settings.trusted import TrustedProxies, as_ipv4, peer_address

__all__ = [
    "DEFAULT_IDENTITY_NAMES",
    "FOREIGN_IDENTITY",
    "FOREIGN_IDENTITY_PREFIXES",
    "REROUTING",
    "Forwarding",
    "IdentityNames",
    "TrustedProxies",
    "clean_response_headers",
    "client_of",
    "foreign_identity",
    "forwarding_for",
    "normalize_name",
    "speaks_identity",
    "upstream_request_headers",
    "without_cookies",
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
# Headers that make an app serve another path or method than the request's: the path under other
# proxies' names, the mount point WSGI middleware reads into SCRIPT_NAME, and the overrides frameworks
# honour (Symfony and Zend read X-Original-URL and X-Rewrite-URL; Express, Rails and Spring apps the
# method overrides). A proxied request loses them; forward-auth refuses a question that carries them.
# Also the host and method under the names Symfony and nginx configurations read, and Next.js's
# X-Middleware-Subrequest, which skips the app's own middleware (CVE-2025-29927): an attack run saw
# forward-auth pass them to the app while a proxied request loses them.
REROUTING: Final = frozenset(
    {
        b"x-original-host",
        b"x-http-host-override",
        b"x-original-method",
        b"x-middleware-subrequest",
        # Next.js's and Vercel's internal routing headers, which a re-attack run passed: its own server
        # sets them between its parts, and apps' layouts read the path from some (x-invoke-path,
        # x-matched-path) to decide access. Not the ones its browser client sends (Next-Url, RSC,
        # Next-Action, X-Middleware-Prefetch, X-Nextjs-Data): refusing those would break the apps.
        b"x-invoke-path",
        b"x-invoke-query",
        b"x-invoke-status",
        b"x-invoke-output",
        b"x-invoke-error",
        b"x-matched-path",
        b"x-now-route-matches",
        b"x-middleware-rewrite",
        b"x-middleware-next",
        b"x-middleware-redirect",
        b"x-middleware-override-headers",
        b"x-middleware-set-cookie",
        b"x-original-path",
        b"x-pathname",
        b"x-forwarded-path",
        b"x-envoy-original-path",
        b"x-script-name",
        b"x-original-url",
        b"x-original-uri",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        # CGI's and WSGI's environ names, which servers take from a request's headers when their peer
        # is trusted: gunicorn by default reads SCRIPT_NAME and PATH_INFO from localhost, and cut an
        # allowed prefix off the path (an attack run: `SCRIPT_NAME: /static` on a public path reached
        # the app's /admin handlers with no sign-in). Compared after normalize_name, so any spelling.
        b"script-name",
        b"path-info",
        b"path-translated",
        b"request-uri",
        b"request-method",
        b"document-uri",
        b"query-string",
        b"remote-addr",
        b"remote-host",
        b"remote-port",
        b"server-name",
        b"server-port",
        b"server-addr",
        b"server-protocol",
        b"auth-type",
        b"wsgi-url-scheme",
        # httpoxy (CVE-2016-5385 and kin): CGI, PHP and Go's CGI handler put `Proxy:` into HTTP_PROXY,
        # which the app's own HTTP client then sends its requests through. No browser sends it.
        b"proxy",
        # Rack::Sendfile reads these from the request and turns an app's file answer into an
        # X-Accel-Redirect to a path they map (CVE-2025-61780): the client chose which file nginx sends.
        b"x-sendfile-type",
        b"x-accel-mapping",
        # Pyramid's traverser always puts X-Vhm-Root in front of the path (no setting, no trusted peer):
        # a re-attack run's `X-Vhm-Root: /admin` on a public `/` served the admin panel, no sign-in.
        # repoze.vhm's host companion, and the path prefixes Azure App Service, Home Assistant's ingress
        # and others read.
        b"x-vhm-root",
        b"x-vhm-host",
        b"x-original-prefix",
        b"x-ingress-path",
        b"x-waws-unencoded-url",
        b"disguised-host",
        b"x-envoy-original-dst-host",
    }
)
# Identity under the names oauth2-proxy, Authelia and web servers' auth modules send it: apps written for
# them trust these. The gateway speaks identity under its own names (a route that configures one of
# these as its identity_headers sets it after the drop); forward-auth refuses a question carrying one.
FOREIGN_IDENTITY: Final = frozenset(
    {
        b"remote-user",
        b"remote-email",
        b"remote-groups",
        b"remote-name",
        b"x-forwarded-user",
        b"x-forwarded-email",
        b"x-forwarded-groups",
        b"x-forwarded-preferred-username",
        b"x-auth-request-user",
        b"x-auth-request-email",
        b"x-auth-request-groups",
        b"x-auth-request-preferred-username",
        b"x-auth-request-access-token",
        b"x-forwarded-access-token",
        # Enterprise web access managers' and generic user names (SiteMinder's SMUSER, Oracle Access
        # Manager, caddy-security, WSO2; a re-attack run passed each). Exact names: X-User-Agent is not one.
        b"smuser",
        b"oam-remote-user",
        b"x-token-subject",
        b"x-jwt-assertion",
        b"x-auth-user",
        b"x-user",
        b"x-proxy-user",
    }
)
# And whole families of them, by prefix: the clouds' identity-aware proxies (Google IAP, Azure App
# Service, AWS ALB, Cloudflare Access), API gateways (Kong) and auth-proxy modules (Grafana's and
# Apache's X-WEBAUTH-USER and X-Remote-User); attack runs found members of each passed on.
FOREIGN_IDENTITY_PREFIXES: Final = (
    b"x-goog-authenticated-",
    b"x-goog-iap-",
    b"x-ms-client-principal",
    b"x-ms-token-",
    b"x-amzn-oidc-",
    b"cf-access-",
    b"x-authenticated-",
    b"x-consumer-",
    b"x-credential-",
    b"x-anonymous-consumer",
    b"x-apigateway-api-userinfo",
    b"x-endpoint-api-userinfo",
    # The identity-aware proxies security teams compare this one with, and others' conventions (a
    # second re-attack run found these passed on): Pomerium, authentik, Vouch, Tailscale, Teleport,
    # AWS Verified Access, Keycloak gatekeeper, Kong OIDC and APISIX, Istio's JWT filter,
    # mod_auth_openidc, Sandstorm, Shibboleth, and more auth-proxy spellings.
    b"x-pomerium-",
    b"x-authentik-",
    b"x-vouch-",
    b"tailscale-user-",
    b"teleport-jwt-assertion",
    b"x-amzn-ava-",
    b"x-auth-username",
    b"x-auth-email",
    b"x-auth-userid",
    b"x-auth-roles",
    b"x-auth-groups",
    b"x-auth-subject",
    b"x-userinfo",
    b"x-id-token",
    b"x-jwt-payload",
    b"oidc-claim-",
    b"oidc-access-token",
    b"x-sandstorm-",
    b"shib-",
    b"x-webauth-",
    b"x-remote-",
    b"x-forwarded-id-token",
    # Google App Engine's Users API (the person and an admin flag) and ASP.NET Core behind IIS (the
    # client certificate and Windows identity): a re-attack run found both passed on.
    b"x-appengine-",
    b"ms-aspnetcore-",
    # Enterprise web access managers: SiteMinder (Spring Security's RequestHeaderAuthenticationFilter
    # reads SM_USER by default), IBM WebSEAL's iv-*, Oracle Access Manager, caddy-security, WSO2, and
    # the generic names apps take a user from (a re-attack run passed each to the app and forward-auth).
    b"sm-",
    b"iv-",
    b"x-token-user-",
)


def foreign_identity(norm: bytes) -> bool:
    """Whether a header name (normalized) is one other gateways and clouds speak identity in."""
    return norm in FOREIGN_IDENTITY or norm.startswith(FOREIGN_IDENTITY_PREFIXES)


# A client certificate's identity, as TLS terminators pass it on, by family (Envoy's XFCC, nginx's and
# HAProxy's X-SSL-Client-*, Traefik's X-Forwarded-Tls-Client-Cert*, AWS ALB's X-Amzn-Mtls-*, Azure's
# X-ARR-ClientCert, Google's X-Client-Cert-*, RFC 9440's Client-Cert*). The gateway passes none: a
# proxied request from a client loses them. Not refused in a forward-auth question, where the proxy
# asking may have set them itself.
CLIENT_CERTIFICATE_PREFIXES: Final = (
    b"x-forwarded-client-cert",
    b"x-ssl-",
    b"ssl-client-",
    b"x-client-cert",
    b"x-client-verify",
    b"x-client-dn",
    b"x-forwarded-tls-client-",
    b"x-amzn-mtls-",
    b"x-arr-clientcert",
    b"x-arr-ssl",
    b"client-cert",
    b"cf-cert-",
    b"x-forwarded-ssl-client-",
    b"x-tls-client-",
    b"x-client-subject",
)
# Every X-Forwarded-* the client sends, not only the names listed below: the family has more members
# than any list (an attack run passed X-Forwarded-Protocol, which gunicorn reads as the scheme,
# -Https, -Client-Ip, -Url and ten more); the gateway sets its own after the drop.
_DROPPED_PREFIXES: Final = (
    b"x-forwarded-",
    b"cloudfront-viewer-",
    # Envoy's and Istio's own (x-envoy-original-dst-host picks the upstream host), WebLogic's proxy
    # plug-in's (WL-Proxy-Client-Cert is a client-certificate sign-in, WL-Proxy-Client-IP, -SSL), and
    # WebSphere's / Open Liberty's private $WS* headers (host, scheme, port, remote address and user,
    # trusted from any origin by default; `$` reads as `-` normalized): a re-attack run passed them.
    b"x-envoy-",
    b"wl-proxy-",
    b"-ws",
    *FOREIGN_IDENTITY_PREFIXES,
    *CLIENT_CERTIFICATE_PREFIXES,
)
# Headers whose meaning depends on who set them. Compared after normalize_name().
_FORWARDING = frozenset(
    {
        # (Every x-forwarded-* goes by its prefix, _DROPPED_PREFIXES.)
        b"forwarded",
        b"x-real-ip",
        b"x-client-ip",
        b"x-original-forwarded-for",
        # The client's address under the names CDNs and other proxies use: Rails reads Client-IP, PHP
        # code HTTP_CLIENT_IP, and apps behind Cloudflare, Akamai or Fastly their vendor's name. The
        # gateway sets X-Forwarded-For and Forwarded from what it verified; none of these is believed.
        b"client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-cluster-client-ip",
        b"x-originating-ip",
        b"x-remote-ip",
        b"x-remote-addr",
        b"x-envoy-external-address",
        # The host and scheme under other names frameworks and load balancers use (Microsoft's
        # Front-End-Https, WSGI's X-Url-Scheme; the Symfony and nginx names are in REROUTING).
        b"x-host",
        b"front-end-https",
        b"x-url-scheme",
        # More of the same a re-attack run passed: Tornado reads X-Scheme before X-Forwarded-Proto,
        # Jetty's defaults read X-Proxied-Https and the Proxy-* pair as a secure request, and client-IP
        # libraries and CDNs these names.
        b"x-scheme",
        b"x-proxied-https",
        b"proxy-auth-cert",
        b"proxy-ssl-id",
        b"x-forwarded",
        b"forwarded-for",
        b"x-original-proto",
        b"x-original-for",
        b"x-original-port",
        b"x-real-port",
        b"x-client-port",
        b"cf-visitor",
        # More client-address and scheme names (a re-attack run): Java's usual helpers read
        # Proxy-Client-IP and the CGI spellings as header names, Gin's TrustedPlatform Fly-Client-IP.
        b"proxy-client-ip",
        b"http-x-forwarded-for",
        b"http-client-ip",
        b"fly-client-ip",
        b"x-azure-clientip",
        b"x-azure-socketip",
        b"x-vercel-forwarded-for",
        b"ali-cdn-real-ip",
        b"x-proxyuser-ip",
        b"fastly-ssl",
        b"x-https",
        b"https",
        b"cf-pseudo-ipv4",
        b"cf-connecting-ipv6",
        b"cloudfront-forwarded-proto",
        b"x-envoy-internal",
        b"x-envoy-original-host",
        *REROUTING,
        b"x-request-id",
        *FOREIGN_IDENTITY,
    }
)
_IDENTITY_PREFIX = b"x-gateway-"
_FRAMING = frozenset({b"content-length", b"host"})
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_BLANKS: Final = re.compile(rb"[ \t]+")


# Lower case, and every byte that is not a letter or digit read as "-": servers and frameworks turn
# "-", "_", "." (PHP's $_SERVER: X.Gateway.User arrives as HTTP_X_GATEWAY_USER, the last copy
# winning) and other punctuation into the same variable name, so each spelling must count as one.
_NORMAL: Final = bytes(
    c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122) else 45 for c in range(256)
)


def normalize_name(name: bytes) -> bytes:
    """Lower-case, every character but letters and digits read as ``-``: the spelling-insensitive
    form used for security checks (``X_Gateway.User`` is ``x-gateway-user``)."""
    return name.translate(_NORMAL)


class IdentityNames(NamedTuple):
    """The lower-case names the verified identity is sent under (``identity_headers``)."""

    user: bytes
    email: bytes
    roles: bytes

    @classmethod
    def of(cls, user: str, email: str, roles: str) -> IdentityNames:
        return cls(user.lower().encode(), email.lower().encode(), roles.lower().encode())

    def to_strip(self) -> frozenset[bytes]:
        """The configured names outside ``X-Gateway-*``, normalized: a client must not send them."""
        return frozenset(n for n in map(normalize_name, self) if not n.startswith(_IDENTITY_PREFIX))


DEFAULT_IDENTITY_NAMES = IdentityNames(b"x-gateway-user", b"x-gateway-email", b"x-gateway-roles")


class Forwarding(NamedTuple):
    """Who the client is and how it reached us, after deciding what to trust.

    A NamedTuple rather than a frozen dataclass: built for every request, and a frozen dataclass's
    ``__init__`` goes through ``object.__setattr__`` for each field.
    """

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


def _is_port(text: str) -> bool:
    # ASCII digits only: str.isdigit() is also true for "²" and other scripts' digits.
    return text.isascii() and text.isdigit()


def _address(text: str) -> str | None:
    """``text`` as an address in its canonical form, an IPv4-mapped IPv6 one (``::ffff:203.0.113.5``)
    as the IPv4 address it maps, or ``None`` when it is none.

    One with a zone (``fe80::1%eth0``) is none: Python reads any text after the ``%`` as the zone, which
    reached the app's ``Forwarded`` and the access log as written (an attack run's ``::1%x";for=...``),
    and the zone names an interface of the host that wrote it, not one of the gateway's. Unreadable
    rather than read without it: the walk then ends and the proxy that wrote it counts as the client,
    as for ``unknown``, where a trusted-looking address the client chose would let it go on to the
    entries the client wrote itself.
    """
    if "%" in text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    # So blocks, limits and logs key on one spelling of each IPv4 client whichever a proxy writes.
    return str(as_ipv4(addr))


def _xff_entry(item: str) -> str | None:
    """One ``X-Forwarded-For`` entry as an address (:func:`_address`), or ``None`` when it is not one
    (``unknown``, ``unix:``, an obfuscated name, an address with a zone). ``203.0.113.5:41234`` and
    ``[2001:db8::1]:443`` are read without their port, as some load balancers write them (Azure
    Application Gateway)."""
    address = _address(item)
    if address is not None or "%" in item:
        return address
    if item.startswith("["):
        address, closed, port = item[1:].partition("]")
        if not closed or (port and not (port[0] == ":" and _is_port(port[1:]))):
            return None
    else:
        address, colon, port = item.partition(":")
        if not colon or not _is_port(port):
            return None
    return _address(address)


def _parse_xff(values: Sequence[bytes]) -> list[str | None]:
    # Only well-formed addresses survive: a value like 'unknown' or '1.2.3.4;proto=http' must not be
    # echoed into the upstream's Forwarded header or the access log. It stays in the list as None, so the
    # walk stops there: skipping it would make the client's own entry to its left the client address.
    out: list[str | None] = []
    for value in values:
        for part in value.split(b","):
            item = part.strip().decode("latin-1")
            if item:
                out.append(_xff_entry(item))
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
    (anything to its left was written by the client and proves nothing). The host is always ``host``,
    the one the gateway routes and decides on, never a trusted peer's ``X-Forwarded-Host``: an app
    that builds links or picks a tenant by ``X-Forwarded-Host`` (Django's ``USE_X_FORWARDED_HOST``)
    must see the host that was authorized, and a load balancer that passes a client's own header on
    (AWS's ALB does) handed the app one the gateway never routed (an attack run).
    """
    if ":" in peer_ip:
        # IPv6, or IPv4 on a dual-stack listener (``::ffff:10.0.0.5``): read as :func:`peer_address`
        # says before anything is decided on it. IPv4 text, the common case, is taken as given.
        peer_ip = peer_address(peer_ip)
    peer_trusted = bool(trusted) and trusted.is_trusted(peer_ip)
    if not peer_trusted:
        # The peer is the client and no header is believed: the common case without a load
        # balancer, answered without the header walk (1.54 -> 1.26 us, timeit).
        return Forwarding(peer_ip, False, scheme, host, (peer_ip,), new_request_id())
    xff: list[bytes] = []
    proto = scheme
    request_id = ""
    for name, value in headers:
        # The exact names only: a proxy in front writes these, and passes a client's `X_Forwarded_For`
        # on as it came (Caddy does; Go sorts it after the proxy's own), which `normalize_name` would
        # read as the right-most entry (an attack run chose its address, host and scheme that way).
        lname = name.lower()
        if lname == b"x-forwarded-for":
            xff.append(value)
        elif lname == b"x-forwarded-proto":
            candidate = value.strip().lower()
            if candidate in (b"http", b"https"):
                proto = candidate.decode()
        elif lname == b"x-request-id" and _REQUEST_ID_RE.match(value):
            request_id = value.decode()
    entries = _parse_xff(xff)
    entries.append(peer_ip)
    start = _client_index(entries, trusted)
    # The app is told the verified part of the chain only, from the client on: the entries to its left
    # were written by the client, and an app that reads the left-most `X-Forwarded-For` entry or the
    # first `for=` of the gateway's own `Forwarded` (Express with `trust proxy`, many Django snippets)
    # took the client's choice for its address (an attack run).
    verified = cast("list[str]", entries[start:])
    return Forwarding(
        client_ip=verified[0],
        peer_trusted=True,
        proto=proto,
        host=host,
        chain=tuple(verified),
        request_id=request_id or new_request_id(),
    )


def _client_index(hops: Sequence[str | None], trusted: TrustedProxies) -> int:
    """Where the client is in a forwarding chain (the peer last): the right-most hop that is not a
    trusted proxy; no hop from there on is None."""
    index = len(hops) - 1
    for i in range(len(hops) - 1, -1, -1):
        hop = hops[i]
        if hop is None:
            # A trusted proxy wrote something that is not an address: nothing to its left is believed,
            # and that proxy is the client as far as the gateway can tell.
            break
        index = i
        if not trusted.is_trusted(hop):
            break
    return index


def client_of(hops: Sequence[str | None], trusted: TrustedProxies) -> str:
    """The client of a forwarding chain (the peer last): the right-most hop that is not a trusted proxy.

    Also how a long exchange reads its client again under the proxies trusted now (a reload may have
    narrowed them: an exchange begun behind an over-broad list kept the address a spoofed
    ``X-Forwarded-For`` gave it, past the fix and a block of its real address, a re-attack run).
    """
    if not hops:
        return ""
    return hops[_client_index(hops, trusted)] or ""


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return tokens


# What the request side does with a header, by its name as received (see _classify).
_KEEP, _DROP, _HOST, _COOKIE, _WEBSOCKET, _SET_COOKIE, _CLEAR_SITE_DATA, _AUTHORIZATION = range(8)
# Requests and responses repeat the same few dozen header names, so what to do with each is remembered;
# a bounded number, since clients and upstreams choose them.
_MAX_REMEMBERED_NAMES = 4096


def speaks_identity(norm: bytes, names: frozenset[bytes]) -> bool:
    """Whether a header name (normalized, :func:`normalize_name`) is one the gateway speaks identity
    in: ``X-Gateway-*``, or one of ``names`` (the configured names outside it, ``strip_identity``)."""
    return norm.startswith(_IDENTITY_PREFIX) or norm in names


@lru_cache(maxsize=_MAX_REMEMBERED_NAMES)
def _classify(name: bytes, strip: frozenset[bytes]) -> tuple[int, bytes]:
    """What to do with a request header of this name (the module docstring's rules), and its lower case.

    ``strip``: the configured identity names besides ``X-Gateway-*`` (a frozenset hashes once, so
    it costs the cache key little).
    """
    lname = name.lower()
    norm = normalize_name(name)
    if lname == b"host":
        return _HOST, lname
    # The proxy writes the body's framing from what the client really sent (receive's check), never
    # from this list, where a `Connection: Content-Length` could have removed it. In every spelling:
    # a server that folds `_` into `-` (CGI's HTTP_CONTENT_LENGTH) would read `Content_Length` or
    # `Transfer_Encoding` as framing (an attack run saw both reach the app).
    # `Expect: 100-continue` was the client's question, answered by the server in front: the proxy
    # sends the body at once, so the upstream is not asked again (nginx drops it too; an attack run).
    if norm == b"content-length" or norm == b"expect":
        return _DROP, lname
    # A client's W3C baggage, whether or not the gateway traces: an app's OpenTelemetry propagator
    # adopts its entries (`role=root`, `userId=admin`) and passes them on as its own (an attack run saw
    # them reach the app beside X-Gateway-User with tracing off). A trusted proxy's honoured baggage
    # is added back by the tracer (gateway.observe.tracing), after this drop.
    if norm == b"baggage":
        return _DROP, lname
    if norm in HOP_BY_HOP or norm in _FORWARDING or norm.startswith(_DROPPED_PREFIXES):
        return _DROP, lname
    if speaks_identity(norm, strip):
        return _DROP, lname
    if lname == b"cookie":
        return _COOKIE, lname
    if lname.startswith(b"sec-websocket-"):
        return _WEBSOCKET, lname
    if lname == b"authorization":
        return _AUTHORIZATION, lname
    return _KEEP, lname


def upstream_request_headers(
    headers: Headers,
    *,
    fwd: Forwarding,
    extra: Sequence[tuple[bytes, bytes]] = (),
    identity: Sequence[tuple[bytes, bytes]] = (),
    websocket: bool = False,
    own_cookies: frozenset[bytes] = frozenset(),
    strip: frozenset[bytes] = frozenset(),
    token_audiences: frozenset[tuple[str, str]] = frozenset(),
) -> Headers:
    """Build the header list sent upstream. See the module docstring for the order of operations.

    The client's ``host`` is kept (first); the proxy replaces it with the target's unless the route
    preserves the host. ``strip`` holds further client header names (normalized) to drop in every
    spelling: the configured identity names (:meth:`IdentityNames.to_strip`), and ``authorization``
    when a bearer token authenticated the request (the snapshot's ``strip_bearer``). A header the
    route sets (``extra``) is never dropped by it. ``token_audiences`` holds the (issuer, audience)
    pairs of the providers whose access tokens the gateway accepts: an ``Authorization`` carrying such
    a token is the gateway's credential and is dropped too (:func:`_provider_token`).
    """
    out: Headers = [(b"host", b"")]
    connection = False
    cookie_at = 0  # where the one Cookie header sent upstream is (0: none yet; out[0] is the host)
    for name, value in headers:
        kind, lname = _classify(name, strip)
        if kind == _KEEP:
            out.append((lname, value))
        elif kind == _HOST:
            out[0] = (b"host", value)
        elif kind == _COOKIE:
            # The gateway's session and CSRF cookies are for the gateway only: an app that logs or
            # leaks its Cookie header must not hand out a session that works on every other app.
            if own_cookies:
                value = without_cookies(value, own_cookies)
            if value and cookie_at:
                # HTTP/2 sends cookies as several fields; an HTTP/1.1 app gets them as one header
                # (RFC 9113 §8.2.3): a server that joins repeated headers with "," loses them.
                out[cookie_at] = (lname, out[cookie_at][1] + b"; " + value)
            elif value:
                cookie_at = len(out)
                out.append((lname, value))
        elif (kind == _WEBSOCKET and not websocket) or (
            kind == _AUTHORIZATION
            and not _gateway_token(value)
            and not (token_audiences and _provider_token(value, token_audiences))
        ):
            # A WebSocket's handshake headers unless the client library negotiates its own with the
            # upstream; an Authorization of the app's own scheme (Basic, its own tokens).
            out.append((lname, value))
        elif lname == b"connection":
            connection = True
    # `Connection` may not nominate message framing (that would desynchronise the body) nor anything
    # the route sets; headers the route sets replace the client's of the same name.
    nominated = _connection_tokens(headers) - _FRAMING if connection else set()
    if extra:
        nominated |= {name for name, _ in extra}
    if nominated:
        out = [out[0], *(item for item in out[1:] if item[0] not in nominated)]
    out.extend(_forwarding_headers(fwd.chain, fwd.proto, fwd.host))
    out.append((b"x-request-id", fwd.request_id.encode()))
    out.extend(extra)
    out.extend(identity)
    return out


@lru_cache(maxsize=1024)
def _forwarding_headers(chain: tuple[str, ...], proto: str, host: str) -> tuple[tuple[bytes, bytes], ...]:
    # The same client through the same host gets the same four headers: built once, not per request.
    return (
        (b"x-forwarded-for", ", ".join(chain).encode("latin-1")),
        (b"x-forwarded-proto", proto.encode()),
        (b"x-forwarded-host", host.encode("latin-1")),
        (b"forwarded", _forwarded(chain, proto, host).encode("latin-1")),
    )


def authorization_parts(value: bytes) -> tuple[bytes, bytes]:
    """An ``Authorization`` value's scheme (lower case, RFC 9110 §11.1) and its credentials, split at
    the first run of blanks. RFC 9110 separates them by spaces; a tab separates them too, as the
    frameworks behind the gateway read it (an attack run's ``Bearer<TAB>gwt_…`` was decided by the
    session, as "another scheme", and reached the app)."""
    parts = _BLANKS.split(value.strip(b" \t"), maxsplit=1)
    return parts[0].lower(), parts[1] if len(parts) == 2 else b""


# Basic credentials exactly as RFC 7617 writes them: standard base64, padded.
_STRICT_BASE64: Final = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _credential_parts(value: bytes) -> tuple[bytes, ...] | None:
    """Where an ``Authorization`` value may carry a token: its scheme, its credentials, and for Basic
    the user and password they decode to (``__token__:TOKEN``, as git, pip and docker send a token);
    None for Basic credentials that are not strict base64.

    An attack run: a gateway token sent as a Basic password reached the app of a public path, which
    could replay it on the token's bearer routes; the re-attack run hid one from a first fix with a
    non-breaking space after the scheme, or a space or dot inside the base64, which Node's decoder and
    the ``str.split()`` of Python apps read past. So the value splits at any white space a program may
    split at (``str.split``: Unicode's, in latin-1 as the header's bytes are), and Basic credentials
    are read only when they are strict base64: any other spelling (the other alphabet, no padding, a
    stray character), which lenient decoders read past and no honest client sends, is the caller's to
    drop whole."""
    text = value.decode("latin-1")
    # Both parts, as sent: a token in the scheme's place (``gwt_… x``, a re-attack run) is one too.
    parts = tuple(part.encode("latin-1") for part in text.split(maxsplit=1))
    if len(parts) != 2 or parts[0].lower() != b"basic":
        return parts
    credentials = parts[1]
    if _STRICT_BASE64.fullmatch(credentials) is None:
        return None
    decoded = base64.b64decode(credentials)
    user, _, password = decoded.partition(b":")
    return (*parts, user, password)


def _gateway_token(value: bytes) -> bool:
    """Whether an ``Authorization`` value carries one of the gateway's API tokens, spoiled or not,
    under any scheme or none, also inside Basic credentials (or Basic credentials too odd to tell):
    the gateway's own credential, never the app's."""
    parts = _credential_parts(value)
    return parts is None or any(meant_as_gateway_token(part.decode("latin-1")) for part in parts)


def _provider_token(value: bytes, audiences: frozenset[tuple[str, str]]) -> bool:
    """Whether an ``Authorization`` value carries a JWT whose (unverified) ``iss`` and one ``aud`` are
    those of a provider whose access tokens the gateway accepts: a token for the gateway, which an app
    that received it could replay on the gateway's bearer routes as its holder (the last note's open
    item). Wherever :func:`_gateway_token` looks; decoded more leniently than the verifier reads it
    (:func:`gateway.machine.provider_jwt.looks_like_jwt`), so every token it takes is dropped."""
    for part in _credential_parts(value) or ():
        pieces = part.split(b".")
        # A longer token is none the gateway reads (its verifier's limit). More than three parts are
        # read too: an app that drops a trailing "." (an attack run's "<jwt>.") has the token back.
        if len(pieces) < 3 or len(part) > MAX_TOKEN_BYTES:
            continue
        payload = pieces[1] + b"=" * (-len(pieces[1]) % 4)
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload))
        except (ValueError, binascii.Error):
            continue
        if not isinstance(claims, dict) or not isinstance(iss := claims.get("iss"), str):
            continue
        aud = claims.get("aud")
        for one in (aud,) if isinstance(aud, str) else aud if isinstance(aud, list) else ():
            if isinstance(one, str) and (iss, one) in audiences:
                return True
    return False


def without_cookies(value: bytes, names: frozenset[bytes]) -> bytes:
    """A ``Cookie`` value without the cookies ``names`` (the gateway's own)."""
    # The name is read exactly as identity.cookies.cookie_in reads it (blanks around it dropped): a
    # spelling that signs the request in must never reach the app (`gateway_session =...` did).
    kept = [part for part in value.split(b";") if part.partition(b"=")[0].strip(b" \t") not in names]
    return b";".join(kept).strip()


# RFC 7239 §4: a value that is a token goes as it is; an IPv4 address is one.
_TOKEN: Final = re.compile(r"[0-9A-Za-z.!#$%&'*+^_`|~-]+")
# Control characters cannot be in a quoted-string even escaped (RFC 9110 §5.6.4): dropped.
_NO_CONTROLS: Final = dict.fromkeys([*(c for c in range(0x20) if c != 0x09), 0x7F])


def _quoted(text: str) -> str:
    """``text`` as an RFC 9110 quoted-string: a quote or backslash in it is escaped, so it can never
    end the string and add parameters of its own."""
    text = text.translate(_NO_CONTROLS)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _forwarded_node(ip: str) -> str:
    # RFC 7239 §6: IPv6 addresses are bracketed and the whole value quoted. The chain holds addresses
    # only (_xff_entry, peer_address); anything else the server gave as the peer is quoted, escaped.
    if ":" in ip:
        return _quoted(f"[{ip}]")
    return ip if _TOKEN.fullmatch(ip) else _quoted(ip)


def _forwarded(chain: tuple[str, ...], proto: str, host: str) -> str:
    elements = [f"for={_forwarded_node(ip)}" for ip in chain]
    host = host.replace('"', "")
    elements[-1] += f";host={_quoted(host)};proto={proto}"
    return ", ".join(elements)


def clean_response_headers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    extra: Sequence[tuple[bytes, bytes]] = (),
    request_id: str,
    own_cookies: frozenset[bytes] = frozenset(),
) -> Headers:
    """Drop hop-by-hop headers from an upstream response and add the route's and the gateway's own.

    A ``Set-Cookie`` for one of the gateway's own cookies (``own_cookies``, lower-case names) is
    dropped too: the session cookie is HttpOnly, so no script can overwrite it, and a response header is
    how an app with a cookie-injection bug would plant another session in the browser (signing the
    person in as someone else on every route of that host) or clear it. For the same reason an app's
    ``Clear-Site-Data`` loses its ``"cookies"`` (and ``"*"``) directive: browsers clear the cookies of
    the whole registrable domain, so one app could sign the person out of the gateway on every host
    (:func:`_without_cookie_clearing`).
    """
    items = raw if isinstance(raw, list) else list(raw)
    out: Headers = []
    connection = False
    for name, value in items:
        kind, lname = _classify_response(name)
        if kind == _KEEP:
            out.append((lname, value))
        elif kind == _SET_COOKIE:
            if not own_cookies or not _sets_own_cookie(value, own_cookies):
                out.append((lname, value))
        elif kind == _CLEAR_SITE_DATA:
            value = _without_cookie_clearing(value) if own_cookies else value
            if value:
                out.append((lname, value))
        elif lname == b"connection":
            connection = True
    nominated = _connection_tokens(items) if connection else set()
    if extra:
        nominated |= {name for name, _ in extra}
    if nominated:
        out = [item for item in out if item[0] not in nominated]
    out.extend(extra)
    out.append((b"x-request-id", request_id.encode()))
    return out


def _cookie_name(set_cookie: bytes) -> bytes:
    """The cookie a ``Set-Cookie`` value sets, lower-cased: browsers match the ``__Host-`` and
    ``__Secure-`` prefixes without regard to case, so an app's ``__host-Gateway_Session`` is not
    waved through as another cookie."""
    return set_cookie.partition(b"=")[0].strip().lower()


def _sets_own_cookie(set_cookie: bytes, own: frozenset[bytes]) -> bool:
    """Whether a ``Set-Cookie`` value could plant one of the gateway's cookies (``own``, lower-case).

    Its name is one of them (:func:`_cookie_name`), or it has no name or a quoted one: a browser
    keeps ``=gateway_session=x`` (and ``gateway_session`` without ``=``) as a nameless cookie and
    sends it back as its bare value, ``gateway_session=x``; a quoted name is no cookie name at all
    (RFC 6265's token) and no app needs one. A value that begins with one of the names and ``=`` is
    dropped under any name, as the gateway's cookie reader would see that pair once the name is gone.
    """
    if _cookie_name(set_cookie) in own:
        return True
    # RFC 6265bis §5.7 (how a browser reads it): the pair ends at the first ";"; without "=" it is
    # all value and no name.
    name, eq, value = set_cookie.partition(b";")[0].partition(b"=")
    name = name.strip()
    if not eq or not name or b'"' in name:
        return True
    inner, eq, _ = value.partition(b"=")
    return bool(eq) and inner.strip().lower() in own


# Clear-Site-Data types (W3C Clear Site Data §3.1 and what Chromium adds) other than "cookies": what an
# app's "*" still clears. Directives are quoted strings; a browser ignores one it does not know.
_CLEARABLE_WITHOUT_COOKIES: Final = (
    b'"cache"',
    b'"storage"',
    b'"executionContexts"',
    b'"clientHints"',
    b'"prefetchCache"',
    b'"prerenderCache"',
)


def _without_cookie_clearing(value: bytes) -> bytes:
    """A ``Clear-Site-Data`` value without the directives that clear cookies (empty: drop the header).

    ``"cookies"`` clears every cookie of the registrable domain, the gateway's session on the sign-in
    host and on every other app's host included; ``"*"`` is every type, so it becomes the others. The
    app's own cookies it can still expire with ``Set-Cookie``. A directive is compared without quotes
    or case, so a spelling some browser might accept is never let through.
    """
    kept: list[bytes] = []
    for part in value.split(b","):
        directive = part.strip().strip(b'"').strip().lower()
        if directive == b"*":
            kept.extend(_CLEARABLE_WITHOUT_COOKIES)
        elif directive and directive != b"cookies":
            kept.append(part.strip())
    return b", ".join(dict.fromkeys(kept))


@lru_cache(maxsize=_MAX_REMEMBERED_NAMES)
def _classify_response(name: bytes) -> tuple[int, bytes]:
    """What to do with a response header of this name (dropped: hop-by-hop, or the request id the
    gateway sets itself; a cookie or a site-data clearing to look at; kept), and its lower case."""
    lname = name.lower()
    if lname in HOP_BY_HOP or lname == b"x-request-id":
        return _DROP, lname
    if lname == b"set-cookie":
        return _SET_COOKIE, lname
    if lname == b"clear-site-data":
        return _CLEAR_SITE_DATA, lname
    return _KEEP, lname
