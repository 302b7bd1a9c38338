"""The ``_method`` a POST body names, as Laravel, Symfony and Rails read it: url-encoded forms, multipart
forms and (Laravel) JSON. An attack run: a policy that allowed POST and refused DELETE let a form field
``_method=DELETE`` through, because only the query string was read. Every body is also fed in every
split into two pieces, and byte by byte: where a piece ends must not change what is found."""

from __future__ import annotations

import json

import pytest

from gateway.pipeline.overrides import FIELD_LIMIT, JSON_LIMIT, UNREADABLE, body_scan

FORM = [(b"content-type", b"application/x-www-form-urlencoded")]
JSON = [(b"content-type", b"application/json")]


def multipart(boundary: bytes = b"XyZ") -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"multipart/form-data; boundary=" + boundary)]


def part(name: bytes, value: bytes, boundary: bytes = b"XyZ", extra: bytes = b"") -> bytes:
    return b"--%s\r\nContent-Disposition: form-data; name=%s%s\r\n\r\n%s\r\n" % (boundary, name, extra, value)


def found(headers: list[tuple[bytes, bytes]], body: bytes) -> frozenset[str]:
    """What the scan finds in ``body`` fed whole, in every two pieces and byte by byte (all equal)."""
    results = set()
    splits = [[body], [body[i : i + 1] for i in range(len(body))]]
    splits += [[body[:i], body[i:]] for i in range(1, len(body))]
    for pieces in splits:
        scan = body_scan(headers)
        assert scan is not None
        for piece in pieces:
            scan.feed(piece)
        results.add(scan.finish())
    assert len(results) == 1, results
    return results.pop()


@pytest.mark.parametrize(
    ("body", "methods"),
    [
        (b"a=1&b=2", set()),
        (b"_method=DELETE", {"DELETE"}),
        (b"title=x&_method=put", {"PUT"}),
        (b"_method=POST", set()),
        (b"%5Fmethod=patch&x=1", {"PATCH"}),
        (b".method=DELETE", {"DELETE"}),
        (b"%20_method=DELETE", {"DELETE"}),
        (b"_method%00junk=DELETE", {"DELETE"}),
        (b"a=1;_method=DELETE", {"DELETE"}),  # old Rack splits on ";" too
        (b"_method=DELETE&_method=PUT", {"DELETE", "PUT"}),
        (b"x_method=DELETE&comment=_method%3DDELETE", set()),  # a value that says it is not a field
    ],
)
def test_a_url_encoded_form(body: bytes, methods: set[str]) -> None:
    assert found(FORM, body) == methods


def test_a_post_without_a_content_type_is_read_as_a_form_as_rack_does() -> None:
    assert found([], b"_method=DELETE") == {"DELETE"}
    assert found([(b"content-type", b"")], b"_method=DELETE") == {"DELETE"}


def test_types_no_framework_reads_parameters_from_are_not_read() -> None:
    for media in (b"text/plain", b"application/octet-stream", b"image/png"):
        assert body_scan([(b"content-type", media)]) is None


def test_a_long_form_value_and_a_name_no_form_has() -> None:
    long_value = b"text=" + b"a" * 200_000 + b"&_method=DELETE"
    assert found_whole(FORM, long_value) == {"DELETE"}
    assert found_whole(FORM, b"x" * 100_000 + b"=1") == {UNREADABLE}
    # A _method value that long is no method: kept cut, which no policy's method list names.
    (method,) = found_whole(FORM, b"_method=" + b"D" * 100_000)
    assert len(method) <= 256


def found_whole(headers: list[tuple[bytes, bytes]], body: bytes, piece: int = 8192) -> frozenset[str]:
    scan = body_scan(headers)
    assert scan is not None
    for at in range(0, len(body), piece):
        scan.feed(body[at : at + piece])
    return scan.finish()


@pytest.mark.parametrize(
    ("body", "methods"),
    [
        (part(b'"title"', b"hello") + b"--XyZ--\r\n", set()),
        (part(b'"_method"', b"DELETE") + b"--XyZ--\r\n", {"DELETE"}),
        (part(b"_method", b"put") + b"--XyZ--\r\n", {"PUT"}),  # a bare name
        (part(b'"title"', b"x") + part(b'".method"', b"PATCH") + b"--XyZ--\r\n", {"PATCH"}),
        (part(b'"_method"', b"POST") + b"--XyZ--\r\n", set()),
        # A file whose content says _method is content, not a field.
        (
            part(b'"file"', b'--Xy\r\n_method=DELETE\r\nname="_method"', extra=b'; filename="m.txt"')
            + b"--XyZ--\r\n",
            set(),
        ),
        # RFC 2231's name*=, and a part with no closing delimiter.
        (part(b"x; name*=utf-8''_method", b"DELETE") + b"--XyZ--\r\n", {"DELETE"}),
        (b'--XyZ\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE', {"DELETE"}),
        # PHP also reads lines that end in a bare LF.
        (b'--XyZ\nContent-Disposition: form-data; name="_method"\n\nDELETE\n--XyZ--\n', {"DELETE"}),
        # A preamble before the first delimiter, and an epilogue after the last (read too: for PHP a
        # closing delimiter early in the body ends nothing); a head that never ends is unreadable.
        (b"ignored\r\n" + part(b'"_method"', b"DELETE") + b"--XyZ--\r\nepilogue", {"DELETE"}),
        (part(b'"a"', b"x") + b'--XyZ--\r\nname="_method"', {UNREADABLE}),
    ],
)
def test_a_multipart_form(body: bytes, methods: set[str]) -> None:
    assert found(multipart(), body) == methods


