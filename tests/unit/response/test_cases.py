"""The incident record's affected addresses: each one an IP address, kept as the trail writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.errors import BadRequest
from gateway.response.cases import Cases
from gateway.store.db import Database


@pytest.fixture
def cases(database: Database, tmp_path: Path) -> Cases:
    clock = FakeClock(1_800_000_000.0)
    keyring = Keyring.create(tmp_path / "keyring.json")
    return Cases(database, AuditLog(database, clock=clock, keyring=keyring), clock)


async def test_addresses_are_kept_in_the_spelling_the_trail_finds_them_by(cases: Cases) -> None:
    case = await cases.open(
        title="spray", severity_="high", actor="cli:op", addresses=[" 192.0.2.7", "2001:DB8::0:7"]
    )
    assert case.addresses == ("192.0.2.7", "2001:db8::7")
    updated = await cases.update(case.id, actor="cli:op", addresses=["::ffff:198.51.100.9", "192.0.2.7"])
    assert updated.addresses == ("192.0.2.7", "2001:db8::7", "198.51.100.9")


@pytest.mark.parametrize(
    "bad", ["not-an-ip", "192.0.2.0/24", "192.0.2.256", "", "host.example", "::1%not-an-ip", "fe80::1%eth0"]
)
async def test_what_is_not_an_address_is_a_400_that_changes_nothing(cases: Cases, bad: str) -> None:
    """An attack run recorded `not-an-ip` as an affected address with a 200: the report, which finds
    the incident's records by address, then found nothing and said so in silence."""
    with pytest.raises(BadRequest, match="not an IP address"):
        await cases.open(title="spray", severity_="high", actor="cli:op", addresses=["192.0.2.7", bad])
    case = await cases.open(title="spray", severity_="high", actor="cli:op", addresses=["192.0.2.7"])
    with pytest.raises(BadRequest, match="not an IP address"):
        await cases.update(case.id, actor="cli:op", owner="mallory", addresses=[bad])
    again = await cases.get(case.id)
    assert (again.owner, again.addresses) == ("", ("192.0.2.7",))


@pytest.mark.parametrize("hidden", ["\u202e", "\u200b", "\u2066", "\x85", "\u2028"])
async def test_a_case_holds_no_character_a_reader_cannot_see(cases: Cases, hidden: str) -> None:
    """A re-attack run: an owner "bob\u202e" and a summary with a right-to-left override were stored and
    read as other text in `gateway incident case list` and the console. Line breaks in a note are fine."""
    with pytest.raises(BadRequest, match="cannot see"):
        await cases.open(title="spray", severity_="high", actor="cli:op", summary=f"x{hidden}y")
    case = await cases.open(title="spray", severity_="high", actor="cli:op", summary="two\nlines\tand a tab")
    with pytest.raises(BadRequest, match=r"cannot see|control"):
        await cases.update(case.id, actor="cli:op", owner=f"bo{hidden}b")
    with pytest.raises(BadRequest, match=r"cannot see|control"):
        await cases.note(case.id, f"note {hidden}abc", actor="cli:op")
    again = await cases.get(case.id)
    assert (again.owner, again.summary) == ("", "two\nlines\tand a tab")


async def test_a_report_shows_the_sign_ins_first_and_says_what_it_left_out(
    cases: Cases, database: Database
) -> None:
    """An attack run filled an incident's window with 505 refused invitation links from the attacker's
    address: the report showed 500 of those, none of the sign-ins, and did not say it had cut."""
    from gateway.response.report import MAX_AUDIT_LINES, audit_timeline, report_json, report_markdown

    audit = AuditLog(database, clock=cases.clock)
    for _ in range(MAX_AUDIT_LINES + 5):
        await audit.record("user.invitation.accepted", actor="anonymous", ip="192.0.2.7", outcome="failure")
    await audit.record("signin.password", actor="user:bob", subject="bob", ip="192.0.2.7")
    case = await cases.open(title="spray", severity_="high", actor="cli:op", addresses=["192.0.2.7"])
    timeline = await audit_timeline(database, case, cases.clock.now())
    # The 506 records from the address, and the case's own opening record.
    assert (len(timeline.records), timeline.total) == (MAX_AUDIT_LINES, MAX_AUDIT_LINES + 7)
    assert any(r["kind"] == "signin.password" for r in timeline.records)
    seqs = [r["seq"] for r in timeline.records]
    assert seqs == sorted(seqs)
    doc = report_json(case, [], timeline, [], generated_at=cases.clock.now())
    assert doc["audit_records_total"] == MAX_AUDIT_LINES + 7
    assert f"{MAX_AUDIT_LINES} of {MAX_AUDIT_LINES + 7} record(s)" in report_markdown(doc)


@pytest.mark.parametrize("hidden", ["\u202e", "\u2028", "\u200b", "\ufeff", "\u3164", "\n"])
async def test_affected_people_and_routes_read_as_what_they_are(cases: Cases, hidden: str) -> None:
    """An attack run stored affected users "x\u202ey": a right-to-left override in the confirm of an
    action on those accounts reverses the names after it. Refused on opening and on update, and the
    record keeps what it had."""
    bad = [f"x{hidden}y"]
    refused = r"cannot see|one line"
    with pytest.raises(BadRequest, match=refused):
        await cases.open(title="spray", severity_="high", actor="cli:op", users=bad)
    with pytest.raises(BadRequest, match=refused):
        await cases.open(title="spray", severity_="high", actor="cli:op", routes=bad)
    case = await cases.open(title="spray", severity_="high", actor="cli:op", users=["alice"], routes=["wiki"])
    with pytest.raises(BadRequest, match=refused):
        await cases.update(case.id, actor="cli:op", users=["bob", *bad])
    with pytest.raises(BadRequest, match=refused):
        await cases.update(case.id, actor="cli:op", routes=["api", *bad])
    again = await cases.get(case.id)
    assert (again.affected_users, again.routes) == (("alice",), ("wiki",))
