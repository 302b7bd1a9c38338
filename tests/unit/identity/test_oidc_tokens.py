"""ID token and logout token validation: one table row per check, each token wrong in exactly one way.

Tokens are signed with joserfc (authlib's JOSE library) using real RSA, EC and Ed25519 keys; the key
finder is the provider's JWKS as a list. The clock is a number: nothing here sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey

from gateway.identity.oidc.tokens import (
    BACKCHANNEL_EVENT,
    MAX_TOKEN_AGE,
    Check,
    KeyFinder,
    TokenRejected,
    jws_header,
    key_matches,
    verify_id_token,
    verify_logout_token,
)

NOW = 1_800_000_000.0
ISSUER = "https://idp.example.com"
CLIENT = "gateway"
NONCE = "n-0123456789abcdefghijklmnop"
SKEW = 60.0
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
ED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
OTHER_RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
ALGORITHMS = ("RS256", "ES256", "PS256", "Ed25519")


def published(*keys: Key) -> KeyFinder:
    public = [type(k).import_key(k.as_dict(private=False)) for k in keys]

    async def find(kid: str | None, alg: str) -> Sequence[Key]:
        return [k for k in public if kid is None or k.kid == kid]

    return find


FIND = published(RSA, EC, ED)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "248289761001",
        "nonce": NONCE,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "auth_time": int(NOW) - 10,
        "amr": ["pwd", "otp"],
        "acr": "urn:loa:2",
        "sid": "s-1",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Key = RSA, alg: str = "RS256", **header: Any) -> str:
    head = {"alg": alg, "kid": key.kid, **header}
    return jwt.encode(head, payload, key, algorithms=[alg])


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


def hmac_with_public_key() -> str:
    head = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    body = b64(json.dumps(claims()).encode())
    secret = RSA.as_pem(private=False)
    return f"{head}.{body}.{b64(hmac.new(secret, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"


async def verify(
    token: str, *, find: KeyFinder = FIND, nonce: str = NONCE, access_token: str | None = None
) -> Any:
    return await verify_id_token(
        token,
        issuer=ISSUER,
        client_id=CLIENT,
        nonce=nonce,
        algorithms=ALGORITHMS,
        find_keys=find,
        now=NOW,
        skew=SKEW,
        access_token=access_token,
    )


async def test_a_good_id_token_is_accepted_with_each_key_type() -> None:
    for token in (
        sign(claims()),
        sign(claims(), EC, "ES256"),
        sign(claims(), ED, "Ed25519"),
        sign(claims(), RSA, "PS256"),
    ):
        verified = await verify(token)
        assert verified.subject == "248289761001"
        assert verified.amr == ("pwd", "otp")
        assert (verified.acr, verified.sid, verified.auth_time) == ("urn:loa:2", "s-1", NOW - 10)


async def test_amr_and_acr_keep_only_what_a_reader_sees() -> None:
    """An attack run put U+2028 into the audit trail and the sinks through amr and acr."""
    token = sign(claims(amr=["pwd\u2028x", "otp", "\u202ehwk", "mfa", "m" * 300, 7], acr="urn:x\u2028y"))
    verified = await verify(token)
    assert (verified.amr, verified.acr) == (("otp", "mfa"), None)
    many = await verify(sign(claims(amr=[f"a{i}" for i in range(100)])))
    assert len(many.amr) == 16


ID_TOKEN_TABLE: list[tuple[str, Callable[[], str], Check]] = [
    ("wrong issuer", lambda: sign(claims(iss="https://evil.example.com")), Check.ISSUER),
    ("issuer with a trailing slash", lambda: sign(claims(iss=ISSUER + "/")), Check.ISSUER),
    ("no issuer", lambda: sign(claims(iss=None)), Check.ISSUER),
    ("wrong audience", lambda: sign(claims(aud="other")), Check.AUDIENCE),
    ("audience list without us", lambda: sign(claims(aud=["a", "b"])), Check.AUDIENCE),
    ("audience not a string", lambda: sign(claims(aud=[CLIENT, 7])), Check.AUDIENCE),
    ("several audiences, no azp", lambda: sign(claims(aud=[CLIENT, "other"])), Check.AUTHORIZED_PARTY),
    ("azp another client", lambda: sign(claims(azp="other")), Check.AUTHORIZED_PARTY),
    ("expired beyond skew", lambda: sign(claims(exp=int(NOW - SKEW - 1))), Check.EXPIRED),
    ("no exp", lambda: sign(claims(exp=None)), Check.EXPIRED),
    ("exp not a number", lambda: sign(claims(exp="tomorrow")), Check.EXPIRED),
    ("iat in the future", lambda: sign(claims(iat=int(NOW + SKEW + 5))), Check.ISSUED_AT),
    ("iat long ago", lambda: sign(claims(iat=int(NOW - MAX_TOKEN_AGE - SKEW - 5))), Check.ISSUED_AT),
    ("no iat", lambda: sign(claims(iat=None)), Check.ISSUED_AT),
    ("nbf in the future", lambda: sign(claims(nbf=int(NOW + SKEW + 5))), Check.NOT_BEFORE),
    ("auth_time in the future", lambda: sign(claims(auth_time=int(NOW + SKEW + 5))), Check.ISSUED_AT),
    ("wrong nonce", lambda: sign(claims(nonce="n-other")), Check.NONCE),
    ("no nonce", lambda: sign(claims(nonce=None)), Check.NONCE),
    ("no sub", lambda: sign(claims(sub=None)), Check.SUBJECT),
    ("empty sub", lambda: sign(claims(sub="")), Check.SUBJECT),
    ("alg none", lambda: forge({"alg": "none"}, claims()), Check.ALGORITHM),
    ("alg None spelled oddly", lambda: forge({"alg": "None"}, claims()), Check.ALGORITHM),
    ("HMAC with the public key", hmac_with_public_key, Check.ALGORITHM),
    ("alg not allowed (RS512)", lambda: sign(claims(), RSA, "RS512"), Check.ALGORITHM),
    ("no alg", lambda: forge({"kid": "rsa-1"}, claims()), Check.ALGORITHM),
    (
        "crit header",
        lambda: forge({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1}, claims(), b"x" * 256),
        Check.SHAPE,
    ),
    ("unknown kid", lambda: sign(claims(), RSAKey.generate_key(2048, parameters={"kid": "new"})), Check.KEY),
    (
        "ES256 header on an RSA kid",
        lambda: forge({"alg": "ES256", "kid": "rsa-1"}, claims(), b"x" * 64),
        Check.KEY,
    ),
    ("signed by another key with our kid", lambda: sign(claims(), OTHER_RSA), Check.SIGNATURE),
    ("signature cut", lambda: sign(claims())[:-10], Check.SIGNATURE),
    (
        "payload swapped",
        lambda: forge({"alg": "RS256", "kid": "rsa-1"}, claims(sub="admin"), b"x" * 256),
        Check.SIGNATURE,
    ),
    ("typed as an access token", lambda: sign(claims(), typ="at+jwt"), Check.TYPE),
    ("typed as a logout token", lambda: sign(claims(), typ="logout+jwt"), Check.TYPE),
    ("two parts", lambda: "a.b", Check.SHAPE),
    ("header not JSON", lambda: "bm90IGpzb24.e30.c2ln", Check.SHAPE),
    ("header is a list", lambda: f"{b64(b'[1]')}.e30.c2ln", Check.SHAPE),
    ("too long", lambda: sign(claims(pad="x" * 20_000)), Check.SHAPE),
]


@pytest.mark.parametrize(("name", "make", "check"), ID_TOKEN_TABLE, ids=[row[0] for row in ID_TOKEN_TABLE])
async def test_id_token_refused(name: str, make: Callable[[], str], check: Check) -> None:
    with pytest.raises(TokenRejected) as info:
        await verify(make())
    assert info.value.check is check, info.value.detail
    assert info.value.status == 401


async def test_clock_skew_is_allowed_within_its_bound() -> None:
    await verify(sign(claims(exp=int(NOW - SKEW + 1), iat=int(NOW - 100))))
    await verify(sign(claims(iat=int(NOW + SKEW - 1))))


async def test_several_audiences_with_azp_naming_us_are_accepted() -> None:
    await verify(sign(claims(aud=[CLIENT, "api"], azp=CLIENT)))


async def test_at_hash_must_match_the_access_token_when_present() -> None:
    digest = hashlib.sha256(b"the-access-token").digest()
    at_hash = b64(digest[:16])
    await verify(sign(claims(at_hash=at_hash)), access_token="the-access-token")
    with pytest.raises(TokenRejected) as info:
        await verify(sign(claims(at_hash=at_hash)), access_token="another-token")
    assert info.value.check is Check.ACCESS_TOKEN_HASH


async def test_a_key_announcing_another_use_or_alg_is_not_used() -> None:
    enc = RSAKey.import_key({**RSA.as_dict(private=False), "use": "enc"})
    ps_only = RSAKey.import_key({**RSA.as_dict(private=False), "alg": "PS256"})
    assert not key_matches(enc, "RS256")
    assert not key_matches(ps_only, "RS256")
    assert key_matches(ps_only, "PS256")
    assert not key_matches(EC, "ES384")  # P-256 key, P-384 algorithm
    with pytest.raises(TokenRejected) as info:
        await verify(
            sign(claims()), find=published(RSAKey.import_key({**RSA.as_dict(private=True), "use": "enc"}))
        )
    assert info.value.check is Check.KEY


async def test_a_token_without_kid_is_tried_against_every_matching_key() -> None:
    token = jwt.encode({"alg": "ES256"}, claims(), EC, algorithms=["ES256"])
    assert (await verify(token)).subject == "248289761001"


def test_the_header_is_read_without_trusting_it() -> None:
    assert jws_header(sign(claims()))["kid"] == "rsa-1"
    with pytest.raises(TokenRejected):
        jws_header("e30")
    with pytest.raises(TokenRejected):
        jws_header("e30=.e30.e30")  # padding is not base64url as JWS writes it


def test_an_hmac_key_can_never_match() -> None:
    with pytest.warns(SecurityWarning, match="Key size"):
        key = OctKey.import_key("short secret")
    for alg in ("HS256", "RS256", "none"):
        assert not key_matches(key, alg)


# -- logout tokens ------------------------------------------------------------------------------------


def logout_claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "iat": int(NOW),
        "jti": "jti-1",
        "sub": "248289761001",
        "sid": "s-1",
        "events": {BACKCHANNEL_EVENT: {}},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


async def verify_logout(token: str) -> Any:
    return await verify_logout_token(
        token, issuer=ISSUER, client_id=CLIENT, algorithms=ALGORITHMS, find_keys=FIND, now=NOW, skew=SKEW
    )


async def test_a_good_logout_token_is_accepted() -> None:
    verified = await verify_logout(sign(logout_claims(), typ="logout+jwt"))
    assert (verified.jti, verified.subject, verified.sid) == ("jti-1", "248289761001", "s-1")
    only_sid = await verify_logout(sign(logout_claims(sub=None)))
    assert (only_sid.subject, only_sid.sid) == (None, "s-1")


LOGOUT_TABLE: list[tuple[str, dict[str, Any], dict[str, Any], Check]] = [
    ("nonce present (an ID token)", {"nonce": NONCE}, {}, Check.NONCE),
    ("no events", {"events": None}, {}, Check.EVENTS),
    ("other event", {"events": {"http://schemas.openid.net/event/x": {}}}, {}, Check.EVENTS),
    ("event not an object", {"events": {BACKCHANNEL_EVENT: "yes"}}, {}, Check.EVENTS),
    ("no jti", {"jti": None}, {}, Check.TOKEN_ID),
    ("neither sub nor sid", {"sub": None, "sid": None}, {}, Check.SUBJECT),
    ("wrong audience", {"aud": "other"}, {}, Check.AUDIENCE),
    ("wrong issuer", {"iss": "https://evil.example.com"}, {}, Check.ISSUER),
    ("expired", {"exp": int(NOW - SKEW - 1)}, {}, Check.EXPIRED),
    ("old", {"iat": int(NOW - MAX_TOKEN_AGE - SKEW - 1)}, {}, Check.ISSUED_AT),
    ("typed as an access token", {}, {"typ": "at+jwt"}, Check.TYPE),
]


@pytest.mark.parametrize(
    ("name", "changes", "header", "check"), LOGOUT_TABLE, ids=[r[0] for r in LOGOUT_TABLE]
)
async def test_logout_token_refused(
    name: str, changes: dict[str, Any], header: dict[str, Any], check: Check
) -> None:
    with pytest.raises(TokenRejected) as info:
        await verify_logout(sign(logout_claims(**changes), **header))
    assert info.value.check is check, info.value.detail


async def test_an_id_token_is_not_a_logout_token_and_the_reverse() -> None:
    with pytest.raises(TokenRejected):
        await verify_logout(sign(claims()))
    with pytest.raises(TokenRejected):
        await verify(sign(logout_claims(nonce=NONCE, exp=int(NOW) + 60)))
