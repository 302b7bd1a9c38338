"""Identity mapping on SQLite and PostgreSQL: (provider, sub) links, provisioning, email rules, roles.

Every rule of :mod:`gateway.identity.oidc.links` has a test here; the ones about not taking over an
account (unverified email, email taken, a second subject for a linked account) are the point.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.identity.accounts import AccountService
from gateway.identity.models import RetiredUsername, User
from gateway.identity.oidc.links import AccountRefused, IdentityMapper, groups_of, verified_email
from gateway.identity.oidc.models import IdentityLink
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.settings.schema import IdentityProvider, PasswordSettings, RegulationSettings
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState

JIT = IdentityProvider(
    name="corp",
    issuer="https://idp.example.com",
    client_id="gateway",
    client_secret="s",
    provisioning="jit",
    role_map={"admins": "admin", "eng": ("dev", "reader")},
)
PRE = IdentityProvider(name="pre", issuer="https://idp.example.com", client_id="gateway", client_secret="s")


@dataclass
class World:
    db: Database
    mapper: IdentityMapper
    audit: AuditLog

    async def add_local(
        self, username: str, email: str | None = None, roles: str = "", disabled: bool = False
    ) -> User:
        now = FakeClock().now()
        user = User(
            username=username,
            email=email,
            display_name="",
            password_hash="$argon2id$x",
            disabled=disabled,
            must_change_password=False,
            roles=roles,
            created_at=now,
            updated_at=now,
            password_changed_at=now,
        )
        async with self.db.session() as session:
            session.add(user)
            await session.commit()
        return user

    async def count(self, model: Any) -> int:
        async with self.db.session() as session:
            return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


@pytest.fixture
async def world(database: Database) -> World:
    clock = FakeClock()
    audit = AuditLog(database, clock=clock)
    return World(database, IdentityMapper(database, audit, clock), audit)


def claims(sub: str = "s-1", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": sub,
        "email": "Ada@Example.com",
        "email_verified": True,
        "preferred_username": "ada",
        "name": "Ada Lovelace",
        "groups": ["eng", "admins", "eng"],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


async def test_jit_creates_an_account_without_password_and_finds_it_by_the_link(world: World) -> None:
    first = await world.mapper.map(JIT, subject="s-1", claims=claims(), ip="198.51.100.1")
    assert (first.created, first.linked) == (True, True)
    user = first.user
    assert (user.username, user.email, user.display_name, user.password_hash) == (
        "ada",
        "ada@example.com",
        "Ada Lovelace",
        None,
    )
    assert first.groups == ("corp:eng", "corp:admins")  # kept with their provider
    assert first.roles == ("dev", "reader", "admin")
    # Later: found by (provider, sub) even when the email and username claims changed.
    again = await world.mapper.map(
        JIT, subject="s-1", claims=claims(email="new@example.com", preferred_username="x")
    )
    assert (again.created, again.linked, again.user.id) == (False, False, user.id)
    assert await world.count(User) == 1
    kinds = [e.kind for e in await world.audit.events()]
    assert kinds.count("user.created") == 1
    assert kinds.count("oidc.linked") == 1


async def test_local_roles_come_first_and_groups_map_to_roles(world: World) -> None:
    await world.add_local("ops-person", "ops@example.com", roles="ops admin")
    mapped = await world.mapper.map(PRE, subject="s-9", claims=claims(email="ops@example.com"))
    assert mapped.roles == ("ops", "admin")  # PRE has no role_map
    jit = await world.mapper.map(
        JIT, subject="s-8", claims=claims(email="x@example.com", preferred_username="xy")
    )
    assert jit.roles == ("dev", "reader", "admin")


async def test_an_unverified_email_is_neither_matched_nor_stored(world: World) -> None:
    local = await world.add_local("ada", "ada@example.com")
    for flag in (False, None, "false", 1):
        assert verified_email(claims(email_verified=flag)) is None
    assert verified_email(claims(email_verified="true")) == "ada@example.com"
    mapped = await world.mapper.map(JIT, subject="s-2", claims=claims(email_verified=False))
    assert mapped.user.id != local.id
    assert mapped.user.email is None
    # Its preferred username "ada" is taken by the local account: another name, never that account.
    assert mapped.user.username == "ada@example.com" or mapped.user.username.startswith("corp-")
    assert mapped.user.username != "ada"


async def test_a_look_alike_email_never_reaches_the_account_it_looks_like(world: World) -> None:
    """An attack run: the provider verified a full-width or long-s spelling of a local admin's address,
    which the canonical form folded into that very address, and the pre-provisioned sign-in linked the
    admin's account. Only an address the fold leaves as verified (but for case) is used."""
    boss = await world.add_local("boss", "boss@corp.test")
    await world.add_local("kate", "kate@korp.test")
    assert verified_email(claims(email="\u212aate@korp.test")) is None
    for padded in (
        "\xa0kate@korp.test",
        "kate@korp.test\u2003",
        "kate@korp.test\x1c",
        "\u3000kate@korp.test",
    ):
        assert verified_email(claims(email=padded)) is None, repr(padded)
    assert verified_email(claims(email=" kate@korp.test\n")) == "kate@korp.test"
    # Full-width letters, a long s, the Kelvin sign (which even NFC turns into K: a re-attack run).
    for look_alike in ("\uff42\uff4f\uff53\uff53@corp.test", "bo\u017fs@corp.test", "boss@\u212aorp.test"):
        assert verified_email(claims(email=look_alike)) is None
        with pytest.raises(AccountRefused):
            await world.mapper.map(PRE, subject=f"s-{look_alike}", claims=claims(email=look_alike))
        jit = await world.mapper.map(
            JIT, subject=f"j-{look_alike}", claims=claims(email=look_alike, preferred_username="mallory")
        )
        assert jit.user.id != boss.id
        assert jit.user.email is None
    # The same address in ASCII capitals is the same mailbox; an accented one as sent.
    assert verified_email(claims(email="BOSS@corp.test")) == "boss@corp.test"
    assert verified_email(claims(email="Jos\u00e9@corp.test")) == "jos\u00e9@corp.test"


