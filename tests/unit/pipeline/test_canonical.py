"""Canonical path: the bypass matrix from peers' advisories, plus properties of the canonical form.

Every row is an input that made some proxy, gateway or framework authorize one path and serve another.
The expected value is either the canonical path (what routing, policy and the upstream all see) or
``BadPath``. Ids name the advisory or technique the row comes from.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.errors import BadPath
from gateway.pipeline.canonical import (
    CanonicalPath,
    canonicalize,
    fold_case,
    refuse_unless_canonical,
    without_path_params,
)

REJECT = BadPath

P = pytest.param

# (raw_path, expected canonical path or REJECT)
BYPASS_MATRIX = [
    # --- clean paths: the fast path, returned unchanged ---------------------------------------------
    P(b"/", "/", id="root"),
    P(b"/static/app.js", "/static/app.js", id="clean-static"),
    P(b"/api/v1/users/42", "/api/v1/users/42", id="clean-api"),
    P(b"/api/v1/users/", "/api/v1/users/", id="clean-trailing-slash"),
    P(b"/.well-known/openid-configuration", "/.well-known/openid-configuration", id="clean-dot-prefix"),
    P(b"/a/.b/..c/...", "/a/.b/..c/...", id="dots-inside-names-are-not-dot-segments"),
    P(b"/~user/a-b_c.d!$&'()*+,=:@", "/~user/a-b_c.d!$&'()*+,=:@", id="all-legal-pchars"),
    # --- request-target forms other than origin-form --------------------------------------------------
    P(b"", REJECT, id="empty"),
    P(b"*", REJECT, id="asterisk-form"),
    P(b"http://internal/admin", REJECT, id="absolute-form"),
    P(b"https://evil.example/", REJECT, id="absolute-form-https"),
    P(b"internal:8080", REJECT, id="authority-form"),
    P(b"admin", REJECT, id="relative-path"),
    P(b"%2Fadmin", REJECT, id="encoded-leading-slash"),
    P(b"\\admin", REJECT, id="backslash-leading"),
    # --- Envoy CVE-2019-9901: dot segments not normalised before RBAC/ext_authz ---------------------
    P(b"/info/../private", "/private", id="envoy-cve-2019-9901"),
    P(b"/something/../admin", "/admin", id="envoy-cve-2019-9901-admin"),
    P(b"/a/./b", "/a/b", id="rfc3986-single-dot"),
    P(b"/a/b/../c", "/a/c", id="rfc3986-double-dot"),
    P(b"/a/b/c/./../../g", "/a/g", id="rfc3986-5.4-example"),
    P(b"/a/b/..", "/a/", id="trailing-dotdot-keeps-slash"),
    P(b"/a/b/.", "/a/b/", id="trailing-dot-keeps-slash"),
    P(b"/a/..", "/", id="dotdot-to-root"),
    P(b"/.", "/", id="root-dot"),
    P(b"/./", "/", id="root-dot-slash"),
    P(b"/..", REJECT, id="climb-root"),
    P(b"/../x", REJECT, id="climb-above-root"),
    P(b"/a/../../x", REJECT, id="climb-above-root-nested"),
    P(b"/a/../b/../../etc/passwd", REJECT, id="climb-above-root-late"),
    P(b"/%2e%2e/etc/passwd", REJECT, id="climb-encoded-dots"),
    # --- Envoy CVE-2019-9900: NUL in the path --------------------------------------------------------
    P(b"/admin\x00.html", REJECT, id="envoy-cve-2019-9900-raw-nul"),
    P(b"/admin%00.html", REJECT, id="envoy-cve-2019-9900-encoded-nul"),
    P(b"/public/%00/../admin", REJECT, id="encoded-nul-before-dotdot"),
    # --- Envoy CVE-2021-29492 / Istio ISTIO-SECURITY-2021-005: '//' and escaped slashes -------------
    P(b"//admin", "/admin", id="istio-2021-005-double-slash"),
    P(b"///admin//panel///", "/admin/panel/", id="slash-runs-merged"),
    P(b"/public//../admin", "/admin", id="slash-run-merged-before-dotdot"),
    P(b"/admin%2Fsecret", REJECT, id="envoy-cve-2021-29492-escaped-slash"),
    P(b"/admin%2fsecret", REJECT, id="envoy-cve-2021-29492-escaped-slash-lower"),
    P(b"/admin%5Csecret", REJECT, id="envoy-cve-2021-29492-escaped-backslash"),
    P(b"/admin%5csecret", REJECT, id="envoy-cve-2021-29492-escaped-backslash-lower"),
    P(b"/public/..%2Fadmin", REJECT, id="escaped-slash-traversal"),
    P(b"/public/%2e%2e%2fadmin", REJECT, id="escaped-dots-and-slash"),
    # --- heimdall GHSA-43jv-5j4x-qv67 (CVE-2026-42272): lower-case %2f missed ---------------------
    P(b"/admin%2fsecret/x", REJECT, id="heimdall-cve-2026-42272-lowercase-2f"),
    # --- heimdall CVE-2026-42274: rules matched on the raw path -------------------------------------
    P(b"/public/../user/whatever", "/user/whatever", id="heimdall-cve-2026-42274-dotdot"),
    P(b"/user/%2e%2e/admin", "/admin", id="heimdall-cve-2026-42274-encoded-dotdot"),
    P(b"/user/%2E%2e/admin", "/admin", id="heimdall-cve-2026-42274-mixed-case-dotdot"),
    P(b"/user/%2e%2e%2fadmin", REJECT, id="heimdall-cve-2026-42274-encoded-dotdot-slash"),
    P(b"/a/%2e/b", "/a/b", id="encoded-single-dot"),
    P(b"/a/.%2e/b", "/b", id="half-encoded-dotdot"),
    P(b"/a/%2e./b", "/b", id="half-encoded-dotdot-2"),
    # --- heimdall CVE-2026-32811 / oauth2-proxy GHSA-7rh7-c77v-6434: query mistaken for path ---------
    P(b"/mypath?foo=bar", REJECT, id="heimdall-cve-2026-32811-raw-question-mark"),
    P(b"/admin?x=/public", REJECT, id="oauth2-proxy-ghsa-7rh7-skip-auth-routes-query"),
    P(b"/mypath%3Ffoo=bar", "/mypath%3Ffoo=bar", id="encoded-question-mark-is-data"),
    P(b"/mypath%3ffoo=bar", "/mypath%3Ffoo=bar", id="encoded-question-mark-upper-cased"),
    # --- Traefik CVE-2026-40912 (GHSA-6jwx-7vp4-9847) and CVE-2026-48020 (StripPrefix) -------------
    P(b"/api%2e/admin/secret", "/api./admin/secret", id="traefik-cve-2026-40912-dot-in-prefix"),
    P(b"/api%20/admin/secret", "/api%20/admin/secret", id="traefik-cve-2026-40912-space-in-prefix"),
    P(b"/api../admin", "/api../admin", id="traefik-cve-2026-48020-api-dotdot"),
    P(b"/api%2e%2e/admin", "/api../admin", id="traefik-cve-2026-48020-api-encoded-dotdot"),
    P(b"/api/./admin/secret", "/api/admin/secret", id="traefik-forwarded-uri-dot-segment"),
    # --- Traefik CVE-2025-66490: encoded reserved characters -----------------------------------------
    P(b"/admin%23x", "/admin%23x", id="traefik-cve-2025-66490-encoded-hash-is-data"),
    P(b"/admin#x", REJECT, id="raw-hash"),
    P(b"/admin%3Bx", "/admin%3Bx", id="traefik-cve-2025-66490-encoded-semicolon-is-data"),
    P(b"/admin%25", "/admin%25", id="traefik-cve-2025-66490-encoded-percent-kept"),
    # --- Spring / Tomcat / Shiro '..;' and matrix parameters -----------------------------------------
    P(b"/public/..;/admin", REJECT, id="tomcat-dotdot-semicolon"),
    P(b"/xxx/..;/admin/", REJECT, id="shiro-cve-2020-1957"),
    P(b"/.;/admin", REJECT, id="tomcat-dot-semicolon"),
    P(b"/public/..;jsessionid=x/admin", REJECT, id="tomcat-dotdot-jsessionid"),
    P(b"/%2e%2e;x/admin", REJECT, id="encoded-dotdot-semicolon"),
    P(b"/public/%2e;/admin", REJECT, id="encoded-dot-semicolon"),
    P(b"/public/.%2e;/admin", REJECT, id="half-encoded-dotdot-semicolon"),
    P(b"/public/..;", REJECT, id="trailing-dotdot-semicolon"),
    P(b"/admin/%3bpage", "/admin/%3Bpage", id="shiro-cve-2020-13933-encoded-semicolon"),
    P(b"/public/..%3b/admin", REJECT, id="shiro-cve-2020-13933-dotdot-encoded-semicolon"),
    P(b"/.%3B/admin", REJECT, id="dot-encoded-semicolon"),
    P(b"/public/%2e%2e%3F/admin", REJECT, id="dotdot-encoded-question-mark"),
    P(b"/public/..%23/admin", REJECT, id="dotdot-encoded-hash"),
    P(b"/public/..%20/admin", "/public/..%20/admin", id="dotdot-space-is-a-name"),
    P(b"/admin/a%25%32%66b", "/admin/a%252fb", id="shiro-cve-2020-11989-double-encoded-slash"),
    P(b"/admin;%2f..", REJECT, id="spring-cve-2016-9879-param-with-encoded-slash"),
    P(b"/static;/../admin", "/admin", id="spring-cve-2018-1199-param-segment-popped"),
    P(b"/;x/admin", "/;x/admin", id="empty-name-param-kept"),
    # --- Spring CVE-2016-5007: whitespace trimmed by the MVC matcher ---------------------------------
    P(b"/admin ", REJECT, id="spring-cve-2016-5007-raw-trailing-space"),
    P(b"/ admin", REJECT, id="spring-cve-2016-5007-raw-leading-space"),
    P(b"/%0Dadmin", REJECT, id="spring-cve-2016-5007-encoded-cr"),
    P(b"/admin%09", REJECT, id="spring-cve-2016-5007-encoded-tab"),
    P(b"/admin%20", "/admin%20", id="spring-cve-2016-5007-encoded-space-is-data"),
    # --- Keycloak CVE-2026-0976: matrix parameters masking segments --------------------------------
    P(b"/realms;ignored/master/account", "/realms;ignored/master/account", id="keycloak-cve-2026-0976"),
    # --- nginx off-by-slash (alias traversal): 'static..' is a name, not a dot segment ---------------
    P(b"/static../secret.txt", "/static../secret.txt", id="nginx-off-by-slash-alias"),
    P(b"/static/../secret.txt", "/secret.txt", id="nginx-off-by-slash-real-dotdot"),
    P(b"/assets%2e%2e/etc/passwd", "/assets../etc/passwd", id="nginx-off-by-slash-encoded"),
    # --- Authelia CVE-2021-32637: malformed URI through nginx auth_request --------------------------
    P(b"/%", REJECT, id="authelia-cve-2021-32637-bare-percent"),
    P(b"/%4", REJECT, id="authelia-cve-2021-32637-truncated-escape"),
    P(b"/%zz", REJECT, id="authelia-cve-2021-32637-non-hex-escape"),
    P(b"/a%g0", REJECT, id="malformed-escape-second-digit"),
    P(b"/%%32%65", REJECT, id="percent-percent-nibble-trick"),
    P(b"/admin\r\nX-Injected: 1", REJECT, id="raw-crlf"),
    P(b"/admin\x7f", REJECT, id="raw-del"),
    P(b"/admin%7F", REJECT, id="encoded-del"),
    P(b"/admin%1b[31m", REJECT, id="encoded-escape-char-log-injection"),
    # --- IIS: %u escapes, backslashes, "unicode" traversal (overlong UTF-8) --------------------------
    P(b"/%u002e%u002e/admin", REJECT, id="iis-percent-u-dots"),
    P(b"/admin%u2215secret", REJECT, id="iis-percent-u-division-slash"),
    P(b"/public\\..\\admin", REJECT, id="iis-raw-backslash-traversal"),
    P(b"/a\\b", REJECT, id="raw-backslash"),
    P(b"/scripts/..%c0%af../winnt/system32/cmd.exe", REJECT, id="iis-cve-2000-0884-overlong-slash"),
    P(b"/scripts/..%c1%1c../winnt", REJECT, id="iis-cve-2000-0884-c1-1c"),
    P(b"/scripts/..%c1%9c../winnt", REJECT, id="iis-cve-2000-0884-c1-9c"),
    P(b"/%c0%ae%c0%ae/admin", REJECT, id="overlong-dots"),
    P(b"/%C0%AE/admin", REJECT, id="overlong-dot-upper"),
    P(b"/%e0%80%af/admin", REJECT, id="overlong-slash-3-byte"),
    P(b"/%f0%80%80%af/admin", REJECT, id="overlong-slash-4-byte"),
    P(b"/%c0%80", REJECT, id="overlong-nul"),
    P(b"/\xc0\xaf", REJECT, id="raw-overlong-slash"),
    P(b"/\xc0\xae\xc0\xae/admin", REJECT, id="raw-overlong-dots"),
    P(b"/%ED%A0%80", REJECT, id="lone-surrogate"),
    P(b"/\xed\xa0\x80", REJECT, id="raw-lone-surrogate"),
    P(b"/%F4%90%80%80", REJECT, id="code-point-above-max"),
    P(b"/%ff", REJECT, id="invalid-utf8-byte"),
    P(b"/\xff", REJECT, id="raw-invalid-utf8-byte"),
    P(b"/caf%C3", REJECT, id="truncated-utf8"),
    P(b"/%AF", REJECT, id="lone-continuation-byte"),
    # --- double encoding: decoded once, never twice -------------------------------------------------
    P(b"/%252e%252e/admin", "/%252e%252e/admin", id="double-encoded-dots-stay"),
    P(b"/a/%252e%252e%252fadmin", "/a/%252e%252e%252fadmin", id="double-encoded-traversal-stays"),
    P(b"/admin%252Fx", "/admin%252Fx", id="double-encoded-slash-stays"),
    P(b"/%25c0%25af", "/%25c0%25af", id="double-encoded-overlong-stays"),
    P(b"/%2500", "/%2500", id="double-encoded-nul-stays"),
    # --- unicode look-alikes: data, never '.' or '/' ------------------------------------------------
    P(b"/\xef\xbc\x8e\xef\xbc\x8e/admin", "/%EF%BC%8E%EF%BC%8E/admin", id="fullwidth-dots-raw"),
    P(b"/%ef%bc%8e%ef%bc%8e/admin", "/%EF%BC%8E%EF%BC%8E/admin", id="fullwidth-dots-encoded"),
    P(b"/public/\xef\xbc\x8e\xef\xbc\x8e/admin", "/public/%EF%BC%8E%EF%BC%8E/admin", id="fullwidth-dots-mid"),
    P(b"/admin\xef\xbc\x8fsecret", "/admin%EF%BC%8Fsecret", id="fullwidth-slash"),
    P(b"/admin\xe2\x88\x95secret", "/admin%E2%88%95secret", id="division-slash-u2215"),
    P(b"/admin\xe2\x81\x84secret", "/admin%E2%81%84secret", id="fraction-slash-u2044"),
    P(b"/admin\xef\xbc\xbcsecret", "/admin%EF%BC%BCsecret", id="fullwidth-backslash"),
    P(b"/\xe2\x80\xa4\xe2\x80\xa4/admin", "/%E2%80%A4%E2%80%A4/admin", id="one-dot-leader-u2024"),
    P(b"/\xef\xb9\x92/admin", "/%EF%B9%92/admin", id="small-full-stop-ufe52"),
    # --- normalisation of ordinary messy paths ------------------------------------------------------
    P(b"/caf\xc3\xa9", "/caf%C3%A9", id="raw-utf8-encoded"),
    P(b"/caf%c3%a9", "/caf%C3%A9", id="escape-hex-upper-cased"),
    P(b"/caf\xc3%A9", "/caf%C3%A9", id="mixed-raw-and-escaped-utf8"),
    P(b"/%41%62%63%2D%5F%7E%30", "/Abc-_~0", id="unreserved-escapes-decoded"),
    P(b"/a%3Ab%40c%21", "/a%3Ab%40c%21", id="reserved-escapes-kept"),
    P(b'/a"b<c>d`e{f}g|h^i', "/a%22b%3Cc%3Ed%60e%7Bf%7Dg%7Ch%5Ei", id="illegal-raw-chars-encoded"),
    P(b"/a[b]", "/a%5Bb%5D", id="raw-brackets-encoded"),
    P(b"/a/%2e%2E/c", "/c", id="brief-example-encoded-dotdot"),
    P(b"/a/%2e%2e/b%2F;x=1", REJECT, id="brief-example-granian"),
    P(b"/doc;v=1/page;lang=en", "/doc;v=1/page;lang=en", id="params-kept"),
]


@pytest.mark.parametrize(("raw_path", "expected"), BYPASS_MATRIX)
def test_bypass_matrix(raw_path: bytes, expected: str | type[BadPath]) -> None:
    if expected is REJECT:
        with pytest.raises(BadPath) as info:
            canonicalize(raw_path)
        assert info.value.status == 400
        assert info.value.reason == "bad-path"
        assert info.value.detail
        return
    assert isinstance(expected, str)
    result = canonicalize(raw_path)
    assert result.path == expected
    assert result.has_path_params == (";" in expected)
    # Every accepted row is also a fixed point.
    assert canonicalize(result.path.encode("ascii")) == result


@pytest.mark.parametrize(
    ("raw_path", "has_params"),
    [
        P(b"/a;x", True, id="param-last"),
        P(b"/a;x/b", True, id="param-middle"),
        P(b"/a;/b", True, id="empty-param"),
        P(b"/a%3Bx", False, id="encoded-semicolon-is-not-a-param"),
        P(b"/a;x/../b", False, id="param-removed-by-dotdot"),
        P(b"/static/app.js", False, id="clean"),
    ],
)
def test_has_path_params(raw_path: bytes, has_params: bool) -> None:
    assert canonicalize(raw_path).has_path_params is has_params


@pytest.mark.parametrize(
    ("path", "bare"),
    [
        ("/admin;x/secret", "/admin/secret"),
        ("/admin;jsessionid=1/secret", "/admin/secret"),
        ("/admin/;x/secret", "/admin/secret"),
        ("/admin/secret;.css", "/admin/secret"),
        ("/a;b;c/d;e/", "/a/d/"),
        ("/a/;x", "/a/"),
        ("/;x", "/"),
        ("/cart;jsessionid=abc/items", "/cart/items"),
    ],
)
def test_a_path_without_its_params_is_what_a_servlet_container_maps(path: str, bare: str) -> None:
    assert without_path_params(canonicalize(path.encode()).path) == bare


def test_result_is_a_frozen_value() -> None:
    result = canonicalize(b"/a")
    assert result == CanonicalPath("/a", False)
    with pytest.raises(AttributeError):
        result.path = "/b"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw_path", "words"),
    [
        P(b"/a%2Fb", "encoded slash", id="encoded-slash"),
        P(b"/a%5cb", "encoded backslash", id="encoded-backslash"),
        P(b"/a\\b", "backslash", id="backslash"),
        P(b"/a%00", "control character", id="nul"),
        P(b"/%zz", "malformed", id="malformed"),
        P(b"/%c0%af", "UTF-8", id="overlong"),
        P(b"/..", "above the root", id="climb"),
        P(b"/..;/a", "parameters", id="dotdot-semicolon"),
        P(b"*", "starting with '/'", id="not-a-path"),
    ],
)
def test_rejection_says_why(raw_path: bytes, words: str) -> None:
    with pytest.raises(BadPath, match=re.escape(words)):
        canonicalize(raw_path)


# --- properties -------------------------------------------------------------------------------------

# Bytes biased towards the characters that matter here, plus anything at all.
_INTERESTING = st.sampled_from(
    [b"/", b".", b"..", b"%", b";", b"%2e", b"%2E", b"%2f", b"%25", b"%3B", b"%5C", b"%00", b"%c0%af",
     b"%C3%A9", b"\xc3\xa9", b"\xef\xbc\x8e", b"a", b"Z", b"0", b"~", b"-", b"_", b"\\", b"?", b"#",
     b" ", b"%41", b"%7e", b"%ED%A0%80", b"%e2%88%95"]
)  # fmt: skip
_RAW_PATHS = st.one_of(
    st.binary(max_size=40),
    st.lists(_INTERESTING, max_size=16).map(b"".join),
    st.lists(st.one_of(_INTERESTING, st.binary(max_size=3)), max_size=16).map(
        lambda parts: b"/" + b"".join(parts)
    ),
)

_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|;|\?|#|$)")


def _try(raw_path: bytes) -> CanonicalPath | None:
    try:
        return canonicalize(raw_path)
    except BadPath:
        return None


@settings(max_examples=1000)
@given(_RAW_PATHS)
@example(b"/a/%2e%2E/c")
@example(b"/%252e%252e")
@example(b"/a/b/..")
def test_idempotent(raw_path: bytes) -> None:
    first = _try(raw_path)
    if first is not None:
        assert canonicalize(first.path.encode("ascii")) == first


@settings(max_examples=1000)
@given(_RAW_PATHS)
@example(b"/a/b/..")
@example(b"/%252e%252e/")
def test_output_shape(raw_path: bytes) -> None:
    result = _try(raw_path)
    if result is None:
        return
    path = result.path
    assert path.startswith("/")
    assert path.isascii()
    assert not any(ord(c) < 0x21 or ord(c) == 0x7F for c in path)
    for bad in ("//", "/./", "/../", "\\", "#", "?"):
        assert bad not in path
    assert not path.endswith(("/..", "/."))
    upper = path.upper()
    assert "%2F" not in upper
    assert "%5C" not in upper
    assert "%2E" not in upper
    # Every escape is well formed and upper-cased.
    assert re.fullmatch(r"(?:[^%]|%[0-9A-F]{2})*", path)
    # One round of percent-decoding (what a naive upstream does) never reveals a dot segment.
    decoded = unquote(path, errors="surrogateescape")
    assert _DOT_SEGMENT.search(decoded) is None
    assert result.has_path_params == (";" in path)


@given(st.lists(st.text(alphabet="abcXYZ019-._~", min_size=1, max_size=8), min_size=1, max_size=6))
def test_clean_paths_are_returned_unchanged(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    if any(s in (".", "..") for s in segments):
        return
    assert canonicalize(path.encode("ascii")) == CanonicalPath(path, False)


@pytest.mark.parametrize(
    ("path", "folded"),
    [
        ("/ADMIN/Users", "/admin/users"),
        ("/caf%C3%A9/X", "/caf%c3%a9/x"),  # é has no ASCII reading
        ("/%E6%97%A5%E6%9C%AC/x", "/%e6%97%a5%e6%9c%ac/x"),
        ("/v1.0/a", "/v1.0/a"),
        ("/a~b/c:d", "/a~b/c:d"),
        ("/", "/"),
    ],
)
def test_a_case_insensitive_routes_path_is_its_lower_case(path: str, folded: str) -> None:
    assert fold_case(CanonicalPath(path, False)).path == folded


@pytest.mark.parametrize(
    "path",
    [
        "/admin./x",
        "/admin%20/x",
        "/x.",
        "/a/b%20",
        "/a/.../b",
        # Found by an attack run on the first version (ASCII only): Java's equalsIgnoreCase reads
        # these as admin and keys; IIS reads streams and short names as the file itself.
        "/adm%C4%B0n/x",
        "/adm%C4%B1n/x",
        "/%E2%84%AAeys/x",
        "/%EF%BD%81dmin",
        "/secret.txt::$DATA",
        "/admin:$i30:$INDEX_ALLOCATION/x",
        "/ADMINI~1/x",
    ],
)
def test_a_case_insensitive_route_refuses_segments_ending_in_a_dot_or_a_space(path: str) -> None:
    with pytest.raises(BadPath):
        fold_case(CanonicalPath(path, False))


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/api/privacy/holds/H1%2F/release",
        b"/api/privacy/holds//H1/release",
        b"/api/privacy/holds/./H1/release",
        b"/api/privacy/holds/x/../H1/release",
        b"/api/privacy/holds/%2E/H1/release",
        b"/api/privacy/holds/x/%2e%2E/H1/release",
        b"/api/users/carol/.",
        b"//api/users/carol",
        b"/api/users/a%00b",
        b"/api/users/a\\b",
    ],
)
def test_a_listener_routing_on_the_path_as_sent_refuses_what_it_would_read_as_another(
    raw_path: bytes,
) -> None:
    """The admin listener: its router merges '//' and its server decodes '%2F' (an attack run released
    the hold 'H1' by the name 'H1%2F'); every path it serves must already be canonical."""
    with pytest.raises(BadPath):
        refuse_unless_canonical(raw_path)


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/",
        b"/api/users/carol",
        b"/api/users/carol@example.com",
        b"/api/users/j%C3%BCrgen",
        b"/api/users/%4aoe",
        b"/x/",
    ],
)
def test_a_canonical_path_passes_whatever_its_escapes_spelling(raw_path: bytes) -> None:
    refuse_unless_canonical(raw_path)
