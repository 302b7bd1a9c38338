"""Fast-state fixtures (a plugin, see ``tests/conftest.py``): one ``fast_state`` parametrized over
memory, the node's shared SQLite file (``local``) and Redis, for every suite that keeps state there.

Every Redis-backed instance gets a random namespace and its keys are deleted afterwards, so parallel
or interrupted runs on the shared Redis never see each other's data. Local instances of one test share
one file in the test's temporary directory, each with its own connection and thread, as the processes
of a node do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio

from gateway.clock import FakeClock
from gateway.store.fast import FastState, LocalFastState, MemoryFastState, RedisFastState
from tests.support.wait import wait_until

FAST_STATE_REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TOLERANT_TIMEOUTS: dict[str, Any] = {"connect_timeout": 2.0, "op_timeout": 5.0, "ready_timeout": 10.0}
_parts = urlsplit(FAST_STATE_REDIS_URL)
FAST_STATE_REDIS_ADDRESS = (_parts.hostname or "127.0.0.1", _parts.port or 6379)

MakeFastState = Callable[..., FastState]
Tick = Callable[[float], Awaitable[None]]


@pytest.fixture
def fast_clock(clock: FakeClock) -> FakeClock:
    """The clock of the in-process store's TTLs (monotonic) and the file's (Unix time): the test's one
    ``clock``, so moving it ages the state and everything else together. Redis keeps its own time."""
    return clock


@pytest.fixture(params=["memory", "local", "redis"])
def fast_state_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fast_namespace() -> str:
    return f"t:fast:{secrets.token_hex(6)}:"


async def _delete_namespace(url: str, namespace: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{namespace}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def fast_state_file(tmp_path: Path) -> Path:
    """The node's shared state file of the local backend."""
    return tmp_path / "state.db"


@pytest.fixture
async def make_fast_state(
    fast_state_backend: str, fast_namespace: str, fast_clock: FakeClock, fast_state_file: Path
) -> AsyncIterator[MakeFastState]:
    """Build instances of the backend under test; all are closed (and their keys deleted) afterwards.

    Keyword arguments go to the backend's constructor; ``namespace`` defaults to the test's one.
    """
    created: list[FastState] = []
    namespaces = {fast_namespace}

    def make(**options: Any) -> FastState:
        state: FastState
        if fast_state_backend == "memory":
            options.pop("namespace", None)
            state = MemoryFastState(clock=fast_clock, **options)
        elif fast_state_backend == "local":
            options.setdefault("namespace", fast_namespace)
            # As for Redis: a loaded machine must not turn a slow call into StateUnavailable here.
            options.setdefault("op_timeout", 10.0)
            options.setdefault("busy_timeout", 5.0)
            state = LocalFastState(fast_state_file, clock=fast_clock, **options)
        else:
            options.setdefault("namespace", fast_namespace)
            # Behaviour tests, not latency tests: generous timeouts keep a loaded CI machine from
            # turning a slow reply into StateUnavailable. The fail-closed tests use the defaults.
            for name, seconds in TOLERANT_TIMEOUTS.items():
                options.setdefault(name, seconds)
            namespaces.add(options["namespace"])
            state = RedisFastState.from_url(FAST_STATE_REDIS_URL, **options)
        created.append(state)
        return state

    yield make
    for state in created:
        await state.close()
    if fast_state_backend == "redis":
        for namespace in namespaces:
            await _delete_namespace(FAST_STATE_REDIS_URL, namespace)


@pytest.fixture
def fast_state(make_fast_state: MakeFastState) -> FastState:
    return make_fast_state()


@pytest.fixture
def fast_state_peer(
    fast_state_backend: str, fast_state: FastState, make_fast_state: MakeFastState
) -> FastState:
    """A second replica sharing ``fast_state``'s data.

    With Redis it is a separate client (its own connections), which is how replicas talk; with the
    local file another instance (its own connection and thread), as another process on the node.
    The in-process store serves exactly one process, so its only peer is itself.
    """
    if fast_state_backend == "memory":
        return fast_state
    return make_fast_state()


