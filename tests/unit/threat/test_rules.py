"""Each rule fires on its attack and stays quiet on ordinary traffic (memory and Redis fast state)."""

from __future__ import annotations

import contextlib
import json

import msgspec
import pytest

from gateway.identity.accounts import WrongPassword
from gateway.identity.levels import AuthLevel, check_requirement
from gateway.settings.schema import Duration, MfaPolicy, ThreatRule
from tests.unit.threat.conftest import IP, PASSWORD, UA, World

OTHER_IP = "198.51.100.7"


async def incidents(world: World, rule: str) -> list[str]:
    return [i.subject or i.ip for i in await world.responder.incidents.latest() if i.rule == rule]


# -- brute force ---------------------------------------------------------------------------------------


async def test_brute_force_fires_once_at_the_threshold(world: World) -> None:
    await world.fail("signin.password", "alice", times=4)
    assert await incidents(world, "brute_force") == []
    await world.fail("signin.password", "alice", times=6)
    assert await incidents(world, "brute_force") == ["alice"]
    assert await world.events("threat.brute_force") == ["alice"]
    assert [e["rule"] for e in world.emitted] == ["brute_force"]


async def test_brute_force_counts_per_account_and_ignores_successes(world: World) -> None:
    for name in ("alice", "bob", "carol"):
        await world.fail("signin.password", name, ip=f"192.0.2.{len(name)}", times=2)
    for _ in range(10):
        await world.audit.record("signin.password", actor="user:alice", subject="alice", ip=IP)
    await world.pump()
    assert await incidents(world, "brute_force") == []


async def test_wrong_current_passwords_on_the_password_change_page_are_brute_force(world: World) -> None:
    """An attack run: someone holding a stolen session guessed the current password on the portal's
    password change (``user.password_changed`` failures) and raised no incident. Each wrong guess is
    a failed password step of the account, as at sign-in."""
    user_id = await world.user("alice")
    rule = world.settings[0].brute_force
    new_password = "a brand new passphrase"

    async def guess() -> None:
        with pytest.raises(WrongPassword):
            await world.accounts.set_password(
                user_id, new_password, actor="user:alice", current_password="guess", ip=OTHER_IP
            )
        await world.pump()
        world.advance(20)  # past the regulator's back-off, well inside the rule's window

    for _ in range(rule.count - 1):
        await guess()
    assert await incidents(world, "brute_force") == []
    await guess()
    assert await incidents(world, "brute_force") == ["alice"]
    [incident] = [i for i in await world.responder.incidents.latest() if i.rule == "brute_force"]
    assert incident.evidence["last_kind"] == "user.password_changed"
    # A password change that succeeds is no failure.
    await world.accounts.set_password(user_id, new_password, actor="user:alice", current_password=PASSWORD)
    await world.pump()
    assert len(await incidents(world, "brute_force")) == 1


# -- spraying / stuffing ---------------------------------------------------------------------------


async def test_spraying_from_one_ip_blocks_it(world: World) -> None:
    for name in ("alice", "bob", "carol"):
        await world.fail("signin.password", name, ip=OTHER_IP)
    assert OTHER_IP not in world.blocks
    await world.fail("signin.password", "dave", ip=OTHER_IP)
    assert await incidents(world, "spraying") == [OTHER_IP]
    await world.responder.blocks.refresh(world.blocks)
    assert OTHER_IP in world.blocks
    assert IP not in world.blocks
    [incident] = await world.responder.incidents.latest()
    assert [(a.kind, a.target) for a in incident.actions] == [("block_ip", f"{OTHER_IP}/32")]


