"""Incident records to ticketing and paging tools: each change POSTed as JSON to ``threat.webhook_url``.

The same receiver already gets each detection (a rule with the ``webhook`` response); it gets the
record's life after that: opened by hand, each phase, actions, sealed evidence, notifications. The
document names the incident, its phase and severity, the actor and what happened, never a secret.
In a serving process (the admin console) each change is handed to a bounded queue that a background
task POSTs from (:func:`queued_webhook`, the same queue class as the detections'): an admin working an
incident while the ticketing tool is down (which an incident may well be about) never waits for it. The
CLI POSTs before it exits (:func:`case_webhook`): a receiver that is down costs it at most
``threat.webhook_timeout`` per change and is logged. Either way the change itself stands (the audit
trail has it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from gateway.threat.responder import Webhook

__all__ = ["CaseEvent", "case_webhook", "queued_webhook"]

logger = logging.getLogger("gateway.response")

CaseEvent = Callable[[Mapping[str, Any]], Awaitable[None]]


def case_webhook(url: str, *, timeout: float) -> CaseEvent:
    """A listener for :class:`gateway.response.cases.Cases` that POSTs each event to ``url``."""

    async def post(event: Mapping[str, Any]) -> None:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
                http.post(url, json=dict(event)) as resp,
            ):
                if resp.status >= 300:
                    logger.warning("incident webhook answered %d for %s", resp.status, event.get("event"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning(
                "incident webhook failed for %s: %s", event.get("event"), exc or type(exc).__name__
            )

    return post


def queued_webhook(events: Webhook) -> CaseEvent:
    """A listener that puts each event on ``events``' queue (its own task POSTs them; a full queue drops
    the newest and counts it): the change's caller never waits for the receiver."""

    async def enqueue(event: Mapping[str, Any]) -> None:
        events.enqueue(event)

    return enqueue
