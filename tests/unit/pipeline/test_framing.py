"""The data plane's framing rules (RFC 9112 §6) on the header values granian hands over.

granian refuses some malformed framing itself; these are the ones it passes on, which the data plane
must refuse (see tests/integration/test_framing.py for the whole table against a running gateway).
"""

from __future__ import annotations

import pytest

from gateway.pipeline.proxy import BodyFraming
from gateway.pipeline.receive import BadFraming, body_framing


@pytest.mark.parametrize(
    "codings",
    [
        [b"identity, chunked"],
        [b"chunked, chunked"],
        [b"chunked", b"chunked"],
        [b"gzip, chunked"],
        [b"chunked, gzip"],
        [b"gzip"],
        [b"xchunked"],
        [b"chunked;q=1"],
        [b""],
    ],
)
def test_transfer_encoding_other_than_one_chunked_is_refused(codings: list[bytes]) -> None:
    with pytest.raises(BadFraming) as raised:
        body_framing([], codings)
    assert raised.value.status == 400
    assert raised.value.reason == "bad-framing"


@pytest.mark.parametrize("value", [b"chunked", b"CHUNKED", b"Chunked", b" chunked\t"])
def test_one_chunked_in_any_case_is_chunked(value: bytes) -> None:
    assert body_framing([], [value]) == BodyFraming(chunked=True)


@pytest.mark.parametrize(
    ("lengths", "codings"),
    [
        ([b"5"], [b"chunked"]),
        ([b"5", b"6"], []),
        ([b"5, 5"], []),
        ([b"+5"], []),
        ([b"-1"], []),
        ([b"1" * 19], []),
    ],
)
def test_ambiguous_or_malformed_length_is_refused(lengths: list[bytes], codings: list[bytes]) -> None:
    with pytest.raises(BadFraming):
        body_framing(lengths, codings)


def test_repeated_equal_length_is_one_length() -> None:
    assert body_framing([b"5", b"5"], []) == BodyFraming(content_length=5)