async def test_spraying_from_rotating_ipv6_addresses_of_one_subscriber_blocks_their_64(world: World) -> None:
    """An attack run: forty accounts from eight addresses of one /64 raised nothing, where one address
    was blocked after eight. A /64 is one subscriber's: the rule counts and blocks it whole."""
    for n, name in enumerate(("alice", "bob", "carol", "dave")):
        await world.fail("signin.password", name, ip=f"2001:db8:7:9::{n + 1:x}")
    assert len(await incidents(world, "spraying")) == 1
    await world.responder.blocks.refresh(world.blocks)
    assert "2001:db8:7:9::ffff" in world.blocks  # the next address of the same subscriber
    assert "2001:db8:7:a::1" not in world.blocks  # the neighbouring /64 is someone else
    [incident] = await world.responder.incidents.latest()
    assert [(a.kind, a.target) for a in incident.actions] == [("block_ip", "2001:db8:7:9::/64")]


async def test_spraying_from_the_64s_of_one_network_blocks_the_network(world: World) -> None:
    """The attack the /64 rule leaves: a home line's /56 or a site's /48 holds 256 or 65,536 /64s, so a
    sprayer giving each /64 fewer accounts than the address rule counts is never blocked by it. The
    network rule counts the accounts over every /64 of the /48."""
    names = ("alice", "bob", "carol", "dave", "erin", "frank")
    for n, name in enumerate(names[:-1]):
        await world.fail("signin.password", name, ip=f"2001:db8:7:{n + 1:x}00::1")
    assert await incidents(world, "spraying_network") == []
    await world.fail("signin.password", names[-1], ip="2001:db8:7:ff00::1")
    assert await incidents(world, "spraying") == []  # one account per /64: the address rule saw nothing
    assert await incidents(world, "spraying_network") == ["2001:db8:7:ff00::1"]
    await world.responder.blocks.refresh(world.blocks)
    assert "2001:db8:7:1234::9" in world.blocks  # a /64 of the same network it had not used yet
    assert "2001:db8:8::1" not in world.blocks  # the next /48 is someone else
    [incident] = await world.responder.incidents.latest()
    assert [(a.kind, a.target) for a in incident.actions] == [("block_ip", "2001:db8:7::/48")]
    assert incident.evidence["network"] == "2001:db8:7::/48"


async def test_spraying_from_the_addresses_of_one_ipv4_network_blocks_the_24(world: World) -> None:
    """The IPv4 form of the same attack: a sprayer renting a /24 gives each of its 256 addresses
    fewer accounts than the address rule counts. The network rule counts them over the /24."""
    names = ("alice", "bob", "carol", "dave", "erin", "frank")
    for n, name in enumerate(names[:-1]):
        await world.fail("signin.password", name, ip=f"198.51.100.{n + 1}")
    assert await incidents(world, "spraying_network") == []
    await world.fail("signin.password", names[-1], ip="198.51.100.200")
    assert await incidents(world, "spraying") == []  # one account per address: the address rule saw nothing
    assert await incidents(world, "spraying_network") == ["198.51.100.200"]
    await world.responder.blocks.refresh(world.blocks)
    assert "198.51.100.77" in world.blocks  # an address of the same /24 it had not used yet
    assert "198.51.101.1" not in world.blocks  # the next /24 is someone else
    [incident] = await world.responder.incidents.latest()
    assert [(a.kind, a.target) for a in incident.actions] == [("block_ip", "198.51.100.0/24")]


async def test_an_ipv4_client_counts_in_its_24_however_it_arrives(world: World) -> None:
    # Plain, IPv4-mapped and through NAT64: one /24 of IPv4 clients, counted together.
    for n, name in enumerate(("alice", "bob")):
        await world.fail("signin.password", name, ip=f"192.0.2.{n + 1}")
    for n, name in enumerate(("carol", "dave")):
        await world.fail("signin.password", name, ip=f"::ffff:192.0.2.{n + 11}")
    for n, name in enumerate(("erin", "frank")):
        await world.fail("signin.password", name, ip=f"64:ff9b::c000:2{n + 21:02x}")
    [incident] = [i for i in await world.responder.incidents.latest() if i.rule == "spraying_network"]
    assert incident.evidence["network"] == "192.0.2.0/24"


