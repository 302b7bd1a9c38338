"""The client's address behind a dual-stack listener and from odd ``X-Forwarded-For`` entries.

An attack run on the documented IPv6 listener (``listen: "[::]:8443"``): Linux shows an IPv4 peer as
``::ffff:127.0.0.1``, which no IPv4 network of ``trusted_proxies`` contained, so the load balancer
was the client (forward-auth refused it, its address took every client's failures). And a zone id,
which Python reads as any text after ``%``, carried a quote into the app's ``Forwarded``.
"""

from __future__ import annotations

import pytest

from gateway.pipeline.headers import (
    Forwarding,
    TrustedProxies,
    forwarding_for,
    upstream_request_headers,
)

NO_PROXIES = TrustedProxies([])
# The attack run's configuration.
PROXIES = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "::1"])


def _fwd(peer: str, xff: bytes | None = None, trusted: TrustedProxies = PROXIES) -> Forwarding:
    headers = [(b"host", b"app")]
    if xff is not None:
        headers.append((b"x-forwarded-for", xff))
    return forwarding_for(peer_ip=peer, scheme="http", host="app", headers=headers, trusted=trusted)


def _sent(fwd: Forwarding) -> dict[bytes, bytes]:
    return dict(upstream_request_headers([(b"host", b"app")], fwd=fwd))


MAPPED_LOOPBACK = ["::ffff:127.0.0.1", "::FFFF:127.0.0.1", "::ffff:7f00:1", "0:0:0:0:0:ffff:7f00:1"]


@pytest.mark.parametrize("peer", MAPPED_LOOPBACK)
def test_an_ipv4_proxy_on_a_dual_stack_listener_is_trusted(peer: str) -> None:
    fwd = _fwd(peer, b"6.6.6.6")
    assert fwd.peer_trusted
    assert fwd.client_ip == "6.6.6.6"
    assert fwd.chain == ("6.6.6.6", "127.0.0.1")
    sent = _sent(fwd)
    assert sent[b"x-forwarded-for"] == b"6.6.6.6, 127.0.0.1"
    assert sent[b"forwarded"] == b'for=6.6.6.6, for=127.0.0.1;host="app";proto=http'


@pytest.mark.parametrize("trusted", [NO_PROXIES, PROXIES])
def test_an_ipv4_client_on_a_dual_stack_listener_is_its_ipv4_address(trusted: TrustedProxies) -> None:
    # What blocks, rate limits and the access log key on, and what the app is told.
    fwd = _fwd("::ffff:203.0.113.9", b"6.6.6.6", trusted)
    assert not fwd.peer_trusted
    assert fwd.client_ip == "203.0.113.9"
    assert fwd.chain == ("203.0.113.9",)
    assert _sent(fwd)[b"forwarded"].startswith(b"for=203.0.113.9;")


def test_a_mapped_trusted_network_in_the_configuration_trusts_the_ipv4_proxies_it_maps() -> None:
    fwd = _fwd("10.9.8.7", b"6.6.6.6", TrustedProxies(["::ffff:10.0.0.0/104"]))
    assert fwd.client_ip == "6.6.6.6"


@pytest.mark.parametrize(
    "entry",
    [b"::ffff:203.0.113.5", b"::FFFF:203.0.113.5", b"::ffff:cb00:7105", b"[::ffff:203.0.113.5]:443"],
)
def test_an_ipv4_mapped_forwarded_entry_is_read_as_ipv4(entry: bytes) -> None:
    """One spelling per client, whichever a proxy writes: blocks and limits key on it."""
    fwd = _fwd("10.0.0.2", b"6.6.6.6, " + entry)
    assert fwd.client_ip == "203.0.113.5"
    assert fwd.chain == ("203.0.113.5", "10.0.0.2")


def test_a_trusted_proxy_written_as_a_mapped_address_is_walked_past() -> None:
    fwd = _fwd("10.0.0.2", b"6.6.6.6, 198.51.100.7, ::ffff:10.1.2.3")
    assert fwd.client_ip == "198.51.100.7"
    assert fwd.chain == ("198.51.100.7", "10.1.2.3", "10.0.0.2")


@pytest.mark.parametrize(
    "entry",
    [
        b'::1%x";for=6.6.6.6;by="y',  # the attack run's
        b"::1%lo",
        b"fe80::1%eth0",
        b"fe80::1%25eth0",
        b"[fe80::1%eth0]:443",
        b"[::1%x]",
        b"::ffff:10.0.0.1%x",
    ],
)
def test_an_entry_with_a_zone_is_unreadable_and_ends_the_walk(entry: bytes) -> None:
    """Read as unreadable, not without its zone: the proxy that wrote it is the client, and nothing of
    it reaches the app or the log."""
    fwd = _fwd("::1", b"6.6.6.6, " + entry)
    assert fwd.client_ip == "::1"
    assert fwd.chain == ("::1",)
    sent = b"".join(_sent(fwd).values())
    assert b"%" not in sent
    assert b"6.6.6.6" not in sent


def test_the_forwarded_header_has_one_element_per_hop_whatever_the_peer_text() -> None:
    """RFC 7239 quoted-string: a quote in a node is escaped, never the end of the string."""
    sent = _sent(_fwd('x";for=6.6.6.6;by="y', trusted=NO_PROXIES))
    assert sent[b"forwarded"] == b'for="x\\";for=6.6.6.6;by=\\"y";host="app";proto=http'


def test_a_peer_with_a_zone_is_read_without_it() -> None:
    """The peer's zone names one of the gateway's own interfaces: no part of who the client is."""
    fwd = _fwd('fe80::1%eth0";for=6.6.6.6', trusted=NO_PROXIES)
    assert fwd.client_ip == "fe80::1"
    assert _sent(fwd)[b"forwarded"] == b'for="[fe80::1]";host="app";proto=http'


def test_a_host_cannot_end_the_forwarded_quoted_string() -> None:
    fwd = forwarding_for(peer_ip="203.0.113.9", scheme="http", host="app\\", headers=[], trusted=NO_PROXIES)
    assert _sent(fwd)[b"forwarded"] == b'for=203.0.113.9;host="app\\\\";proto=http'