def test_a_multipart_body_it_cannot_read() -> None:
    assert found([(b"content-type", b"multipart/form-data")], b"x") == {UNREADABLE}  # no boundary
    endless = b'--XyZ\r\nContent-Disposition: form-data; name="a"' + b"x" * 20_000
    assert found_whole(multipart(), endless) == {UNREADABLE}


def test_a_large_multipart_upload_is_skipped_in_c() -> None:
    upload = part(b'"file"', b"\0\xff" * 2_000_000, extra=b'; filename="a.bin"')
    body = upload + part(b'"_method"', b"DELETE") + b"--XyZ--\r\n"
    assert found_whole(multipart(), body, piece=65536) == {"DELETE"}


@pytest.mark.parametrize(
    ("body", "methods"),
    [
        ({"name": "x"}, set()),
        ({"_method": "DELETE"}, {"DELETE"}),
        ({"_method": "put"}, {"PUT"}),
        ({"_method": ["DELETE"]}, set()),  # Symfony ignores a value that is not a string
        ({"a": {"_method": "DELETE"}}, set()),  # only the top level is the request's parameters
        (["_method", "DELETE"], set()),
        ({"note": "_method"}, set()),
    ],
)
def test_a_json_body(body: object, methods: set[str]) -> None:
    assert found(JSON, json.dumps(body).encode()) == methods


def test_json_escapes_and_types_laravel_reads_as_json() -> None:
    assert found(JSON, b'{"\\u005fmethod": "DELETE"}') == {"DELETE"}
    assert found([(b"content-type", b"application/vnd.api+json")], b'{"_method":"PATCH"}') == {"PATCH"}
    # Not JSON to the gateway: passes only if it cannot name the key.
    assert found(JSON, b'{"a": 1,}') == set()
    assert found(JSON, b'{"_method": "DELETE",}') == {UNREADABLE}


def test_a_json_body_over_the_limit_is_searched_for_the_key() -> None:
    big = {"data": "x" * JSON_LIMIT}
    assert found_whole(JSON, json.dumps(big).encode()) == set()
    assert found_whole(JSON, json.dumps({**big, "_method": "DELETE"}).encode()) == {UNREADABLE}
    assert found_whole(JSON, json.dumps({**big, "_m\u0065thod": "DELETE"}, ensure_ascii=True).encode()) == {
        UNREADABLE
    }
    escaped = b'{"data": "' + b"x" * JSON_LIMIT + b'", "_\\u006dethod": "DELETE"}'
    assert found_whole(JSON, escaped, piece=7) == {UNREADABLE}


def test_several_content_types_are_each_read() -> None:
    headers = [*FORM, *JSON]
    # Not JSON, yet naming the key: unreadable to the JSON reader.
    assert found(headers, b"_method=DELETE") == {"DELETE", UNREADABLE}
    assert found(headers, b'{"_method":"PUT"}') == {"PUT"}


def test_what_a_body_costs_is_bounded_by_its_fields() -> None:
    """Reading pairs one by one is Python's work: a million-pair form took 2 s of the event loop. A
    form whose pieces hold neither ``%`` nor "method" is passed over in C; past FIELD_LIMIT fields
    read one by one a body counts as unreadable (PHP reads 1,000, Rack 4,096)."""
    plain = b"&".join(b"a%d=%d" % (i, i) for i in range(FIELD_LIMIT * 3))
    assert found_whole(FORM, plain) == set()
    assert found_whole(FORM, plain + b"&_method=DELETE") == {"DELETE"}
    encoded = b"&".join(b"a%d=%%41" % i for i in range(FIELD_LIMIT + 1))
    assert found_whole(FORM, encoded + b"&_method=PUT") == {UNREADABLE}
    assert found_whole(FORM, encoded[:5000] + b"&_method=PUT") == {"PUT"}
    parts = b"".join(part(b'"a"', b"x") for _ in range(FIELD_LIMIT + 1)) + b"--XyZ--\r\n"
    assert found_whole(multipart(), parts) == {UNREADABLE}
    assert found_whole(multipart(), parts[:5000].rpartition(b"--XyZ")[0] + b"--XyZ--\r\n") == set()


