"""The gateway's reading of a POST's ``_method`` against the real parsers: PHP 8.2 with Symfony's
HttpFoundation (and Laravel's reading of a JSON body) and Rails' Rack::MethodOverride (Rack 2.2).

A differential test. Each body of the corpus is sent twice to each peer: straight to it (what the
framework runs the request as, unguarded) and through one gateway whose policy allows POST and GET only
(``p, authenticated, <route>, /*, GET|POST, allow``). Whenever the gateway lets a POST through, the
method the framework decided must be one the policy allows; wherever the framework, reached directly,
runs the request as another method (DELETE, PUT, PATCH, LINK …), the gateway must have answered 403.
Symfony's refusal of a method name that is not letters (an exception: 400, nothing runs) counts as no
method run. The controls (a browser's form, a file upload, JSON) must reach the app and be run as POST,
so the test cannot pass by refusing everything.

The corpus: every body of tests/unit/pipeline/test_body_overrides.py, the re-attack's cases (its 14
bypasses among them) and more bodies where PHP's and Rack's readings differ from the gateway's. The
apps are tests/support/override_peers/; scripts/ensure-test-deps installs PHP, Symfony's
HttpFoundation, Rack and WEBrick, and a missing one fails the test (a ``peer`` test never skips).
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.pipeline.overrides import FIELD_LIMIT, JSON_LIMIT
from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_gateway,
    stop,
    wait_for_port,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, cookie, login

pytestmark = pytest.mark.peer

PEERS_DIR = Path(__file__).resolve().parents[1] / "support" / "override_peers"
SYMFONY = Path("/usr/share/php/Symfony/Component/HttpFoundation/autoload.php")
POLICY = """\
p, authenticated, php, /*, GET|POST, allow
p, authenticated, rack, /*, GET|POST, allow
"""
ALLOWED = frozenset({"GET", "POST"})  # what the policy allows: a POST run as one of these is allowed


@dataclass(frozen=True)
class Peer:
    route: str  # the gateway's route (and the host it answers on: <route>.localhost)
    frameworks: tuple[str, ...]  # the keys of the app's answer that name the method it runs


PHP_PEER = Peer("php", ("symfony", "laravel"))
RACK_PEER = Peer("rack", ("rack",))
PEERS = (PHP_PEER, RACK_PEER)

FORM = ("Content-Type", "application/x-www-form-urlencoded")
JSON_TYPE = ("Content-Type", "application/json")


def multipart_type(boundary: str = "XyZ") -> tuple[str, str]:
    return ("Content-Type", f"multipart/form-data; boundary={boundary}")


@dataclass(frozen=True)
class Case:
    """A POST body and its headers; ``reads``: the frameworks that run it, reached directly, as a
    method the policy refuses (why it is in the corpus: checked, so the case keeps attacking)."""

    name: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = (FORM,)
    reads: frozenset[str] = frozenset()
    path: str = "/items/1"
    pieces: int = 0  # through the gateway chunked, in pieces of this many bytes (0: Content-Length)


def case(
    name: str,
    body: bytes,
    *headers: tuple[str, str],
    reads: str = "",
    path: str = "/items/1",
    pieces: int = 0,
) -> Case:
    return Case(name, body, tuple(headers), frozenset(reads.split()), path, pieces)


def part(name: bytes, value: bytes, boundary: bytes = b"XyZ", extra: bytes = b"") -> bytes:
    return b"--%s\r\nContent-Disposition: form-data; name=%s%s\r\n\r\n%s\r\n" % (boundary, name, extra, value)


def aaa(body: bytes, *, name: str, reads: str = "") -> Case:
    return case(name, body, multipart_type("aaa"), reads=reads)


ALL = "symfony laravel rack"
PHP_FORM = "symfony laravel"  # a form body: PHP's $_POST, read by both
DELETE_PART = b'--aaa\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--aaa--\r\n'
BIG_JSON = b'{"data": "' + b"x" * JSON_LIMIT + b'"'
PAIRS = b"&".join(b"a%d=%d" % (i, i) for i in range(FIELD_LIMIT * 3))
ENCODED_PAIRS = b"&".join(b"a%d=%%41" % i for i in range(FIELD_LIMIT + 1))
MANY_PARTS = b"".join(part(b'"a"', b"x") for _ in range(FIELD_LIMIT + 1))
WEBKIT = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"

# tests/unit/pipeline/test_body_overrides.py, body by body.
UNIT = [
    # url-encoded forms
    case("form-plain", b"a=1&b=2", FORM),
    case("form-delete", b"_method=DELETE", FORM, reads=ALL),
    case("form-put-lower", b"title=x&_method=put", FORM, reads=ALL),
    case("form-post", b"_method=POST", FORM),
    case("form-percent-name", b"%5Fmethod=patch&x=1", FORM, reads=ALL),
    case("form-dot-name", b".method=DELETE", FORM, reads=PHP_FORM),
    case("form-space-name", b"%20_method=DELETE", FORM, reads=PHP_FORM),
    case("form-nul-name", b"_method%00junk=DELETE", FORM, reads=PHP_FORM),
    case("form-semicolon", b"a=1;_method=DELETE", FORM),
    case("form-twice", b"_method=DELETE&_method=PUT", FORM, reads=ALL),
    case("form-not-a-field", b"x_method=DELETE&comment=_method%3DDELETE", FORM),
    case("form-no-type", b"_method=DELETE", reads="rack"),
    case("form-empty-type", b"_method=DELETE", ("Content-Type", ""), reads="rack"),
    case("text-plain", b"_method=DELETE", ("Content-Type", "text/plain")),
    case("octet-stream", b"_method=DELETE", ("Content-Type", "application/octet-stream")),
    case("image-png", b"_method=DELETE", ("Content-Type", "image/png")),
    case("form-long-value", b"text=" + b"a" * 200_000 + b"&_method=DELETE", FORM, reads=ALL),
    case("form-long-name", b"x" * 100_000 + b"=1", FORM),
    case("form-long-method", b"_method=" + b"D" * 100_000, FORM, reads=PHP_FORM),  # Symfony: any letters
    # multipart forms
    case("mp-plain", part(b'"title"', b"hello") + b"--XyZ--\r\n", multipart_type()),
    case("mp-delete", part(b'"_method"', b"DELETE") + b"--XyZ--\r\n", multipart_type(), reads=ALL),
    case("mp-bare-name", part(b"_method", b"put") + b"--XyZ--\r\n", multipart_type(), reads=ALL),
    case(
        "mp-dot-name",
        part(b'"title"', b"x") + part(b'".method"', b"PATCH") + b"--XyZ--\r\n",
        multipart_type(),
        reads=PHP_FORM,
    ),
    case("mp-post", part(b'"_method"', b"POST") + b"--XyZ--\r\n", multipart_type()),
    case(
        "mp-file-content",
        part(b'"file"', b'--Xy\r\n_method=DELETE\r\nname="_method"', extra=b'; filename="m.txt"')
        + b"--XyZ--\r\n",
        multipart_type(),
    ),
    case("mp-rfc2231-name", part(b"x; name*=utf-8''_method", b"DELETE") + b"--XyZ--\r\n", multipart_type()),
    case(
        "mp-no-closing",
        b'--XyZ\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE',
        multipart_type(),
        reads=PHP_FORM,
    ),
    case(
        "mp-bare-lf",
        b'--XyZ\nContent-Disposition: form-data; name="_method"\n\nDELETE\n--XyZ--\n',
        multipart_type(),
        reads=PHP_FORM,
    ),
    case(
        "mp-preamble-epilogue",
        b"ignored\r\n" + part(b'"_method"', b"DELETE") + b"--XyZ--\r\nepilogue",
        multipart_type(),
        reads=ALL,
    ),
    case("mp-name-after-close", part(b'"a"', b"x") + b'--XyZ--\r\nname="_method"', multipart_type()),
    case("mp-no-boundary", b"x", ("Content-Type", "multipart/form-data")),
    case(
        "mp-endless-head",
        b'--XyZ\r\nContent-Disposition: form-data; name="a"' + b"x" * 20_000,
        multipart_type(),
    ),
    case(
        "mp-large-upload",
        part(b'"file"', b"\0\xff" * 2_000_000, extra=b'; filename="a.bin"')
        + part(b'"_method"', b"DELETE")
        + b"--XyZ--\r\n",
        multipart_type(),
        reads=ALL,
    ),
    # JSON
    case("json-plain", b'{"name": "x"}', JSON_TYPE),
    case("json-delete", b'{"_method": "DELETE"}', JSON_TYPE, reads="laravel"),
    case("json-put-lower", b'{"_method": "put"}', JSON_TYPE, reads="laravel"),
    case("json-list-value", b'{"_method": ["DELETE"]}', JSON_TYPE),
    case("json-nested", b'{"a": {"_method": "DELETE"}}', JSON_TYPE),
    case("json-array", b'["_method", "DELETE"]', JSON_TYPE),
    case("json-key-as-value", b'{"note": "_method"}', JSON_TYPE),
    case("json-escaped-key", b'{"\\u005fmethod": "DELETE"}', JSON_TYPE, reads="laravel"),
    case(
        "json-api-type", b'{"_method":"PATCH"}', ("Content-Type", "application/vnd.api+json"), reads="laravel"
    ),
    case("json-trailing-comma", b'{"a": 1,}', JSON_TYPE),
    case("json-trailing-comma-key", b'{"_method": "DELETE",}', JSON_TYPE),
    case("json-over-limit", BIG_JSON + b"}", JSON_TYPE),
    case("json-over-limit-key", BIG_JSON + b', "_method": "DELETE"}', JSON_TYPE, reads="laravel"),
    case("json-over-limit-escaped", BIG_JSON + b', "_\\u006dethod": "DELETE"}', JSON_TYPE, reads="laravel"),
    # several types, bounded cost, compression
    case("form-and-json-form", b"_method=DELETE", FORM, JSON_TYPE, reads="symfony rack"),
    case("form-and-json-json", b'{"_method":"PUT"}', FORM, JSON_TYPE, reads="laravel"),
    case("form-many-pairs", PAIRS, FORM),
    case("form-many-pairs-key", PAIRS + b"&_method=DELETE", FORM),  # past PHP's and Rack's limits
    case("form-many-encoded-key", ENCODED_PAIRS + b"&_method=PUT", FORM),
    case("form-some-encoded-key", ENCODED_PAIRS[:5000] + b"&_method=PUT", FORM, reads=PHP_FORM),
    case("mp-many-parts", MANY_PARTS + b"--XyZ--\r\n", multipart_type()),
    case("mp-some-parts", MANY_PARTS[:5000].rpartition(b"--XyZ")[0] + b"--XyZ--\r\n", multipart_type()),
    case("gzip-bytes", b"\x1f\x8b...", FORM, ("Content-Encoding", "gzip")),
    case("identity-coding", b"a=1", FORM, ("Content-Encoding", "identity")),
    # the re-attack's multipart bypasses (BOUNDARY_CASES)
    aaa(b"--aaa--\r\n" + DELETE_PART, reads=ALL, name="mp-early-close"),
    aaa(DELETE_PART.replace(b'"_method"', b"'_method'"), reads=PHP_FORM, name="mp-single-quotes"),
    aaa(
        b"--aaa\r\nContent-Disposition:name=_method\r\n\r\nDELETE\r\n--aaa--\r\n",
        reads=PHP_FORM,
        name="mp-name-after-colon",
    ),
    aaa(DELETE_PART.replace(b'"_method"', b'"[_method]"'), reads="rack", name="mp-bracketed-name"),
    aaa(b"--aaa\r\nContent-ID: _method\r\n\r\nDELETE\r\n--aaa--\r\n", reads="rack", name="mp-content-id"),
    aaa(b"  " + DELETE_PART, reads="rack", name="mp-indented-first"),
    aaa(
        b'--aaa\r\nContent-Disposition: form-data; name="x"\r\n\r\nv--aaa\r\n\t--aaa\r\n'
        b'Content-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
        reads="rack",
        name="mp-inline-delimiter",
    ),
    # boundaries PHP and Rack could read differently
    *(
        case(f"boundary-{i}", DELETE_PART.replace(b'"_method"', b'"a"'), ("Content-Type", value))
        for i, value in enumerate(
            [
                "multipart/form-data; BOUNDARY=zzz; boundary=aaa",
                "multipart/form-data; xboundary=zzz; boundary=aaa",
                "multipart/form-data; boundary= aaa",
                "multipart/form-data; boundary=aaa bbb",
                'multipart/form-data; boundary="aaa bbb"',
                "multipart/form-data; boundary=",
            ]
        )
    ),
    # content types and keys as PHP, Laravel and Rack read them
    case(
        "type-trailing-word",
        b"_method=DELETE",
        ("Content-Type", "application/x-www-form-urlencoded x"),
        reads=PHP_FORM,
    ),
    case(
        "type-json-param", b'{"_method":"DELETE"}', ("Content-Type", "text/plain; a=/json"), reads="laravel"
    ),
    case(
        "type-form-json-param",
        b'{"_method":"DELETE"}',
        ("Content-Type", "application/x-www-form-urlencoded; x=/json"),
        reads="laravel",
    ),
    case(
        "type-list",
        b'{"_method":"DELETE"}',
        ("Content-Type", "text/plain, application/json"),
        reads="laravel",
    ),
    case("type-underscore", b'{"_method":"DELETE"}', ("Content_Type", "application/json"), reads="laravel"),
    case("form-bracketed-key", b"[_method]=DELETE", FORM, reads="rack"),
    case("form-closing-bracket-key", b"_method]=DELETE", FORM, reads="rack"),
    # ordinary bodies
    case("form-payment-method", b"payment_method=card&method=x", FORM),
]

# The re-attack's other cases (scratch scripts c1-c3): those the unit corpus does not have already.
REATTACK = [
    case("json-duplicate-last", b'{"_method":"POST","_method":"DELETE"}', JSON_TYPE, reads="laravel"),
    case("json-duplicate-first", b'{"_method":"DELETE","_method":"POST"}', JSON_TYPE),
    case("json-escaped-value", b'{"\\u005fmethod":"DEL\\u0045TE"}', JSON_TYPE, reads="laravel"),
    case("json-text-json", b'{"_method":"DELETE"}', ("Content-Type", "text/json"), reads="laravel"),
    case("json-foo-json", b'{"_method":"DELETE"}', ("Content-Type", "application/foo+json"), reads="laravel"),
    case(
        "json-big-integer",
        b'{"n":123456789012345678901234567890,"_method":"DELETE"}',
        JSON_TYPE,
        reads="laravel",
    ),
    case("json-big-exponent", b'{"n":1e999,"_method":"DELETE"}', JSON_TYPE, reads="laravel"),
    case("json-deep", b'{"_method":"DELETE","d":' + b"[" * 600 + b"]" * 600 + b"}", JSON_TYPE),
    case(
        "json-two-types", b'{"_method":"DELETE"}', ("Content-Type", "text/plain"), JSON_TYPE, reads="laravel"
    ),
    case(
        "json-two-types-b",
        b'{"_method":"DELETE"}',
        JSON_TYPE,
        ("Content-Type", "text/plain"),
        reads="laravel",
    ),
    case("form-two-types", b"_method=DELETE", ("Content-Type", "text/plain"), FORM),
    case("form-two-types-b", b"_method=DELETE", FORM, ("Content-Type", "text/plain"), reads=ALL),
    case(
        "form-charset",
        b"_method=DELETE",
        ("Content-Type", "application/x-www-form-urlencoded; charset=utf-7"),
        reads=ALL,
    ),
    case(
        "form-upper-type",
        b"_method=DELETE",
        ("Content-Type", "APPLICATION/X-WWW-FORM-URLENCODED"),
        reads=ALL,
    ),
    case("form-tab-type", b"_method=DELETE", ("Content-Type", "application/x-www-form-urlencoded\tx")),
    case(
        "form-space-semicolon-type",
        b"_method=DELETE",
        ("Content-Type", "application/x-www-form-urlencoded ;x"),
        reads=ALL,
    ),
    case("form-leading-space", b"a=1& _method=DELETE", FORM, reads=ALL),
    case("form-overlong-utf8", b"%C0%DFmethod=DELETE", FORM),
    case("form-gzip", gzip.compress(b"_method=DELETE"), FORM, ("Content-Encoding", "gzip")),
    case("form-chunked", b"title=x&_method=DELETE", FORM, reads=ALL, pieces=3),
    case("query-delete", b"a=1", FORM, reads=PHP_FORM, path="/items/1?_method=DELETE"),
    case("query-folded", b"a=1", FORM, reads=PHP_FORM, path="/items/1?%20.method=DELETE"),
    aaa(
        part(b'"x"', b"1", b"aaa") + b"--aaa--\r\n" + DELETE_PART,
        reads=PHP_FORM,
        name="mp-close-in-the-middle",
    ),
    aaa(
        DELETE_PART.replace(b"form-data; ", b"").replace(b": ", b":"), reads=PHP_FORM, name="mp-colon-quoted"
    ),
    aaa(
        b"--aaa\r\nContent-Disposition: form-data\r\nContent-ID: _method\r\n\r\nDELETE\r\n--aaa--\r\n",
        reads="rack",
        name="mp-content-id-after-disposition",
    ),
    case(
        "boundary-spaces-sent",
        b"-- aaa\r\n" + DELETE_PART.partition(b"\r\n")[2].replace(b"--aaa", b"-- aaa"),
        ("Content-Type", "multipart/form-data; boundary= aaa"),
        reads=ALL,
    ),
    case(
        "boundary-inner-space-sent",
        part(b'"x"', b"1", b"aaa bbb") + b"--aaa--\r\n" + DELETE_PART.replace(b"--aaa", b"--aaa bbb"),
        ("Content-Type", "multipart/form-data; boundary=aaa bbb"),
        reads=ALL,
    ),
]

# Bodies where this test's reading of PHP's and Rack's parsers differs from the gateway's.
MORE = [
    # Other method names: GET is allowed; HEAD, OPTIONS, LINK (Rack) and any letters (Symfony) are not.
    case("form-get", b"_method=GET", FORM),
    case("form-head", b"_method=HEAD", FORM, reads=ALL),
    case("form-options", b"_method=options", FORM, reads=ALL),
    case("form-link", b"_method=LINK", FORM, reads=ALL),
    case("form-custom-method", b"_method=FOO", FORM, reads=PHP_FORM),
    case("form-spaced-value", b"_method=DEL+ETE", FORM),
    case("form-array-name", b"_method[]=DELETE", FORM),
    case("form-trailing-nul", b"_method=DELETE\0", FORM, reads="rack"),  # Rack drops a last NUL
    # Multipart: the other types Rack reads, a head folded over lines, a file part named _method.
    case(
        "mp-mixed",
        part(b'"_method"', b"DELETE") + b"--XyZ--\r\n",
        ("Content-Type", "multipart/mixed; boundary=XyZ"),
        reads="rack",
    ),
    case(
        "mp-related",
        part(b'"_method"', b"DELETE") + b"--XyZ--\r\n",
        ("Content-Type", "multipart/related; boundary=XyZ"),
        reads="rack",
    ),
    aaa(
        b'--aaa\r\nContent-Disposition: form-data;\r\n name="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
        reads=ALL,
        name="mp-folded-head",
    ),
    aaa(
        b"--aaa\r\nContent-Disposition: form-data; name=\r\n_method\r\n\r\nDELETE\r\n--aaa--\r\n",
        reads=PHP_FORM,
        name="mp-name-on-next-line",
    ),
    # PHP joins a head line without a colon to the line before it, with nothing between.
    aaa(
        b'--aaa\r\nContent-Disposition: form-data; name="_met\r\nhod"\r\n\r\nDELETE\r\n--aaa--\r\n',
        reads=PHP_FORM,
        name="mp-name-continued-without-colon",
    ),
    aaa(
        b'--aaa\r\nContent-Disposition: form-data; na\nme="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
        reads=PHP_FORM,
        name="mp-key-continued-without-colon",
    ),
    # Rack ends a part's head only at CRLF CRLF; a bare blank line ends the gateway's and PHP's.
    aaa(
        b"--aaa\r\nContent-Type: text/plain\n\nContent-Disposition: form-data; "
        b'name="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
        reads="rack",
        name="mp-head-past-bare-blank-line",
    ),
    aaa(
        b"--aaa\r\nX-Note: a\n\r\nContent-Disposition: form-data; "
        b'name="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
        reads="rack",
        name="mp-head-past-lf-crlf",
    ),
    aaa(
        DELETE_PART.replace(b"\r\n\r\nDELETE", b'; filename=""\r\n\r\nDELETE'),
        name="mp-empty-filename",
    ),
    aaa(
        DELETE_PART.replace(b"\r\n\r\nDELETE", b"\r\nContent-Type: text/plain\r\n\r\nDELETE"),
        reads=ALL,
        name="mp-typed-part",
    ),
]

# Ordinary requests: each must reach the app and be run as POST.
CONTROLS = [
    case(
        "browser-form",
        b"title=Weekly+report&body=Numbers+%26+notes&payment_method=card&method=post&csrf=abc123",
        ("Content-Type", "application/x-www-form-urlencoded; charset=UTF-8"),
    ),
    case(
        "browser-upload",
        b"--" + WEBKIT + b'\r\nContent-Disposition: form-data; name="payment_method"\r\n\r\ncard\r\n'
        b"--" + WEBKIT + b'\r\nContent-Disposition: form-data; name="file"; filename="method.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\n_method=DELETE\r\n--" + WEBKIT + b"--\r\n",
        ("Content-Type", "multipart/form-data; boundary=" + WEBKIT.decode()),
    ),
    case(
        "json-api-call",
        json.dumps({"id": 7, "note": "_method", "tags": ["a", "b"], "method": "DELETE"}).encode(),
        ("Content-Type", "application/json; charset=utf-8"),
    ),
    case("form-allowed-override", b"title=x&_method=POST", FORM),
    case("chunked-form", b"title=x&comment=fine&payment_method=card", FORM, pieces=5),
]

CORPUS = UNIT + REATTACK + MORE


def test_the_corpus_names_each_case_once() -> None:
    names = [c.name for c in CORPUS + CONTROLS]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]


# --------------------------------------------------------------------------------------------------
# The peers and the gateway
# --------------------------------------------------------------------------------------------------


@dataclass
class Site:
    gw: Gateway
    session: str
    ports: dict[str, int] = field(default_factory=dict)  # route -> the peer's own port


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: scripts/ensure-test-deps installs it")
    return found


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=PEERS_DIR, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    php, ruby = _tool("php"), _tool("ruby")
    if not SYMFONY.is_file():
        pytest.fail(f"{SYMFONY} is missing: scripts/ensure-test-deps installs php-symfony-http-foundation")
    tmp = tmp_path_factory.mktemp("override-peers")
    (tmp / "policy.csv").write_text(POLICY)
    ports = {"php": free_port(), "rack": free_port()}
    with contextlib.ExitStack() as started:
        # PHP's own defaults (max_input_vars 1000, upload_max_filesize 2M), warnings to the log.
        for route, argv in (
            ("php", [php, "-d", "display_errors=stderr", "-S", f"127.0.0.1:{ports['php']}", "app.php"]),
            ("rack", [ruby, "rack_app.rb", str(ports["rack"])]),
        ):
            log = tmp / f"{route}.log"
            proc = _start(argv, log)
            started.callback(stop, proc)
            try:
                wait_for_port(ports[route], proc=proc)
            except (RuntimeError, TimeoutError) as exc:  # a missing gem or library: a failure, never a skip
                pytest.fail(
                    f"the {route} peer did not start ({exc}; scripts/ensure-test-deps):\n{log.read_text()}"
                )
        routes: list[dict[str, Any]] = [
            {
                "name": route,
                "host": f"{route}.localhost",
                "upstreams": [f"http://127.0.0.1:{port}"],
                "mfa": "none",
            }
            for route, port in ports.items()
        ]
        config = gateway_config(
            tmp / "gw",
            free_port(),
            routes,
            session={"insecure_cookies": True},
            policy={"file": str(tmp / "policy.csv")},
        )
        gw = started.enter_context(run_gateway(tmp / "gw", config))
        add_user(gw.config_path, "ann", PASSWORD)
        with browser(gw) as client:
            assert login(client, "ann").status_code == 302
            session = cookie(client, SESSION_COOKIE)
        assert session
        yield Site(gw, session, ports)


# --------------------------------------------------------------------------------------------------
# Sending a body exactly as the case gives it
# --------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes

    @property
    def decided(self) -> dict[str, Any]:
        try:
            answer = json.loads(self.body)
        except ValueError:
            raise AssertionError(f"not the app's answer: {self.status} {self.body[:300]!r}") from None
        assert isinstance(answer, dict), answer
        return answer


def request_bytes(c: Case, host: str, session: str | None, *, chunked: bool) -> bytes:
    lines = [f"POST {c.path} HTTP/1.1", f"Host: {host}"]
    if session:
        lines.append(f"Cookie: {SESSION_COOKIE}={session}")
    lines += [f"{name}: {value}" for name, value in c.headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        step = c.pieces
        body = b"".join(
            b"%x\r\n%s\r\n" % (len(c.body[i : i + step]), c.body[i : i + step])
            for i in range(0, len(c.body), step)
        )
        body += b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(c.body)}")
        body = c.body
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def send(port: int, data: bytes) -> Answer:
    """Send ``data`` on a new connection and read the answer. The body goes from another thread: a
    server may answer (a 403) before it has read a large body, and stop reading."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def write() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return Answer(resp.status, resp.read())
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        writer.join(timeout=30)
        sock.close()


def runs_as(method: str) -> bool:
    """Whether a framework that decided ``method`` runs the request as a method the policy refuses
    (an exception, Symfony's for a method name that is not letters or Rack's for too many parts, runs
    nothing)."""
    return method not in ALLOWED and not method.startswith("EXC:")


def short(decided: dict[str, Any]) -> dict[str, str]:
    return {fw: str(method)[:40] for fw, method in decided.items()}


def both_ways(site: Site, peer: Peer, c: Case) -> tuple[dict[str, Any], Answer]:
    """The peer's answer reached directly, and the gateway's (the app's when it let the request on)."""
    direct = send(site.ports[peer.route], request_bytes(c, "127.0.0.1", None, chunked=False)).decided
    via = send(site.gw.port, request_bytes(c, f"{peer.route}.localhost", site.session, chunked=c.pieces > 0))
    return direct, via


# --------------------------------------------------------------------------------------------------
# The differential property
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CORPUS, ids=lambda c: c.name)
def test_the_gateway_refuses_what_a_framework_would_run_as_a_refused_method(site: Site, c: Case) -> None:
    failures = []
    for peer in PEERS:
        direct, via = both_ways(site, peer, c)
        unguarded = {fw: direct[fw] for fw in peer.frameworks}
        refused = {fw: method for fw, method in unguarded.items() if runs_as(method)}
        missing = (c.reads & set(peer.frameworks)) - refused.keys()
        assert not missing, (
            f"{c.name}: {sorted(missing)} no longer run it as another method: {short(unguarded)}"
        )
        if 200 <= via.status < 300:
            through = {fw: via.decided[fw] for fw in peer.frameworks}
            if refused or any(runs_as(method) for method in through.values()):
                failures.append(
                    f"BYPASS through {peer.route}: the gateway answered {via.status}; reached directly "
                    f"{short(unguarded)}, through the gateway {short(through)}"
                )
        elif refused and via.status != 403:
            failures.append(f"{peer.route} runs it as {short(refused)}; the gateway answered {via.status}")
    assert not failures, f"{c.name} {c.headers} {c.body[:300]!r}\n" + "\n".join(failures)


@pytest.mark.parametrize("c", CONTROLS, ids=lambda c: c.name)
def test_ordinary_posts_reach_the_app_as_posts(site: Site, c: Case) -> None:
    for peer in PEERS:
        direct, via = both_ways(site, peer, c)
        assert via.status == 200, (peer.route, via.status, via.body[:300])
        through = via.decided
        for fw in peer.frameworks:
            assert direct[fw] == through[fw] == "POST", (peer.route, short(direct), short(through))
        if peer is PHP_PEER:  # PHP read the same fields through the gateway
            assert (through["post"], through["body_bytes"]) == (direct["post"], direct["body_bytes"])


@pytest.mark.parametrize("name", ["X-HTTP-Method-Override", "X_HTTP_Method_Override"])
def test_the_override_header_never_reaches_the_app(site: Site, name: str) -> None:
    """Symfony and Rack also take the method from a header: the gateway drops it, so the app runs the
    POST it allowed."""
    c = case("header", b"a=1", FORM, (name, "DELETE"))
    for peer in PEERS:
        direct, via = both_ways(site, peer, c)
        assert via.status == 200, (peer.route, via.status, via.body[:300])
        for fw in peer.frameworks:
            assert (direct[fw], via.decided[fw]) == ("DELETE", "POST"), (peer.route, direct, via.decided)


def test_the_peers_do_override(site: Site) -> None:
    """The corpus attacks each framework, and each runs a plain form's ``_method``."""
    assert {fw for c in CORPUS for fw in c.reads} == {"symfony", "laravel", "rack"}
    form = case("form", b"title=x&_method=PATCH", FORM)
    for peer in PEERS:
        direct, _ = both_ways(site, peer, form)
        assert {direct[fw] for fw in peer.frameworks} == {"PATCH"}, direct
