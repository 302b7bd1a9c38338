"""Parse a Redis URL into a ``RedisTarget`` and build the matching redis-py asyncio client.

Accepted shapes (the error message for a bad URL repeats them)::

    redis://[[user]:password@]host[:port][/db]            plain TCP (port 6379, db 0 by default)
    rediss://[[user]:password@]host[:port][/db]           TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]   Unix socket
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]
    redis+cluster://[[user]:password@]host[:port][,host[:port]...]
    rediss+sentinel://...  rediss+cluster://...           the same over TLS

Sentinel ports default to 26379, all others to 6379. The credentials are those of the data nodes; a
Sentinel that needs its own password takes ``?sentinel_password=...``. Query parameters of the plain
forms are passed to ``redis.asyncio.Redis.from_url`` unchanged, except TLS options.

TLS (every ``rediss`` form): the server's certificate and its host name are always verified, against
the system's trusted CAs plus ``?ssl_ca_certs=/abs/ca.pem`` if given (redis-py adds the file to the
system's CAs); ``ssl_certfile`` and ``ssl_keyfile`` give a client certificate (``tls-auth-clients
yes``). Every other ``ssl_*`` option is refused, as redis-py would read ``ssl_cert_reqs=none`` or
``ssl_check_hostname=false`` as "do not verify" (rules in :mod:`gateway.settings.store_tls`). Sentinels
are reached over TLS with the same files. A plain ``redis://`` to a host off this machine is logged
as a warning once per process.
"""

from __future__ import annotations

import enum
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from gateway.settings.store_tls import RedisTls, is_loopback, parse_redis_tls

__all__ = ["EXPECTED_SHAPES", "RedisClient", "RedisMode", "RedisTarget", "build_client", "parse_redis_url"]

EXPECTED_SHAPES = (
    "redis://[[user]:password@]host[:port][/db], rediss://... (TLS), unix:///path/to/socket[?db=N], "
    "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db] or "
    "redis+cluster://[[user]:password@]host[:port][,host[:port]...]"
)

RedisClient = Redis | RedisCluster

logger = logging.getLogger("gateway.store")
_warned: set[str] = set()


