"""One audit record per notification: who was told about which incident, with which template, and how it went.

``notify.sent`` or ``notify.failed`` (refused or failed), subject the recipient's username. The record
never holds the body or the address: the body may carry what the incident exposed, and the username is
what the trail's erasure finds a person by.
"""

from __future__ import annotations

from gateway.audit.trail import AuditLog
from gateway.notify.smtp import Delivery, OnResult

__all__ = ["record_delivery", "recorder"]


async def record_delivery(audit: AuditLog, delivery: Delivery, *, actor: str) -> None:
    """Record ``delivery`` as ``notify.sent`` / ``notify.failed`` on behalf of ``actor``."""
    message = delivery.message
    await audit.record(
        "notify.sent" if delivery.ok else "notify.failed",
        actor=actor,
        subject=message.username,
        outcome="success" if delivery.ok else "failure",
        details={
            "incident": message.incident,
            "template": message.template,
            "message_id": message.message_id,
            "result": str(delivery.outcome),
            "reply": delivery.detail,
        },
    )


def recorder(audit: AuditLog, *, actor: str) -> OnResult:
    """An ``on_result`` for :func:`gateway.notify.smtp.send_all` that records each delivery as it is known."""

    async def on_result(delivery: Delivery) -> None:
        await record_delivery(audit, delivery, actor=actor)

    return on_result