async def test_jit_refuses_a_verified_email_of_an_existing_account_unless_linking_is_allowed(
    world: World,
) -> None:
    local = await world.add_local("ada", "ada@example.com")
    with pytest.raises(AccountRefused) as refused:
        await world.mapper.map(JIT, subject="s-3", claims=claims())
    assert refused.value.why == "email-taken"
    assert refused.value.status == 403
    assert await world.count(User) == 1
    assert await world.count(IdentityLink) == 0
    failure = (await world.audit.events(kind="signin.oidc"))[0]
    assert failure.outcome == "failure"
    assert json.loads(failure.details)["reason"] == "email-taken"
    linking = IdentityProvider(**{**_fields(JIT), "link_by_email": True})
    mapped = await world.mapper.map(linking, subject="s-3", claims=claims())
    assert (mapped.user.id, mapped.linked, mapped.created) == (local.id, True, False)


def _fields(idp: IdentityProvider) -> dict[str, Any]:
    return {name: getattr(idp, name) for name in idp.__struct_fields__}


async def test_preprovisioned_links_by_verified_email_only(world: World) -> None:
    with pytest.raises(AccountRefused) as refused:
        await world.mapper.map(PRE, subject="s-4", claims=claims())
    assert refused.value.why == "not-provisioned"
    local = await world.add_local("ada", "ada@example.com")
    with pytest.raises(AccountRefused):
        await world.mapper.map(PRE, subject="s-4", claims=claims(email_verified=False))
    mapped = await world.mapper.map(PRE, subject="s-4", claims=claims())
    assert (mapped.user.id, mapped.linked) == (local.id, True)
    assert await world.count(User) == 1


async def test_an_account_linked_to_one_subject_is_not_linked_to_another(world: World) -> None:
    local = await world.add_local("ada", "ada@example.com")
    await world.mapper.map(PRE, subject="old-sub", claims=claims())
    # The provider reassigned the email to a new person (new sub): they do not get Ada's account.
    with pytest.raises(AccountRefused) as refused:
        await world.mapper.map(PRE, subject="new-sub", claims=claims())
    assert refused.value.why == "linked-to-another-subject"
    assert (await world.mapper.map(PRE, subject="old-sub", claims=claims())).user.id == local.id


async def test_a_disabled_account_is_refused(world: World) -> None:
    await world.add_local("ada", "ada@example.com", disabled=True)
    with pytest.raises(AccountRefused) as refused:
        await world.mapper.map(PRE, subject="s-5", claims=claims())
    assert refused.value.why == "disabled"


async def test_usernames_fall_back_when_taken_or_invalid(world: World) -> None:
    await world.add_local("ada")
    taken = await world.mapper.map(JIT, subject="s-6", claims=claims(email="other@example.com"))
    assert taken.user.username == "other@example.com"
    weird = await world.mapper.map(
        JIT,
        subject="s-7",
        claims=claims(email=None, preferred_username="bad\u202ename", name="\u202eEvil\x00"),
    )
    assert weird.user.username.startswith("corp-")
    assert weird.user.display_name == "Evil"


