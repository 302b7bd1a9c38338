"""safe_redirect against the open-redirect matrix.

Rows follow the inputs of oauth2-proxy's advisories (GHSA-qqxw-m5fj-f7gv, GHSA-5m6c-jp6f-2vcv,
GHSA-j7px-6hwj-hpjg: ``/\\evil``, whitespace and control characters between the slashes, encoded
slashes) and its ``TestIsValidRedirect`` table, Keycloak's redirect-URI bypasses (CVE-2020-14359,
CVE-2023-6927, CVE-2024-1132: userinfo, ``..``/encoded tricks, host suffix and prefix confusion), and
the usual browser-normalisation tricks (Unicode dots and slashes, IDN, IPv6, CR/LF).
"""

from __future__ import annotations

import pytest

from gateway.identity.redirects import MAX_REDIRECT_LENGTH, safe_redirect

PUBLIC = "https://auth.example.com"
ROUTES = ["wiki.example.com", "Finance.Example.com", "*.apps.example.com", "dev.localhost:8443"]
FALLBACK = "/.gateway/account"

OK = "follow"
NO = "fallback"

CASES: list[tuple[str, str | None, str]] = [
    # -- accepted -----------------------------------------------------------------------------------
    ("root", "/", OK),
    ("path", "/wiki/Page", OK),
    ("path-query", "/x?y=1&z=2", OK),
    ("path-fragment", "/x#section", OK),
    ("path-encoded-space", "/search?q=a%20b", OK),
    ("path-encoded-utf8", "/caf%C3%A9", OK),
    ("path-inner-encoded-slash", "/repo/a%2Fb", OK),
    ("path-with-at", "/users/@me", OK),
    ("path-with-colon", "/a:b", OK),
    ("path-query-holding-url", "/x?next=https%3A%2F%2Fevil.com", OK),
    ("auth-host", "https://auth.example.com/.gateway/account", OK),
    ("auth-host-upper", "HTTPS://AUTH.EXAMPLE.COM/x", OK),
    ("auth-host-trailing-dot", "https://auth.example.com./x", OK),
    ("auth-host-no-path", "https://auth.example.com", OK),
    ("auth-host-query-only", "https://auth.example.com?x=1", OK),
    ("auth-host-default-port", "https://auth.example.com:443/x", OK),
    ("route-host", "https://wiki.example.com/Page?a=1", OK),
    ("route-host-case-insensitive-config", "https://finance.example.com/admin", OK),
    ("wildcard-one-label", "https://team1.apps.example.com/", OK),
    ("route-host-configured-with-port", "https://dev.localhost/x", OK),
    # -- open redirects: protocol-relative and backslash forms (oauth2-proxy) ------------------------
    ("double-slash", "//evil.com", NO),
    ("triple-slash", "///evil.com", NO),
    ("quad-slash", "////evil.com/", NO),
    ("slash-backslash", "/\\evil.com", NO),
    ("double-backslash", "\\\\evil.com", NO),
    ("backslash-slash", "\\/evil.com", NO),
    ("backslash-in-path", "/a\\b", NO),
    ("slash-space-slash", "/ /evil.com", NO),
    ("slash-space-backslash", "/ \\evil.com", NO),
    ("slash-tab-slash", "/\t/evil.com", NO),
    ("slash-tab-backslash", "/\t\\evil.com", NO),
    ("slash-vtab-slash", "/\v/evil.com", NO),
    ("slash-vtab-backslash", "/\v\\evil.com", NO),
    ("slash-newline-slash", "/\n/evil.com", NO),
    ("slash-newline-backslash", "/\n\\evil.com", NO),
    ("slash-cr-slash", "/\r/evil.com", NO),
    ("slash-cr-backslash", "/\r\\evil.com", NO),
    ("slash-nul", "/\x00/evil.com", NO),
    ("slash-del", "/\x7f/evil.com", NO),
    ("slash-c1", "/\x85/evil.com", NO),
    # -- percent-encoded variants -------------------------------------------------------------------
    ("encoded-tab", "/%09/evil.com", NO),
    ("encoded-slash-slash", "/%2F/evil.com", NO),
    ("encoded-two-slashes", "/%2F%2Fevil.com", NO),
    ("encoded-lowercase-slash", "/%2f%2fevil.com", NO),
    ("encoded-backslash", "/%5Cevil.com", NO),
    ("encoded-backslash-later", "/a/%5C/evil.com", NO),
    ("double-encoded-slash", "/%252F%252Fevil.com", NO),
    ("triple-encoded-slash", "/%25252F%25252Fevil.com", NO),
    ("encoded-crlf-header-injection", "/x%0D%0ASet-Cookie:%20a=b", NO),
    ("encoded-lf", "/x%0aLocation:%20https://evil.com", NO),
    ("encoded-nul", "/x%00", NO),
    ("bad-utf8", "/x%FF%FE", NO),
    ("encoded-fullwidth-slash", "/%EF%BC%8Fevil.com", NO),
    ("encoded-fullwidth-backslash", "/%EF%BC%BCevil.com", NO),
    # -- scheme tricks ------------------------------------------------------------------------------
    ("https-no-slashes", "https:evil.com", NO),
    ("https-one-slash", "https:/evil.com", NO),
    ("https-slash-backslash", "https:/\\evil.com", NO),
    ("https-backslashes", "https:\\\\evil.com", NO),
    ("https-triple-slash", "https:///evil.com", NO),
    ("javascript", "javascript:alert(1)", NO),
    ("javascript-upper", "JaVaScRiPt:alert(1)", NO),
    ("javascript-after-slashes", "javascript://auth.example.com/%0Aalert(1)", NO),
    ("data-url", "data:text/html,<script>alert(1)</script>", NO),
    ("data-base64", "data:text/html;base64,PHNjcmlwdD4=", NO),
    ("vbscript", "vbscript:msgbox(1)", NO),
    ("ftp-good-host", "ftp://auth.example.com/x", NO),
    ("http-not-allowed", "http://auth.example.com/x", NO),
    ("ws-scheme", "wss://auth.example.com/x", NO),
    ("relative-no-slash", "evil.com", NO),
    ("relative-dot", "./x", NO),
    ("query-only", "?x=1", NO),
    ("fragment-only", "#x", NO),
    # -- host confusion -----------------------------------------------------------------------------
    ("evil-https", "https://evil.com", NO),
    ("evil-with-good-in-query", "https://evil.com/?rd=auth.example.com", NO),
    ("userinfo-good-at-evil", "https://auth.example.com@evil.com", NO),
    ("userinfo-good-at-evil-path", "https://auth.example.com@evil.com/x", NO),
    ("userinfo-on-good", "https://user:pass@auth.example.com/", NO),
    ("userinfo-empty", "https://@auth.example.com/", NO),
    ("backslash-at-good", "https://evil.com\\@auth.example.com", NO),
    ("port-then-userinfo", "https://auth.example.com:443@evil.com", NO),
    ("encoded-slash-userinfo", "https://auth.example.com%2F@evil.com", NO),
    ("encoded-at", "https://auth.example.com%40evil.com", NO),
    ("suffix-attack", "https://auth.example.com.evil.com/", NO),
    ("prefix-attack", "https://evilauth.example.com/", NO),
    ("route-prefix-attack", "https://evilwiki.example.com/", NO),
    ("parent-domain", "https://example.com/", NO),
    ("wildcard-base-itself", "https://apps.example.com/", NO),
    ("wildcard-two-labels", "https://a.b.apps.example.com/", NO),
    ("wildcard-empty-label", "https://.apps.example.com/", NO),
    ("wildcard-suffix-attack", "https://team1.apps.example.com.evil.com/", NO),
    ("wrong-port-on-good-host", "https://auth.example.com:8443/", NO),
    ("wrong-port-route", "https://wiki.example.com:3838/", NO),
    ("empty-port", "https://auth.example.com:/x", NO),
    ("ideographic-full-stop", "https://auth.example\u3002com/", NO),
    ("fullwidth-full-stop", "https://auth\uff0eexample.com/", NO),
    ("fullwidth-slashes", "https:\uff0f\uff0fevil.com", NO),
    ("fullwidth-slash-path", "/\uff0fevil.com", NO),
    ("unicode-host", "https://\u0430uth.example.com/", NO),  # Cyrillic a
    ("idn-punycode-mismatch", "https://xn--uth-8cd.example.com/", NO),
    ("idn-unicode-route-lookalike", "https://w\u0456ki.example.com/", NO),
    ("ipv4-literal", "https://127.0.0.1/", NO),
    ("ipv4-decimal", "https://2130706433/", NO),
    ("ipv6-literal", "https://[::1]/", NO),
    ("ipv6-mapped", "https://[::ffff:7f00:1]/", NO),
    ("ipv6-with-userinfo", "https://[::1]@evil.com/", NO),
    ("host-with-underscore", "https://auth_example.com/", NO),
    ("good-host-backslash-path", "https://auth.example.com\\evil.com", NO),
    ("good-host-encoded-crlf", "https://auth.example.com/x%0D%0ALocation:evil", NO),
    ("good-host-protocol-relative-path", "https://auth.example.com//evil.com", NO),
    ("good-host-encoded-slashes-path", "https://auth.example.com/%2F%2Fevil.com", NO),
    # -- whitespace, length, emptiness --------------------------------------------------------------
    ("leading-space", " /x", NO),
    ("leading-space-url", " https://auth.example.com/", NO),
    ("leading-tab", "\t/x", NO),
    ("leading-newline", "\n/x", NO),
    ("leading-cr-lf", "\r\nhttps://auth.example.com/", NO),
    ("trailing-space", "/x ", NO),
    ("trailing-newline", "/x\n", NO),
    ("nbsp", "/x\u00a0y", NO),
    ("zero-width-space", "/\u200b/evil.com", NO),
    ("rtl-override", "/\u202e/moc.live", NO),
    ("raw-crlf-header-injection", "/x\r\nSet-Cookie: a=b", NO),
    ("empty", "", NO),
    ("none", None, NO),
    ("very-long", "/" + "a" * MAX_REDIRECT_LENGTH, NO),
    ("very-long-url", "https://auth.example.com/" + "a" * 10_000, NO),
]


@pytest.mark.parametrize(("rd", "expected"), [pytest.param(rd, e, id=i) for i, rd, e in CASES])
def test_safe_redirect(rd: str | None, expected: str) -> None:
    result = safe_redirect(rd, public_url=PUBLIC, route_hosts=ROUTES, allow_http=False, fallback=FALLBACK)
    assert result == (rd if expected == OK else FALLBACK)


def test_matrix_size() -> None:
    assert len(CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


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
        ("http://app.localhost/x", OK),
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
