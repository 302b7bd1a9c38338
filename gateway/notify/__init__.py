"""Email to the people affected by a security incident (the incident workflow calls it).

``message`` fills a template in for one person (:func:`compose`, :func:`preview`, :func:`render`);
``smtp`` sends a batch over one connection and reports each person's outcome (:func:`send_all`);
``audit`` records one ``notify.sent`` / ``notify.failed`` per message. The settings are
``notify.smtp`` and ``notify.templates`` (``gateway.settings.schema``); ``gateway notify test`` tries them.
"""

from __future__ import annotations

from gateway.notify.audit import record_delivery, recorder
from gateway.notify.message import (
    BadMessage,
    Incident,
    Message,
    Preview,
    Recipient,
    compose,
    preview,
    render,
    template_named,
    values_for,
)
from gateway.notify.smtp import Delivery, MailUnavailable, OnResult, Outcome, send_all

__all__ = [
    "BadMessage",
    "Delivery",
    "Incident",
    "MailUnavailable",
    "Message",
    "OnResult",
    "Outcome",
    "Preview",
    "Recipient",
    "compose",
    "preview",
    "record_delivery",
    "recorder",
    "render",
    "send_all",
    "template_named",
    "values_for",
]
