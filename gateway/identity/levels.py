"""Authentication levels, factors, and the check of a session against a route's MFA policy.

The level is an ordered enum so "strong enough?" is a plain ``<`` comparison (Authelia's model). The
check returns a ``Verdict`` whose ``reason`` tells the caller *what* is missing, so the pipeline can send
a browser to the right page (sign-in, second factor, enrollment, passkey, step-up) instead of a generic
refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from gateway.settings.schema import MfaPolicy

__all__ = [
    "SECOND_FACTORS",
    "AuthLevel",
    "Factor",
    "FactorUse",
    "Requirement",
    "Verdict",
    "check_requirement",
    "newest_second_factor",
]


class AuthLevel(IntEnum):
    """How strongly the session's owner has proven who they are. Ordered: compare with ``<``."""

    ANONYMOUS = 0
    ONE_FACTOR = 1
    TWO_FACTOR = 2


class Factor(StrEnum):
    """A way of proving identity. The values are stored in sessions: never rename them."""

    PASSWORD = "password"  # noqa: S105 - a factor name, not a secret
    TOTP = "totp"
    WEBAUTHN = "webauthn"
    RECOVERY = "recovery"
    OIDC = "oidc"
    # The identity provider's own MFA, proven by its `amr`/`acr` claims. Recorded only for providers
    # whose operator set `trust_mfa`; otherwise a provider sign-in is one factor, whatever it claims.
    IDP_MFA = "idp-mfa"


# What counts as a second factor. OIDC and passwords are first factors: what an upstream IdP did for
# MFA is not something this gateway has verified itself, unless the operator chose to trust it
# (IDP_MFA, per provider).
SECOND_FACTORS = frozenset({Factor.TOTP, Factor.WEBAUTHN, Factor.RECOVERY, Factor.IDP_MFA})


@dataclass(frozen=True, slots=True)
class FactorUse:
    """One successful use of a factor, at Unix time ``at``."""

    factor: Factor
    at: float


class Requirement(StrEnum):
    """What a route demands beyond being signed in (``MfaPolicy.require``)."""

    NONE = "none"
    REQUIRED = "required"
    WEBAUTHN = "webauthn"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of ``check_requirement``.

    ``reason`` is ``"ok"`` when ``ok``; otherwise what is missing: ``"sign-in"`` (no session),
    ``"second-factor"`` (has one enrolled, not used in this session), ``"enroll"`` (has none
    enrolled), ``"webauthn"`` (the route needs a passkey/security key), ``"step-up"`` (the second
    factor is older than the route's ``max_age``).
    """

    ok: bool
    reason: str


_OK = Verdict(True, "ok")


def newest_second_factor(factors: Sequence[FactorUse], *, only: Factor | None = None) -> float | None:
    """Unix time of the newest second-factor use (of kind ``only``, if given), or None."""
    newest: float | None = None
    for use in factors:
        if (
            use.factor in SECOND_FACTORS
            and (only is None or use.factor is only)
            and (newest is None or use.at > newest)
        ):
            newest = use.at
    return newest


def check_requirement(
    *,
    level: AuthLevel,
    factors: Sequence[FactorUse],
    policy: MfaPolicy,
    has_second_factor: bool,
    now: float,
) -> Verdict:
    """Decide whether a session satisfies a route's MFA policy.

    A ``max_age`` on a policy whose ``require`` is ``"none"`` is read as ``"required"`` with that
    freshness: an operator who asks for a recent second factor must never get less because of an
    odd combination (fail closed).

    Args:
        level: The session's authentication level.
        factors: Every factor used in the session.
        policy: The route's MFA policy.
        has_second_factor: Whether the user has any second factor enrolled (picks "enroll" over
            "second-factor").
        now: Unix time.

    Returns:
        ``Verdict(True, "ok")``, or ``Verdict(False, reason)`` naming what is missing.
    """
    if level < AuthLevel.ONE_FACTOR:
        return Verdict(False, "sign-in")
    require = Requirement(policy.require)
    if require is Requirement.NONE and policy.max_age is None:
        return _OK
    if require is Requirement.WEBAUTHN:
        newest = newest_second_factor(factors, only=Factor.WEBAUTHN)
        if newest is None:
            return Verdict(False, "webauthn" if has_second_factor else "enroll")
    else:
        newest = newest_second_factor(factors)
    # The level is checked as well as the factor list: a level is only raised after a verified
    # factor, so a list that says "WEBAUTHN" at ONE_FACTOR is inconsistent and not trusted.
    if level < AuthLevel.TWO_FACTOR or newest is None:
        return Verdict(False, "second-factor" if has_second_factor else "enroll")
    if policy.max_age is not None and now - newest > policy.max_age:
        return Verdict(False, "step-up")
    return _OK
