"""The bearer stage's header parsing and its RFC 6750 answers."""

from __future__ import annotations

import pytest

from gateway.errors import ErrorReason
from gateway.machine.verifier import TokenOutOfScope, TokenRefused, VerifiedToken, Verifiers
from gateway.pipeline.bearer import (
    InsufficientScope,
    InvalidToken,
    MalformedAuthorization,
    authenticate_bearer,
    bearer_token,
    challenge,
)

TOKEN = "gwt_" + "x" * 43


def _headers(*values: bytes, cookie: bytes | None = None) -> list[tuple[bytes, bytes]]:
    out = [(b"host", b"app.example.com")]
    out += [(b"Authorization", v) for v in values]
    if cookie is not None:
        out.append((b"cookie", cookie))
    return out


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (b"Bearer " + TOKEN.encode(), TOKEN),
        (b"bearer " + TOKEN.encode(), TOKEN),
        (b"BEARER   " + TOKEN.encode() + b"  ", TOKEN),
        (b"Bearer abc.def-ghi_jkl~mno+pqr/st==", "abc.def-ghi_jkl~mno+pqr/st=="),
        # A tab separates too, as the apps read it (a re-attack run: the session decided, and the app
        # got the token).
        (b"Bearer\t" + TOKEN.encode(), TOKEN),
        (b"bearer \t " + TOKEN.encode() + b"\t", TOKEN),
        # Another scheme is not a bearer token: the session (if the route takes it) decides.
        (b"Basic YWxpY2U6cHc=", None),
        (b"Digest username=x", None),
    ],
)
def test_the_token_of_an_authorization_header(value: bytes, token: str | None) -> None:
    assert bearer_token(_headers(value)) == token


def test_no_authorization_header_is_no_token_whatever_the_cookie() -> None:
    assert bearer_token(_headers(cookie=b"gateway_session=abc")) is None


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer",
        b"Bearer ",
        b"Bearer a b",
        b"Bearer to$ken",
        b"Bearer \xc3\xbc",
        b"Bearer =abc",
        b"Bearer " + b"a" * 5000,
    ],
)
def test_malformed_bearer_credentials_are_invalid_token(value: bytes) -> None:
    with pytest.raises(InvalidToken) as err:
        bearer_token(_headers(value))
    assert err.value.status == 401
    assert err.value.reason == ErrorReason.INVALID_TOKEN
    assert err.value.challenge.startswith(b'Bearer realm="gateway", error="invalid_token"')


def test_two_authorization_headers_are_ambiguous() -> None:
    with pytest.raises(MalformedAuthorization) as err:
        bearer_token(_headers(b"Bearer " + TOKEN.encode(), b"Basic eA=="))
    assert err.value.status == 400
    assert b'error="invalid_request"' in err.value.challenge


def test_the_challenge_never_carries_a_quote_it_did_not_write() -> None:
    assert challenge() == b'Bearer realm="gateway"'
    value = challenge("invalid_token", 'say "hi"')
    assert value == b'Bearer realm="gateway", error="invalid_token", error_description="say \'hi\'"'


class _Fixed:
    """A verifier with a fixed answer: the stage's mapping of answers is under test, not a verifier."""

    def __init__(self, answer: VerifiedToken | TokenRefused) -> None:
        self.answer = answer

    def recognises(self, token: str) -> bool:
        return token.startswith("gwt_")

    async def verify(self, token: str, *, route: str, ip: str) -> VerifiedToken:
        if isinstance(self.answer, TokenRefused):
            raise self.answer
        return self.answer


CLIENT = VerifiedToken(
    subject="ci", principals=frozenset({"client:ci"}), roles=(), routes=frozenset({"api"}),
    expires_at=2e9, token_id="gwt_xxxxxxxx", issuer="gateway",
)  # fmt: skip


async def test_the_stage_maps_the_verifiers_answers() -> None:
    assert (
        await authenticate_bearer(TOKEN, verifiers=Verifiers([_Fixed(CLIENT)]), route="api", ip="") is CLIENT
    )
    with pytest.raises(InvalidToken) as missing:
        await authenticate_bearer(None, verifiers=Verifiers([_Fixed(CLIENT)]), route="api", ip="")
    assert missing.value.challenge == b'Bearer realm="gateway"'  # RFC 6750 §3.1: no error code
    expired = Verifiers([_Fixed(TokenRefused("expired", "The access token has expired."))])
    with pytest.raises(InvalidToken) as refused:
        await authenticate_bearer(TOKEN, verifiers=expired, route="api", ip="")
    assert b'error_description="The access token has expired."' in refused.value.challenge
    scoped = Verifiers([_Fixed(TokenOutOfScope("route-out-of-scope", "Not for this application."))])
    with pytest.raises(InsufficientScope) as out_of_scope:
        await authenticate_bearer(TOKEN, verifiers=scoped, route="other", ip="")
    assert out_of_scope.value.status == 403
    assert b'error="insufficient_scope"' in out_of_scope.value.challenge
    with pytest.raises(InvalidToken):
        await authenticate_bearer("not-ours", verifiers=Verifiers([_Fixed(CLIENT)]), route="api", ip="")
