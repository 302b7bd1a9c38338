"""What a serving process shares between requests: built whole by the composition root, then frozen.

:func:`gateway.root.start` opens every part in order and hands back one of these; nothing in it is
``None`` because it "has not started yet", and nothing swaps a part later (a reload swaps the
configuration inside ``live``, never a service). Two shapes, one per kind of process:

* :class:`Services` — every serving process: the admin listener has exactly these.
* :class:`WorkerServices` — a gateway worker adds what the data plane and its pages run: signing
  keys, the assertion signer, blocked addresses, the request observers, threat detection, the
  upstream clients and the readiness report.

Both carry :class:`IdentityServices`, the sign-in services (accounts, sessions, second factors), which
``gateway quickstart`` also builds on its own to create the first administrator.

The data plane, the pages (``gateway/web/``) and the admin API (``admin/``) receive them; the pages
and the admin API get the parts as typed handler parameters through Litestar's dependency injection
(``web/app.py``, ``admin/app.py``). This module sits just above the domains so all three can name it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.audit.trail import AuditLog
from gateway.authz.live import LivePolicy
from gateway.authz.sample import DecisionSample
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.crypto.keyring import Keyring, keyring_path
from gateway.crypto.signing import SigningKeys
from gateway.factors.first_codes import FirstCodesGrants
from gateway.factors.recovery import RecoveryCodes
from gateway.factors.totp import TotpService
from gateway.factors.webauthn import WebAuthnService
from gateway.identity.accounts import AccountService
from gateway.identity.assertion import AssertionSigner
from gateway.identity.handoff import HandoffCodes
from gateway.identity.invitations import Invitations
from gateway.identity.ledger import AccountLedger, ledger_path
from gateway.identity.oidc.service import OidcService
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.identity.sessions import SessionStore
from gateway.machine.verifier import Verifiers
from gateway.observe.metrics import Metrics
from gateway.observe.record import Observer
from gateway.observe.replicas import ReplicaRegistry
from gateway.observe.sinks import SinkHub
from gateway.observe.tracing import Tracer
from gateway.privacy.consent import Consents
from gateway.privacy.service import Privacy
from gateway.response.personal_data import CasePersonalData
from gateway.settings.current import LiveConfig
from gateway.settings.schema import Purpose, RegulationSettings, Settings
from gateway.store.db import Database
from gateway.store.fast import FastState
from gateway.threat import IpBlocks, ThreatDetector
from gateway.threat.attempts import AddressAttempts
from gateway.threat.incidents import IncidentStore
from gateway.threat.lockdown import Lockdown
from gateway.threat.responder import Webhook
from gateway.upstream.http1 import Http1Client

__all__ = ["IdentityServices", "ReadinessReport", "Services", "WorkerServices"]

#: What ``/.gateway/ready`` answers (see :mod:`gateway.observe.readiness`), probing if the last
#: results are stale.
ReadinessReport = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class IdentityServices:
    """The sign-in services of one process: the accounts, their sessions and their second factors.

    It lives here, above both ``gateway.identity`` and ``gateway.factors``, because it bundles the
    two: factors belong to an account (they import identity's tables), so identity never imports them.
    """

    clock: Clock
    audit: AuditLog
    keyring: Keyring
    hasher: PasswordHasher
    regulator: Regulator
    sessions: SessionStore
    handoff: HandoffCodes
    accounts: AccountService
    totp: TotpService
    webauthn: WebAuthnService
    recovery: RecoveryCodes
    oidc: OidcService
    first_codes: FirstCodesGrants
    # Consents and objections: what a new session's opt-out is, and what the sign-in asks.
    consents: Consents
    # The sign-in work one client address may ask for (failed passwords, passkey challenges).
    attempts: AddressAttempts

    def privacy(self, db: Database, fast: FastState | None = None) -> Privacy:
        """The privacy service over these sign-in services (with ``fast``, an erasure also reaches the
        threat detector's incidents there, and a person's own exports are counted)."""
        return Privacy(
            db,
            keyring=self.keyring,
            accounts=self.accounts,
            sessions=self.sessions,
            audit=self.audit,
            consents=self.consents,
            incident_records=CasePersonalData(
                db, detections=IncidentStore(fast) if fast is not None else None
            ),
            clock=self.clock,
            fast=fast,
        )

    @classmethod
    def build(
        cls,
        settings: Settings,
        db: Database,
        fast: FastState,
        *,
        clock: Clock = SYSTEM_CLOCK,
        purposes: Callable[[], Sequence[Purpose]] | None = None,
        regulation: Callable[[], RegulationSettings] | None = None,
    ) -> IdentityServices:
        """Wire the services. The keyring is created only for the embedded (SQLite) default.

        ``purposes`` and ``regulation`` give the privacy purposes and the regulation settings in force
        (a serving process passes the live configuration's, so a reload applies); by default those of
        ``settings``.
        """
        embedded = settings.storage.url is None or settings.storage.url.startswith("sqlite")
        keyring = Keyring.load_or_create(keyring_path(settings), allow_create=embedded)
        # Keyed: every record carries an HMAC under a key the database does not hold.
        audit = AuditLog(db, clock=clock, keyring=keyring)
        hasher = PasswordHasher(settings.passwords)
        live_regulation = regulation or (lambda: settings.regulation)
        regulator = Regulator(fast, live_regulation, audit, clock)
        sessions = SessionStore(fast, settings.session, clock)
        # What each provider's mapping is now: a provider session signed in under another is refused.
        sessions.use_providers(settings.identity_providers)
        # One ledger for every service that records a change a restore must not undo.
        ledger = AccountLedger(db, keyring, ledger_path(settings), clock)
        return cls(
            clock=clock,
            audit=audit,
            keyring=keyring,
            hasher=hasher,
            regulator=regulator,
            sessions=sessions,
            handoff=HandoffCodes(fast, clock),
            accounts=AccountService(
                db,
                hasher,
                regulator,
                audit,
                clock,
                sessions=sessions,
                keyring=keyring,
                ledger=ledger,
                invitations=Invitations(fast, clock),
            ),
            totp=TotpService(db, keyring, settings.mfa, clock, ledger=ledger),
            webauthn=WebAuthnService(
                db,
                fast,
                settings.mfa.webauthn,
                public_url=settings.public_url,
                audit=audit,
                clock=clock,
                ledger=ledger,
            ),
            recovery=RecoveryCodes(db, hasher, settings.mfa, clock, ledger=ledger),
            first_codes=FirstCodesGrants(fast),
            attempts=AddressAttempts(fast, live_regulation),
            consents=Consents(
                db,
                audit,
                sessions,
                purposes=purposes or (lambda: settings.privacy.purposes),
                clock=clock,
                ledger=ledger,
            ),
            oidc=OidcService(
                db=db,
                fast=fast,
                audit=audit,
                sessions=sessions,
                clock=clock,
                keyring=keyring,
            ),
        )


@dataclass(frozen=True, slots=True)
class Services:
    """The parts every serving process runs (a gateway worker, the admin listener)."""

    # The configuration in force; a reload (SIGHUP) swaps what ``live.current`` returns.
    live: LiveConfig
    db: Database
    # Sessions, counters, blocks and the invalidation broadcast, shared by every process of the node.
    fast: FastState
    identity: IdentityServices
    policy: LivePolicy
    metrics: Metrics
    # None when logging configures no sink this process writes to.
    sinks: SinkHub | None
    # This process's heartbeat row in ``replicas`` (beating in the background), and the list of all
    # of them: what the admin overview shows of the deployment.
    replicas: ReplicaRegistry
    # The data-subject rights, the request register and legal holds (gateway.privacy).
    privacy: Privacy
    # The queue to ``threat.webhook_url`` that incident-record changes made in the console go out from
    # (a background task POSTs them); None without a webhook URL and in a gateway worker.
    case_events: Webhook | None


@dataclass(frozen=True, slots=True)
class WorkerServices(Services):
    """A gateway worker's parts: the admin listener's, and what the data plane and its pages run."""

    signing: SigningKeys
    assertions: AssertionSigner
    # Blocked client addresses, checked in the receive stage; kept current by the threat detector.
    ip_blocks: IpBlocks
    # The emergency lockdown switch as this worker knows it (checked after the route stage); kept
    # current from the fast state by its listener.
    lockdown: Lockdown
    # None when ``threat.enabled`` is false.
    threats: ThreatDetector | None
    # Called with each request's record when it ends (metrics, access log, threats); they only
    # enqueue. Registered at start-up, in that order.
    observers: list[Observer]
    # The proxy stage's own HTTP/1.1 client, and aiohttp for WebSockets (and the health checks).
    upstream: Http1Client
    websockets: aiohttp.ClientSession
    readiness: ReadinessReport
    # What the authorize stage decided, counted per request shape (flushed in the background to
    # ``decision_samples``): the traffic the policy what-if replays.
    sample: DecisionSample
    # Who a bearer token speaks for (the gateway's own API tokens, then identity providers' access
    # tokens: JWTs and introspection), for routes that take tokens.
    bearer: Verifiers
    # Request tracing (gateway.observe.tracing); None when ``tracing.enabled`` is false, and then the
    # data plane does no tracing work at all.
    tracer: Tracer | None
