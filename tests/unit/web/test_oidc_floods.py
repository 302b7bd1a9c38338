"""What an identity provider's public endpoints let one address write: counted like failed sign-ins.

A re-attack run wrote 80 chained audit records a second with junk back-channel logout tokens, and 120 in
3 s by starting its own sign-ins and answering each with an error callback. A rejected logout token and
a failed sign-in at the provider count against the address with its wrong passwords (past the limit:
429, nothing recorded), and starting a sign-in counts with the passkey challenges (each keeps a flow
for ten minutes). Against a worker's real services; the provider is never reached (its discovery
fails), which the endpoints answer without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.services import WorkerServices
from tests.unit.web.worker import control_app

LIMIT = 3
PROVIDER = {
    "name": "corp",
    "issuer": "https://idp.invalid",
    "client_id": "gateway",
    "client_secret": "s3cret-value",
}


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[WorkerServices, httpx.AsyncClient]]:
    regulation = {"address_failures": LIMIT, "address_challenges": LIMIT}
    async with control_app(
        tmp_path, threat={"enabled": False}, regulation=regulation, identity_providers=[PROVIDER]
    ) as started:
        yield started


async def test_junk_logout_tokens_are_recorded_only_within_the_addresss_limit(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    services, client = worker
    statuses = []
    for attempt in range(LIMIT + 3):
        answer = await client.post(
            "/.gateway/oidc/corp/backchannel-logout", data={"logout_token": f"junk{attempt}"}
        )
        statuses.append(answer.status_code)
    assert statuses == [400] * LIMIT + [429] * 3
    recorded = await services.identity.audit.events(kind="signout.backchannel")
    assert len(recorded) == LIMIT


async def test_starting_sign_ins_counts_against_the_address(
    worker: tuple[WorkerServices, httpx.AsyncClient],
) -> None:
    _, client = worker
    statuses = [
        (await client.get("/.gateway/oidc/corp/start", headers={"Accept": "text/html"})).status_code
        for _ in range(LIMIT + 2)
    ]
    # The provider cannot be reached here (503); the starts past the limit are refused before it is asked.
    assert statuses[LIMIT:] == [429, 429]
    assert 429 not in statuses[:LIMIT]