class RedisMode(enum.StrEnum):
    """How the gateway reaches Redis."""

    STANDALONE = "standalone"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL.

    ``url`` is the original text for the plain forms (redis-py parses it itself, including query
    options); ``password`` is left out of ``repr`` so logging a target cannot leak it.
    """

    mode: RedisMode
    url: str = field(repr=False)
    hosts: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    db: int = 0
    tls: bool = False
    unix_path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    tls_files: RedisTls = field(default_factory=RedisTls)

    def redacted(self) -> str:
        """The URL with any password replaced by ``***``, for logs and error messages."""
        return _redact(self.url)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{hostpart}"


def _bad(url: str, why: str) -> ValueError:
    return ValueError(f"invalid Redis URL {_redact(url)!r}: {why}; expected {EXPECTED_SHAPES}")


def _parse_port(url: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _bad(url, f"port {text!r} is not a number between 1 and 65535")
    return int(text)


def _parse_host(url: str, item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):  # IPv6 literal: [::1]:6379
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _bad(url, f"malformed IPv6 host {item!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise _bad(url, "missing host")
    return host, (_parse_port(url, port_text) if port_text else default_port)


def _parse_db(url: str, text: str) -> int:
    if not text.isdigit():
        raise _bad(url, f"database {text!r} is not a non-negative integer")
    return int(text)


def _tls_files(url: str, query: dict[str, list[str]], tls: bool) -> RedisTls:
    try:
        return parse_redis_tls(query, tls=tls)
    except ValueError as exc:
        raise _bad(url, str(exc)) from None


def _split_userinfo(url: str, netloc: str) -> tuple[str | None, str | None, str]:
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None), hostlist


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``url`` into a ``RedisTarget``.

    Raises:
        ValueError: the URL does not have one of the accepted shapes; the message lists them.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _bad(url, "missing scheme")
    tls = scheme.startswith("rediss")
    if scheme in ("redis", "rediss", "unix"):
        return _parse_plain(url, scheme, tls)
    if scheme in ("redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster"):
        return _parse_multi(url, rest, tls, RedisMode(scheme.partition("+")[2]))
    raise _bad(url, f"unknown scheme {scheme!r}")


def _parse_plain(url: str, scheme: str, tls: bool) -> RedisTarget:
    parts = urlsplit(url)
    username, password, hostlist = _split_userinfo(url, parts.netloc)
    query = parse_qs(parts.query, keep_blank_values=True)
    tls_files = _tls_files(url, query, tls)
    if scheme == "unix":
        if not parts.path or parts.path == "/":
            raise _bad(url, "missing socket path")
        db_values = query.get("db", ["0"])
        return RedisTarget(
            RedisMode.STANDALONE,
            url,
            db=_parse_db(url, db_values[-1]),
            unix_path=parts.path,
            username=username,
            password=password,
        )
    if "," in hostlist:
        raise _bad(url, f"{scheme}:// takes one host; use redis+sentinel:// or redis+cluster:// for several")
    host = _parse_host(url, hostlist, 6379)
    path = parts.path.strip("/")
    db = _parse_db(url, path) if path else 0
    if "db" in query:
        db = _parse_db(url, query["db"][-1])
    return RedisTarget(
        RedisMode.STANDALONE,
        url,
        (host,),
        db=db,
        tls=tls,
        username=username,
        password=password,
        tls_files=tls_files,
    )


def _parse_multi(url: str, rest: str, tls: bool, mode: RedisMode) -> RedisTarget:
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    username, password, hostlist = _split_userinfo(url, netloc)
    default_port = 26379 if mode is RedisMode.SENTINEL else 6379
    hosts = tuple(_parse_host(url, item, default_port) for item in hostlist.split(","))
    query = parse_qs(query_text, keep_blank_values=True)
    tls_files = _tls_files(url, query, tls)
    allowed = {"sentinel_password"} if mode is RedisMode.SENTINEL else set()
    unknown = sorted(name for name in set(query) - allowed if not name.startswith("ssl"))
    if unknown:
        raise _bad(url, f"unsupported option(s) {', '.join(unknown)} for {mode} URLs")
    segments = [s for s in path.split("/") if s] if path else []
    service_name: str | None = None
    db = 0
    if mode is RedisMode.SENTINEL:
        if not segments or len(segments) > 2:
            raise _bad(url, "a Sentinel URL needs /service_name and optionally /db after the hosts")
        service_name = unquote(segments[0])
        if len(segments) == 2:
            db = _parse_db(url, segments[1])
    elif segments and segments != ["0"]:
        raise _bad(url, "a cluster has only database 0 and takes no path")
    sentinel_password = query.get("sentinel_password", [None])[-1]
    return RedisTarget(
        mode,
        url,
        hosts,
        service_name=service_name,
        db=db,
        tls=tls,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
        tls_files=tls_files,
    )


def _tls_options(target: RedisTarget) -> dict[str, Any]:
    # Spelled out rather than left to redis-py's defaults, which did not check host names before 6.0.
    files = target.tls_files
    options: dict[str, Any] = {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
        "ssl_ca_certs": files.ca_file,
        "ssl_certfile": files.cert_file,
        "ssl_keyfile": files.key_file,
    }
    if files.crl_check:
        # The CA's revocation list is in the ssl_ca_certs bundle (redis-py takes no separate CRL file);
        # redis-py reads it once per pooled connection (README: roll the gateways after replacing it).
        options["ssl_include_verify_flags"] = [ssl.VERIFY_CRL_CHECK_LEAF]
    return options


def _warn_plaintext(target: RedisTarget) -> None:
    remote = [host for host, _ in target.hosts if not is_loopback(host)]
    if target.tls or not remote or remote[0] in _warned:
        return
    _warned.add(remote[0])
    logger.warning(
        "state.redis_url: the connection to Redis at %s is not encrypted, so anyone on the network path"
        " can read or change sessions; use rediss:// (with ?ssl_ca_certs=/path/to/ca.pem for a private CA)",
        remote[0],
    )


def build_client(
    target: RedisTarget,
    *,
    connect_timeout: float = 0.5,
    op_timeout: float = 1.0,
    retries: int = 1,
    max_connections: int = 64,
) -> tuple[RedisClient, Sentinel | None]:
    """Build the redis-py asyncio client for ``target``.

    Args:
        target: What to connect to.
        connect_timeout: Seconds to establish a connection.
        op_timeout: Seconds to wait for any one reply.
        retries: Immediate retries of a command after a connection error or timeout. One retry
            absorbs a pooled connection the server closed while idle; more would only make a dead
            server slower to report, and this client sits on the request path.
        max_connections: Connections per Redis node. For a standalone server a caller beyond this
            waits up to ``op_timeout`` for a free one (then fails closed) instead of opening
            connections without limit during a traffic spike.

    Returns:
        The data client and, for Sentinel, the ``Sentinel`` whose own connections the caller must
        also close.
    """
    _warn_plaintext(target)
    common: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": op_timeout,
        # redis-py's default retries three times with exponential back-off of up to seconds: too slow
        # to fail closed on the request path.
        "retry": Retry(NoBackoff(), retries),
    }
    tls = _tls_options(target) if target.tls else {}
    if target.mode is RedisMode.STANDALONE:
        # The URL's own ssl_* options (the same files) are parsed by redis-py and win over these.
        common.update(tls)
        pool = BlockingConnectionPool.from_url(
            target.url, max_connections=max_connections, timeout=op_timeout, **common
        )
        return Redis.from_pool(pool), None
    common["max_connections"] = max_connections
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.mode is RedisMode.CLUSTER:
        nodes = [ClusterNode(host, port) for host, port in target.hosts]
        cluster = RedisCluster(startup_nodes=nodes, ssl=target.tls, **auth, **tls, **common)
        return cluster, None
    assert target.service_name is not None  # guaranteed by the parser
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": op_timeout,
        "retry": Retry(NoBackoff(), retries),
        "password": target.sentinel_password,
        "ssl": target.tls,
        **tls,
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        list(target.hosts), sentinel_kwargs=sentinel_kwargs, ssl=target.tls, **tls, **common
    )
    client = sentinel.master_for(target.service_name, db=target.db, **auth)
    return client, sentinel
