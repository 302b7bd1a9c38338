"""Real-time threat detection: rules over requests and audit events, automatic responses, incidents.

See ``detector.py`` for the rules, ``responder.py`` for the responses, ``blocks.py`` for the address
blocks the data plane enforces and ``incidents.py`` for what an admin lifts with ``gateway incident``.
"""

from gateway.threat.blocks import BlockStore, IpBlocked, IpBlocks
from gateway.threat.detector import ThreatDetector
from gateway.threat.incidents import Action, Incident, IncidentStore
from gateway.threat.responder import Emitter, Responder, Webhook

__all__ = [
    "Action",
    "BlockStore",
    "Emitter",
    "Incident",
    "IncidentStore",
    "IpBlocked",
    "IpBlocks",
    "Responder",
    "ThreatDetector",
    "Webhook",
]
