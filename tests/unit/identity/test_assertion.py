"""The identity assertion (``X-Gateway-Assertion``): claims, verification against the JWKS, algorithm
confusion, reuse, and key rotation.

Keys come from real :class:`SigningKeys` on a migrated SQLite database. Tokens are checked twice, by
two independent verifiers: a minimal one written here on ``cryptography`` (ES256 only, as
docs/assertion.md tells upstreams), and joserfc (authlib's JOSE library) with ``algorithms=["ES256"]``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet as JoseKeySet

from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.crypto.signing import KeySet, SigningKeys, SigningUnavailable
from gateway.identity.assertion import AssertionRefused, AssertionSigner, amr_for
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.sessions import Session
from gateway.settings.schema import AssertionSettings, Duration
from gateway.store.db import Database, default_sqlite_url
from gateway.store.migrate import upgrade

ISSUER = "https://auth.example.com"
TTL = 300
AHEAD = 600.0
GRACE = 3600.0
SETTINGS = AssertionSettings(ttl=Duration(TTL), grace=Duration(GRACE), publish_ahead=Duration(AHEAD))


@pytest.fixture
async def signing(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SigningKeys]:
    url = default_sqlite_url(tmp_path)
    await upgrade(url, quiet=True)
    db = Database.open(url, pool_size=2)
    keys = SigningKeys(db, Keyring.create(tmp_path / "keyring.json"), clock, SETTINGS)
    await keys.ensure()
    yield keys
    await db.close()


@pytest.fixture
def signer(signing: SigningKeys, clock: FakeClock) -> AssertionSigner:
    return AssertionSigner(signing.current, issuer=ISSUER, ttl=TTL, clock=clock)


def make_session(clock: FakeClock, **changes: Any) -> Session:
    t = clock.time() - 60
    session = Session(
        id_hash="a" * 64,
        family="fam",
        user_id=7,
        username="alice",
        level=AuthLevel.TWO_FACTOR,
        factors=(FactorUse(Factor.PASSWORD, t), FactorUse(Factor.TOTP, t + 5)),
        roles=("staff",),
        created_at=t + 0.75,
        last_seen=t + 5,
        ip="198.51.100.7",
        user_agent="pytest",
        host="wiki.example.com",
    )
    return replace(session, **changes)


# -- verifiers --------------------------------------------------------------------------------------


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class Rejected(Exception):
    pass


def verify_es256(token: str, jwks: dict[str, Any], *, audience: str, now: float) -> dict[str, Any]:
    """What an upstream must do, with cryptography only: ES256 and a JWKS key, nothing else."""
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(_b64decode(header_b64))
        claims = json.loads(_b64decode(claims_b64))
        signature = _b64decode(signature_b64)
    except ValueError as exc:
        raise Rejected("malformed") from exc
    if header.get("alg") != "ES256":
        raise Rejected(f"algorithm {header.get('alg')!r} refused")
    jwk = next((k for k in jwks["keys"] if k["kid"] == header.get("kid")), None)
    if jwk is None or jwk["kty"] != "EC" or jwk["crv"] != "P-256" or len(signature) != 64:
        raise Rejected("unknown key or bad signature size")
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(_b64decode(jwk["x"]), "big"),
        int.from_bytes(_b64decode(jwk["y"]), "big"),
        ec.SECP256R1(),
    ).public_key()
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise Rejected("bad signature") from exc
    if claims.get("iss") != ISSUER or claims.get("aud") != audience or not claims.get("sub"):
        raise Rejected("wrong issuer, audience or subject")
    if not claims["iat"] <= now < claims["exp"]:
        raise Rejected("expired or not yet valid")
    return dict(claims)


def verify_joserfc(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    keys = JoseKeySet.import_key_set(jwks)  # type: ignore[arg-type]
    decoded = jose_jwt.decode(token, keys, algorithms=["ES256"])
    return dict(decoded.claims)


def header_of(token: str) -> dict[str, Any]:
    return dict(json.loads(_b64decode(token.split(".")[0])))


def claims_of(token: str) -> dict[str, Any]:
    return dict(json.loads(_b64decode(token.split(".")[1])))


# -- the token --------------------------------------------------------------------------------------


def test_token_verifies_with_the_published_key_and_carries_every_claim(
    signer: AssertionSigner, signing: SigningKeys, clock: FakeClock
) -> None:
    session = make_session(clock)
    token = signer.assertion_for(session, "wiki", "alice@example.com", ["staff", "editor"])
    jwks = signing.jwks()
    claims = verify_es256(token, jwks, audience="wiki", now=clock.time())
    assert verify_joserfc(token, jwks) == claims

    header = header_of(token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": jwks["keys"][0]["kid"]}
    now = int(clock.time())
    assert claims.pop("jti")
    assert claims == {
        "iss": ISSUER,
        "sub": "alice",
        "aud": "wiki",
        "email": "alice@example.com",
        "roles": ["staff", "editor"],
        "amr": ["pwd", "otp", "mfa"],
        "auth_time": int(session.created_at),
        "iat": now,
        "exp": now + TTL,
    }


def test_a_bearer_requests_assertion_names_who_the_token_speaks_for_and_its_client(
    signer: AssertionSigner, signing: SigningKeys, clock: FakeClock
) -> None:
    jwks = signing.jwks()
    expires = clock.time() + 3600
    own = signer.assertion_for_client("ci", "gwt_abc", "api", ["deployers"], expires)
    claims = verify_es256(own, jwks, audience="api", now=clock.time())
    # A machine client's own token: sub and client_id are the client; no person authenticated.
    assert (claims["sub"], claims["client_id"], claims["amr"]) == ("ci", "ci", [])
    assert claims["gateway_auth"] == "bearer"
    assert claims["roles"] == ["deployers"]
    # A linked person's provider token: sub is the person, client_id the application it was issued to.
    person = signer.assertion_for_client("alice", "jwt:1", "api", [], expires, client_id="corp:reporter")
    claims = verify_es256(person, jwks, audience="api", now=clock.time())
    assert (claims["sub"], claims["client_id"]) == ("alice", "corp:reporter")
    # The token's own expiry bounds the assertion's.
    short = signer.assertion_for_client("ci", "gwt_short", "api", [], clock.time() + 30)
    assert verify_es256(short, jwks, audience="api", now=clock.time())["exp"] == int(clock.time()) + 30


def test_a_persons_token_carries_their_opt_outs_and_a_new_choice_is_not_served_from_the_cache(
    signer: AssertionSigner, signing: SigningKeys, clock: FakeClock
) -> None:
    """An attack run: a person who objected was sent to the app through their provider token with no
    ``optout``, which reads as "nothing opted out"."""
    expires = clock.time() + 3600
    jwks = signing.jwks()
    plain = signer.assertion_for_client("alice", "jwt:1", "api", [], expires, client_id="corp:reporter")
    assert "optout" not in verify_es256(plain, jwks, audience="api", now=clock.time())
    objected = signer.assertion_for_client(
        "alice", "jwt:1", "api", [], expires, client_id="corp:reporter", optout=("policy_analytics",)
    )
    assert objected != plain
    claims = verify_es256(objected, jwks, audience="api", now=clock.time())
    assert claims["optout"] == ["policy_analytics"]


def test_two_clients_with_one_token_id_never_share_an_assertion(
    signer: AssertionSigner, signing: SigningKeys, clock: FakeClock
) -> None:
    """The cache is keyed by the token's public id, a prefix or 64 bits of a provider token's hash: a
    collision (same id, same roles) must not hand one client's assertion to another."""
    expires = clock.time() + 3600
    ci = signer.assertion_for_client("ci", "sha256:0123456789abcdef", "api", [], expires)
    other = signer.assertion_for_client("mallory", "sha256:0123456789abcdef", "api", [], expires)
    assert verify_es256(other, signing.jwks(), audience="api", now=clock.time())["sub"] == "mallory"
    assert signer.assertion_for_client("ci", "sha256:0123456789abcdef", "api", [], expires) == ci  # reused


