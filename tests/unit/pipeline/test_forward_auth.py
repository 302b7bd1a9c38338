"""Reading the original request out of a forward-auth sub-request."""

from __future__ import annotations

import pytest

from gateway.errors import BadHeaders
from gateway.pipeline.forward_auth import UntrustedProxy, forwarded_request

GOOD = [
    (b"x-forwarded-method", b"POST"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"wiki.example.com"),
    (b"x-forwarded-uri", b"/a/b?c=d&e"),
]


def test_a_trusted_proxy_describes_the_original_request() -> None:
    req = forwarded_request(GOOD, peer_trusted=True)
    assert (req.method, req.proto, req.host, req.raw_path, req.query) == (
        "POST",
        "https",
        b"wiki.example.com",
        b"/a/b",
        b"c=d&e",
    )


def test_an_untrusted_sender_is_refused_whatever_it_claims() -> None:
    with pytest.raises(UntrustedProxy) as caught:
        forwarded_request(GOOD, peer_trusted=False)
    assert caught.value.status == 403


def test_host_falls_back_to_the_host_header() -> None:
    headers = [h for h in GOOD if h[0] != b"x-forwarded-host"] + [(b"host", b"app.example.com")]
    assert forwarded_request(headers, peer_trusted=True).host == b"app.example.com"


def test_every_spelling_counts_so_a_second_one_is_a_conflict() -> None:
    with pytest.raises(BadHeaders):
        forwarded_request([*GOOD, (b"X_Forwarded_Uri", b"/admin")], peer_trusted=True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"x-forwarded-method", b"get"),
        (b"x-forwarded-method", b""),
        (b"x-forwarded-method", b"GET /x"),
        (b"x-forwarded-proto", b"ftp"),
        (b"x-forwarded-uri", b""),
        (b"x-forwarded-uri", b"docs"),
        (b"x-forwarded-uri", b"//evil.example/x"),
        (b"x-forwarded-uri", b"https://evil.example/x"),
        (b"x-forwarded-uri", b"/a#frag"),
        (b"x-forwarded-uri", b"/a b"),
        (b"x-forwarded-uri", b"/a\x00b"),
    ],
)
def test_malformed_values_are_bad_requests(name: bytes, value: bytes) -> None:
    headers = [(n, value if n == name else v) for n, v in GOOD]
    with pytest.raises(BadHeaders) as caught:
        forwarded_request(headers, peer_trusted=True)
    assert caught.value.status == 400
