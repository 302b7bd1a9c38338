"""Session cookie: name, Set-Cookie headers, and the request-side parser (table-driven)."""

from __future__ import annotations

import pytest

from gateway.identity.cookies import (
    CSRF_COOKIE,
    DEVICE_COOKIE,
    HANDOFF_COOKIE,
    OIDC_BINDING_COOKIE,
    clear_cookie_header,
    own_cookie_names,
    read_cookie,
    session_cookie_name,
    set_cookie_header,
)
from gateway.settings.schema import SessionSettings

NAME = "__Host-gateway_session"
TOKEN = "AbC-123_xyzAbC-123_xyzAbC-123_xyzAbC-123_x"


@pytest.mark.parametrize(
    ("cookie_name", "insecure", "expected"),
    [
        ("__Host-gateway_session", False, "__Host-gateway_session"),
        ("__Host-gateway_session", True, "gateway_session"),
        ("__Secure-sid", True, "sid"),
        ("__secure-sid", True, "sid"),
        ("__Secure-sid", False, "__Secure-sid"),
        ("plain", True, "plain"),
        ("plain", False, "plain"),
    ],
)
def test_session_cookie_name(cookie_name: str, insecure: bool, expected: str) -> None:
    settings = SessionSettings(cookie_name=cookie_name, insecure_cookies=insecure)
    assert session_cookie_name(settings) == expected


def test_set_cookie_header_secure() -> None:
    assert set_cookie_header(NAME, TOKEN, secure=True, max_age=None) == (
        f"{NAME}={TOKEN}; Path=/; HttpOnly; SameSite=Lax; Secure".encode()
    )


def test_set_cookie_header_insecure_with_max_age() -> None:
    assert set_cookie_header("sid", TOKEN, secure=False, max_age=3600) == (
        f"sid={TOKEN}; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600".encode()
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sid", "a;b"),
        ("sid", "a\r\nSet-Cookie: x=y"),
        ("sid", "a b"),
        ("sid", 'a"b'),
        ("sid", "a,b"),
        ("s id", "v"),
        ("sid=", "v"),
        ("", "v"),
        ("sid", "caf\u00e9"),
    ],
)
def test_set_cookie_header_refuses_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="cookie"):
        set_cookie_header(name, value, secure=True, max_age=None)


def test_set_cookie_header_refuses_negative_max_age() -> None:
    with pytest.raises(ValueError, match="max_age"):
        set_cookie_header("sid", TOKEN, secure=True, max_age=-1)


def test_clear_cookie_header() -> None:
    assert clear_cookie_header(NAME, secure=True) == (
        f"{NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure".encode()
    )
    assert clear_cookie_header("sid", secure=False) == b"sid=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"


def _h(*values: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"example.com"), *((b"cookie", v) for v in values)]


COOKIE_CASES = [
    ("only-ours", _h(b"sid=abc"), "abc"),
    ("among-others", _h(b"a=1; sid=abc; b=2"), "abc"),
    ("no-space-after-semicolon", _h(b"a=1;sid=abc;b=2"), "abc"),
    ("tabs-and-spaces", _h(b"a=1;\t sid=abc \t; b=2"), "abc"),
    ("absent", _h(b"a=1; b=2"), None),
    ("no-cookie-header", [(b"host", b"x")], None),
    ("empty-header", _h(b""), None),
    ("empty-value", _h(b"sid="), None),
    ("quoted-value", _h(b'sid="abc"'), "abc"),
    ("value-with-equals", _h(b"sid=abc=="), "abc=="),
    ("split-headers-http2", _h(b"a=1", b"sid=abc"), "abc"),
    ("duplicate-same-header", _h(b"sid=abc; sid=evil"), None),
    ("duplicate-across-headers", _h(b"sid=abc", b"sid=evil"), None),
    ("duplicate-identical-values", _h(b"sid=abc; sid=abc"), None),
    ("duplicate-one-empty", _h(b"sid=; sid=abc"), None),
    ("duplicate-one-malformed", _h(b"sid=a b; sid=abc"), None),
    ("malformed-pair-no-equals-ignored", _h(b"garbage; sid=abc"), "abc"),
    ("malformed-only-equals", _h(b"=; sid=abc"), "abc"),
    ("malformed-empty-name", _h(b"=abc"), None),
    ("malformed-empty-pairs", _h(b";;; sid=abc ;;"), "abc"),
    ("bare-name-is-not-a-pair", _h(b"sid"), None),
    ("name-is-case-sensitive", _h(b"SID=abc"), None),
    ("prefix-name-not-confused", _h(b"xsid=abc; sidx=def"), None),
    ("invalid-char-in-value", _h(b"sid=a,b"), None),
    ("space-inside-value", _h(b"sid=a b"), None),
    ("non-ascii-value", _h("sid=caf\u00e9".encode()), None),
    ("backslash-value", _h(b"sid=a\\b"), None),
    ("header-name-uppercase", [(b"Cookie", b"sid=abc")], "abc"),
    ("other-header-ignored", [(b"x-cookie", b"sid=abc")], None),
    ("set-cookie-request-header-ignored", [(b"set-cookie", b"sid=abc")], None),
    ("long-token", _h(b"sid=" + TOKEN.encode()), TOKEN),
]


@pytest.mark.parametrize(("headers", "expected"), [pytest.param(h, e, id=i) for i, h, e in COOKIE_CASES])
def test_read_cookie(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert read_cookie(headers, "sid") == expected


def test_read_cookie_host_prefixed_name() -> None:
    assert read_cookie(_h(f"{NAME}={TOKEN}; __host-gateway_session=x".encode()), NAME) == TOKEN


def test_the_gateways_own_cookies_are_every_one_it_sets_in_both_spellings() -> None:
    """What the proxy keeps from apps (and apps may not set): the session cookie as configured, and the
    CSRF, OIDC-binding, hand-off and known-device cookies, with and without __Host- (a reload may
    switch it), and the default session cookie's names whatever it is called now (a renamed cookie's
    old one is still sent by browsers, a session id)."""
    own = own_cookie_names(SessionSettings(cookie_name="__Host-sid", insecure_cookies=False))
    assert own == {
        "__Host-sid",
        "__Host-gateway_session", "gateway_session",
        "__Host-gateway_csrf", "gateway_csrf",
        "__Host-gateway_oidc", "gateway_oidc",
        "__Host-gateway_handoff", "gateway_handoff",
        "__Host-gateway_device", "gateway_device",
    }  # fmt: skip
    for cookie in (CSRF_COOKIE, OIDC_BINDING_COOKIE, HANDOFF_COOKIE, DEVICE_COOKIE):
        assert cookie.name(insecure=False).startswith("__Host-")
        assert cookie.name(insecure=True) == cookie.name(insecure=False).removeprefix("__Host-")
