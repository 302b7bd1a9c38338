"""A record written only while a precondition holds, checked under the chain lock, on SQLite and
PostgreSQL: the guard sign-ins use so that one racing an erasure cannot name the person after it
(``gateway.identity.accounts.account_exists``)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.chain import verify_database
from gateway.audit.chain_key import ChainKeys
from gateway.audit.erase import erase_person
from gateway.audit.trail import AuditLog, SecurityEvent
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database

KEYRING = Keyring({"k1": bytes(range(32))}, "k1")


async def test_a_false_precondition_writes_nothing_and_tells_no_listener(database: Database) -> None:
    audit = AuditLog(database, clock=FakeClock(1_800_000_000.0), keyring=KEYRING)
    heard: list[SecurityEvent] = []
    audit.listeners.append(heard.append)

    async def gone(conn: AsyncConnection) -> bool:
        return False

    async def there(conn: AsyncConnection) -> bool:
        return True

    assert not await audit.record_if(gone, "signin.password", actor="user:fay", subject="fay")
    assert await audit.events() == []
    assert heard == []
    assert await audit.record_if(there, "signin.password", actor="user:gil", subject="gil")
    assert [e.subject for e in await audit.events()] == ["gil"]
    assert [e.subject for e in heard] == ["gil"]
    assert (await verify_database(database, keyring=KEYRING)).ok


async def test_an_erasure_started_while_the_precondition_is_checked_erases_the_record(
    database: Database,
) -> None:
    """The interleaving forced: the erasure of the trail starts while a guarded record is between
    its check and its commit. It must wait for the chain lock and then find the record, never read
    the trail before the record lands (which left sign-in records naming an erased person)."""
    clock = FakeClock(1_800_000_000.0)
    audit = AuditLog(database, clock=clock, keyring=KEYRING)
    erasing: list[asyncio.Task[object]] = []

    async def erasure_starts_now(conn: AsyncConnection) -> bool:
        erasing.append(
            asyncio.create_task(
                erase_person(
                    database,
                    ChainKeys(KEYRING),
                    at=clock.now(),
                    username="fay",
                    pseudonym="abc123",
                    actor="admin:boss",
                    request_ref="PR-1",
                )
            )
        )
        await asyncio.sleep(0.1)  # let the erasure run as far as it can: up to the chain lock
        return True

    assert await audit.record_if(erasure_starts_now, "signin.password", actor="user:fay", subject="fay")
    await erasing[0]
    events = await audit.events()
    assert [(e.kind, e.actor, e.subject) for e in events] == [
        ("privacy.audit_erased", "admin:boss", ""),
        ("signin.password", "[erased:abc123]", "[erased:abc123]"),
    ]
    assert (await verify_database(database, keyring=KEYRING)).ok


async def test_the_log_line_steps_aside_where_the_sinks_carry_the_event(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A first-day run saw every audit event twice on a gateway's output: the ECS event from the
    sinks and this logger's line. With listeners the line is DEBUG; a CLI command has none and keeps it."""
    audit = AuditLog(database, clock=FakeClock(1_800_000_000.0), keyring=KEYRING)
    with caplog.at_level(logging.DEBUG, logger="gateway.audit"):
        await audit.record("user.created", actor="cli:root", subject="ann")
        audit.listeners.append(lambda _event: None)
        await audit.record("user.created", actor="cli:root", subject="bea")
    levels = {r.getMessage().split('"subject": "')[1][:3]: r.levelno for r in caplog.records}
    assert levels == {"ann": logging.INFO, "bea": logging.DEBUG}
