"""Invitation links: those that open nothing count against the address with its failed sign-ins, and
one opened where someone else is signed in says so.

An attack run posted 300 made-up invitation links in 3 s: each wrote a chained audit record and a
security event to every sink, with no limit (the flood then pushed the real records out of an incident
report). A link that opens nothing is a guess as much as a wrong password: recorded while the address
is within ``regulation.address_failures``, answered 429 with nothing recorded past it, and a sign-in
from that address waits as it would after as many wrong passwords.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.identity.invitations import Invitations
from gateway.services import WorkerServices
from tests.unit.web.worker import control_app, signed_in

LIMIT = 3


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[WorkerServices, httpx.AsyncClient]]:
    settings = {"address_failures": LIMIT}
    async with control_app(tmp_path, threat={"enabled": False}, regulation=settings) as started:
        yield started


async def test_made_up_invitation_links_are_recorded_only_within_the_addresss_limit(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    services, client = worker
    page = await client.get("/.gateway/login", headers={"Accept": "text/html"})
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    answers = []
    for _ in range(LIMIT + 4):
        made_up = f"/.gateway/invite/{secrets.token_urlsafe(32)}"
        answer = await client.post(
            made_up,
            data={"new": "x", "confirm": "x", "_csrf_token": token.group(1)},
            headers={"Accept": "text/html"},
            follow_redirects=False,
        )
        answers.append(answer.status_code)
    assert answers == [410] * LIMIT + [429] * 4
    refused = [
        e
        for e in await services.identity.audit.events(kind="user.invitation.accepted")
        if e.outcome == "failure"
    ]
    assert len(refused) == LIMIT


async def test_an_invitation_opened_where_someone_else_is_signed_in_says_so(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    """The last note's UX item: an invitation link opened in a browser signed in as another person set
    the other account's password with no word about it."""
    services, client = worker
    accounts = services.identity.accounts
    dora = await accounts.create(username="dora", password=None, actor="cli:test")
    issued = await Invitations(services.fast, services.identity.clock).issue(
        user_id=dora.id, username="dora", ttl=3600
    )
    path = f"/.gateway/invite/{issued.token}"
    alone = await client.get(path, headers={"Accept": "text/html"})
    assert alone.status_code == 200, alone.text
    assert "signed-in-as" not in alone.text
    erin = await accounts.create(username="erin", password="amber quarry lantern voyage", actor="cli:test")
    await signed_in(services, client, erin)
    other = await client.get(path, headers={"Accept": "text/html"})
    assert other.status_code == 200, other.text
    assert 'id="signed-in-as"' in other.text
    assert "signed in as <strong>erin</strong>" in other.text
    assert "password of <strong>dora</strong>" in other.text
