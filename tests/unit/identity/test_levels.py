"""check_requirement, table-driven: every branch of every policy."""

from __future__ import annotations

import pytest

from gateway.identity.levels import AuthLevel, Factor, FactorUse, Verdict, check_requirement
from gateway.settings.schema import Duration, MfaPolicy

NOW = 1_800_000_000.0
A = AuthLevel.ANONYMOUS
ONE = AuthLevel.ONE_FACTOR
TWO = AuthLevel.TWO_FACTOR
PW = FactorUse(Factor.PASSWORD, NOW - 100)
OIDC = FactorUse(Factor.OIDC, NOW - 100)
TOTP_FRESH = FactorUse(Factor.TOTP, NOW - 60)
TOTP_OLD = FactorUse(Factor.TOTP, NOW - 3600)
WEBAUTHN_FRESH = FactorUse(Factor.WEBAUTHN, NOW - 60)
WEBAUTHN_OLD = FactorUse(Factor.WEBAUTHN, NOW - 3600)
RECOVERY_FRESH = FactorUse(Factor.RECOVERY, NOW - 10)
NONE = MfaPolicy(require="none")
REQUIRED = MfaPolicy(require="required")
WEBAUTHN = MfaPolicy(require="webauthn")
REQUIRED_15M = MfaPolicy(require="required", max_age=Duration(900))
WEBAUTHN_15M = MfaPolicy(require="webauthn", max_age=Duration(900))
NONE_15M = MfaPolicy(require="none", max_age=Duration(900))

CASES = [
    # (id, level, factors, policy, has_second_factor, expected reason)
    ("none-anonymous", A, (), NONE, False, "sign-in"),
    ("none-anonymous-enrolled", A, (), NONE, True, "sign-in"),
    ("none-one-factor", ONE, (PW,), NONE, False, "ok"),
    ("none-oidc", ONE, (OIDC,), NONE, True, "ok"),
    ("none-two-factor", TWO, (PW, TOTP_OLD), NONE, True, "ok"),
    ("required-anonymous", A, (), REQUIRED, True, "sign-in"),
    ("required-one-factor-enrolled", ONE, (PW,), REQUIRED, True, "second-factor"),
    ("required-one-factor-not-enrolled", ONE, (PW,), REQUIRED, False, "enroll"),
    ("required-oidc-only", ONE, (OIDC,), REQUIRED, True, "second-factor"),
    ("required-totp", TWO, (PW, TOTP_OLD), REQUIRED, True, "ok"),
    ("required-webauthn", TWO, (PW, WEBAUTHN_OLD), REQUIRED, True, "ok"),
    ("required-recovery", TWO, (PW, RECOVERY_FRESH), REQUIRED, True, "ok"),
    ("required-passkey-alone", TWO, (WEBAUTHN_OLD,), REQUIRED, True, "ok"),
    ("required-factor-listed-but-level-one", ONE, (PW, TOTP_FRESH), REQUIRED, True, "second-factor"),
    ("required-two-without-second-factor", TWO, (PW,), REQUIRED, True, "second-factor"),
    ("webauthn-anonymous", A, (), WEBAUTHN, True, "sign-in"),
    ("webauthn-one-factor-enrolled", ONE, (PW,), WEBAUTHN, True, "webauthn"),
    ("webauthn-one-factor-not-enrolled", ONE, (PW,), WEBAUTHN, False, "enroll"),
    ("webauthn-totp-only", TWO, (PW, TOTP_FRESH), WEBAUTHN, True, "webauthn"),
    ("webauthn-recovery-only", TWO, (PW, RECOVERY_FRESH), WEBAUTHN, True, "webauthn"),
    ("webauthn-used", TWO, (PW, WEBAUTHN_OLD), WEBAUTHN, True, "ok"),
    ("webauthn-listed-but-level-one", ONE, (PW, WEBAUTHN_FRESH), WEBAUTHN, True, "second-factor"),
    ("max-age-fresh-totp", TWO, (PW, TOTP_FRESH), REQUIRED_15M, True, "ok"),
    ("max-age-old-totp", TWO, (PW, TOTP_OLD), REQUIRED_15M, True, "step-up"),
    ("max-age-newest-counts", TWO, (PW, TOTP_OLD, TOTP_FRESH), REQUIRED_15M, True, "ok"),
    (
        "max-age-password-is-not-second",
        TWO,
        (TOTP_OLD, FactorUse(Factor.PASSWORD, NOW)),
        REQUIRED_15M,
        True,
        "step-up",
    ),
    ("max-age-one-factor", ONE, (PW,), REQUIRED_15M, True, "second-factor"),
    ("max-age-boundary-exact", TWO, (FactorUse(Factor.TOTP, NOW - 900),), REQUIRED_15M, True, "ok"),
    ("max-age-boundary-past", TWO, (FactorUse(Factor.TOTP, NOW - 900.5),), REQUIRED_15M, True, "step-up"),
    ("webauthn-max-age-fresh", TWO, (PW, WEBAUTHN_FRESH), WEBAUTHN_15M, True, "ok"),
    ("webauthn-max-age-old", TWO, (PW, WEBAUTHN_OLD), WEBAUTHN_15M, True, "step-up"),
    # A fresh TOTP does not refresh an old passkey for a passkey-only route.
    (
        "webauthn-max-age-old-key-fresh-totp",
        TWO,
        (PW, WEBAUTHN_OLD, TOTP_FRESH),
        WEBAUTHN_15M,
        True,
        "step-up",
    ),
    ("none-with-max-age-is-strict-one", ONE, (PW,), NONE_15M, True, "second-factor"),
    ("none-with-max-age-fresh", TWO, (PW, TOTP_FRESH), NONE_15M, True, "ok"),
    ("none-with-max-age-old", TWO, (PW, TOTP_OLD), NONE_15M, True, "step-up"),
]


@pytest.mark.parametrize(
    ("level", "factors", "policy", "has_second_factor", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_check_requirement(
    level: AuthLevel,
    factors: tuple[FactorUse, ...],
    policy: MfaPolicy,
    has_second_factor: bool,
    expected: str,
) -> None:
    verdict = check_requirement(
        level=level, factors=factors, policy=policy, has_second_factor=has_second_factor, now=NOW
    )
    assert verdict == Verdict(expected == "ok", expected)


def test_levels_are_ordered() -> None:
    assert AuthLevel.ANONYMOUS < AuthLevel.ONE_FACTOR < AuthLevel.TWO_FACTOR


def test_route_shorthand_policy() -> None:
    from gateway.settings.schema import Route

    route = Route(name="r", host="a.example.com", upstreams=("http://x",), mfa="webauthn")
    verdict = check_requirement(
        level=TWO, factors=(PW, TOTP_FRESH), policy=route.mfa_policy, has_second_factor=True, now=NOW
    )
    assert verdict.reason == "webauthn"