def test_signature_is_raw_r_s_not_der(signer: AssertionSigner, clock: FakeClock) -> None:
    token = signer.assertion_for(make_session(clock), "wiki", None, [])
    assert len(_b64decode(token.split(".")[2])) == 64


def test_no_email_means_no_email_claim(signer: AssertionSigner, clock: FakeClock) -> None:
    for email in (None, ""):
        signer.clear_cache()
        assert "email" not in claims_of(signer.assertion_for(make_session(clock), "wiki", email, []))


def test_every_token_has_its_own_jti(signer: AssertionSigner, clock: FakeClock) -> None:
    sessions = [make_session(clock, id_hash=f"{i:064x}") for i in range(20)]
    jtis = {claims_of(signer.assertion_for(s, "wiki", None, []))["jti"] for s in sessions}
    assert len(jtis) == 20


def test_trailing_slash_of_the_issuer_is_dropped(signing: SigningKeys, clock: FakeClock) -> None:
    signer = AssertionSigner(signing.current, issuer=ISSUER + "/", ttl=TTL, clock=clock)
    assert claims_of(signer.assertion_for(make_session(clock), "wiki", None, []))["iss"] == ISSUER


@pytest.mark.parametrize(
    ("level", "factors", "amr"),
    [
        (AuthLevel.ONE_FACTOR, [Factor.PASSWORD], ("pwd",)),
        (AuthLevel.ONE_FACTOR, [Factor.OIDC], ("fed",)),
        (AuthLevel.TWO_FACTOR, [Factor.PASSWORD, Factor.TOTP], ("pwd", "otp", "mfa")),
        (AuthLevel.TWO_FACTOR, [Factor.PASSWORD, Factor.WEBAUTHN], ("pwd", "hwk", "mfa")),
        (AuthLevel.TWO_FACTOR, [Factor.OIDC, Factor.RECOVERY], ("fed", "otp", "mfa")),
        (
            AuthLevel.TWO_FACTOR,
            [Factor.PASSWORD, Factor.TOTP, Factor.TOTP, Factor.WEBAUTHN],
            ("pwd", "otp", "hwk", "mfa"),
        ),
        # A passkey alone (passwordless): one method, yet two factors (possession + user verification).
        (AuthLevel.TWO_FACTOR, [Factor.WEBAUTHN], ("hwk", "mfa")),
        # A factor list that claims more than the level is not trusted: no second factor, no "mfa".
        (AuthLevel.ONE_FACTOR, [Factor.PASSWORD, Factor.TOTP], ("pwd",)),
        (AuthLevel.TWO_FACTOR, [Factor.PASSWORD], ("pwd",)),
    ],
)
def test_amr_from_the_sessions_factors(level: AuthLevel, factors: list[Factor], amr: tuple[str, ...]) -> None:
    assert amr_for(level, [FactorUse(f, 1000.0 + i) for i, f in enumerate(factors)]) == amr


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [{"username": ""}, {"level": AuthLevel.ANONYMOUS}, {"username": "", "level": AuthLevel.ANONYMOUS}],
)
def test_never_a_token_without_a_signed_in_subject(
    signer: AssertionSigner, clock: FakeClock, changes: dict[str, Any]
) -> None:
    with pytest.raises(AssertionRefused):
        signer.assertion_for(make_session(clock, **changes), "wiki", None, [])
    assert signer.cached == 0


