"""The opt-out table, row by row: what a basis, an answer, an objection and a restriction mean for one
purpose, and which consent notices are still to answer."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.privacy.purposes import (
    ConsentView,
    Decision,
    format_objections,
    optout,
    parse_objections,
    pending,
)
from gateway.settings.schema import DEFAULT_PURPOSES, Purpose

AT = datetime(2027, 1, 1, tzinfo=UTC)

NEWSLETTER = Purpose(name="newsletter", title="Newsletter", notice="Mail about features.", version=2)
ANALYTICS = Purpose(
    name="analytics", title="Analytics", notice="Usage counts.", basis="legitimate_interest", objectable=True
)
FRAUD = Purpose(name="fraud", title="Fraud checks", notice="Fraud checks.", basis="legitimate_interest")
BILLING = Purpose(name="billing", title="Billing", notice="Invoices.", basis="contract")
RETENTION = Purpose(name="tax", title="Tax records", notice="Kept by law.", basis="legal_obligation")
ALL = (NEWSLETTER, ANALYTICS, FRAUD, BILLING, RETENTION)


def answer(purpose: str, decision: Decision, version: int) -> dict[str, ConsentView]:
    return {purpose: ConsentView(purpose, version, decision, AT, "test")}


def out(
    *,
    restricted: bool = False,
    objections: frozenset[str] = frozenset(),
    consents: dict[str, ConsentView] | None = None,
) -> frozenset[str]:
    return optout(ALL, restricted=restricted, objections=objections, consents=consents or {})


# -- consent ----------------------------------------------------------------------------------------


def test_consent_never_answered_is_out_and_pending() -> None:
    assert "newsletter" in out()
    assert pending(ALL, {}) == (NEWSLETTER,)


def test_consent_granted_for_the_current_version_is_processed() -> None:
    consents = answer("newsletter", "granted", 2)
    assert "newsletter" not in out(consents=consents)
    assert pending(ALL, consents) == ()


@pytest.mark.parametrize("decision", ["refused", "withdrawn"])
def test_consent_refused_or_withdrawn_is_out_and_not_asked_again(decision: Decision) -> None:
    consents = answer("newsletter", decision, 2)
    assert "newsletter" in out(consents=consents)
    assert pending(ALL, consents) == ()


def test_consent_granted_for_an_older_version_is_out_and_asked_again() -> None:
    consents = answer("newsletter", "granted", 1)
    assert "newsletter" in out(consents=consents)
    assert pending(ALL, consents) == (NEWSLETTER,)


def test_consent_granted_for_a_later_version_after_a_roll_back_is_asked_again() -> None:
    consents = answer("newsletter", "granted", 3)
    assert "newsletter" in out(consents=consents)
    assert pending(ALL, consents) == (NEWSLETTER,)


def test_only_consent_purposes_are_ever_pending() -> None:
    assert [p.name for p in pending(DEFAULT_PURPOSES, {})] == []
    assert {p.name for p in pending(ALL, {})} == {"newsletter"}


# -- legitimate interest ----------------------------------------------------------------------------


def test_legitimate_interest_is_processed_without_an_objection() -> None:
    assert out(consents=answer("newsletter", "granted", 2)) == frozenset()


def test_objection_to_an_objectable_purpose_stops_it() -> None:
    assert out(objections=frozenset({"analytics"}), consents=answer("newsletter", "granted", 2)) == {
        "analytics"
    }


def test_objection_to_a_purpose_that_is_not_objectable_changes_nothing() -> None:
    granted = answer("newsletter", "granted", 2)
    assert out(objections=frozenset({"fraud", "billing", "tax"}), consents=granted) == frozenset()


def test_objection_to_a_purpose_no_longer_configured_still_stands() -> None:
    assert "retired" in out(objections=frozenset({"retired"}))


def test_the_default_purposes_can_both_be_objected_to() -> None:
    names = {p.name for p in DEFAULT_PURPOSES}
    assert names == {"geolocation", "policy_analytics"}
    result = optout(DEFAULT_PURPOSES, restricted=False, objections=frozenset({"geolocation"}), consents={})
    assert result == {"geolocation"}


# -- restriction, contract, legal obligation ------------------------------------------------------


def test_restriction_stops_everything_but_contract_and_legal_obligation() -> None:
    granted = answer("newsletter", "granted", 2)
    assert out(restricted=True, consents=granted) == {"newsletter", "analytics", "fraud"}


def test_contract_and_legal_obligation_are_never_stopped() -> None:
    result = out(restricted=True, objections=frozenset({"billing", "tax"}))
    assert "billing" not in result
    assert "tax" not in result


# -- the stored form of objections --------------------------------------------------------------------


def test_objections_round_trip_in_one_spelling() -> None:
    assert parse_objections("") == frozenset()
    assert parse_objections(" b  a ") == {"a", "b"}
    assert format_objections(["b", "a", "b"]) == "a b"
    assert parse_objections(format_objections({"x", "y"})) == {"x", "y"}
