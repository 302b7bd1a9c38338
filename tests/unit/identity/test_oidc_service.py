"""The small decisions of the OIDC service: required claims, trusted provider MFA, login-hint routing."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.identity.oidc.service import (
    OidcService,
    mfa_proven,
    provider_for_email,
    provider_named,
    unmet_claims,
)
from gateway.identity.oidc.tokens import Check, IdToken, TokenRejected
from gateway.settings.schema import IdentityProvider


def idp(**options: Any) -> IdentityProvider:
    base: dict[str, Any] = {
        "name": "corp",
        "issuer": "https://idp.example.com",
        "client_id": "g",
        "client_secret": "s",
    }
    base.update(options)
    return IdentityProvider(**base)


def token(amr: tuple[str, ...] = (), acr: str | None = None, auth_time: float | None = 100.0) -> IdToken:
    return IdToken(claims={}, subject="s", issued_at=0.0, auth_time=auth_time, amr=amr, acr=acr, sid=None)


@pytest.mark.parametrize(
    ("required", "claims", "unmet"),
    [
        ({}, {}, []),
        ({"hd": "example.com"}, {"hd": "example.com"}, []),
        ({"hd": "example.com"}, {"hd": "evil.com"}, ["hd"]),
        ({"hd": "example.com"}, {}, ["hd"]),
        ({"hd": "example.com"}, {"hd": ["example.com"]}, []),
        ({"tid": "t1", "hd": "x"}, {"tid": "t1"}, ["hd"]),
    ],
)
def test_required_claims(required: dict[str, str], claims: dict[str, Any], unmet: list[str]) -> None:
    assert unmet_claims(idp(required_claims=required), claims) == unmet


@pytest.mark.parametrize(
    ("trust", "amr", "acr", "proven"),
    [
        (False, ("pwd", "mfa"), None, False),  # never without trust_mfa
        (True, ("pwd",), None, False),
        (True, ("pwd", "otp"), None, True),
        (True, ("hwk",), None, True),
        (True, (), "urn:loa:2", True),
        (True, (), "urn:loa:1", False),
    ],
)
def test_provider_mfa_counts_only_when_trusted_and_proven(
    trust: bool, amr: tuple[str, ...], acr: str | None, proven: bool
) -> None:
    provider = idp(trust_mfa=trust, mfa_acr=("urn:loa:2",))
    assert mfa_proven(provider, token(amr, acr)) is proven
    # A token without auth_time: the provider's MFA cannot be timed, so it is never counted (it would
    # be a fresh second factor on every silent provider sign-in).
    assert mfa_proven(provider, token(amr, acr, auth_time=None)) is False


def test_login_hints_route_by_email_domain() -> None:
    providers = (
        idp(email_domains=("corp.example.com",)),
        idp(name="other", email_domains=("Other.Example.COM.",)),
    )
    assert provider_for_email(providers, "ann@CORP.example.com") == providers[0]
    assert provider_for_email(providers, "bo@other.example.com") == providers[1]
    for hint in ("ann", "@corp.example.com", "ann@elsewhere.com", "ann@sub.corp.example.com", ""):
        assert provider_for_email(providers, hint) is None
    assert provider_named(providers, "other") == providers[1]
    assert provider_named(providers, "nope") is None


def test_userinfo_of_another_subject_is_refused_and_the_id_token_wins() -> None:
    verified = token()
    merged = OidcService._merge_userinfo(
        verified, {"sub": "s", "email": "id@x"}, {"sub": "s", "email": "ui@x", "groups": ["g"]}
    )
    assert merged == {"sub": "s", "email": "id@x", "groups": ["g"]}
    with pytest.raises(TokenRejected) as info:
        OidcService._merge_userinfo(verified, {"sub": "s"}, {"sub": "someone-else"})
    assert info.value.check is Check.SUBJECT


@pytest.mark.parametrize(
    ("id_token", "userinfo", "verified"),
    [
        # An attack run: the token's address, userinfo's flag for another address.
        ({"email": "kate2@corp.test"}, {"email": "other@corp.test", "email_verified": True}, None),
        # The flag about the same address, or from the same answer as the address.
        ({"email": "kate@corp.test"}, {"email": "kate@corp.test", "email_verified": True}, True),
        ({}, {"email": "kate@corp.test", "email_verified": True}, True),
        ({"email": "kate@corp.test", "email_verified": False}, {"email_verified": True}, False),
        # The token's flag about no address, userinfo's address: not verified by anyone.
        ({"email_verified": True}, {"email": "boss@corp.test"}, None),
        ({"email_verified": True}, {"email": "boss@corp.test", "email_verified": False}, False),
    ],
)
def test_an_address_and_its_verified_flag_come_from_one_answer(
    id_token: dict[str, object], userinfo: dict[str, object], verified: bool | None
) -> None:
    merged = OidcService._merge_userinfo(token(), {"sub": "s", **id_token}, {"sub": "s", **userinfo})
    assert merged.get("email_verified") == verified


def test_trusted_provider_mfa_meets_required_but_not_webauthn_and_ages_from_auth_time() -> None:
    from gateway.identity.levels import AuthLevel, Factor, FactorUse, check_requirement
    from gateway.settings.schema import Duration, MfaPolicy

    factors = (FactorUse(Factor.OIDC, 1000.0), FactorUse(Factor.IDP_MFA, 400.0))

    def verdict(policy: MfaPolicy) -> str:
        return check_requirement(
            level=AuthLevel.TWO_FACTOR, factors=factors, policy=policy, has_second_factor=False, now=1000.0
        ).reason

    assert verdict(MfaPolicy(require="required")) == "ok"
    assert verdict(MfaPolicy(require="webauthn")) == "enroll"
    assert verdict(MfaPolicy(require="required", max_age=Duration(900))) == "ok"
    assert verdict(MfaPolicy(require="required", max_age=Duration(300))) == "step-up"  # MFA done at 400
    one = check_requirement(
        level=AuthLevel.ONE_FACTOR,
        factors=factors[:1],
        policy=MfaPolicy(require="required"),
        has_second_factor=False,
        now=1000.0,
    )
    assert one.reason == "enroll"