def test_never_a_token_without_an_audience(signer: AssertionSigner, clock: FakeClock) -> None:
    with pytest.raises(AssertionRefused):
        signer.assertion_for(make_session(clock), "", None, [])


async def test_no_keys_loaded_fails_closed(tmp_path: Path, clock: FakeClock) -> None:
    db = Database.open(default_sqlite_url(tmp_path))
    try:
        keys = SigningKeys(db, Keyring.create(tmp_path / "k.json"), clock, SETTINGS)
        signer = AssertionSigner(keys.current, issuer=ISSUER, ttl=TTL, clock=clock)
        with pytest.raises(SigningUnavailable):
            signer.assertion_for(make_session(clock), "wiki", None, [])
    finally:
        await db.close()


def test_no_key_active_fails_closed(clock: FakeClock) -> None:
    empty = KeySet((), GRACE)
    signer = AssertionSigner(lambda: empty, issuer=ISSUER, ttl=TTL, clock=clock)
    with pytest.raises(SigningUnavailable):
        signer.assertion_for(make_session(clock), "wiki", None, [])


@pytest.mark.parametrize("ttl", [0, 0.5, 301, 3600])
def test_ttl_is_at_most_five_minutes(signing: SigningKeys, clock: FakeClock, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        AssertionSigner(signing.current, issuer=ISSUER, ttl=ttl, clock=clock)


# -- forged tokens: what an ES256-only verifier with our JWKS refuses --------------------------------


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    def enc(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{enc(json.dumps(header).encode())}.{enc(json.dumps(claims).encode())}"
    return f"{signing_input}.{enc(signature)}" if signature else f"{signing_input}."


def _hmac_forgeries(real: str, jwks: dict[str, Any]) -> list[str]:
    """HS256 tokens keyed with every public form of our key an attacker could think of."""
    claims = {**claims_of(real), "sub": "admin", "roles": ["admin"]}
    kid = header_of(real)["kid"]
    jwk = jwks["keys"][0]
    secrets = [
        json.dumps(jwk).encode(),
        json.dumps(jwk, separators=(",", ":")).encode(),
        json.dumps(jwks).encode(),
        _b64decode(jwk["x"]) + _b64decode(jwk["y"]),
        b"\x04" + _b64decode(jwk["x"]) + _b64decode(jwk["y"]),
    ]
    forged = []
    for secret in secrets:
        header = {"alg": "HS256", "typ": "JWT", "kid": kid}
        unsigned = _forge(header, claims, b"")[:-1]
        mac = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
        forged.append(_forge(header, claims, mac))
    return forged


def test_alg_none_and_hs256_with_the_public_key_are_refused(
    signer: AssertionSigner, signing: SigningKeys, clock: FakeClock
) -> None:
    real = signer.assertion_for(make_session(clock), "wiki", None, ["staff"])
    jwks = signing.jwks()
    kid = header_of(real)["kid"]
    claims = {**claims_of(real), "sub": "admin", "roles": ["admin"]}
    forged = [
        _forge({"alg": "none", "typ": "JWT", "kid": kid}, claims, b""),
        _forge({"alg": "None", "typ": "JWT", "kid": kid}, claims, b""),
        _forge({"typ": "JWT", "kid": kid}, claims, b""),
        # The real signature over different claims.
        _forge(header_of(real), claims, _b64decode(real.split(".")[2])),
        # ES256 claimed, but the key id of no published key.
        _forge({**header_of(real), "kid": "unknown"}, claims_of(real), _b64decode(real.split(".")[2])),
        *_hmac_forgeries(real, jwks),
    ]
    for token in forged:
        with pytest.raises(Rejected):
            verify_es256(token, jwks, audience="wiki", now=clock.time())
        with pytest.raises((JoseError, ValueError)):
            verify_joserfc(token, jwks)
    # The real one passes both: the refusals are about the forgeries, not a broken verifier.
    assert verify_es256(real, jwks, audience="wiki", now=clock.time())["sub"] == "alice"


def test_a_token_for_one_route_is_refused_by_another(
    signer: AssertionSigner, signing: SigningKeys, clock: FakeClock
) -> None:
    token = signer.assertion_for(make_session(clock), "wiki", None, [])
    with pytest.raises(Rejected):
        verify_es256(token, signing.jwks(), audience="payroll", now=clock.time())


# -- reuse ------------------------------------------------------------------------------------------


def test_reused_until_less_than_a_fifth_of_its_life_is_left(
    signer: AssertionSigner, clock: FakeClock
) -> None:
    session = make_session(clock)
    first = signer.assertion_for(session, "wiki", "alice@example.com", ["staff"])
    assert signer.assertion_for(session, "wiki", "alice@example.com", ["staff"]) is first
    clock.advance(TTL - TTL / 5)  # exactly a fifth left: still reused
    assert signer.assertion_for(session, "wiki", "alice@example.com", ["staff"]) is first
    clock.advance(0.5)
    second = signer.assertion_for(session, "wiki", "alice@example.com", ["staff"])
    assert second != first
    assert claims_of(second)["iat"] == int(clock.time())
    assert claims_of(second)["jti"] != claims_of(first)["jti"]
    assert signer.assertion_for(session, "wiki", "alice@example.com", ["staff"]) is second


def test_a_reused_token_is_never_expired(
    signer: AssertionSigner, signing: SigningKeys, clock: FakeClock
) -> None:
    session = make_session(clock)
    for _ in range(40):
        token = signer.assertion_for(session, "wiki", None, [])
        claims = verify_es256(token, signing.jwks(), audience="wiki", now=clock.time())
        assert claims["exp"] - clock.time() >= TTL / 5
        clock.advance(17.3)


def test_another_route_gets_its_own_token(signer: AssertionSigner, clock: FakeClock) -> None:
    session = make_session(clock)
    wiki = signer.assertion_for(session, "wiki", None, [])
    payroll = signer.assertion_for(session, "payroll", None, [])
    assert (claims_of(wiki)["aud"], claims_of(payroll)["aud"]) == ("wiki", "payroll")
    assert signer.assertion_for(session, "wiki", None, []) is wiki


@pytest.mark.parametrize(
    ("email", "roles", "session_changes"),
    [
        ("bob@example.com", ["staff"], {}),
        ("alice@example.com", ["staff", "admin"], {}),
        ("alice@example.com", [], {}),
        ("alice@example.com", ["staff"], {"level": AuthLevel.ONE_FACTOR, "factors": ()}),
        ("alice@example.com", ["staff"], {"id_hash": "b" * 64}),
    ],
)
def test_changed_identity_is_signed_again_at_once(
    signer: AssertionSigner,
    clock: FakeClock,
    email: str,
    roles: list[str],
    session_changes: dict[str, Any],
) -> None:
    session = make_session(clock)
    first = signer.assertion_for(session, "wiki", "alice@example.com", ["staff"])
    changed = signer.assertion_for(replace(session, **session_changes), "wiki", email, roles)
    assert changed != first
    assert (claims_of(changed).get("email"), claims_of(changed)["roles"]) == (email, roles)


def test_the_persons_opt_outs_reach_the_app_at_once(signer: AssertionSigner, clock: FakeClock) -> None:
    """An attack run withdrew a consent to an app's purpose and nothing the app received changed: the
    assertion carries the purposes not to process, signed again when they change."""
    session = make_session(clock)
    before = signer.assertion_for(session, "wiki", "alice@example.com", ["staff"])
    assert "optout" not in claims_of(before)
    withdrawn = replace(session, optout=("newsletter",))
    after = signer.assertion_for(withdrawn, "wiki", "alice@example.com", ["staff"])
    assert claims_of(after)["optout"] == ["newsletter"]
    assert signer.assertion_for(withdrawn, "wiki", "alice@example.com", ["staff"]) == after  # reused


def test_a_clock_that_went_back_does_not_reuse_a_token_from_the_future(
    signer: AssertionSigner, clock: FakeClock
) -> None:
    session = make_session(clock)
    clock.advance(100)
    first = signer.assertion_for(session, "wiki", None, [])
    clock.advance(-10)
    again = signer.assertion_for(session, "wiki", None, [])
    assert again != first
    assert claims_of(again)["iat"] == int(clock.time())


def test_the_reuse_cache_is_bounded(signing: SigningKeys, clock: FakeClock) -> None:
    signer = AssertionSigner(signing.current, issuer=ISSUER, ttl=TTL, clock=clock, cache_size=3)
    sessions = [make_session(clock, id_hash=f"{i:064x}") for i in range(5)]
    tokens = [signer.assertion_for(s, "wiki", None, []) for s in sessions]
    assert signer.cached == 3
    # The newest are kept, the oldest went first.
    assert signer.assertion_for(sessions[4], "wiki", None, []) is tokens[4]
    assert signer.assertion_for(sessions[0], "wiki", None, []) != tokens[0]


def test_no_cache_signs_every_time(signing: SigningKeys, clock: FakeClock) -> None:
    signer = AssertionSigner(signing.current, issuer=ISSUER, ttl=TTL, clock=clock, cache_size=0)
    session = make_session(clock)
    assert signer.assertion_for(session, "wiki", None, []) != signer.assertion_for(session, "wiki", None, [])
    assert signer.cached == 0


# -- rotation ---------------------------------------------------------------------------------------


async def test_after_rotation_the_new_key_signs_from_its_active_from(
    signer: AssertionSigner, signing: SigningKeys, clock: FakeClock
) -> None:
    session = make_session(clock)
    old_token = signer.assertion_for(session, "wiki", None, [])
    old_kid = header_of(old_token)["kid"]
    new_kid = await signing.rotate()
    assert await signing.refresh() is True

    # Published before it signs: the old key still signs, upstreams can already fetch the new one.
    assert {k["kid"] for k in signing.jwks()["keys"]} == {old_kid, new_kid}
    clock.advance(AHEAD - 1)
    before = signer.assertion_for(session, "wiki", None, [])
    assert header_of(before)["kid"] == old_kid

    clock.advance(1)
    after = signer.assertion_for(session, "wiki", None, [])
    assert header_of(after)["kid"] == new_kid
    verify_es256(after, signing.jwks(), audience="wiki", now=clock.time())
    verify_joserfc(after, signing.jwks())

    # A token the old key signed just before the switch still verifies for the rest of its life.
    verify_es256(before, signing.jwks(), audience="wiki", now=claims_of(before)["exp"] - 1)
    clock.advance(GRACE)
    assert {k["kid"] for k in signing.jwks()["keys"]} == {new_kid}
