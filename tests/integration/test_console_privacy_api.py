"""The console's Privacy API over real HTTP, on the embedded default (SQLite) and on PostgreSQL: a real
gateway (``python -m gateway serve``) with its admin listener, sessions in Redis.

``boss`` is an admin with a fresh TOTP factor (through the policy), ``carol`` a signed-in non-admin.
Each right is checked where it matters: the export against its JSON schema; a restricted or closed
account's sign-in is refused, and allowed again when the restriction is lifted; an erased account is
gone and its name is in no column of any audit record; under a legal hold the erasure waits with the
account restricted and is carried out when the hold is released. And the attacks: no session, a
non-admin, another origin (also for the export, a GET with an effect), bad input (4xx, nothing in the
register, nothing changed), a destructive action with a second factor older than
``admin.destructive_reauth_max_age``. Every action is audited ``admin.privacy.<action>``.

Requests the portal would have made (received, not verified; received weeks ago and overdue) are
written with the register itself (:class:`gateway.privacy.register.Register`) under a clock set in
the past, on the gateway's own database.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from sqlalchemy import text

from gateway.clock import FakeClock
from gateway.identity.models import User
from gateway.privacy.export import SCHEMA_PATH
from gateway.privacy.register import Channel, Kind, Register
from gateway.settings.schema import PrivacySettings
from gateway.store.db import Database, default_sqlite_url
from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
)
from tests.integration.http_client import PASSWORD, browser, login
from tests.integration.test_admin_api import assert_error, wait_admin_healthy
from tests.integration.test_readiness import _fresh_pg_database
from tests.integration.test_signin_http import enroll_totp

REDIS_URL = "redis://127.0.0.1:6379/9"
POLICY = "p, authenticated, app, /docs/*, GET, allow\np, admin, app, /*, *, allow\ng, user:boss, admin\n"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
RIGHTS = ("export", "rectify", "restrict", "close", "erase")


@dataclass
class Site:
    gw: Gateway
    admin_port: int
    db_url: str
    backend: str

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def add_user(self, username: str, *extra: str) -> None:
        add_user(self.gw.config_path, username, PASSWORD, *extra)


def _run_db(url: str, work: Any) -> Any:
    async def go() -> Any:
        db = Database.open(url, pool_size=1)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(go())


@contextmanager
def _storage(backend: str, tmp: Path) -> Iterator[tuple[dict[str, Any], str]]:
    if backend == "sqlite":
        yield {}, default_sqlite_url(tmp / "data")
        return
    with _fresh_pg_database() as url:
        yield {"storage": {"url": url}}, url


def _start(tmp: Path, backend: str, **admin: Any) -> Iterator[Site]:
    policy = tmp / "policy.csv"
    policy.write_text(POLICY)
    port, admin_port = free_port(), free_port()
    with run_echo() as echo, _storage(backend, tmp) as (storage, url):
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "none"}
        ]
        config = gateway_config(
            tmp,
            port,
            routes,
            session={"insecure_cookies": True},
            # The admin listener is a process of its own: sessions must be in Redis to reach it.
            state={"redis_url": REDIS_URL, "namespace": f"privacy{port}:"},
            policy={"file": str(policy)},
            admin={"listen": f"127.0.0.1:{admin_port}", **admin},
            privacy={"retention": {"registration": "90d"}},
            **storage,
        )
        if storage:  # PostgreSQL: migrated and keyed by the operator, as `serve` requires
            tmp.mkdir(parents=True, exist_ok=True)
            import yaml

            (tmp / "gateway.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            for step in (("migrate",), ("keys", "init")):
                done = run_cli(*step, "--config", str(tmp / "gateway.yaml"))
                assert done.returncode == 0, done.stdout + done.stderr
        with run_gateway(tmp, config) as gw:
            wait_admin_healthy(admin_port, gw.proc)
            site = Site(gw, admin_port, url, backend)
            site.add_user("boss")
            site.add_user("carol")
            yield site


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from _start(tmp_path_factory.mktemp(f"privacy-{request.param}"), request.param)


def signed_in(site: Site, user: str) -> httpx.Client:
    client = browser(site.gw)
    assert login(client, user).status_code in (302, 303)
    return client


@pytest.fixture(scope="module")
def boss(site: Site) -> Iterator[httpx.Client]:
    """The admin's browser: password, then an authenticator app (a fresh second factor)."""
    client = signed_in(site, "boss")
    enroll_totp(client)
    yield client
    client.close()


@pytest.fixture(scope="module")
def carol(site: Site) -> Iterator[httpx.Client]:
    client = signed_in(site, "carol")
    yield client
    client.close()