def test_a_compressed_body_cannot_be_read() -> None:
    """A server in front of the app may inflate it (Apache's DEFLATE input filter)."""
    gzip = [*FORM, (b"content-encoding", b"gzip")]
    assert found(gzip, b"\x1f\x8b...") == {UNREADABLE}
    assert found([*FORM, (b"content-encoding", b"identity")], b"a=1") == set()
    assert body_scan([(b"content-type", b"image/png"), (b"content-encoding", b"gzip")]) is None


# A re-attack run with real parsers (PHP 8.2 with Symfony's HttpFoundation and Laravel's JSON reading,
# Rack 2.2's MethodOverride): each of these was read as DELETE by one of them and let through.
BOUNDARY_CASES = [
    # PHP skips a line that is not exactly a delimiter, so an early closing one ends nothing (Rack too).
    b'--aaa--\r\n--aaa\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
    # PHP reads single quotes, and a name right after the colon.
    b"--aaa\r\nContent-Disposition: form-data; name='_method'\r\n\r\nDELETE\r\n--aaa--\r\n",
    b"--aaa\r\nContent-Disposition:name=_method\r\n\r\nDELETE\r\n--aaa--\r\n",
    # Rack: a bracketed name, a Content-ID for a name, an indented first delimiter, a delimiter in
    # the middle of a line.
    b'--aaa\r\nContent-Disposition: form-data; name="[_method]"\r\n\r\nDELETE\r\n--aaa--\r\n',
    b"--aaa\r\nContent-ID: _method\r\n\r\nDELETE\r\n--aaa--\r\n",
    b'  --aaa\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
    b'--aaa\r\nContent-Disposition: form-data; name="x"\r\n\r\nv--aaa\r\n\t--aaa\r\n'
    b'Content-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
]


@pytest.mark.parametrize("body", BOUNDARY_CASES)
def test_multipart_as_php_and_rack_read_it(body: bytes) -> None:
    assert "DELETE" in found(multipart(b"aaa"), body)


@pytest.mark.parametrize(
    "content_type",
    [
        b"multipart/form-data; BOUNDARY=zzz; boundary=aaa",  # PHP: the first case-sensitive one
        b"multipart/form-data; xboundary=zzz; boundary=aaa",  # PHP: "boundary" anywhere
        b"multipart/form-data; boundary= aaa",  # spaces: PHP and Rack keep them
        b"multipart/form-data; boundary=aaa bbb",
        b'multipart/form-data; boundary="aaa bbb"',
        b"multipart/form-data; boundary=",
    ],
)
def test_a_boundary_php_and_rack_could_read_differently_is_unreadable(content_type: bytes) -> None:
    body = b'--aaa\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--aaa--\r\n'
    assert found([(b"content-type", content_type)], body) == {UNREADABLE}


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        # PHP cuts the media type at a space too.
        ([(b"content-type", b"application/x-www-form-urlencoded x")], b"_method=DELETE"),
        # Laravel looks for "/json" anywhere in the header, a list included.
        ([(b"content-type", b"text/plain; a=/json")], b'{"_method":"DELETE"}'),
        ([(b"content-type", b"application/x-www-form-urlencoded; x=/json")], b'{"_method":"DELETE"}'),
        ([(b"content-type", b"text/plain, application/json")], b'{"_method":"DELETE"}'),
        # PHP's built-in server reads a Content_Type header as the type.
        ([(b"content_type", b"application/json")], b'{"_method":"DELETE"}'),
        # Rack's bracketed key in a form.
        (FORM, b"[_method]=DELETE"),
        (FORM, b"_method]=DELETE"),
    ],
)
def test_content_types_and_keys_as_php_laravel_and_rack_read_them(
    headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    assert "DELETE" in found(headers, body)


def test_ordinary_bodies_still_name_no_method() -> None:
    """The wider readings find nothing in a browser's form and file upload."""
    browser = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
    upload = (
        b"--" + browser + b'\r\nContent-Disposition: form-data; name="payment_method"\r\n\r\ncard\r\n'
        b"--" + browser + b'\r\nContent-Disposition: form-data; name="file"; filename="method.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\n_method=DELETE\r\n--" + browser + b"--\r\n"
    )
    assert found(multipart(browser), upload) == set()
    assert found(FORM, b"payment_method=card&method=x") == set()


@pytest.mark.parametrize(
    "body",
    [
        # PHP joins a head line without a colon to the one before, with nothing between.
        b'--aaa\r\nContent-Disposition: form-data; name="_met\r\nhod"\r\n\r\nDELETE\r\n--aaa--\r\n',
        b'--aaa\r\nContent-Disposition: form-data; na\nme="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
        # Rack ends a part's head only at CRLF CRLF: past a bare blank line, and past LF CRLF.
        b'--aaa\r\nContent-Type: text/plain\n\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
        b'--aaa\r\nX-Note: a\n\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--aaa--\r\n',
    ],
)
def test_heads_as_php_joins_them_and_as_rack_ends_them(body: bytes) -> None:
    """Found by tests/integration/test_method_override_peers.py against real PHP and Rack."""
    assert "DELETE" in found(multipart(b"aaa"), body)