async def test_without_prefix_v4_the_network_rule_counts_native_ipv6_only(world: World) -> None:
    # prefix_v4: null: IPv4 clients, and IPv6 addresses standing for IPv4 ones (mapped, NAT64), are
    # counted by the address rule alone: six of them are six sources, not one.
    wide = world.settings[0].spraying_network
    world.settings[0] = msgspec.structs.replace(
        world.settings[0], spraying_network=msgspec.structs.replace(wide, prefix_v4=None)
    )
    for n, name in enumerate(("alice", "bob", "carol", "dave", "erin", "frank")):
        await world.fail("signin.password", name, ip=f"198.51.100.{n + 1}")
        await world.fail("signin.password", name, ip=f"::ffff:192.0.2.{n + 1}")
        await world.fail("signin.password", name, ip=f"64:ff9b::c000:2{n + 1:02x}")
    assert await incidents(world, "spraying_network") == []


async def test_spraying_network_counts_each_account_once(world: World) -> None:
    # One person failing from many of the site's /64s (a laptop moving between floors) is one account.
    for n in range(10):
        await world.fail("signin.password", "alice", ip=f"2001:db8:7:{n + 1:x}::1")
    assert await incidents(world, "spraying_network") == []


async def test_spraying_counts_distinct_accounts_only(world: World) -> None:
    # One user mistyping many times from the office address is brute force at most, not spraying.
    await world.fail("signin.password", "alice", ip=OTHER_IP, times=4)
    await world.fail("signin.password", "bob", ip=OTHER_IP, times=2)
    assert await incidents(world, "spraying") == []


async def test_spraying_through_real_sign_ins(world: World) -> None:
    from gateway.identity.accounts import SignInFailed

    for name in ("alice", "bob", "carol", "dave"):
        await world.user(name)
        with contextlib.suppress(SignInFailed):
            await world.accounts.authenticate(name, "Winter2026!", ip=OTHER_IP)
    await world.pump()
    assert await incidents(world, "spraying") == [OTHER_IP]


# -- MFA failures ----------------------------------------------------------------------------------


async def test_mfa_failures_end_the_sessions_owing_a_second_factor(world: World) -> None:
    """The sessions a stolen password opened, never the owner's finished ones: a re-attack run signed
    the owner out every ten minutes with five wrong codes on the password alone."""
    _, owners = await world.session("alice")
    _, half = await world.session("alice", level=AuthLevel.ONE_FACTOR)
    _, other = await world.session("bob", level=AuthLevel.ONE_FACTOR)
    await world.fail("mfa.totp", "alice", times=2)
    assert await incidents(world, "mfa_failures") == []
    await world.fail("mfa.totp", "alice")
    assert await incidents(world, "mfa_failures") == ["alice"]
    alice = await world.accounts.find("alice")
    bob = await world.accounts.find("bob")
    assert alice is not None
    assert bob is not None
    assert [s.id_hash for s in await world.sessions.list_user(alice.id)] == [owners.id_hash]
    assert [s.id_hash for s in await world.sessions.list_user(bob.id)] == [other.id_hash]
    assert half.id_hash  # revoked above


async def test_a_step_up_covers_every_session_of_the_sign_in(world: World) -> None:
    """An attack run: the step-up forced on an app host's session was escaped at once through the
    auth host's session of the same sign-in, which handed a new two-factor session to the app host.
    The whole sign-in (its family) steps up; another sign-in of the same person does not."""
    _, auth_host = await world.session("alice")
    _, app_host = await world.sessions.create(
        user_id=auth_host.user_id,
        username="alice",
        level=AuthLevel.TWO_FACTOR,
        factors=auth_host.factors,
        roles=(),
        ip=IP,
        user_agent=UA,
        host="app.example.com",
        family=auth_host.family,  # a hand-off of the same sign-in
    )
    _, laptop = await world.session("alice")  # a sign-in of its own
    for _ in range(5):
        world.request(user="alice", session=app_host, decision="deny", reason="policy-deny")
    await world.pump()
    assert await incidents(world, "reconnaissance") == ["alice"]
    levels = {s.id_hash: s.level for s in await world.sessions.list_user(auth_host.user_id)}
    assert levels[auth_host.id_hash] == AuthLevel.ONE_FACTOR
    assert levels[app_host.id_hash] == AuthLevel.ONE_FACTOR
    assert levels[laptop.id_hash] == AuthLevel.TWO_FACTOR
    [incident] = await world.responder.incidents.latest()
    assert [(a.kind, a.note) for a in incident.actions] == [("step_up", "2 session(s)")]


