"""The gateway's cookies: their names, the session cookie's ``Set-Cookie`` header, reading it back.

``read_cookie`` runs on every proxied request, so it is a small hand-written parser over the raw ASGI
headers rather than ``http.cookies.SimpleCookie`` (slow, and lenient in ways that help attackers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, NamedTuple

from gateway.settings.schema import SessionSettings

__all__ = [
    "CSRF_COOKIE",
    "DEVICE_COOKIE",
    "HANDOFF_COOKIE",
    "OIDC_BINDING_COOKIE",
    "GatewayCookie",
    "clear_cookie_header",
    "cookie_in",
    "own_cookie_names",
    "read_cookie",
    "session_cookie_name",
    "set_cookie_header",
]

# RFC 6265 §4.1.1: a cookie name is an RFC 7230 token, a value is cookie-octets. Anything else in a
# Set-Cookie we emit would be header injection or a cookie the browser silently mangles.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_SECURE_PREFIXES = ("__host-", "__secure-")


# The session cookie's default name, with and without the prefix insecure_cookies drops.
_DEFAULT_SESSION_NAMES: Final = ("__Host-gateway_session", "gateway_session")


def session_cookie_name(settings: SessionSettings) -> str:
    """The session cookie's name.

    With ``insecure_cookies`` (plain-HTTP development) a ``__Host-`` or ``__Secure-`` prefix is
    dropped: browsers refuse to store such cookies without ``Secure``, which would make sign-in
    silently loop.
    """
    name = settings.cookie_name
    if settings.insecure_cookies:
        lowered = name.lower()
        for prefix in _SECURE_PREFIXES:
            if lowered.startswith(prefix):
                return name[len(prefix) :]
    return name


class GatewayCookie(NamedTuple):
    """One of the gateway's fixed-name cookies: ``__Host-`` over HTTPS (pinned to the host, so no
    sibling host can set it), the bare name for plain-HTTP development (browsers refuse the prefix
    without ``Secure``)."""

    secure: str
    plain: str

    def name(self, *, insecure: bool) -> str:
        return self.plain if insecure else self.secure


#: The double-submit CSRF token of the gateway's forms.
CSRF_COOKIE: Final = GatewayCookie("__Host-gateway_csrf", "gateway_csrf")
#: Ties an OIDC sign-in in flight to the browser that started it (auth host).
OIDC_BINDING_COOKIE: Final = GatewayCookie("__Host-gateway_oidc", "gateway_oidc")
#: Ties a hand-off to the browser that signed in (app host, :mod:`gateway.identity.handoff`).
HANDOFF_COOKIE: Final = GatewayCookie("__Host-gateway_handoff", "gateway_handoff")
#: Names a browser that completed a sign-in as a known device of the account (auth host,
#: :mod:`gateway.identity.devices`).
DEVICE_COOKIE: Final = GatewayCookie("__Host-gateway_device", "gateway_device")


def own_cookie_names(settings: SessionSettings) -> frozenset[str]:
    """Every name a cookie of the gateway's may have: none reaches an app, and no app may set one.

    The default session cookie names too, whatever ``session.cookie_name`` is now: a deployment that
    renamed it has browsers that still send the old cookie, a session id (an attack run)."""
    return frozenset(
        {
            session_cookie_name(settings),
            *_DEFAULT_SESSION_NAMES,
            *CSRF_COOKIE,
            *OIDC_BINDING_COOKIE,
            *HANDOFF_COOKIE,
            *DEVICE_COOKIE,
        }
    )


def _check(name: str, value: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid cookie name {name!r}")
    if not _COOKIE_VALUE.fullmatch(value):
        raise ValueError("cookie value contains characters outside RFC 6265 cookie-octets")


def set_cookie_header(name: str, value: str, *, secure: bool, max_age: int | None) -> bytes:
    """The value of a ``Set-Cookie`` header for the session cookie.

    Host-only (no ``Domain``) so a sibling sub-domain never receives it; ``HttpOnly`` so page scripts
    cannot read it; ``SameSite=Lax`` so cross-site POSTs do not carry it, while top-level navigation
    back from the identity provider still does.

    Args:
        name: Cookie name.
        value: Cookie value (the session id).
        secure: Add ``Secure`` (always, except plain-HTTP development).
        max_age: Seconds until the browser drops it; None for a browser-session cookie.

    Raises:
        ValueError: ``name`` or ``value`` has characters a cookie must not contain, or ``max_age``
            is negative.
    """
    _check(name, value)
    header = f"{name}={value}; Path=/; HttpOnly; SameSite=Lax"
    if secure:
        header += "; Secure"
    if max_age is not None:
        if max_age < 0:
            raise ValueError("max_age must not be negative")
        header += f"; Max-Age={max_age}"
    return header.encode("ascii")


def clear_cookie_header(name: str, *, secure: bool) -> bytes:
    """A ``Set-Cookie`` header value that makes the browser delete cookie ``name``.

    The attributes match ``set_cookie_header`` (a ``__Host-`` cookie can only be replaced by one
    with the same Secure/Path attributes).
    """
    _check(name, "")
    header = f"{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
    if secure:
        header += "; Secure"
    return header.encode("ascii")


def read_cookie(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """The value of cookie ``name`` in a request's ``Cookie`` header(s), or None.

    Several ``Cookie`` headers (HTTP/2 splits them) count as one list. Pairs without ``=`` or with
    characters outside cookie-octets are ignored; an empty value counts as absent. If ``name``
    appears more than once, the answer is None: a sibling sub-domain can plant a second cookie with
    the same name (cookie tossing), and guessing which one is ours could pin the victim to the
    attacker's session.

    Args:
        headers: ASGI request headers (names lower-case).
        name: The cookie name (case-sensitive, as browsers treat it).
    """
    return cookie_in([raw for key, raw in headers if key == b"cookie" or key.lower() == b"cookie"], name)


def cookie_in(values: Iterable[bytes], name: str) -> str | None:
    """:func:`read_cookie` over the values of a request's ``Cookie`` headers, already picked out
    (the data plane's receive stage does that while it reads the headers)."""
    found: str | None = None
    seen = False
    for raw in values:
        # latin-1 never fails; non-ASCII in our cookie's value is then rejected by the regex below.
        for pair in raw.decode("latin-1").split(";"):
            pair_name, eq, value = pair.partition("=")
            if not eq or pair_name.strip(" \t") != name:
                continue
            if seen:
                return None
            seen = True
            value = value.strip(" \t")
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value and _COOKIE_VALUE.fullmatch(value):
                found = value
    return found
