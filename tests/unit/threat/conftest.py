"""Fixtures for the threat tests: a detector wired to real stores (the shared fast-state fixtures, a
SQLite audit trail and accounts) on the test's fake clock; signals are processed by hand, never by
sleeping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.identity.accounts import AccountService
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.identity.sessions import Session, SessionStore
from gateway.observe.record import AccessDecision, AuthKind, RequestKind, RequestRecord
from gateway.settings.schema import (
    Duration,
    NetworkRule,
    PasswordSettings,
    RegulationSettings,
    SessionSettings,
    ThreatRule,
    ThreatSettings,
)
from gateway.store.db import Database
from gateway.store.fast import FastState
from gateway.threat import IpBlocks, Responder, ThreatDetector

FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
PASSWORD = "amber quarry lantern voyage"
SESSION_SETTINGS = SessionSettings(idle_timeout=Duration(1800), lifetime=Duration(3600))
IP = "203.0.113.9"
UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"

# Small thresholds keep the scenarios short; each test states what it relies on.
SETTINGS = ThreatSettings(
    brute_force=ThreatRule(count=5, window=Duration(300)),
    spraying=ThreatRule(count=4, window=Duration(600), responses=("alert", "block_ip")),
    spraying_network=NetworkRule(count=6, window=Duration(600), responses=("alert", "block_ip"), prefix=48),
    mfa_failures=ThreatRule(count=3, window=Duration(600), responses=("alert", "revoke_unfinished")),
    reconnaissance=ThreatRule(count=5, window=Duration(300), responses=("alert", "step_up")),
    token_guessing=ThreatRule(count=4, window=Duration(300), responses=("alert", "block_ip")),
    session_hijack=ThreatRule(responses=("alert", "revoke_session")),
)


@dataclass
class World:
    clock: FakeClock
    state: FastState
    db: Database
    audit: AuditLog
    accounts: AccountService
    sessions: SessionStore
    responder: Responder
    blocks: IpBlocks
    detector: ThreatDetector
    settings: list[ThreatSettings]
    emitted: list[Mapping[str, object]] = field(default_factory=list)

    def advance(self, seconds: float) -> None:
        # One clock: the stores' TTLs (memory, the file) and the detector's windows age together.
        self.clock.advance(seconds)

    async def pump(self) -> int:
        return await self.detector.process_pending()

    async def fail(self, kind: str, subject: str, ip: str = IP, times: int = 1) -> None:
        for _ in range(times):
            await self.audit.record(kind, actor="anonymous", subject=subject, ip=ip, outcome="failure")
        await self.pump()

    async def user(self, name: str = "alice") -> int:
        user = await self.accounts.create(username=name, password=PASSWORD, actor="test")
        return user.id

    async def session(
        self, name: str = "alice", *, ip: str = IP, ua: str = UA, level: AuthLevel = AuthLevel.TWO_FACTOR
    ) -> tuple[str, Session]:
        found = await self.accounts.find(name)
        user_id = found.id if found is not None else await self.user(name)
        now = self.clock.time()
        factors = (FactorUse(Factor.PASSWORD, now), FactorUse(Factor.TOTP, now))
        return await self.sessions.create(
            user_id=user_id,
            username=name,
            level=level,
            factors=factors[: 2 if level == AuthLevel.TWO_FACTOR else 1],
            roles=(),
            ip=ip,
            user_agent=ua,
            host="app.example.com",
        )

    def request(
        self, *, user: str = "", session: Session | None = None, ip: str = IP, ua: str = UA, **kw: str
    ) -> None:
        rec = RequestRecord(at=self.clock.time(), kind=RequestKind.HTTP, client_ip=ip, user_agent=ua)
        rec.user = user
        rec.session = session.id_hash[:16] if session is not None else ""
        rec.decision = AccessDecision(kw.get("decision", "allow"))
        rec.reason = kw.get("reason", "policy-allow")
        rec.auth = AuthKind(kw.get("auth", "session" if session is not None else "none"))
        self.detector.observe(rec)

    async def events(self, kind: str) -> list[str]:
        return [e.subject or e.ip for e in await self.audit.events(kind=kind)]


@pytest.fixture
def world(fast_state: FastState, clock: FakeClock, audit_db: Database) -> World:
    audit = AuditLog(audit_db, clock=clock)
    regulator = Regulator(fast_state, lambda: RegulationSettings(), audit, clock)
    sessions = SessionStore(fast_state, SESSION_SETTINGS, clock, cache_ttl=0)
    accounts = AccountService(
        audit_db, PasswordHasher(FAST_ARGON), regulator, audit, clock, sessions=sessions
    )
    emitted: list[Mapping[str, object]] = []
    responder = Responder(
        state=fast_state,
        audit=audit,
        accounts=accounts,
        sessions=sessions,
        clock=clock,
        emit=emitted.append,
    )
    blocks = IpBlocks(clock)
    current = [SETTINGS]
    detector = ThreatDetector(
        settings=lambda: current[0], state=fast_state, responder=responder, blocks=blocks, clock=clock
    )
    audit.listeners.append(detector.on_audit)
    return World(
        clock,
        fast_state,
        audit_db,
        audit,
        accounts,
        sessions,
        responder,
        blocks,
        detector,
        current,
        emitted,
    )