async def test_password_failures_are_not_mfa_failures(world: World) -> None:
    await world.fail("signin.password", "alice", times=4)
    assert await incidents(world, "mfa_failures") == []


# -- token guessing -------------------------------------------------------------------------------------


async def test_unusable_api_tokens_from_one_address_are_token_guessing(world: World) -> None:
    """An attack run sent 3,000 made-up tokens across two replicas: 3,000 401s, some 7,200 database
    transactions, and no alert (one token.refused record a minute per process)."""
    for _ in range(3):
        world.request(ip=OTHER_IP, decision="unauthenticated", reason="invalid-token", auth="bearer")
    # Not counted: a request that sent no token at all (a bare challenge), one from elsewhere, and a
    # token that worked but was denied by the policy.
    world.request(ip=OTHER_IP, decision="unauthenticated", reason="invalid-token", auth="none")
    world.request(ip=IP, decision="unauthenticated", reason="invalid-token", auth="bearer")
    world.request(ip=OTHER_IP, decision="deny", reason="insufficient-scope", auth="bearer")
    await world.pump()
    assert await incidents(world, "token_guessing") == []
    world.request(ip=OTHER_IP, decision="unauthenticated", reason="invalid-token", auth="bearer")
    await world.pump()
    assert await incidents(world, "token_guessing") == [OTHER_IP]
    await world.responder.blocks.refresh(world.blocks)
    assert OTHER_IP in world.blocks  # this test's rule adds block_ip; the default only alerts


# -- reconnaissance -------------------------------------------------------------------------------------


async def test_reconnaissance_forces_a_step_up(world: World) -> None:
    sid, session = await world.session("alice")
    for _ in range(4):
        world.request(user="alice", session=session, decision="deny", reason="policy-deny")
    await world.pump()
    assert await incidents(world, "reconnaissance") == []
    world.request(user="alice", session=session, decision="deny", reason="no-matching-rule")
    await world.pump()
    assert await incidents(world, "reconnaissance") == ["alice"]
    stepped = await world.sessions.get(sid)
    assert stepped is not None
    assert stepped.level == AuthLevel.ONE_FACTOR
    assert stepped.second_factor_at is None
    # The MFA stage now sends this session to the MFA page on a route that needs a second factor.
    verdict = check_requirement(
        level=stepped.level,
        factors=stepped.factors,
        policy=MfaPolicy(require="required"),
        has_second_factor=True,
        now=world.clock.time(),
    )
    assert not verdict.ok
    assert verdict.reason == "second-factor"


async def test_mfa_prompts_and_allowed_requests_are_not_reconnaissance(world: World) -> None:
    _, session = await world.session("alice")
    for _ in range(10):
        world.request(user="alice", session=session, decision="deny", reason="mfa-required")
        world.request(user="alice", session=session)
    await world.pump()
    assert await incidents(world, "reconnaissance") == []


async def test_reconnaissance_without_a_session_counts_per_address(world: World) -> None:
    for _ in range(5):
        world.request(ip=OTHER_IP, decision="deny", reason="policy-deny")
    await world.pump()
    [incident] = await world.responder.incidents.latest()
    assert (incident.rule, incident.ip, incident.evidence["principal"]) == (
        "reconnaissance",
        OTHER_IP,
        f"ip:{OTHER_IP}",
    )


# -- session hijack ---------------------------------------------------------------------------------


