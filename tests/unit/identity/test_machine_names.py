"""People and service accounts share one namespace (SQLite and PostgreSQL): the applications are told
the name either way (``X-Gateway-User``, the assertion's ``sub``). An attack run made a service account
``alice`` with role ``boss``, and the app could not tell its token from the person alice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.identity.accounts import AccountExists, AccountService
from gateway.identity.oidc.links import IdentityMapper
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.machine.accounts import ServiceAccountExists, ServiceAccounts
from gateway.settings.schema import IdentityProvider, PasswordSettings, RegulationSettings
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState
from gateway.store.migrate import upgrade
from tests.support.database import PG_HOST, PG_PORT
from tests.support.pg import _admin, fresh_database

FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
JIT = IdentityProvider(
    name="corp",
    issuer="https://idp.example.com",
    client_id="gw",
    client_secret="s",
    provisioning="jit",
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keyring.json")


@pytest.fixture
def machines(database: Database, clock: FakeClock, keyring: Keyring) -> ServiceAccounts:
    return ServiceAccounts(
        database,
        AuditLog(database, clock=clock),
        MemoryFastState(clock=clock),
        clock,
        max_lifetime=86400,
        keyring=keyring,
    )


@pytest.fixture
def people(database: Database, clock: FakeClock) -> AccountService:
    audit = AuditLog(database, clock=clock)
    regulator = Regulator(MemoryFastState(clock=clock), lambda: RegulationSettings(), audit, clock)
    return AccountService(database, PasswordHasher(FAST_ARGON), regulator, audit, clock)


async def test_a_service_account_may_not_take_a_persons_name(
    people: AccountService, machines: ServiceAccounts
) -> None:
    await people.create(username="alice", password=None, email="alice@example.com", actor="admin:root")
    for name in ("alice", "ALICE "):
        with pytest.raises(ServiceAccountExists, match="person"):
            await machines.create_account(name, roles=["boss"], actor="admin:root")
    assert [a.name for a in await machines.list_accounts()] == []


async def test_a_person_may_not_take_a_service_accounts_name(
    people: AccountService, machines: ServiceAccounts
) -> None:
    await machines.create_account("deploybot", actor="admin:root")
    with pytest.raises(AccountExists, match="service account"):
        await people.create(username="DeployBot", password=None, actor="admin:root")
    assert await people.find("deploybot") is None


async def test_a_provider_sign_in_is_never_given_a_service_accounts_name(
    database: Database, machines: ServiceAccounts, clock: FakeClock
) -> None:
    await machines.create_account("deploybot", actor="admin:root")
    mapper = IdentityMapper(database, AuditLog(database, clock=clock), clock)
    mapped = await mapper.map(
        JIT,
        subject="s-9",
        claims={
            "sub": "s-9",
            "preferred_username": "deploybot",
            "email": "d@example.com",
            "email_verified": True,
        },
        ip="198.51.100.1",
    )
    assert mapped.created
    assert mapped.user.username != "deploybot"


async def test_a_deleted_service_accounts_name_is_never_given_at_a_provider_sign_in(
    database: Database, machines: ServiceAccounts, clock: FakeClock, keyring: Keyring
) -> None:
    """The re-attack run: after `service-account delete ci-bot`, a provider user whose
    preferred_username was ci-bot became the person ci-bot, and inherited what the apps keyed on it."""
    await machines.create_account("ci-bot", actor="admin:root")
    await machines.delete_account("ci-bot", actor="admin:root")
    mapper = IdentityMapper(database, AuditLog(database, clock=clock), clock, keyring=keyring)
    mapped = await mapper.map(
        JIT,
        subject="s-10",
        claims={
            "sub": "s-10",
            "preferred_username": "ci-bot",
            "email": "m@example.com",
            "email_verified": True,
        },
        ip="198.51.100.1",
    )
    assert mapped.user.username != "ci-bot"


async def test_a_person_and_a_service_account_made_at_once_never_share_a_name(
    people: AccountService, machines: ServiceAccounts
) -> None:
    """An attack run: `gateway user add race3 --password-stdin` and `gateway service-account create
    race3` at the same moment made both (one try in six): each side read the other's table, then
    inserted into its own, and the person's password hash in between widened the window."""
    for n in range(6):
        name = f"race{n}"
        results = await asyncio.gather(
            people.create(username=name, password="a long passphrase nobody guesses", actor="admin:root"),
            machines.create_account(name, actor="admin:root"),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(refused) == 1, results
        assert isinstance(refused[0], (AccountExists, ServiceAccountExists)), refused
    people_named = {n for n in (f"race{i}" for i in range(6)) if await people.find(n) is not None}
    machines_named = {a.name for a in await machines.list_accounts()}
    assert not people_named & machines_named
    assert len(people_named | machines_named) == 6


async def test_an_email_change_and_a_username_equal_to_it_never_both_land(people: AccountService) -> None:
    """A re-attack run: changing a person's email while another person was created with that very
    address as username left both (15 of 20): one sign-in name, two accounts."""
    for n in range(6):
        address = f"race{n}@corp.example"
        first = await people.create(username=f"owner{n}", password=None, actor="admin:root")
        results = await asyncio.gather(
            people.set_profile(first.id, email=address, actor="admin:root"),
            people.create(username=address, password="a long passphrase nobody guesses", actor="admin:root"),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(refused) == 1, results
        assert isinstance(refused[0], AccountExists), refused


async def test_a_repeatable_read_default_does_not_reopen_the_race(tmp_path: Path, keyring: Keyring) -> None:
    """The names' lock is taken, then both tables are read: at REPEATABLE READ the snapshot was taken by
    the lock statement itself, and a re-attack run (two processes) got 23 of 25 names as both. The
    gateway's engine sets READ COMMITTED whatever the database's default is."""
    with fresh_database("gw_rr") as name:
        _admin(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'")
        url = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
        await upgrade(url)
        db = Database.open(url, pool_size=2)
        try:
            async with db.session(write=True) as session:
                level = (await session.execute(text("SHOW transaction_isolation"))).scalar_one()
            assert level == "read committed"
            clock = FakeClock()
            audit = AuditLog(db, clock=clock)
            regulator = Regulator(MemoryFastState(clock=clock), lambda: RegulationSettings(), audit, clock)
            people = AccountService(db, PasswordHasher(FAST_ARGON), regulator, audit, clock)
            machines = ServiceAccounts(
                db, audit, MemoryFastState(clock=clock), clock, max_lifetime=86400, keyring=keyring
            )
            await machines.create_account("rr0", actor="t")
            with pytest.raises(AccountExists):
                await people.create(username="rr0", password=None, actor="t")
        finally:
            await db.close()
