"""Route matching: host normalisation, wildcard vs exact, longest segment-bounded prefix."""

from __future__ import annotations

import pytest

from gateway.errors import BadHeaders
from gateway.pipeline.route import Router, normalize_host
from gateway.settings.schema import Route


def _route(name: str, host: str, path: str = "/", public: tuple[str, ...] = ()) -> Route:
    return Route(name=name, host=host, path=path, upstreams=("http://127.0.0.1:1",), public_paths=public)


ROUTER = Router(
    [
        _route("wiki", "wiki.example.com"),
        _route("wiki-admin", "wiki.example.com", "/admin"),
        _route("wiki-admin-api", "wiki.example.com", "/admin/api/"),
        _route("any-sub", "*.example.com"),
        _route("any-sub-static", "*.example.com", "/static", public=("/static/*",)),
        _route("apps", "apps.example.com", "/", public=("/health", "/assets/*.js")),
    ]
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("wiki.example.com", "wiki.example.com"),
        ("WIKI.Example.COM", "wiki.example.com"),
        ("wiki.example.com.", "wiki.example.com"),
        ("wiki.example.com:443", "wiki.example.com"),
        ("wiki.example.com.:8080", "wiki.example.com"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
    ],
)
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "evil.com@wiki.example.com",
        "wiki.example.com/x",
        "a b",
        "wiki.example.com:99999999",
        "http://x",
        ".",
        ":80",
    ],
)
def test_malformed_host_is_refused(raw: str) -> None:
    with pytest.raises(BadHeaders):
        normalize_host(raw)


@pytest.mark.parametrize(
    ("host", "path", "route"),
    [
        ("wiki.example.com", "/", "wiki"),
        ("wiki.example.com", "/page", "wiki"),
        ("wiki.example.com", "/admin", "wiki-admin"),
        ("wiki.example.com", "/admin/", "wiki-admin"),
        ("wiki.example.com", "/admin/users", "wiki-admin"),
        # A prefix matches on segment boundaries only: '/administrator' is not under '/admin'.
        ("wiki.example.com", "/administrator", "wiki"),
        ("wiki.example.com", "/admin/api", "wiki-admin-api"),
        ("wiki.example.com", "/admin/api/v1", "wiki-admin-api"),
        ("wiki.example.com", "/admin/apix", "wiki-admin"),
        # Exact host beats the wildcard.
        ("apps.example.com", "/static/x", "apps"),
        ("other.example.com", "/", "any-sub"),
        ("other.example.com", "/static/a.css", "any-sub-static"),
        # A wildcard covers exactly one label, like a TLS certificate.
        ("a.b.example.com", "/", None),
        ("example.com", "/", None),
        ("unknown.test", "/", None),
    ],
)
def test_most_specific_route_wins(host: str, path: str, route: str | None) -> None:
    match = ROUTER.match(host, path)
    assert (match.route.name if match else None) == route


@pytest.mark.parametrize(
    ("host", "path", "public"),
    [
        ("other.example.com", "/static/app.css", True),
        ("other.example.com", "/static", False),
        ("apps.example.com", "/health", True),
        ("apps.example.com", "/healthz", False),
        ("apps.example.com", "/health/x", False),
        ("apps.example.com", "/assets/app.js", True),
        ("apps.example.com", "/assets/app.js.map", False),
        ("apps.example.com", "/assets/deep/app.js", True),
        ("apps.example.com", "/", False),
    ],
)
def test_public_paths(host: str, path: str, public: bool) -> None:
    match = ROUTER.match(host, path)
    assert match is not None
    assert match.is_public is public


def test_exact_host_without_matching_prefix_falls_back_to_wildcard() -> None:
    router = Router([_route("api", "a.example.com", "/api"), _route("rest", "*.example.com")])
    hit = router.match("a.example.com", "/other")
    assert hit is not None
    assert hit.route.name == "rest"


def test_remembered_hosts_stay_bounded_and_malformed_ones_are_refused_every_time() -> None:
    limit = normalize_host.cache_info().maxsize
    assert limit is not None
    for i in range(3 * limit):
        assert normalize_host(f"Host-{i}.Example.com:8443") == f"host-{i}.example.com"
    assert normalize_host.cache_info().currsize <= limit
    for _ in range(2):  # a refusal is never remembered as an answer
        with pytest.raises(BadHeaders):
            normalize_host("bad host")


# -- path parameters, where a route allows them ----------------------------------------------------

PARAMS = (
    "public_url: https://auth.example.com\n"
    "routes:\n"
    "  - {name: java, host: java.example.com, upstreams: ['http://10.0.0.5'], allow_path_params: true,"
    " public_paths: ['/*.css', '/static/*']}\n"
    "  - {name: iis, host: iis.example.com, upstreams: ['http://10.0.0.6'], allow_path_params: true,"
    " case_insensitive_paths: true, public_paths: ['/static/*']}\n"
)


def _routed(host: str, raw: bytes) -> tuple[bool, str, str]:
    """Whether public, the path decided on, and the path sent to the app."""
    from gateway.errors import NoRoute
    from gateway.observe.record import RequestKind
    from gateway.pipeline.canonical import canonicalize
    from gateway.pipeline.context import RequestContext
    from gateway.pipeline.route import route_request
    from gateway.pipeline.snapshot import build_snapshot
    from gateway.settings.loader import parse_settings

    snap = build_snapshot(parse_settings(PARAMS), generation=1, source="test")
    ctx = RequestContext(RequestKind.HTTP, "GET")
    ctx.host_raw = host.encode()
    public = route_request(ctx, snap, canonicalize(raw), no_route=NoRoute)
    return public, ctx.path, ctx.path_and_query


@pytest.mark.parametrize(
    ("raw", "public", "decided", "sent"),
    [
        (b"/admin;x/secret", False, "/admin/secret", "/admin;x/secret"),
        (b"/admin/secret;.css", False, "/admin/secret", "/admin/secret;.css"),
        (b"/style.css;v=2", True, "/style.css", "/style.css;v=2"),
        (b"/;x/static/app.js", True, "/static/app.js", "/;x/static/app.js"),
    ],
)
def test_a_path_with_parameters_is_decided_as_a_servlet_container_maps_it(
    raw: bytes, public: bool, decided: str, sent: str
) -> None:
    """A re-attack run: Jetty served /admin;x/secret past a deny rule on /admin/*, and a public /*.css
    would have matched /admin/secret;.css."""
    assert _routed("java.example.com", raw) == (public, decided, sent)


@pytest.mark.parametrize(
    "raw",
    [
        b"/admin.;x/secret",
        b"/admin%20;x/secret",
        b"/static/..%20;x/admin",
        # The escapes of ':' and '$' are kept by canonicalisation, and read by IIS (a re-attack run).
        b"/admin%3a$i30%3a$INDEX_ALLOCATION/secret",
        b"/admin%3A%24i30%3A%24INDEX_ALLOCATION/secret",
        b"/web.config%3a%3a$DATA",
    ],
)
def test_parameters_do_not_hide_a_windows_spelling_on_a_case_insensitive_route(raw: bytes) -> None:
    """A re-attack run: `/admin.;x` is `/admin.` once its parameter is cut, which such a route refuses as
    another spelling of `/admin`; checked before the cut only, it was decided as `/admin./secret`."""
    from gateway.errors import BadPath

    with pytest.raises(BadPath):
        _routed("iis.example.com", raw)