async def test_new_ip_and_new_user_agent_revoke_the_session(world: World) -> None:
    sid, session = await world.session("alice")
    world.request(user="alice", session=session)
    await world.pump()
    world.request(user="alice", session=session, ip=OTHER_IP, ua="curl/8.0")
    await world.pump()
    assert await incidents(world, "session_hijack") == ["alice"]
    assert await world.sessions.get(sid) is None


async def test_first_sight_from_the_attacker_is_caught_too(world: World) -> None:
    sid, session = await world.session("alice")
    world.request(user="alice", session=session, ip=OTHER_IP, ua="curl/8.0")
    await world.pump()
    assert await incidents(world, "session_hijack") == ["alice"]
    assert await world.sessions.get(sid) is None


async def test_a_new_ip_or_a_new_browser_alone_is_normal(world: World) -> None:
    sid, session = await world.session("alice")
    world.request(user="alice", session=session)
    world.request(user="alice", session=session, ip=OTHER_IP)  # phone moved to another network
    world.request(user="alice", session=session, ua=UA + " Updated")  # browser updated
    await world.pump()
    assert await incidents(world, "session_hijack") == []
    assert await world.sessions.get(sid) is not None


# -- incidents and lifting --------------------------------------------------------------------------


async def test_lift_unblocks_and_reenables(world: World) -> None:
    rule = ThreatRule(count=1, window=Duration(60), responses=("alert", "block_ip", "lock_account"))
    await world.user("alice")
    incident = await world.responder.respond(
        "brute_force", rule, subject="alice", ip=OTHER_IP, summary="test", evidence={}
    )
    await world.responder.blocks.refresh(world.blocks)
    alice = await world.accounts.find("alice")
    assert alice is not None
    assert alice.disabled
    assert OTHER_IP in world.blocks

    lifted = await world.responder.lift(incident.id, actor="cli:root")
    assert lifted is not None
    assert lifted.status == "lifted"
    assert [a.lifted for a in lifted.actions] == [True, True]
    await world.responder.blocks.refresh(world.blocks)
    assert OTHER_IP not in world.blocks
    alice = await world.accounts.find("alice")
    assert alice is not None
    assert not alice.disabled
    [event] = await world.audit.events(kind="incident.lifted")
    assert json.loads(event.details)["incident"] == incident.id
    assert event.actor == "cli:root"


LOCK_AND_BLOCK = ThreatRule(count=1, window=Duration(60), responses=("alert", "block_ip", "lock_account"))


async def _lift_lock(world: World, incident_id: str) -> str:
    """Lift the incident; the note on its account lock (what stayed in force, and why)."""
    lifted = await world.responder.lift(incident_id, actor="cli:root")
    assert lifted is not None
    return next(a.note for a in lifted.actions if a.kind == "lock_account")


async def _disabled(world: World, name: str) -> bool:
    found = await world.accounts.find(name)
    assert found is not None
    return found.disabled


async def test_lifting_one_incident_leaves_another_incidents_longer_block(world: World) -> None:
    """The outside review: a 1 h block, then a 30-day block of the same address; lifting the first
    removed the 30-day one, while its incident still said it was in force."""
    first = await world.responder.block_ip(OTHER_IP, seconds=3600, actor="cli:root", reason="first look")
    second = await world.responder.block_ip(OTHER_IP, seconds=30 * 86400, actor="cli:root", reason="hold")
    lifted = await world.responder.lift(first.id, actor="cli:root")
    assert lifted is not None
    assert lifted.actions[0].note == f"block kept: {second.id} holds it"
    await world.responder.blocks.refresh(world.blocks)
    assert OTHER_IP in world.blocks
    [entry] = await world.responder.blocks.entries()
    assert (entry.incident, entry.until) == (second.id, world.clock.time() + 30 * 86400)
    # Lifting the holder ends the block.
    await world.responder.lift(second.id, actor="cli:root")
    assert await world.responder.blocks.entries() == []