def api(site: Site, client: httpx.Client | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One admin API call as the console's script sends it (same origin, JSON)."""
    headers = {"Origin": site.admin_url, "Sec-Fetch-Site": "same-origin", **kwargs.pop("headers", {})}
    url = f"{site.admin_url}{path}"
    if client is None:
        return httpx.request(method, url, headers=headers, timeout=30.0, **kwargs)
    return client.request(method, url, headers=headers, **kwargs)


def ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def user_id(site: Site, boss: httpx.Client, username: str) -> int:
    found: int = ok(api(site, boss, "GET", f"/api/users/{username}"))["id"]
    return found


def audited(site: Site, boss: httpx.Client, action: str) -> list[dict[str, Any]]:
    """``admin.privacy.<action>`` records, newest first (the Audit section's API, any backend)."""
    return events(site, boss, kind=f"admin.privacy.{action}")


def events(site: Site, boss: httpx.Client, **filters: str) -> list[dict[str, Any]]:
    """Audit records matching ``filters`` (the Audit section's API), newest first, details parsed."""
    found = ok(api(site, boss, "GET", "/api/audit/events", params={**filters, "limit": 200}))["records"]
    return [{**r, "details": _details(r["details"])} for r in found]


def _details(stored: str) -> dict[str, Any]:
    # An erased record's details are a tombstone ("[erased:<pseudonym>]"), not JSON.
    if stored.startswith("[erased:"):
        return {"erased": stored}
    parsed: dict[str, Any] = json.loads(stored or "{}")
    return parsed


def register_rows(site: Site) -> list[tuple[str, str, str, str]]:
    """Every register row as (ref, kind, subject, status), straight from the database."""

    async def read(db: Database) -> list[tuple[str, str, str, str]]:
        async with db.session() as s:
            rows = await s.execute(
                text("SELECT ref, kind, subject, status FROM privacy_requests ORDER BY id")
            )
            return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    found: list[tuple[str, str, str, str]] = _run_db(site.db_url, read)
    return found


def portal_request(site: Site, uid: int, username: str, *, days_ago: float, kind: Kind = Kind.ACCESS) -> str:
    """A request as the portal records it (received, identity not yet verified), ``days_ago`` days ago."""
    clock = FakeClock((datetime.now(UTC) - timedelta(days=days_ago)).timestamp())

    async def open_one(db: Database) -> str:
        view = await Register(db, clock=clock).open(
            kind,
            settings=PrivacySettings(),
            user_id=uid,
            subject=username,
            channel=Channel.PORTAL,
            law="gdpr",
        )
        return view.ref

    ref: str = _run_db(site.db_url, open_one)
    return ref


def backdate(site: Site, uid: int, *, days: float) -> None:
    """Move the account's creation ``days`` into the past (its requests may then be older than now)."""

    async def move(db: Database) -> None:
        async with db.session() as s:
            user = await s.get(User, uid)
            assert user is not None
            user.created_at -= timedelta(days=days)
            await s.commit()

    _run_db(site.db_url, move)


def can_sign_in(site: Site, username: str) -> bool:
    with browser(site.gw) as client:
        return login(client, username).status_code in (302, 303)


def audit_mentions(site: Site, needle: str) -> list[tuple[Any, ...]]:
    """Every audit record with ``needle`` in any column (the chain's own columns included)."""

    async def scan(db: Database) -> list[tuple[Any, ...]]:
        async with db.session() as s:
            rows = (await s.execute(text("SELECT * FROM audit_events"))).all()
        return [tuple(r) for r in rows if any(needle in str(v) for v in r)]

    found: list[tuple[Any, ...]] = _run_db(site.db_url, scan)
    return found


# -- who may use it ---------------------------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/privacy/requests", None),
    ("GET", "/api/privacy/requests/PR-AAAAAAAAAA", None),
    ("POST", "/api/privacy/requests/PR-AAAAAAAAAA/verify", {"by": "id card"}),
    ("POST", "/api/privacy/requests/PR-AAAAAAAAAA/reject", {"reason": "r"}),
    ("POST", "/api/privacy/users/2/export", {"verified_by": "x"}),
    ("POST", "/api/privacy/users/2/rectify", {"display_name": "Mallory", "verified_by": "x"}),
    ("POST", "/api/privacy/users/2/restrict", {"restricted": True, "verified_by": "x", "reason": "r"}),
    ("POST", "/api/privacy/users/2/close", {"verified_by": "x", "reason": "r"}),
    ("POST", "/api/privacy/users/2/erase", {"verified_by": "x", "reason": "r"}),
    ("GET", "/api/privacy/holds", None),
    ("POST", "/api/privacy/holds", {"reference": "H-1", "reason": "r", "data_class": "incidents"}),
    ("POST", "/api/privacy/holds/H-1/release", {"reason": "r"}),
    ("GET", "/api/privacy/retention", None),
    ("GET", "/api/privacy/retention/plan", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_without_a_session_it_is_401_and_for_a_non_admin_403(
    site: Site, carol: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> None:
    before = register_rows(site)
    assert_error(api(site, None, method, path, json=body), 401, "authentication-required")
    assert_error(api(site, carol, method, path, json=body), 403, "admin-role-required")
    # Account 2 is carol: still there, still signing in; nothing was registered.
    assert register_rows(site) == before
    assert can_sign_in(site, "carol")


@pytest.mark.peer
@pytest.mark.parametrize(("method", "path", "body"), [e for e in ENDPOINTS if e[0] == "POST"])
def test_changes_from_another_origin_or_not_in_json_are_refused(
    site: Site, boss: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> None:
    before, holds = register_rows(site), ok(api(site, boss, "GET", "/api/privacy/holds"))
    evil = api(site, boss, method, path, json=body, headers={"Origin": "http://evil.example"})
    assert_error(evil, 403, "cross-origin-refused")
    cross = api(site, boss, method, path, json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert_error(cross, 403, "cross-origin-refused")
    form = api(site, boss, method, path, data=body)
    assert_error(form, 415, "unsupported-media-type")
    assert register_rows(site) == before
    assert ok(api(site, boss, "GET", "/api/privacy/holds")) == holds
    assert can_sign_in(site, "carol")


# -- bad input: a clear 4xx, nothing registered, nothing changed -----------------------------------


@pytest.mark.peer
def test_bad_input_is_a_4xx_that_changes_nothing(site: Site, boss: httpx.Client) -> None:
    site.add_user("yuri", "--email", "yuri@example.com", "--display-name", "Yuri")
    uid = user_id(site, boss, "yuri")
    boss_id = user_id(site, boss, "boss")
    done = ok(
        api(site, boss, "POST", f"/api/privacy/users/{uid}/close", json={"verified_by": "x", "reason": "r"})
    )
    closed_ref = done["ref"]
    site.add_user("yuna", "--email", "yuna@example.com")
    yid = user_id(site, boss, "yuna")
    base = f"/api/privacy/users/{yid}"
    cases: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None, int, str]] = [
        ("GET", "/api/privacy/requests", None, {"status": "lost"}, 400, "bad-request"),
        ("GET", "/api/privacy/requests", None, {"limit": 0}, 400, "bad-request"),
        ("GET", "/api/privacy/requests/PR-short", None, None, 400, "bad-privacy-request-ref"),
        ("GET", "/api/privacy/requests/PR-AAAAAAAAAA", None, None, 404, "unknown-privacy-request"),
        ("POST", "/api/privacy/requests/PR-AAAAAAAAAA/verify", {"by": "id"}, None, 404, "unknown-privacy-request"),
        ("POST", f"/api/privacy/requests/{closed_ref}/verify", {"by": "id"}, None, 409, "privacy-request-not-pending"),
        ("POST", f"/api/privacy/requests/{closed_ref}/reject", {"reason": "no"}, None, 409, "privacy-request-not-pending"),
        ("POST", f"/api/privacy/requests/{closed_ref}/verify", {"by": "  "}, None, 400, "bad-request"),
        ("POST", "/api/privacy/users/2147483648/export", {"verified_by": "x"}, None, 400, "bad-id"),
        ("POST", "/api/privacy/users/abc/export", {"verified_by": "x"}, None, 400, "bad-id"),
        ("POST", "/api/privacy/users/999999/export", {"verified_by": "x"}, None, 404, "unknown-account"),
        ("POST", f"{base}/export", {}, None, 400, "bad-request"),
        ("POST", f"{base}/export", {"verified_by": "   "}, None, 400, "bad-request"),
        ("POST", f"{base}/export", {"verified_by": "x", "law": "hipaa"}, None, 400, "unknown-law"),
        ("POST", f"{base}/export", {"verified_by": "x", "extra": 1}, None, 400, "bad-request"),
        # It records a request: never by GET, which a page of another site can make a browser send.
        ("GET", f"{base}/export", None, {"verified_by": "x"}, 405, "method-not-allowed"),
        ("POST", f"{base}/rectify", {"verified_by": "x"}, None, 400, "bad-request"),
        ("POST", f"{base}/rectify", {"email": "not-an-address", "verified_by": "x"}, None, 400, "invalid-account"),
        ("POST", f"{base}/rectify", {"display_name": "Yuna\u202eX", "verified_by": "x"}, None, 400, "bad-request"),
        ("POST", f"{base}/rectify", {"display_name": "Y", "verified_by": "x", "extra": 1}, None, 400, "bad-request"),
        ("POST", f"{base}/restrict", {"restricted": "yes", "verified_by": "x", "reason": "r"}, None, 400, "bad-request"),
        ("POST", f"{base}/restrict", {"restricted": True, "verified_by": "x"}, None, 400, "bad-request"),
        ("POST", f"{base}/close", {"verified_by": "x", "reason": " \t"}, None, 400, "bad-request"),
        ("POST", f"{base}/close", {"verified_by": "x", "reason": "r", "law": "hipaa"}, None, 400, "unknown-law"),
        ("POST", f"/api/privacy/users/{uid}/close", {"verified_by": "x", "reason": "r"}, None, 409, "account-closed-already"),
        ("POST", f"{base}/erase", {"verified_by": "", "reason": "r"}, None, 400, "bad-request"),
        ("POST", f"/api/privacy/users/{boss_id}/erase", {"verified_by": "x", "reason": "r"}, None, 409, "privacy-own-account"),
        ("POST", f"/api/privacy/users/{boss_id}/close", {"verified_by": "x", "reason": "r"}, None, 409, "privacy-own-account"),
        ("POST", f"/api/privacy/users/{boss_id}/restrict", {"restricted": True, "verified_by": "x", "reason": "r"}, None, 409, "privacy-own-account"),
        ("POST", "/api/privacy/holds", {"reference": "H-x", "reason": "r"}, None, 400, "bad-request"),
        ("POST", "/api/privacy/holds", {"reference": "H-x", "reason": "r", "username": "yuna", "data_class": "incidents"}, None, 400, "bad-request"),
        ("POST", "/api/privacy/holds", {"reference": "H-x", "reason": "r", "data_class": "everything"}, None, 400, "bad-request"),
        ("POST", "/api/privacy/holds", {"reference": "C-1/24", "reason": "r", "data_class": "incidents"}, None, 400, "bad-request"),
        ("POST", "/api/privacy/holds", {"reference": "H-x", "reason": "r", "username": "not a name!"}, None, 400, "invalid-account"),
        ("POST", "/api/privacy/holds/H-none/release", {"reason": "r"}, None, 404, "unknown-legal-hold"),
        ("POST", "/api/privacy/holds/H-none/release", {}, None, 400, "bad-request"),
    ]  # fmt: skip
    before_rows, before_holds = register_rows(site), ok(api(site, boss, "GET", "/api/privacy/holds"))
    before_yuna = ok(api(site, boss, "GET", "/api/users/yuna"))
    for method, path, body, params, status, error in cases:
        resp = api(site, boss, method, path, json=body, params=params)
        assert_error(resp, status, error)
    # Bad input leaves no trace in the register (only the refusal in the audit trail), and nothing
    # about the accounts or the holds changed.
    assert register_rows(site) == before_rows
    assert ok(api(site, boss, "GET", "/api/privacy/holds")) == before_holds
    after_yuna = ok(api(site, boss, "GET", "/api/users/yuna"))
    for key in ("email", "display_name", "restricted", "closed_at", "status", "updated_at"):
        assert after_yuna[key] == before_yuna[key], key
    assert can_sign_in(site, "yuna")
    assert can_sign_in(site, "boss")
    refused = audited(site, boss, "erase")
    assert any(e["details"].get("error") == "privacy-own-account" for e in refused)
    # An address another account has: the request was made and is refused, as the person is told.
    taken = api(site, boss, "POST", f"{base}/rectify", json={"email": "yuri@example.com", "verified_by": "x"})
    assert_error(taken, 409, "account-exists")
    assert [(k, st) for _, k, who, st in register_rows(site)[len(before_rows) :]] == [
        ("rectification", "rejected")
    ]
    assert ok(api(site, boss, "GET", "/api/users/yuna"))["email"] == "yuna@example.com"
    assert any(
        e["outcome"] == "failure" and e["details"].get("error") == "unknown-law"
        for e in audited(site, boss, "close")
    )


# -- the rights -------------------------------------------------------------------------------------


@pytest.mark.peer
def test_the_export_is_an_access_request_that_matches_its_schema(site: Site, boss: httpx.Client) -> None:
    site.add_user("ada", "--email", "ada@example.com", "--display-name", "Ada L")
    uid = user_id(site, boss, "ada")
    resp = api(
        site,
        boss,
        "POST",
        f"/api/privacy/users/{uid}/export",
        json={"verified_by": "video call", "law": "ccpa"},
    )
    document = ok(resp)
    jsonschema.validate(document, SCHEMA)
    assert document["account"]["username"] == "ada"
    assert document["account"]["email"] == "ada@example.com"
    ref = resp.headers["x-privacy-request"]
    assert resp.headers["content-disposition"] == f'attachment; filename="personal-data-{ref}.json"'
    request = ok(api(site, boss, "GET", f"/api/privacy/requests/{ref}"))
    assert (request["kind"], request["law"], request["channel"], request["status"]) == (
        "access", "ccpa", "admin", "completed",
    )  # fmt: skip
    assert (request["subject"], request["user_id"], request["verified_by"]) == ("ada", uid, "video call")
    # The service's record and the admin's, both naming the request.
    [mine] = [e for e in audited(site, boss, "export") if e["details"].get("request") == ref]
    assert (mine["actor"], mine["subject"], mine["outcome"]) == ("user:boss", "ada", "success")
    assert mine["details"]["verified_by"] == "video call"
    assert [e["details"]["request"] for e in events(site, boss, kind="privacy.access", subject="ada")] == [
        ref
    ]


@pytest.mark.peer
def test_rectify_restrict_lift_and_close(site: Site, boss: httpx.Client) -> None:
    site.add_user("bea", "--email", "bea@example.com")
    uid = user_id(site, boss, "bea")
    base = f"/api/privacy/users/{uid}"
    fixed = ok(
        api(
            site,
            boss,
            "POST",
            f"{base}/rectify",
            json={"email": "bea@example.org", "display_name": "Bea K", "verified_by": "phone"},
        )
    )
    assert (fixed["kind"], fixed["status"]) == ("rectification", "completed")
    account = ok(api(site, boss, "GET", "/api/users/bea"))
    assert (account["email"], account["display_name"]) == ("bea@example.org", "Bea K")
    [noted] = [e for e in audited(site, boss, "rectify") if e["details"].get("request") == fixed["ref"]]
    # The fields, never the new values.
    assert noted["details"]["fields"] == "email display_name"
    assert "bea@example.org" not in json.dumps(noted)

    with closing(signed_in(site, "bea")) as bea:
        restricted = ok(
            api(
                site,
                boss,
                "POST",
                f"{base}/restrict",
                json={"restricted": True, "verified_by": "phone", "reason": "asked to pause"},
            )
        )
        assert (restricted["kind"], restricted["status"]) == ("restriction", "completed")
        # Her session ended at once; she cannot sign in again.
        gone = bea.get("/.gateway/account")
        assert gone.status_code in (302, 303)
        assert "/.gateway/login" in gone.headers["location"]
    assert not can_sign_in(site, "bea")
    assert ok(api(site, boss, "GET", "/api/users/bea"))["restricted"] is True
    lifted = ok(
        api(
            site,
            boss,
            "POST",
            f"{base}/restrict",
            json={"restricted": False, "verified_by": "phone", "reason": "may resume"},
        )
    )
    assert lifted["status"] == "completed"
    assert can_sign_in(site, "bea")

    closed = ok(api(site, boss, "POST", f"{base}/close", json={"verified_by": "letter", "reason": "left"}))
    assert (closed["kind"], closed["status"]) == ("closure", "completed")
    assert "90 days" in closed["message"]
    assert not can_sign_in(site, "bea")
    assert ok(api(site, boss, "GET", "/api/users/bea"))["closed_at"] is not None

    kinds = [(k, s) for _, k, subject, s in register_rows(site) if subject == "bea"]
    assert kinds == [
        ("rectification", "completed"),
        ("restriction", "completed"),
        ("restriction", "completed"),
        ("closure", "completed"),
    ]
    for action, reason in (("restrict", "asked to pause"), ("restrict", "may resume"), ("close", "left")):
        assert any(
            e["subject"] == "bea" and e["outcome"] == "success" and e["details"]["reason"] == reason
            for e in audited(site, boss, action)
        ), (action, reason)


@pytest.mark.peer
def test_erasure_removes_the_person_and_every_trace_of_their_name(site: Site, boss: httpx.Client) -> None:
    site.add_user("quentin.erase", "--email", "quentin@example.net")
    uid = user_id(site, boss, "quentin.erase")
    with closing(signed_in(site, "quentin.erase")):
        pass  # a sign-in of his in the audit trail, with his address
    ok(api(site, boss, "POST", f"/api/privacy/users/{uid}/export", json={"verified_by": "in person"}))
    result = ok(
        api(
            site,
            boss,
            "POST",
            f"/api/privacy/users/{uid}/erase",
            json={"verified_by": "in person", "reason": "asked at the desk"},
        )
    )
    assert (result["kind"], result["status"], result["hold"]) == ("erasure", "completed", None)
    assert_error(api(site, boss, "GET", "/api/users/quentin.erase"), 404, "unknown-account")
    request = ok(api(site, boss, "GET", f"/api/privacy/requests/{result['ref']}"))
    assert request["subject"].startswith("[erased:")
    assert request["user_id"] is None
    assert request["status"] == "completed"
    assert request["completed_at"]
    # The admin's record after the erasure names the pseudonym, not him.
    [mine] = [e for e in audited(site, boss, "erase") if e["details"].get("request") == result["ref"]]
    assert (mine["subject"], mine["outcome"]) == (request["subject"], "success")
    # Nothing in the trail names him or his address any more (the chain verifies: the audit section).
    assert audit_mentions(site, "quentin") == []
    verify = ok(api(site, boss, "POST", "/api/audit/verify", json={}))
    assert verify["ok"] is True, verify
    # (A sign-in attempt with his name is a new record of what someone typed, after the erasure.)
    assert not can_sign_in(site, "quentin.erase")


@pytest.mark.peer
def test_under_a_legal_hold_the_erasure_waits_and_is_done_on_release(site: Site, boss: httpx.Client) -> None:
    site.add_user("hank")
    uid = user_id(site, boss, "hank")
    placed = ok(
        api(
            site,
            boss,
            "POST",
            "/api/privacy/holds",
            json={"reference": f"CASE-{site.backend}", "reason": "preservation order", "username": "hank"},
        ),
        201,
    )
    assert (placed["hold"]["scope"], placed["hold"]["subject"], placed["account_exists"]) == (
        "person",
        "hank",
        True,
    )
    again = api(
        site,
        boss,
        "POST",
        "/api/privacy/holds",
        json={"reference": f"CASE-{site.backend}", "reason": "twice", "data_class": "incidents"},
    )
    assert_error(again, 409, "legal-hold-exists")
    listed = ok(api(site, boss, "GET", "/api/privacy/holds"))
    [row] = [h for h in listed["holds"] if h["reference"] == f"CASE-{site.backend}"]
    assert (row["subject"], row["active"]) == ("h•••k", True)  # masked in the list

    held = ok(
        api(
            site,
            boss,
            "POST",
            f"/api/privacy/users/{uid}/erase",
            json={"verified_by": "email from his address", "reason": "asked"},
        )
    )
    assert (held["status"], held["hold"]) == ("on_hold", f"CASE-{site.backend}")
    assert ok(api(site, boss, "GET", "/api/users/hank"))["restricted"] is True
    assert not can_sign_in(site, "hank")
    waiting = ok(api(site, boss, "GET", "/api/privacy/requests", params={"status": "on_hold"}))
    assert held["ref"] in [r["ref"] for r in waiting["requests"]]

    released = ok(
        api(
            site,
            boss,
            "POST",
            f"/api/privacy/holds/CASE-{site.backend}/release",
            json={"reason": "order lifted"},
        )
    )
    assert released["resumed"] == [held["ref"]]
    assert_error(api(site, boss, "GET", "/api/users/hank"), 404, "unknown-account")
    done = ok(api(site, boss, "GET", f"/api/privacy/requests/{held['ref']}"))
    assert done["status"] == "completed"
    assert done["subject"].startswith("[erased:")
    [rel] = [
        e
        for e in audited(site, boss, "hold.release")
        if e["details"].get("reference") == f"CASE-{site.backend}"
    ]
    assert rel["details"]["resumed"] == held["ref"]
    assert rel["subject"] == done["subject"]
    again = api(
        site, boss, "POST", f"/api/privacy/holds/CASE-{site.backend}/release", json={"reason": "twice"}
    )
    assert_error(again, 404, "unknown-legal-hold")
    assert audit_mentions(site, "hank") == []


@pytest.mark.peer
def test_the_register_lists_overdue_requests_first_and_they_are_verified_or_rejected(
    site: Site, boss: httpx.Client
) -> None:
    site.add_user("olga")
    uid = user_id(site, boss, "olga")
    backdate(site, uid, days=400)  # an account a year old, with requests from its past
    late = portal_request(site, uid, "olga", days_ago=40)  # GDPR: due in 30 days, so 10 days late
    fresh = portal_request(site, uid, "olga", days_ago=1, kind=Kind.RECTIFICATION)
    # A request of an earlier, deleted account that had the same id (SQLite gives ids again): made as
    # olga's, then named as zack's (a request is opened only for an account that exists).
    ghost = portal_request(site, uid, "olga", days_ago=500)

    async def as_zacks(db: Database) -> None:
        async with db.session(write=True) as session:
            await session.execute(
                text("UPDATE privacy_requests SET subject = 'zack' WHERE ref = :r"), {"r": ghost}
            )
            await session.commit()

    _run_db(site.db_url, as_zacks)
    listing = ok(api(site, boss, "GET", "/api/privacy/requests"))
    # The most overdue first: the earlier account's (470 days late), then olga's (10 days).
    assert [r["ref"] for r in listing["requests"][:2]] == [ghost, late]
    first = listing["requests"][1]
    assert (first["overdue"], first["days_overdue"], first["status"], first["verified"]) == (
        True,
        10,
        "received",
        False,
    )
    assert first["subject"] == "o•••a"
    [young] = [r for r in listing["requests"] if r["ref"] == fresh]
    assert (young["overdue"], young["days_left"]) == (False, 29)
    assert listing["overdue"] >= 1
    assert listing["open"] >= 2
    overdue = ok(api(site, boss, "GET", "/api/privacy/requests", params={"status": "overdue"}))
    assert late in [r["ref"] for r in overdue["requests"]]
    assert fresh not in [r["ref"] for r in overdue["requests"]]
    mine = ok(api(site, boss, "GET", "/api/privacy/requests", params={"user_id": uid}))
    assert sorted(r["ref"] for r in mine["requests"]) == sorted([late, fresh])  # olga's are hers only

    detail = ok(api(site, boss, "GET", f"/api/privacy/requests/{late}"))
    assert (detail["subject"], detail["channel"], detail["days_overdue"]) == ("olga", "portal", 10)
    assert [(e["what"], e["state"]) for e in detail["timeline"]] == [
        ("Received", "done"), ("Identity verified", "waiting"), ("Due", "overdue"),
    ]  # fmt: skip

    verified = ok(
        api(site, boss, "POST", f"/api/privacy/requests/{late}/verify", json={"by": "video call, passport"})
    )
    assert verified["status"] == "verified"
    assert_error(
        api(site, boss, "POST", f"/api/privacy/requests/{late}/verify", json={"by": "again"}),
        409,
        "privacy-request-not-pending",
    )
    detail = ok(api(site, boss, "GET", f"/api/privacy/requests/{late}"))
    assert (detail["verified_by"], detail["overdue"]) == ("video call, passport", True)
    rejected = ok(
        api(
            site,
            boss,
            "POST",
            f"/api/privacy/requests/{fresh}/reject",
            json={"reason": "not the account holder"},
        )
    )
    assert rejected["status"] == "rejected"
    detail = ok(api(site, boss, "GET", f"/api/privacy/requests/{fresh}"))
    assert (detail["status"], detail["outcome"]) == ("rejected", "not the account holder")
    assert [e["what"] for e in detail["timeline"]][-1] == "Rejected"
    [v] = [
        e
        for e in audited(site, boss, "verify")
        if e["details"].get("request") == late and e["outcome"] == "success"
    ]
    assert (v["subject"], v["details"]["by"]) == ("olga", "video call, passport")
    assert any(
        e["details"].get("request") == fresh and e["subject"] == "olga" for e in audited(site, boss, "reject")
    )
    # The facts under the kinds the CLI records them with: one query answers "who verified or rejected
    # what" whichever channel did it.
    [fact] = [
        e for e in events(site, boss, kind="privacy.request.verified") if e["details"]["request"] == late
    ]
    assert (fact["actor"], fact["subject"]) == ("user:boss", "olga")
    [fact] = [
        e for e in events(site, boss, kind="privacy.request.rejected") if e["details"]["request"] == fresh
    ]
    assert (fact["actor"], fact["details"]["reason"]) == ("user:boss", "not the account holder")


@pytest.mark.peer
def test_retention_rules_and_class_holds(site: Site, boss: httpx.Client) -> None:
    ref = f"AUDIT-KEEP-{site.backend}"
    ok(
        api(
            site,
            boss,
            "POST",
            "/api/privacy/holds",
            json={"reference": ref, "reason": "regulator inquiry", "data_class": "audit_events"},
        ),
        201,
    )
    view = ok(api(site, boss, "GET", "/api/privacy/retention"))
    rules = {r["data_class"]: r for r in view["rules"]}
    assert list(rules) == ["registration", "removed_content", "audit_events", "incidents", "privacy_requests"]
    assert (rules["registration"]["keep_for"], rules["registration"]["keep_for_text"]) == (
        90 * 86400,
        "90 days",
    )
    assert rules["privacy_requests"]["keep_for_text"] == "3 years"
    assert ref in rules["audit_events"]["held_by"]
    assert rules["incidents"]["held_by"] == []
    assert view["interval_text"] == "1 day"
    ok(api(site, boss, "POST", f"/api/privacy/holds/{ref}/release", json={"reason": "inquiry closed"}))
    view = ok(api(site, boss, "GET", "/api/privacy/retention"))
    assert [r["held_by"] for r in view["rules"]] == [[], [], [], [], []]
    placed = [e for e in audited(site, boss, "hold.place") if e["details"].get("reference") == ref]
    # "hold:" and the reference, which no username can be (a re-attack run named an account after a
    # reference: its export held the admin's reason, and its erasure blanked the record).
    assert [(e["subject"], e["details"]["data_class"]) for e in placed] == [(f"hold:{ref}", "audit_events")]
    released = [e for e in audited(site, boss, "hold.release") if e["details"].get("reference") == ref]
    assert [e["subject"] for e in released] == [f"hold:{ref}"]
    # The facts, under the kinds `gateway privacy hold` records them with.
    facts = [
        (e["kind"], e["actor"], e["details"]["data_class"])
        for kind in ("privacy.hold.placed", "privacy.hold.released")
        for e in events(site, boss, kind=kind)
        if e["details"].get("reference") == ref
    ]
    assert facts == [
        ("privacy.hold.placed", "user:boss", "audit_events"),
        ("privacy.hold.released", "user:boss", "audit_events"),
    ]


@pytest.mark.peer
def test_the_retention_plan_says_when_a_closed_account_goes(site: Site, boss: httpx.Client) -> None:
    site.add_user("walter")
    uid = user_id(site, boss, "walter")
    closed = ok(
        api(
            site, boss, "POST", f"/api/privacy/users/{uid}/close", json={"verified_by": "x", "reason": "left"}
        )
    )
    closed_at = datetime.fromisoformat(ok(api(site, boss, "GET", "/api/users/walter"))["closed_at"])
    plan = ok(api(site, boss, "GET", "/api/privacy/retention/plan"))
    classes = {c["data_class"]: c for c in plan["classes"]}
    assert list(classes) == [
        "registration",
        "removed_content",
        "audit_events",
        "incidents",
        "privacy_requests",
    ]
    registration = classes["registration"]
    assert (registration["keep_for_text"], registration["action"], registration["error"]) == (
        "90 days",
        "erased",
        None,
    )
    [walter] = [i for i in registration["next"] if i["what"] == "w•••r"]  # a person: masked
    due = datetime.fromisoformat(walter["due_at"])
    assert abs((due - closed_at) - timedelta(days=90)) < timedelta(seconds=1)
    # 91 days on, the run would erase him (and whoever else was closed here), and changes nothing now.
    ahead = ok(
        api(
            site,
            boss,
            "GET",
            "/api/privacy/retention/plan",
            params={"at": (closed_at + timedelta(days=91)).isoformat()},
        )
    )
    later = {c["data_class"]: c for c in ahead["classes"]}["registration"]
    assert later["due_now"] >= 1
    assert "w•••r" not in [i["what"] for i in later["next"]]
    assert ok(api(site, boss, "GET", "/api/users/walter"))["closed_at"] is not None
    assert closed["status"] == "completed"
    assert_error(
        api(site, boss, "GET", "/api/privacy/retention/plan", params={"at": "next week"}), 400, "bad-request"
    )
    # A moment whose retention periods reach out of the calendar was a 500 (a fuzzing run).
    for edge in ("0001-01-01", "0001-01-01T00:00:00+23:59", "9999-12-31"):
        refused = api(site, boss, "GET", "/api/privacy/retention/plan", params={"at": edge})
        assert_error(refused, 400, "bad-request")


def test_the_api_is_documented(site: Site, boss: httpx.Client) -> None:
    paths = ok(api(site, boss, "GET", "/api/schema/openapi.json"))["paths"]
    assert {
        "/api/privacy/requests",
        "/api/privacy/requests/{ref}",
        "/api/privacy/requests/{ref}/verify",
        "/api/privacy/requests/{ref}/reject",
        "/api/privacy/users/{user_id}/export",
        "/api/privacy/users/{user_id}/rectify",
        "/api/privacy/users/{user_id}/restrict",
        "/api/privacy/users/{user_id}/close",
        "/api/privacy/users/{user_id}/erase",
        "/api/privacy/holds",
        "/api/privacy/holds/{reference}/release",
        "/api/privacy/retention",
        "/api/privacy/retention/plan",
    } <= set(paths)
    export = paths["/api/privacy/users/{user_id}/export"]
    assert "get" not in export
    assert {p["name"] for p in export["post"]["parameters"]} == {"user_id"}
    assert "requestBody" in export["post"]


# -- a second factor too old for a destructive action -----------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A gateway whose destructive admin actions need a second factor used within the last second."""
    yield from _start(tmp_path_factory.mktemp("privacy-strict"), "sqlite", destructive_reauth_max_age="1s")


@pytest.mark.peer
def test_erasure_and_release_with_an_older_factor_must_step_up(strict: Site) -> None:
    strict.add_user("ivy")
    with closing(signed_in(strict, "boss")) as admin:
        enroll_totp(admin)
        uid = user_id(strict, admin, "ivy")
        ok(
            api(
                strict,
                admin,
                "POST",
                "/api/privacy/holds",
                json={"reference": "H-1", "reason": "r", "username": "carol"},
            ),
            201,
        )
        # The scenario is the factor's age: let it pass admin.destructive_reauth_max_age (1 s).
        time.sleep(1.5)
        erase = api(
            strict, admin, "POST", f"/api/privacy/users/{uid}/erase", json={"verified_by": "x", "reason": "r"}
        )
        body = assert_error(erase, 403, "step-up-required")
        assert "/.gateway/mfa" in body["location"]
        release = api(strict, admin, "POST", "/api/privacy/holds/H-1/release", json={"reason": "r"})
        assert_error(release, 403, "step-up-required")
        # Not destructive: still allowed within admin.reauth_max_age.
        ok(api(strict, admin, "POST", f"/api/privacy/users/{uid}/export", json={"verified_by": "x"}))
        assert ok(api(strict, admin, "GET", "/api/users/ivy"))["username"] == "ivy"
        assert [h["active"] for h in ok(api(strict, admin, "GET", "/api/privacy/holds"))["holds"]] == [True]
        assert [k for _, k, _, _ in register_rows(strict)] == ["access"]
        refused = audited(strict, admin, "erase") + audited(strict, admin, "hold.release")
        assert [e["details"]["error"] for e in refused] == ["step-up-required", "step-up-required"]
        assert can_sign_in(strict, "ivy")