@pytest.mark.parametrize("name", ["system", "Anonymous", "POLICY"])
async def test_a_provider_cannot_name_a_person_after_the_gateway_itself(world: World, name: str) -> None:
    """``preferred_username: system`` would make the person the owner of the gateway's own records in
    their export and erasure: the next candidate name is taken instead."""
    mapped = await world.mapper.map(
        JIT, subject=f"s-{name}", claims=claims(email=None, preferred_username=name)
    )
    assert mapped.user.username.startswith("corp-")


@pytest.mark.parametrize(
    "name", ["admin", "Administrator", "ROOT", "gateway", "postmaster", "203.0.113.7", "inc-0a1b2c3d"]
)
async def test_a_provider_cannot_give_a_person_a_name_of_authority(world: World, name: str) -> None:
    """Most providers let people choose their username claim: a JIT account named ``admin`` would
    reach every app as ``X-Gateway-User: admin``. Its next candidate (here the verified email) is
    taken instead; a local account may still have such a name (the operator chose it)."""
    mapped = await world.mapper.map(
        JIT,
        subject=f"s-{name}",
        claims=claims(email=f"{name.lower()}-person@corp.test", preferred_username=name),
    )
    assert mapped.user.username == f"{name.lower()}-person@corp.test"


@pytest.mark.parametrize(
    "name",
    [
        "adm\u0131\u0307n",  # dotless i and a combining dot: reads as admin (an attack run)
        "ro\u0585t",  # an Armenian o
        "\u0251dmin",  # Latin alpha
        "ADM\u0130N",  # capital I with dot above, case-folded to i and a dot
    ],
)
async def test_a_provider_cannot_give_a_name_that_reads_as_one_of_authority(world: World, name: str) -> None:
    """The name-of-authority check read the name as stored; these read as admin or root."""
    mapped = await world.mapper.map(
        JIT, subject=f"s-{name}", claims=claims(email="someone@corp.test", preferred_username=name)
    )
    assert mapped.user.username == "someone@corp.test"


@pytest.mark.parametrize(
    ("existing", "claimed"),
    [
        ("joe", "\u0458\u043e\u0435"),  # wholly Cyrillic: mixes no script (an attack run)
        ("pace", "\u0440\u0430\u0441\u0435"),
        ("bob", "b\u0585b"),  # an Armenian o
        ("alice", "al\u0130ce"),  # folded to i and a combining dot, drawn as one dotted i
        ("alice", "a\u01c0ice"),  # the dental click, a vertical bar like l
        ("joe", "joe."),  # a trailing dot
        ("bob", "b\u0966b"),  # a Devanagari zero
    ],
)
async def test_a_provider_cannot_give_a_name_that_reads_as_an_existing_one(
    world: World, existing: str, claimed: str
) -> None:
    await world.add_local(existing)
    mapped = await world.mapper.map(
        JIT, subject=f"s-{claimed}", claims=claims(email="newcomer@corp.test", preferred_username=claimed)
    )
    assert mapped.user.username == "newcomer@corp.test"


async def test_a_name_in_another_script_that_reads_as_no_one_is_kept(world: World) -> None:
    """The control: a Cyrillic name is a name; it is refused only where it reads as one in use."""
    mapped = await world.mapper.map(
        JIT,
        subject="s-ru",
        claims=claims(email="x@corp.test", preferred_username="\u0430\u043b\u0435\u043a\u0441\u0435\u0439"),
    )
    assert mapped.user.username == "\u0430\u043b\u0435\u043a\u0441\u0435\u0439"


async def test_two_replicas_creating_the_same_person_end_with_one_account(
    world: World, database: Database
) -> None:
    other = IdentityMapper(database, world.audit, FakeClock())
    results = await asyncio.gather(
        world.mapper.map(JIT, subject="s-race", claims=claims()),
        other.map(JIT, subject="s-race", claims=claims()),
        return_exceptions=True,
    )
    users = {r.user.id for r in results if not isinstance(r, BaseException)}
    assert len(users) == 1, results
    assert await world.count(User) == 1
    assert await world.count(IdentityLink) == 1


