"""An audit record's actor and subject show every character a reader could not see as its escape: a
refused console action is recorded with the name it was sent, and an attack run sent references with
a right-to-left override and terminal control sequences (a look-alike of another hold in the trail,
and bytes that drive the terminal of whoever runs ``gateway audit list``)."""

from __future__ import annotations

from gateway.audit.chain import verify_database
from gateway.audit.trail import AuditLog, SecurityEvent
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.names import hidden_character
from gateway.store.db import Database

KEYRING = Keyring({"k1": bytes(range(32))}, "k1")


async def test_hidden_characters_in_a_records_names_are_stored_as_escapes(database: Database) -> None:
    audit = AuditLog(database, clock=FakeClock(1_800_000_000.0), keyring=KEYRING)
    heard: list[SecurityEvent] = []
    audit.listeners.append(heard.append)
    await audit.record(
        "admin.privacy.hold.place",
        actor="user:boss\u200b",
        subject="hold:LH-\u202e1002-HL\x1b[31m\u0085",
        outcome="failure",
        details={"reference": "LH-\u202e1002"},
    )
    (event,) = await audit.events()
    assert event.subject == "hold:LH-\\u202e1002-HL\\u001b[31m\\u0085"
    assert event.actor == "user:boss\\u200b"
    assert '"LH-\\u202e1002"' in event.details
    for text in (event.actor, event.subject, event.details, heard[0].subject, heard[0].actor):
        assert hidden_character(text) is None, text
    # A name in another script is kept as it is; the chain verifies.
    await audit.record("user.created", actor="cli:root", subject="zoë-案件")
    assert (await audit.events())[0].subject == "zoë-案件"
    assert (await verify_database(database, keyring=KEYRING)).ok