async def test_lifting_the_holder_of_a_block_leaves_a_shorter_claim_of_another_open_incident(
    world: World,
) -> None:
    long = await world.responder.block_ip(OTHER_IP, seconds=30 * 86400, actor="cli:root", reason="hold")
    short = await world.responder.block_ip(OTHER_IP, seconds=3600, actor="user:ann", reason="again")
    [entry] = await world.responder.blocks.entries()
    assert entry.incident == long.id  # the longer block stayed in force
    await world.responder.lift(long.id, actor="cli:root")
    [entry] = await world.responder.blocks.entries()
    assert (entry.incident, entry.until, entry.actor) == (short.id, world.clock.time() + 3600, "user:ann")
    await world.responder.blocks.refresh(world.blocks)
    assert OTHER_IP in world.blocks


async def test_lifting_an_incident_leaves_an_account_someone_disabled_since(world: World) -> None:
    """The outside review: a rule locked alice, an admin then disabled her (compromised); lifting the
    rule's incident as a false positive enabled her again."""
    await world.user("alice")
    incident = await world.responder.respond(
        "brute_force", LOCK_AND_BLOCK, subject="alice", ip=OTHER_IP, summary="test", evidence={}
    )
    alice = await world.accounts.find("alice")
    assert alice is not None
    await world.accounts.enable(alice.id, actor="admin:ann")  # a false positive after all...
    await world.accounts.disable(alice.id, actor="admin:ann")  # ...then compromised for real
    assert await _lift_lock(world, incident.id) == "account kept disabled: disabled since by admin:ann"
    assert await _disabled(world, "alice")


async def test_lifting_an_incident_leaves_an_account_that_was_disabled_before_its_lock(world: World) -> None:
    await world.user("alice")
    alice = await world.accounts.find("alice")
    assert alice is not None
    await world.accounts.disable(alice.id, actor="admin:ann")
    # Guessing goes on against the disabled account; a rule locks it again.
    incident = await world.responder.respond(
        "brute_force", LOCK_AND_BLOCK, subject="alice", ip=OTHER_IP, summary="test", evidence={}
    )
    assert await _lift_lock(world, incident.id) == "account kept disabled: already disabled by admin:ann"
    assert await _disabled(world, "alice")


async def test_lifting_the_older_of_two_locking_incidents_keeps_the_account_disabled(world: World) -> None:
    await world.user("alice")
    older = await world.responder.respond(
        "brute_force", LOCK_AND_BLOCK, subject="alice", ip=OTHER_IP, summary="test", evidence={}
    )
    newer = await world.responder.respond(
        "mfa_failures", LOCK_AND_BLOCK, subject="alice", ip=IP, summary="test", evidence={}
    )
    await world.responder.lift(older.id, actor="cli:root")
    assert await _disabled(world, "alice")
    await world.responder.lift(newer.id, actor="cli:root")
    # The newer lock found the account disabled already (by the older incident): it stays disabled
    # until a person enables it.
    assert await _disabled(world, "alice")


async def test_blocks_end_on_their_own(world: World) -> None:
    incident = await world.responder.block_ip("192.0.2.0/24", seconds=60, actor="cli:root")
    await world.responder.blocks.refresh(world.blocks)
    assert "192.0.2.77" in world.blocks
    world.advance(61)
    assert "192.0.2.77" not in world.blocks
    assert await world.responder.blocks.entries() == []
    stored = await world.responder.incidents.get(incident.id)
    assert stored is not None
    assert msgspec.to_builtins(stored)["rule"] == "manual"


async def test_disabled_rules_and_detection_stay_quiet(world: World) -> None:
    import msgspec.structs

    world.settings[0] = msgspec.structs.replace(world.settings[0], enabled=False)
    await world.fail("signin.password", "alice", times=20)
    sid, session = await world.session("alice")
    world.request(user="alice", session=session, ip=OTHER_IP, ua="curl/8.0")
    await world.pump()
    assert await world.responder.incidents.latest() == []
    assert await world.sessions.get(sid) is not None
    assert UA  # the baseline UA constant is shared with the other tests