@pytest.fixture
def fast_tick(fast_state_backend: str, fast_clock: FakeClock) -> Tick:
    """Let ``seconds`` pass: move the fake clock for memory and the local file, really sleep for Redis.

    The step of a polling loop (``eventually_none``), never a wait that decides a test on its own:
    Redis expires keys on its own clock, which no test can move.
    """

    async def tick(seconds: float) -> None:
        if fast_state_backend in ("memory", "local"):
            fast_clock.advance(seconds)
            await asyncio.sleep(0)  # one turn of the loop, as a real pause would give
        else:
            await asyncio.sleep(seconds)

    return tick


@pytest.fixture
async def fast_redis_raw() -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the test Redis, to look behind the interface."""
    client = redis.asyncio.Redis.from_url(FAST_STATE_REDIS_URL)
    yield client
    await client.aclose()


# -- a TCP proxy to break connections on purpose ---------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``drop()`` cuts every live connection.

    With ``silent=True`` it accepts connections and never answers: a server that hangs.
    """

    def __init__(self, target: tuple[str, int], *, silent: bool = False) -> None:
        self.target = target
        self.silent = silent
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.silent:
                with contextlib.suppress(ConnectionError, OSError):
                    while await reader.read(65536):
                        pass
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._writers.add(upstream)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
                    self._writers.discard(w)
            self._tasks.discard(task)

    def drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def fast_tcp_proxy() -> AsyncIterator[Callable[..., Awaitable[TcpProxy]]]:
    proxies: list[TcpProxy] = []

    async def start(*, silent: bool = False) -> TcpProxy:
        proxy = TcpProxy(FAST_STATE_REDIS_ADDRESS, silent=silent)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.close()


# -- real Sentinel and Cluster servers (peer tests) ------------------------------------------------


def _require_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed")
    return binary


def _free_port(*, with_bus: bool = False) -> int:
    """A free TCP port (and, for cluster nodes, a free bus port at +10000)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port found")


def _wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``check`` while the server starts (it refuses connections or is not ready yet meanwhile)."""

    def ready() -> bool:
        with contextlib.suppress(redis.RedisError, OSError):
            return check()
        return False

    wait_until(ready, timeout=timeout, interval=0.05, what=what)


def _sync_call(port: int, *args: Any) -> Any:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1) as client:
        return client.execute_command(*args)


def _answers(port: int) -> bool:
    return bool(_sync_call(port, "PING"))


def _cluster_ok(port: int) -> bool:
    return b"cluster_state:ok" in _sync_call(port, "CLUSTER", "INFO")


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class FastStateServer:
    url: str


@pytest.fixture(scope="module")
def fast_sentinel_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastStateServer]:
    """A Sentinel on a free port monitoring the test Redis as a fresh, randomly named service."""
    binary = _require_redis_server()
    master = FAST_STATE_REDIS_ADDRESS
    workdir: Path = tmp_path_factory.mktemp("sentinel")
    port = _free_port()
    service = f"gwtest{secrets.token_hex(4)}"
    config = workdir / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor {service} {master[0]} {master[1]} 1\n"
        # Long enough that a busy test machine never triggers a failover of the shared Redis.
        f"sentinel down-after-milliseconds {service} 60000\n"
    )
    with _processes() as procs:
        procs.append(
            subprocess.Popen(
                [binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        _wait_until(
            lambda: _sync_call(port, "SENTINEL", "get-master-addr-by-name", service) is not None,
            timeout=10,
            what="sentinel",
        )
        yield FastStateServer(f"redis+sentinel://127.0.0.1:{port}/{service}/0")


@pytest.fixture(scope="module")
def fast_cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastStateServer]:
    """Three empty cluster masters on free ports, joined with ``redis-cli --cluster create``."""
    binary = _require_redis_server()
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli binary not installed")
    workdir: Path = tmp_path_factory.mktemp("cluster")
    ports: list[int] = []
    while len(ports) < 3:
        port = _free_port(with_bus=True)
        if port not in ports:
            ports.append(port)
    with _processes() as procs:
        for port in ports:
            node_dir = workdir / str(port)
            node_dir.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--dir", str(node_dir),
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "5000",
                        "--save", "",
                        "--appendonly", "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in ports:
            _wait_until(partial(_answers, port), timeout=10, what=f"cluster node {port}")
        nodes = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        for port in ports:
            _wait_until(partial(_cluster_ok, port), timeout=15, what=f"cluster state ok on {port}")
        yield FastStateServer("redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports))
