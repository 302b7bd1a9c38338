"""Ids in request data against a running gateway, on SQLite and on PostgreSQL: bad input is a 400.

Every id column is a 32-bit ``INTEGER`` on PostgreSQL. An id beyond it (``2147483648``) used to reach
the driver, whose refusal came back as a 503 ``store-unavailable`` with the driver's own text: bad
input reported as an outage. Each id-taking endpoint is called here with ids no record can have, on
both backends (the drivers fail differently: asyncpg checks int32 itself, SQLite only overflows at
64 bits), and must answer 400 ``bad-id`` while nothing changes; ids of the right shape that no record
has keep their answers (404 for a policy version).

Endpoints: the admin API (``GET /api/policy/versions/{v}``, ``POST /api/policy/restore/{v}``), the
portal (``POST /.gateway/account/factors/{kind}/{id}/rename`` and ``/remove``, the ``credential_id``
of ``POST /.gateway/account/totp/confirm``) and the CLI (``gateway policy restore N``,
``gateway policy export --version N``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
)
from tests.integration.http_client import PASSWORD, browser, login, post_form
from tests.integration.test_admin_api import assert_error, wait_admin_healthy
from tests.integration.test_readiness import _fresh_pg_database
from tests.integration.test_signin_http import CREDENTIAL_RE, enroll_totp

# Each gateway here uses a namespace of its own (user ids restart at 1 in every test database, and
# another module's revocations must not end these sessions; see test_signin_http).
REDIS_URL = "redis://127.0.0.1:6379/9"
POLICY = "p, admin, app, /*, *, allow\ng, user:boss, admin\n"

# Ids no record can have: beyond INTEGER, negative, beyond 64 bits, not a number, and other shapes.
BAD_IDS = ["2147483648", "-1", "99999999999999999999", "abc", "0", "+1", "1.0", "1e3", "0x10"]

FACTOR_RE = re.compile(r'action="/\.gateway/account/factors/(totp|webauthn)/(\d+)/rename"')


@dataclass
class Site:
    gw: Gateway
    admin_port: int

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


def api(site: Site, client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One admin API call with the browser's cookies, sent as the admin page would (same origin)."""
    headers = {"Origin": site.admin_url, "Sec-Fetch-Site": "same-origin"}
    return client.request(method, f"{site.admin_url}{path}", headers=headers, **kwargs)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp(f"ids-{request.param}")
    policy_path = tmp / "policy.csv"
    policy_path.write_text(POLICY)
    port, admin_port = free_port(), free_port()
    with run_echo() as echo, _storage(request.param) as storage:
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "none"}
        ]
        config = gateway_config(
            tmp,
            port,
            routes,
            session={"insecure_cookies": True},
            # The admin listener is a process of its own: sessions must be in Redis to reach it.
            state={"redis_url": REDIS_URL, "namespace": f"ids{port}:"},
            policy={"file": str(policy_path)},
            admin={"listen": f"127.0.0.1:{admin_port}"},
            **storage,
        )
        if storage:  # PostgreSQL: migrated and keyed by the operator, as `serve` requires
            _prepare_postgres(tmp, config)
        with run_gateway(tmp, config) as gw:
            wait_admin_healthy(admin_port, gw.proc)
            add_user(gw.config_path, "boss", PASSWORD)
            yield Site(gw, admin_port)


@contextmanager
def _storage(backend: str) -> Iterator[dict[str, Any]]:
    """The config's storage section: the embedded default, or a PostgreSQL database of its own."""
    if backend == "sqlite":
        yield {}
        return
    with _fresh_pg_database() as url:
        yield {"storage": {"url": url}}


def _prepare_postgres(tmp: Path, config: dict[str, Any]) -> None:
    import yaml

    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    for step in (("migrate",), ("keys", "init")):
        result = run_cli(*step, "--config", str(path))
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def boss(site: Site) -> Iterator[httpx.Client]:
    """The admin's browser: password, then an authenticator app (a fresh second factor)."""
    client = browser(site.gw)
    assert login(client, "boss").status_code in (302, 303)
    enroll_totp(client)
    yield client
    client.close()


