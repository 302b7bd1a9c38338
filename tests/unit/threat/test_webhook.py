"""The webhook: incidents POSTed as JSON from a bounded queue, off the request path."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from gateway.settings.schema import Duration, ThreatRule
from gateway.threat.responder import Webhook
from tests.unit.threat.conftest import World


async def test_incidents_are_posted_as_json(world: World) -> None:
    received: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    webhook = Webhook(f"http://127.0.0.1:{port}/hook", queue_size=10, timeout=5)
    world.responder.webhook = webhook
    webhook.start()
    try:
        rule = ThreatRule(count=1, window=Duration(60), responses=("alert", "webhook"))
        incident = await world.responder.respond(
            "brute_force", rule, subject="alice", ip="192.0.2.1", summary="test", evidence={"failures": 1}
        )
        async with asyncio.timeout(10):
            body = await received.get()
        assert (body["incident"], body["rule"], body["subject"]) == (incident.id, "brute_force", "alice")
        # A rule without the webhook response does not post.
        quiet = ThreatRule(count=1, window=Duration(60), responses=("alert",))
        await world.responder.respond("brute_force", quiet, subject="bob", summary="x", evidence={})
        assert received.empty()
    finally:
        await webhook.close()
        await runner.cleanup()


def test_a_full_queue_drops_and_counts() -> None:
    webhook = Webhook("http://127.0.0.1:9/hook", queue_size=2, timeout=1)
    for n in range(5):
        webhook.enqueue({"n": n})
    assert webhook.dropped == 3
    assert json.loads(webhook._queue.get_nowait()) == {"n": 0}