async def test_a_second_provider_cannot_assert_the_first_ones_groups(world: World) -> None:
    """Whoever runs a second provider (a partner's) could put "admins" in its tokens: the group is
    kept with the provider that asserted it, so rules about corp's admins never match it."""
    partner = IdentityProvider(
        name="partner",
        issuer="https://partner.example.com",
        client_id="gw",
        client_secret="s",
        provisioning="jit",
    )
    theirs = await world.mapper.map(
        partner,
        subject="p-1",
        claims=claims(
            sub="p-1", email="x@partner.example.com", preferred_username="px", groups=["admins", "eng"]
        ),
    )
    ours = await world.mapper.map(
        JIT,
        subject="c-1",
        claims=claims(sub="c-1", email="y@example.com", preferred_username="cy", groups=["admins"]),
    )
    assert theirs.groups == ("partner:admins", "partner:eng")
    assert ours.groups == ("corp:admins",)
    # role_map is the provider's own, and reads the group as that provider named it.
    assert "admin" in ours.roles
    assert "admin" not in theirs.roles


def test_groups_are_bounded_strings() -> None:
    assert groups_of({"groups": "solo"}, "groups") == ("solo",)
    assert groups_of({"groups": ["a", 1, None, "", "b\x07", "a", "c"]}, "groups") == ("a", "c")
    assert groups_of({"roles": ["x"]}, "groups") == ()
    assert len(groups_of({"groups": [f"g{i}" for i in range(1000)]}, "groups")) == 256
    assert groups_of({"groups": ["x" * 257]}, "groups") == ()
    # An attack run: line separators and a bidi override reached the audit trail and the sinks.
    hostile = ['eng\u2028{"event":{}}', "ops\u2029", "\u202eevil", "zw\u200bsp", "D\u00e9veloppeurs"]
    assert groups_of({"groups": hostile}, "groups") == ("D\u00e9veloppeurs",)


async def test_an_address_shaped_username_claim_must_be_the_persons_own_verified_email(world: World) -> None:
    """Most providers let people edit ``preferred_username``: an address there that is not their own
    verified email would be someone else's (a login, and what the apps get as X-Gateway-User)."""
    squatter = await world.mapper.map(
        JIT,
        subject="mal",
        claims=claims(sub="mal", email="mal@example.com", preferred_username="carol@example.com"),
    )
    assert squatter.user.username == "mal@example.com"
    unverified = await world.mapper.map(
        JIT,
        subject="eve",
        claims=claims(
            sub="eve", email="carol@example.com", email_verified=False, preferred_username="Carol@Example.com"
        ),
    )
    assert unverified.user.username.startswith("corp-")
    own = await world.mapper.map(
        JIT,
        subject="bob",
        claims=claims(sub="bob", email="bob@example.com", preferred_username="BOB@example.com"),
    )
    assert own.user.username == "bob@example.com"


@pytest.mark.parametrize("provider", ["preprovisioned", "jit-link-by-email", "jit"])
async def test_an_account_is_never_found_by_a_username_that_equals_the_verified_email(
    world: World, provider: str
) -> None:
    """An account named ``carol@example.com`` whose email is someone else's (a just-in-time account
    made before names were checked, or an administrator's) is not Carol's: her sign-in is refused,
    never linked to it, and no second account gets her address."""
    squat = await world.add_local("carol@example.com", "mal@example.com")
    idp = {
        "preprovisioned": PRE,
        "jit-link-by-email": IdentityProvider(**{**_fields(JIT), "link_by_email": True}),
        "jit": JIT,
    }[provider]
    with pytest.raises(AccountRefused) as refused:
        await world.mapper.map(idp, subject="carol", claims=claims(sub="carol", email="carol@example.com"))
    assert refused.value.why == "email-is-a-username"
    assert await world.count(IdentityLink) == 0
    assert await world.count(User) == 1
    async with world.db.session() as session:
        assert (await session.get(User, squat.id)) is not None
    failure = (await world.audit.events(kind="signin.oidc"))[0]
    assert json.loads(failure.details)["reason"] == "email-is-a-username"


