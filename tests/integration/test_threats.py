"""Threat detection end to end: two real gateways sharing Redis and the database.

Clients are told apart by ``X-Forwarded-For`` (the loopback peer is a trusted proxy), so one test
machine can be the attacker, the victim and the admin at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, cookie, login

REDIS_URL = "redis://127.0.0.1:6379/11"
SPRAYER = "198.51.100.50"
FEED_IP = "192.0.2.77"
BYSTANDER = "203.0.113.10"


@dataclass
class Site:
    a: Gateway
    b: Gateway
    feed: Path


THREAT: dict[str, Any] = {
    "spraying": {"count": 4, "window": "10m", "responses": ["alert", "block_ip"]},
    # IPv6 networks here; the IPv4 one has its own pair of gateways (test_a_spray_from_the_addresses_...).
    "spraying_network": {
        "count": 4,
        "window": "10m",
        "prefix": 48,
        "prefix_v4": None,
        "responses": ["alert", "block_ip"],
    },
    "session_hijack": {"responses": ["alert", "revoke_session"]},
    "token_guessing": {"count": 6, "window": "10m", "responses": ["alert", "block_ip"]},
    "block_list_poll": "200ms",
}


@contextmanager
def replicas(tmp: Path, threat: dict[str, Any]) -> Iterator[Site]:
    """Two gateways sharing Redis (a namespace of their own) and the database."""
    data_dir = tmp / "shared-data"
    feed = tmp / "feed.txt"
    feed.write_text("# threat-intel feed, empty at start\n")
    port_a, port_b = free_port(), free_port()
    with run_echo() as echo:
        routes: list[dict[str, Any]] = [
            {"name": "api", "host": "127.0.0.1", "path": "/api", "upstreams": [echo.url], "auth": ["bearer"]},
            {"name": "app", "host": "127.0.0.1", "path": "/", "upstreams": [echo.url], "mfa": "none"},
        ]
        common: dict[str, Any] = {
            "public_url": f"http://127.0.0.1:{port_a}",
            "data_dir": str(data_dir),
            "session": {"insecure_cookies": True},
            "state": {"redis_url": REDIS_URL, "namespace": f"threat{port_a}:"},
            "trusted_proxies": ["127.0.0.1/32"],
            "threat": {**threat, "block_lists": [str(feed)]},
        }
        # Incidents and blocks live in Redis, which outlives test runs: a namespace left by an earlier
        # run on the same port would show its incidents here.
        _forget_namespace(common["state"]["namespace"])
        config_a = gateway_config(tmp / "a", port_a, routes, **common)
        config_b = gateway_config(tmp / "b", port_b, routes, **common)
        with run_gateway(tmp / "a", config_a) as gw_a, run_gateway(tmp / "b", config_b) as gw_b:
            yield Site(gw_a, gw_b, feed)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with replicas(tmp_path_factory.mktemp("threats"), THREAT) as pair:
        yield pair


def _forget_namespace(namespace: str) -> None:
    with redis.Redis.from_url(REDIS_URL) as conn:
        keys = list(conn.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            conn.delete(*keys)


def client(gw: Gateway, ip: str, agent: str = "Mozilla/5.0 Firefox/140.0") -> httpx.Client:
    return httpx.Client(
        base_url=gw.url,
        follow_redirects=False,
        timeout=30.0,
        headers={"X-Forwarded-For": ip, "User-Agent": agent},
    )


def get(gw: Gateway, ip: str, *, session: str | None = None, agent: str = "test/1.0") -> httpx.Response:
    headers = {"X-Forwarded-For": ip, "User-Agent": agent, "Accept": "application/json"}
    if session is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={session}"
    return httpx.get(f"{gw.url}/probe", headers=headers, follow_redirects=False, timeout=30.0)


def blocked(gw: Gateway, ip: str) -> bool:
    resp = get(gw, ip)
    return resp.status_code == 403 and resp.json().get("error") == "ip-blocked"


def incident_cli(site: Site, *args: str) -> Any:
    result = run_cli("incident", *args, "--config", str(site.a.config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_password_spray_on_one_replica_blocks_the_ip_on_the_other(site: Site) -> None:
    assert not blocked(site.b, SPRAYER)
    with client(site.a, SPRAYER) as attacker:
        for name in ("spray1", "spray2", "spray3", "spray4"):
            assert login(attacker, name, "Winter2026!").status_code in (200, 401)
    wait_until(lambda: blocked(site.b, SPRAYER), what="sprayer blocked on replica B")
    assert blocked(site.a, SPRAYER)
    assert not blocked(site.b, BYSTANDER)

    listing = json.loads(incident_cli(site, "list", "--json"))
    spraying = [i for i in listing["incidents"] if i["rule"] == "spraying"]
    assert len(spraying) == 1, listing  # one incident for one spray, however many replicas counted
    [incident] = spraying
    assert incident["ip"] == SPRAYER
    assert [b["cidr"] for b in listing["blocks"]] == [f"{SPRAYER}/32"]
    assert "block_ip" in incident_cli(site, "show", incident["id"])

    assert "lifted" in incident_cli(site, "lift", incident["id"])
    wait_until(lambda: not blocked(site.b, SPRAYER), what="sprayer unblocked on replica B")
    assert not blocked(site.a, SPRAYER)


def spray_one_account_each(
    pair: Site, addresses: list[str], *, fresh: str, outside: str, network: str, names: str
) -> None:
    """One failing account from each address, alternating replicas, so that no address and no replica
    sees a second account; then the network is blocked on both (``fresh``, an address of it the
    sprayer never used, too), ``outside`` is not, and lifting the incident lifts the block."""
    assert not blocked(pair.b, fresh)
    for n, address in enumerate(addresses):
        with client((pair.a, pair.b)[n % 2], address) as attacker:
            assert login(attacker, f"{names}{n}", "Winter2026!").status_code in (200, 401)
    wait_until(lambda: blocked(pair.b, fresh), what=f"the sprayer's {network} blocked on replica B")
    assert blocked(pair.a, fresh)
    assert not blocked(pair.a, outside)
    listing = json.loads(incident_cli(pair, "list", "--json"))
    assert not [i for i in listing["incidents"] if i["rule"] == "spraying" and i["ip"] in addresses], listing
    [incident] = [i for i in listing["incidents"] if i["rule"] == "spraying_network"]
    assert network in [b["cidr"] for b in listing["blocks"]]
    assert "lifted" in incident_cli(pair, "lift", incident["id"])
    wait_until(lambda: not blocked(pair.b, fresh), what=f"the {network} unblocked on replica B")


def test_a_spray_from_the_64s_of_one_ipv6_network_blocks_the_network_on_the_other_replica(site: Site) -> None:
    """The attack the /64 rule leaves: one account per /64 of a /56, over both replicas."""
    spray_one_account_each(
        site,
        [f"2001:db8:5a:{n + 1:x}00::1" for n in range(4)],
        fresh="2001:db8:5a:ff01::9",  # a /64 of the same /48
        outside="2001:db8:5b::1",  # the next /48
        network="2001:db8:5a::/48",
        names="net",
    )


def test_a_spray_from_the_addresses_of_one_ipv4_network_blocks_the_24_on_the_other_replica(
    tmp_path: Path,
) -> None:
    """The IPv4 form: one account per address of a rented /24, over both replicas."""
    threat = {
        **THREAT,
        "spraying": {"count": 10, "window": "10m", "responses": ["alert", "block_ip"]},
        "spraying_network": {
            "count": 4,
            "window": "10m",
            "prefix_v4": 24,
            "responses": ["alert", "block_ip"],
        },
    }
    with replicas(tmp_path, threat) as pair:
        spray_one_account_each(
            pair,
            [f"198.18.7.{n + 1}" for n in range(4)],
            fresh="198.18.7.200",  # an address of the same /24
            outside="198.18.8.1",  # the next /24
            network="198.18.7.0/24",
            names="v4net",
        )


def test_made_up_tokens_sent_to_both_replicas_block_the_address_on_both(site: Site) -> None:
    """An attack run sent 3,000 made-up API tokens across two replicas: 3,000 401s, thousands of
    database look-ups, and no alert. They count per address over the replicas (token_guessing)."""
    ip, bystander = "198.51.100.77", "198.51.100.78"
    for n in range(6):
        gw = site.a if n % 2 else site.b
        headers = {"X-Forwarded-For": ip, "Authorization": "Bearer gwt_" + f"{n:02d}".ljust(43, "Q")}
        assert httpx.get(f"{gw.url}/api/x", headers=headers, timeout=30.0).status_code == 401
    wait_until(lambda: blocked(site.a, ip) and blocked(site.b, ip), timeout=10, what="the address blocked")
    assert not blocked(site.a, bystander)
    # A request without a token (a bare challenge) is no guess. B's detector works through its signals
    # in order: once a later guesser is blocked, the bystander's requests have been counted (or not).
    for _ in range(8):
        plain = httpx.get(f"{site.b.url}/api/x", headers={"X-Forwarded-For": bystander}, timeout=30.0)
        assert plain.status_code == 401
    later = "198.51.100.79"
    for n in range(6):
        headers = {"X-Forwarded-For": later, "Authorization": "Bearer gwt_" + f"{n:02d}".ljust(43, "R")}
        assert httpx.get(f"{site.b.url}/api/x", headers=headers, timeout=30.0).status_code == 401
    wait_until(lambda: blocked(site.b, later), timeout=10, what="the later guesser blocked")
    assert not blocked(site.b, bystander)
    assert ip in incident_cli(site, "list")


def test_a_block_list_file_is_reloaded_when_it_changes(site: Site) -> None:
    assert not blocked(site.a, FEED_IP)
    site.feed.write_text("# feed\n192.0.2.0/24\n")
    wait_until(lambda: blocked(site.a, FEED_IP) and blocked(site.b, FEED_IP), what="feed applied")
    site.feed.write_text("# feed, entry withdrawn\n")
    wait_until(lambda: not blocked(site.a, FEED_IP) and not blocked(site.b, FEED_IP), what="feed lifted")


def test_an_admin_blocks_and_unblocks_by_hand(site: Site) -> None:
    out = incident_cli(site, "block-ip", "198.51.100.128/25", "--for", "1h", "--reason", "test")
    assert "blocked" in out
    wait_until(lambda: blocked(site.b, "198.51.100.200"), what="manual block on B")
    assert not blocked(site.b, "198.51.100.1")
    incident_cli(site, "unblock-ip", "198.51.100.128/25")
    wait_until(lambda: not blocked(site.b, "198.51.100.200"), what="manual unblock on B")
    bad = run_cli("incident", "block-ip", "not-a-network", "--config", str(site.a.config_path))
    assert bad.returncode == 2
    assert "not an IP address" in bad.stderr
    # The admin console's rule too (gateway.threat.manual): a hand-made block is at most a /16.
    broad = run_cli("incident", "block-ip", "10.0.0.0/8", "--config", str(site.a.config_path))
    assert broad.returncode == 2
    assert "too broad to block by hand" in broad.stderr
    unknown = run_cli("incident", "lift", "inc-00000000", "--config", str(site.a.config_path))
    assert unknown.returncode == 2
    # A bare IPv6 address is its subscriber's /64, as the automatic rules count it (an attack run
    # stepped to the next address of the /64 a playbook's block left open), and the output says so.
    out = incident_cli(site, "block-ip", "2001:db8:9::7", "--for", "1h", "--reason", "test")
    assert out.startswith("2001:db8:9::/64 blocked"), out
    assert "type /128 for this address only" in out
    wait_until(lambda: blocked(site.b, "2001:db8:9::8"), what="the /64 blocked on B")
    incident_cli(site, "unblock-ip", "2001:db8:9::7")
    wait_until(lambda: not blocked(site.b, "2001:db8:9::8"), what="the /64 unblocked on B")


def test_a_session_replayed_from_another_address_and_browser_is_revoked(site: Site) -> None:
    add_user(site.a.config_path, "victim", PASSWORD)
    with client(site.a, "203.0.113.20", agent="Mozilla/5.0 Firefox/140.0") as victim:
        assert login(victim, "victim").status_code == 302
        sid = cookie(victim)
    assert sid is not None
    ok = get(site.a, "203.0.113.20", session=sid, agent="Mozilla/5.0 Firefox/140.0")
    assert ok.status_code == 200, ok.text
    # The same cookie from elsewhere with another client: on the other replica.
    get(site.b, "198.51.100.99", session=sid, agent="python-requests/2.32")

    def revoked() -> bool:
        resp = get(site.a, "203.0.113.20", session=sid, agent="Mozilla/5.0 Firefox/140.0")
        return resp.status_code == 401

    wait_until(revoked, what="hijacked session revoked")
    listing = json.loads(incident_cli(site, "list", "--json"))
    assert any(i["rule"] == "session_hijack" and i["subject"] == "victim" for i in listing["incidents"])


def test_with_memory_state_the_command_says_it_cannot_reach_the_gateway(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, free_port(), [], state={"embedded": "memory"})
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    result = run_cli("incident", "list", "--config", str(path))
    assert result.returncode == 1
    assert "state.embedded is memory" in result.stderr
    assert "Traceback" not in result.stderr
