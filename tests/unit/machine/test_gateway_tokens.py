"""Verifying gateway tokens against a real database and fast state: scope, expiry, revocation, cache, audit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import cast

import pytest
from sqlalchemy import select

from gateway.audit.models import AuditEvent
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.machine.accounts import InvalidMachineRequest, ServiceAccounts, UnknownToken
from gateway.machine.gateway_tokens import GatewayTokens
from gateway.machine.verifier import TokenOutOfScope, TokenRefused, Verifiers
from gateway.store.db import Database
from gateway.store.fast.base import FastState

ROUTES = ("api", "wiki", "other")


@pytest.fixture
def accounts(audit_db: Database, fast_state: FastState, clock: FakeClock) -> ServiceAccounts:
    return ServiceAccounts(
        audit_db, AuditLog(audit_db, clock=clock), fast_state, clock, max_lifetime=86400 * 30
    )


@pytest.fixture
async def tokens(audit_db: Database, fast_state: FastState, clock: FakeClock) -> AsyncIterator[GatewayTokens]:
    verifier = GatewayTokens(audit_db, AuditLog(audit_db, clock=clock), fast_state, clock)
    yield verifier
    await verifier.close()


async def _kinds(db: Database) -> list[tuple[str, str]]:
    async with db.session() as session:
        rows = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
    return [(row.kind, row.details) for row in rows]


async def _issue(accounts: ServiceAccounts, *routes: str, lifetime: float = 3600.0) -> tuple[str, str]:
    view, token = await accounts.create_token(
        "ci", routes=routes, lifetime=lifetime, known_routes=ROUTES, actor="cli:test"
    )
    return token, view.id


@pytest.mark.parametrize("fast_state_backend", ["local"], indirect=True)
async def test_a_token_speaks_for_its_client_on_its_routes_only(
    accounts: ServiceAccounts, tokens: GatewayTokens, audit_db: Database
) -> None:
    await accounts.create_account("CI", roles=["deployers", "readers"], actor="cli:test")
    token, token_id = await _issue(accounts, "api", "wiki")
    chain = Verifiers([tokens])
    verified = await chain.verify(token, route="api", ip="192.0.2.1")
    assert verified.subject == "ci"
    assert verified.principals == {"client:ci", "deployers", "readers"}
    assert verified.token_id == token_id
    with pytest.raises(TokenOutOfScope):
        await chain.verify(token, route="other", ip="192.0.2.1")
    with pytest.raises(TokenRefused) as unknown:
        await chain.verify("gwt_" + "A" * 43, route="api", ip="192.0.2.1")
    assert unknown.value.reason == "unknown"
    with pytest.raises(TokenRefused) as spoiled:
        await chain.verify("GWT_" + token[4:], route="api", ip="192.0.2.1")
    assert spoiled.value.reason == "malformed"  # decided here, whatever else the chain holds
    with pytest.raises(TokenRefused) as junk:
        await chain.verify("eyJhbGciOi.x.y", route="api", ip="192.0.2.1")
    assert junk.value.reason == "unrecognised"
    await asyncio.gather(*tokens._writes.pending)
    kinds = await _kinds(audit_db)
    # The use and refusal records are written in the background: in any order.
    assert sorted(k for k, _ in kinds) == [
        # Out of its routes, unknown, and spoiled (kept from any provider, so recorded here).
        "service_account.created", "token.created", "token.refused", "token.refused", "token.refused",
        "token.used",
    ]  # fmt: skip
    assert all(token not in details for _, details in kinds)


@pytest.mark.parametrize("fast_state_backend", ["local"], indirect=True)
async def test_a_flood_of_refused_uses_of_one_token_is_one_record_a_minute(
    accounts: ServiceAccounts, tokens: GatewayTokens, audit_db: Database, clock: FakeClock
) -> None:
    """An attack run: every request with a known token outside its routes (or expired, or revoked)
    was a hash-chained audit write; a flood slowed other clients' requests to seconds and filled the
    queue token.used shares. The first refusal is recorded at once; the rest of the minute's are
    summed with the addresses they came from (a re-attack run: a revoked token used from a new
    address within the minute left no trace, and the count was lost at a restart)."""
    await accounts.create_account("ci", actor="cli:test")
    token, token_id = await _issue(accounts, "api")

    async def refusals() -> list[dict[str, object]]:
        await asyncio.gather(*tokens._writes.pending)
        return [json.loads(d) for kind, d in await _kinds(audit_db) if kind == "token.refused"]

    for n in range(200):
        with pytest.raises(TokenOutOfScope):
            await tokens.verify(token, route="other", ip=f"192.0.2.{n % 3 + 1}")
    (first,) = await refusals()
    assert first["token"] == token_id
    clock.advance(61)
    with pytest.raises(TokenOutOfScope):
        await tokens.verify(token, route="other", ip="198.51.100.7")
    # The minute's summary and the new refusal are written side by side: in either order.
    later = (await refusals())[1:]
    assert len(later) == 2
    (summary,) = [r for r in later if "refused_since_last_record" in r]
    (again,) = [r for r in later if r is not summary]
    assert summary["refused_since_last_record"] == 199
    assert sorted(cast(list[str], summary["addresses"])) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert "refused_since_last_record" not in again
    # What is still summing when the process stops is recorded then.
    with pytest.raises(TokenOutOfScope):
        await tokens.verify(token, route="other", ip="203.0.113.5")
    await tokens.close()
    assert (await refusals())[-1]["addresses"] == ["203.0.113.5"]


@pytest.mark.parametrize("fast_state_backend", ["local"], indirect=True)
async def test_expiry_is_checked_on_every_use_also_from_the_cache(
    accounts: ServiceAccounts, tokens: GatewayTokens, clock: FakeClock
) -> None:
    await accounts.create_account("ci", actor="cli:test")
    token, _ = await _issue(accounts, "api", lifetime=60)
    await tokens.verify(token, route="api", ip="")
    clock.advance(60)
    with pytest.raises(TokenRefused) as expired:
        await tokens.verify(token, route="api", ip="")
    assert expired.value.reason == "expired"
    assert "expired" in expired.value.description


@pytest.mark.parametrize("fast_state_backend", ["local"], indirect=True)
async def test_a_leaked_token_is_revoked_by_itself_and_never_echoed(
    accounts: ServiceAccounts, tokens: GatewayTokens
) -> None:
    """A re-attack run: `gateway token revoke <the whole token>` was refused as "not a token id" and
    printed the secret; someone holding a leaked token has the token, not its id."""
    await accounts.create_account("ci", actor="cli:test")
    token, token_id = await _issue(accounts, "api")
    other, _ = await _issue(accounts, "api")
    view = await accounts.revoke_token(token, actor="cli:test")
    assert (view.id, view.state) == (token_id, "revoked")
    with pytest.raises(TokenRefused):
        await tokens.verify(token, route="api", ip="")
    assert (await tokens.verify(other, route="api", ip="")).subject == "ci"  # only that one
    # A spoiled one (a character added): refused without the secret in the message.
    with pytest.raises(InvalidMachineRequest) as refused:
        await accounts.revoke_token(other + "x", actor="cli:test")
    assert other[12:] not in str(refused.value)
    # Its id and a token of the same id but another secret are two things.
    with pytest.raises(UnknownToken):
        await accounts.revoke_token(token_id + "A" * 35, actor="cli:test")


@pytest.mark.parametrize("fast_state_backend", ["local", "redis"], indirect=True)
async def test_a_revocation_empties_every_listening_cache_at_once(
    accounts: ServiceAccounts, tokens: GatewayTokens
) -> None:
    await accounts.create_account("ci", actor="cli:test")
    token, token_id = await _issue(accounts, "api")
    listener = asyncio.ensure_future(tokens.run_invalidation_listener())
    try:
        async with asyncio.timeout(10):
            await tokens.wait_listening()
        await tokens.verify(token, route="api", ip="")
        assert tokens.cached == 1
        view = await accounts.revoke_token(token_id, actor="cli:test")
        assert view.state == "revoked"
        # The fake clock does not move: only the broadcast can have dropped the cached entry.
        async with asyncio.timeout(10):
            while tokens.cached:
                await asyncio.sleep(0.01)
        with pytest.raises(TokenRefused) as revoked:
            await tokens.verify(token, route="api", ip="")
        assert revoked.value.reason == "revoked"
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


@pytest.mark.parametrize("fast_state_backend", ["local"], indirect=True)
async def test_bad_management_input_changes_nothing(accounts: ServiceAccounts) -> None:
    await accounts.create_account("ci", actor="cli:test")
    # client:unknown is what the trail calls a token nobody issued (an attack run made such an account).
    with pytest.raises(InvalidMachineRequest, match="token nobody issued"):
        await accounts.create_account("Unknown", actor="cli:test")
    for routes, lifetime in (((), 60.0), (("nope",), 60.0), (("api",), 0.0), (("api",), 86400 * 31)):
        with pytest.raises(InvalidMachineRequest):
            await accounts.create_token(
                "ci", routes=routes, lifetime=lifetime, known_routes=ROUTES, actor="t"
            )
    for roles in (["user:alice"], ["authenticated"], ["two words"]):
        with pytest.raises(InvalidMachineRequest):
            await accounts.create_account("other", roles=roles, actor="t")
    with pytest.raises(UnknownToken):
        await accounts.revoke_token("gwt_AAAAAAAA", actor="t")
    assert await accounts.list_tokens() == []
    assert [a.name for a in await accounts.list_accounts()] == ["ci"]


@pytest.mark.parametrize("fast_state_backend", ["local"], indirect=True)
@pytest.mark.parametrize("hidden", ["\u202e", "\u200b", "\u061c", "\x85", "\x1b"])
async def test_a_service_account_holds_no_character_a_reader_cannot_see(
    accounts: ServiceAccounts, hidden: str
) -> None:
    """A re-attack run: the description "CI job \u202egnp.exe" read as "CI job exe.png" in the list."""
    with pytest.raises(InvalidMachineRequest):
        await accounts.create_account("ci", description=f"CI job {hidden}gnp.exe", actor="cli:test")
    with pytest.raises(InvalidMachineRequest):
        await accounts.create_account("ci", owner=f"bob{hidden}x", actor="cli:test")
    made = await accounts.create_account("ci", description="CI job für Müller", owner="bob", actor="cli:test")
    assert made.description == "CI job für Müller"