async def test_a_deleted_accounts_name_is_never_handed_to_a_new_person(
    database: Database, tmp_path: Path
) -> None:
    """Policy lines about ``user:fern`` and the apps' data keyed by the name outlive the account: a
    stranger whose provider proposes "fern" after it was deleted gets another name. An administrator
    may still create it on purpose; a keyring rotation does not forget the name."""
    clock = FakeClock()
    keyring = Keyring.create(tmp_path / "keyring.json")
    audit = AuditLog(database, clock=clock, keyring=keyring)
    settings = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
    regulator = Regulator(MemoryFastState(clock=clock), lambda: RegulationSettings(), audit, clock)
    accounts = AccountService(database, PasswordHasher(settings), regulator, audit, clock, keyring=keyring)
    mapper = IdentityMapper(database, audit, clock, keyring=keyring)
    fern = await accounts.create(username="fern", password=None, email="fern@example.com", actor="admin:boss")
    await accounts.delete(fern.id, actor="admin:boss")
    keyring.rotate(tmp_path / "keyring.json")
    stranger = await mapper.map(
        JIT, subject="x", claims=claims(sub="x", email=None, preferred_username="Fern")
    )
    assert stranger.user.username.startswith("corp-")
    # The same for a name that came from the verified email of a deleted account's owner.
    mail = await accounts.create(username="mail@example.com", password=None, actor="admin:boss")
    await accounts.delete(mail.id, actor="admin:boss")
    other = await mapper.map(
        JIT, subject="y", claims=claims(sub="y", email="mail@example.com", preferred_username=None)
    )
    assert other.user.username.startswith("corp-")
    assert other.user.email == "mail@example.com"
    # The person whose subject the last candidate is made from gets it again after a deletion.
    await accounts.delete(stranger.user.id, actor="admin:boss")
    again = await mapper.map(JIT, subject="x", claims=claims(sub="x", email=None, preferred_username="fern"))
    assert again.user.username == stranger.user.username
    # An administrator decides for themselves.
    assert (await accounts.create(username="fern", password=None, actor="admin:boss")).username == "fern"
    async with database.session() as session:
        keys = list(await session.scalars(select(RetiredUsername.name_key)))
    assert len(keys) == 3
    assert all("fern" not in key and "mail" not in key for key in keys)  # keyed digests, never the name


async def test_a_name_the_policy_grants_roles_to_is_not_taken_by_a_new_person(world: World) -> None:
    """An attack run: the policy had ``g, user:bob, finance-admin`` for a colleague not yet signed in;
    someone signing in through a JIT provider as "Bob" became bob and got finance-admin. Such a name
    is taken like a deleted account's: the next candidate is used."""
    from gateway.authz.models import PolicyRuleRow

    async with world.db.session() as session:
        session.add(PolicyRuleRow(ptype="g", v0="user:bob", v1="finance-admin"))
        session.add(PolicyRuleRow(ptype="p", v0="user:carol", v1="wiki", v2="/*", v3="*", v4="allow"))
        await session.commit()
    for name in ("Bob", "carol"):
        mapped = await world.mapper.map(
            JIT,
            subject=f"s-{name}",
            claims=claims(email=f"{name.lower()}.x@corp.test", preferred_username=name),
        )
        assert mapped.user.username == f"{name.lower()}.x@corp.test"
    # The person's own verified address is theirs, named or not.
    async with world.db.session() as session:
        session.add(PolicyRuleRow(ptype="g", v0="user:erin@corp.test", v1="finance-admin"))
        await session.commit()
    own = await world.mapper.map(
        JIT, subject="s-erin", claims=claims(email="erin@corp.test", preferred_username="erin@corp.test")
    )
    assert own.user.username == "erin@corp.test"
    # A name no line names is given as before.
    free = await world.mapper.map(JIT, subject="s-dave", claims=claims(email=None, preferred_username="dave"))
    assert free.user.username == "dave"


def _fallback(provider: str, subject: str, digits: int = 16) -> str:
    return f"{provider}-{hashlib.sha256(subject.encode()).hexdigest()[:digits]}"


async def test_a_person_cannot_take_another_persons_fallback_username(world: World) -> None:
    """An attack run: the fallback name of a subject without a usable username or email is computable
    (``<provider>-<sha256(sub)[:16]>``); chosen first as a username claim or an address, it left its
    person no name at their first sign-in (403). A claim of that shape, of any provider, is skipped."""
    victim = _fallback("corp", "victim")
    squatter = await world.mapper.map(
        JIT, subject="mal", claims=claims(sub="mal", email="mal@example.com", preferred_username=victim)
    )
    assert squatter.user.username == "mal@example.com"
    other = await world.mapper.map(
        JIT,
        subject="mal2",
        claims=claims(sub="mal2", email=None, preferred_username=_fallback("elsewhere", "v", 32).upper()),
    )
    assert other.user.username == _fallback("corp", "mal2")
    person = await world.mapper.map(
        JIT, subject="victim", claims=claims(sub="victim", email=None, preferred_username=None)
    )
    assert person.user.username == victim


async def test_a_taken_fallback_username_gives_way_to_a_longer_one(world: World) -> None:
    """The short fallback held by someone else (an account named so before such claims were skipped)
    no longer refuses the sign-in: the longer digest of the subject is tried first."""
    await world.add_local(_fallback("corp", "victim"))
    person = await world.mapper.map(
        JIT, subject="victim", claims=claims(sub="victim", email=None, preferred_username=None)
    )
    assert person.user.username == _fallback("corp", "victim", 32)