def _policy_version(site: Site, boss: httpx.Client) -> int:
    resp = api(site, boss, "GET", "/api/policy")
    assert resp.status_code == 200, resp.text
    version: int = resp.json()["version"]
    return version


def _factors(boss: httpx.Client) -> tuple[set[tuple[str, str]], str]:
    page = boss.get("/.gateway/account")
    assert page.status_code == 200, page.text
    return set(FACTOR_RE.findall(page.text)), page.text


def _assert_bad_id(resp: httpx.Response) -> None:
    assert resp.status_code == 400, (resp.status_code, resp.text)
    body = resp.json()
    assert body["error"] == "bad-id", body
    # Nothing from the database: no driver, no SQL, no exception names.
    for leak in ("asyncpg", "sqlite", "int32", "SELECT", "Error", "Traceback"):
        assert leak not in resp.text, resp.text


# -- the admin API ------------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("bad", BAD_IDS)
def test_admin_api_version_id_that_no_version_can_have_is_400(
    site: Site, boss: httpx.Client, bad: str
) -> None:
    before = _policy_version(site, boss)
    _assert_bad_id(api(site, boss, "GET", f"/api/policy/versions/{bad}"))
    _assert_bad_id(api(site, boss, "POST", f"/api/policy/restore/{bad}", json={"reason": "id probe"}))
    assert _policy_version(site, boss) == before


@pytest.mark.peer
def test_admin_api_unknown_version_of_the_right_shape_is_still_404(site: Site, boss: httpx.Client) -> None:
    before = _policy_version(site, boss)
    assert_error(api(site, boss, "GET", "/api/policy/versions/2147483647"), 404, "policy-version-not-found")
    restore = api(site, boss, "POST", "/api/policy/restore/2147483647", json={"reason": "id probe"})
    assert_error(restore, 404, "policy-version-not-found")
    assert api(site, boss, "GET", f"/api/policy/versions/{before}").status_code == 200
    assert _policy_version(site, boss) == before


# -- the portal -----------------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("kind", ["totp", "webauthn"])
@pytest.mark.parametrize("bad", BAD_IDS)
def test_portal_factor_id_that_no_factor_can_have_is_400(boss: httpx.Client, kind: str, bad: str) -> None:
    factors, _ = _factors(boss)
    assert factors, "the admin has an authenticator app"
    for action in ("rename", "remove"):
        resp = post_form(
            boss, f"/.gateway/account/factors/{kind}/{bad}/{action}", {"name": "renamed-by-probe"}
        )
        _assert_bad_id(resp)
    after, page = _factors(boss)
    assert after == factors
    assert "renamed-by-probe" not in page


@pytest.mark.peer
@pytest.mark.parametrize("bad", BAD_IDS)
def test_enrollment_confirm_with_an_id_no_enrollment_can_have_is_400(boss: httpx.Client, bad: str) -> None:
    factors, _ = _factors(boss)
    enroll = boss.get("/.gateway/account/enroll")
    assert enroll.status_code == 200, enroll.text
    assert CREDENTIAL_RE.search(enroll.text)
    _assert_bad_id(
        post_form(boss, "/.gateway/account/totp/confirm", {"credential_id": bad, "code": "123456"})
    )
    assert _factors(boss)[0] == factors


# -- the CLI ----------------------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("bad", ["2147483648", "-1", "99999999999999999999", "abc", "0"])
def test_cli_version_that_no_version_can_have_is_a_usage_error(
    site: Site, boss: httpx.Client, bad: str
) -> None:
    before = _policy_version(site, boss)
    config = str(site.gw.config_path)
    for args in (
        ("policy", "restore", bad, "--config", config, "--reason", "id probe"),
        ("policy", "export", "--version", bad, "--config", config),
    ):
        result = run_cli(*args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "not a version number" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert "unavailable" not in result.stderr.lower()
    assert _policy_version(site, boss) == before
