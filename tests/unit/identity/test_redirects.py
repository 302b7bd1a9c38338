"""safe_redirect against the open-redirect matrix (tests/support/redirect_corpus.py).

Rows follow the inputs of oauth2-proxy's advisories (GHSA-qqxw-m5fj-f7gv, GHSA-5m6c-jp6f-2vcv,
GHSA-j7px-6hwj-hpjg: ``/\\evil``, whitespace and control characters between the slashes, encoded
slashes) and its ``TestIsValidRedirect`` table, Keycloak's redirect-URI bypasses (CVE-2020-14359,
CVE-2023-6927, CVE-2024-1132: userinfo, ``..``/encoded tricks, host suffix and prefix confusion), and
the usual browser-normalisation tricks (Unicode dots and slashes, IDN, IPv6, CR/LF).
"""

from __future__ import annotations

import pytest

from gateway.identity.redirects import MAX_REDIRECT_LENGTH, admin_origin, safe_local_redirect, safe_redirect
from tests.support.redirect_corpus import CASES, FALLBACK, NO, OK, PUBLIC, ROUTES, TOO_LONG


@pytest.mark.parametrize(("rd", "expected"), [pytest.param(rd, e, id=i) for i, rd, e in CASES])
def test_safe_redirect(rd: str | None, expected: str) -> None:
    result = safe_redirect(rd, public_url=PUBLIC, route_hosts=ROUTES, allow_http=False, fallback=FALLBACK)
    assert result == (rd if expected == OK else FALLBACK)


def test_corpus_length_row_is_too_long() -> None:
    assert TOO_LONG == MAX_REDIRECT_LENGTH


def test_matrix_size() -> None:
    assert len(CASES) >= 150
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("rd", "expected"), [pytest.param(rd, e, id=i) for i, rd, e in CASES])
def test_safe_local_redirect(rd: str | None, expected: str) -> None:
    """The hand-off page's rule: only what safe_redirect follows, and only if it is a path."""
    result = safe_local_redirect(rd, fallback="/")
    followed = expected == OK and rd is not None and rd.startswith("/")
    assert result == (rd if followed else "/")


@pytest.mark.parametrize(
    "rd", ["https://auth.example.com/x", "https://wiki.example.com/", "http://auth.example.com/"]
)
def test_safe_local_redirect_never_leaves_the_host(rd: str) -> None:
    assert safe_local_redirect(rd, fallback="/") == "/"


@pytest.mark.parametrize(
    ("rd", "expected"),
    [
        ("http://auth.example.com/x", OK),
        ("http://wiki.example.com/x", OK),
        ("http://evil.com/x", NO),
        ("http://auth.example.com@evil.com/", NO),
        ("https://auth.example.com/x", OK),
    ],
)
def test_allow_http(rd: str, expected: str) -> None:
    result = safe_redirect(rd, public_url=PUBLIC, route_hosts=ROUTES, allow_http=True, fallback=FALLBACK)
    assert result == (rd if expected == OK else FALLBACK)


@pytest.mark.parametrize(
    ("rd", "expected"),
    [
        # Development: everything on one listener, so the auth host's port is fine for route hosts.
        ("http://localhost:8080/x", OK),
        ("http://app.localhost:8080/x", OK),
        # Not the default port when the gateway is not on it: another service there caught the
        # hand-off's codes and signed its own browser in as the person (an attack run).
        ("http://app.localhost/x", NO),
        ("http://localhost/x", NO),
        ("https://app.localhost/x", NO),
        ("https://app.localhost:8080/x", NO),  # the other scheme only as a twin on default ports
        ("http://app.localhost:9999/x", NO),
        ("http://evil.localhost:8080/x", NO),
    ],
)
def test_public_url_with_port(rd: str, expected: str) -> None:
    result = safe_redirect(
        rd, public_url="http://localhost:8080", route_hosts=["app.localhost"], allow_http=True, fallback="/"
    )
    assert result == (rd if expected == OK else "/")


def test_ipv6_public_url() -> None:
    def check(rd: str) -> str:
        return safe_redirect(
            rd, public_url="https://[2001:db8::1]", route_hosts=(), allow_http=False, fallback="/"
        )

    assert check("https://[2001:db8::1]/x") == "https://[2001:db8::1]/x"
    assert check("https://[2001:db8::2]/x") == "/"


@pytest.mark.parametrize(
    ("rd", "followed"),
    [
        ("https://auth.example.com:9443/users/bob", True),  # back to the console page after a step-up
        ("https://auth.example.com:9443/", True),
        ("https://auth.example.com:9444/", False),  # another port of the same name: another service
        ("http://auth.example.com:9443/", False),  # not the console's scheme
        ("https://auth.example.com:9443//evil.test", False),
        ("https://auth.example.com:9443/%2F%2Fevil.test", False),
    ],
)
def test_the_admin_consoles_own_origin_is_a_place_to_come_back_to(rd: str, followed: bool) -> None:
    origin = admin_origin("https://auth.example.com", "0.0.0.0:9443")
    assert origin == "https://auth.example.com:9443"
    kept = safe_redirect(
        rd, public_url="https://auth.example.com", route_hosts=[], allow_http=False, fallback="/x",
        extra_origins=[origin],
    )  # fmt: skip
    assert (kept == rd) is followed
