"""The admin channel for objections and consent withdrawals, over real HTTP, on the embedded default
(SQLite) and on PostgreSQL: a real gateway (``python -m gateway serve``, one worker, so its decision
sample is flushed in the order requests were made) with its admin listener, sessions in Redis.

The purposes are the gateway's own two (``geolocation``, ``policy_analytics``, objectable) and a consent
purpose (``newsletter``). What an admin records for a person must do what the person's own portal call
does: an objection to ``policy_analytics`` keeps the person's next requests out of ``decision_samples``
while another person's land there, and the person's live session says so at once; a withdrawn consent
is the person's current answer. Each is a completed register row (channel ``admin``, verified by the
admin's text and the admin) and an ``admin.privacy.<action>`` audit record with the reason.

And the attacks: no session (401), a non-admin (403), another origin or a form post (403, 415), bad input
(an unknown purpose 422, a purpose of the wrong kind 409, a missing or blank reason, an unknown law,
unknown account: 4xx), each changing nothing: no register row, no objection, no consent record.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.store.db import Database
from tests.integration.harness import free_port, gateway_config, run_cli, run_echo, run_gateway, wait_until
from tests.integration.http_client import browser, csrf, login
from tests.integration.test_admin_api import assert_error, wait_admin_healthy
from tests.integration.test_console_privacy_api import (
    POLICY,
    REDIS_URL,
    Site,
    _run_db,
    _storage,
    api,
    audited,
    events,
    ok,
    register_rows,
    signed_in,
    user_id,
)
from tests.integration.test_signin_http import enroll_totp

PURPOSES: list[dict[str, Any]] = [
    {
        "name": "geolocation",
        "title": "Sign-in location checks",
        "notice": "The sign-in address is looked up.",
        "basis": "legitimate_interest",
        "objectable": True,
    },
    {
        "name": "policy_analytics",
        "title": "Access pattern sample",
        "notice": "Request shapes are counted for policy reviews.",
        "basis": "legitimate_interest",
        "objectable": True,
    },
    {"name": "newsletter", "title": "Product newsletter", "notice": "A monthly mail.", "basis": "consent"},
]
JSON = {"Accept": "application/json"}


def _start(tmp: Path, backend: str) -> Iterator[Site]:
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
            state={"redis_url": REDIS_URL, "namespace": f"choices{port}:"},
            # One worker: its decision sample is flushed in the order the requests were made.
            server={"workers": 1},
            policy={"file": str(policy)},
            admin={"listen": f"127.0.0.1:{admin_port}"},
            privacy={"purposes": PURPOSES},
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
    yield from _start(tmp_path_factory.mktemp(f"choices-{request.param}"), request.param)


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


def person(site: Site, prefix: str) -> str:
    name = f"{prefix}{secrets.token_hex(3)}"
    site.add_user(name)
    return name


def sql(site: Site, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    from sqlalchemy import text

    async def read(db: Database) -> list[tuple[Any, ...]]:
        async with db.session() as s:
            return [tuple(r) for r in (await s.execute(text(statement), params)).all()]

    found: list[tuple[Any, ...]] = _run_db(site.db_url, read)
    return found


def sampled_paths(site: Site, username: str) -> set[str]:
    rows = sql(site, "SELECT principals, path FROM decision_samples")
    return {str(path) for principals, path in rows if f"user:{username}" in str(principals).split()}


def my_choices(client: httpx.Client) -> dict[str, Any]:
    """What the person's own API says about their choices (their live session's opt-out included)."""
    resp = client.get("/.gateway/api/consents", headers=JSON)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def state(site: Site) -> tuple[Any, ...]:
    """Everything a refused call must leave as it was: the register, objections, consent records."""
    return (
        register_rows(site),
        sql(site, "SELECT id, objections, updated_at FROM users ORDER BY id"),
        sql(site, "SELECT count(*) FROM consent_records"),
    )


def choice(site: Site, client: httpx.Client | None, uid: int, action: str, **body: Any) -> httpx.Response:
    return api(site, client, "POST", f"/api/privacy/users/{uid}/{action}", json=body)


# -- the effect is the person's own ----------------------------------------------------------------------


@pytest.mark.peer
def test_an_objection_an_admin_records_keeps_the_person_out_of_the_decision_sample(
    site: Site, boss: httpx.Client
) -> None:
    objector, other = person(site, "olga"), person(site, "paul")
    uid = user_id(site, boss, objector)
    token = secrets.token_hex(4)
    with closing(browser(site.gw)) as mine, closing(browser(site.gw)) as theirs:
        assert login(mine, objector).status_code in (302, 303)
        assert login(theirs, other).status_code in (302, 303)
        assert mine.get(f"/docs/before-{token}", headers=JSON).status_code == 200
        wait_until(
            lambda: f"/docs/before-{token}" in sampled_paths(site, objector),
            timeout=40,
            what="the objector's request before the objection in the sample",
        )
        done = ok(
            choice(
                site, boss, uid, "object",
                purpose="policy_analytics", verified_by="signed letter", reason="letter of 3 May",
            )
        )  # fmt: skip
        assert (done["kind"], done["status"]) == ("objection", "completed")
        assert "policy_analytics" in done["message"]
        # Her live session carries it at once, as after her own objection.
        mine_now = my_choices(mine)
        assert mine_now["objections"] == ["policy_analytics"]
        assert "policy_analytics" in mine_now["optout"]
        for _ in range(3):
            assert mine.get(f"/docs/after-{token}", headers=JSON).status_code == 200
        # Made after hers: in the sample, it proves hers would be there by now.
        assert theirs.get(f"/docs/other-{token}", headers=JSON).status_code == 200
        wait_until(
            lambda: f"/docs/other-{token}" in sampled_paths(site, other),
            timeout=40,
            what="the other user's request in the sample",
        )
        assert f"/docs/after-{token}" not in sampled_paths(site, objector)

    request = ok(api(site, boss, "GET", f"/api/privacy/requests/{done['ref']}"))
    assert (request["kind"], request["channel"], request["status"], request["subject"]) == (
        "objection", "admin", "completed", objector,
    )  # fmt: skip
    assert request["verified_by"] == "signed letter (user:boss)"
    assert request["details"] == {"purpose": "policy_analytics", "reason": "letter of 3 May"}
    [noted] = [e for e in audited(site, boss, "object") if e["details"].get("request") == done["ref"]]
    assert (noted["actor"], noted["subject"], noted["outcome"]) == ("user:boss", objector, "success")
    assert noted["details"]["reason"] == "letter of 3 May"
    [added] = events(site, boss, kind="privacy.objection.added", subject=objector)
    assert added["actor"] == "user:boss"
    assert added["details"]["method"] == "admin:boss"


@pytest.mark.peer
def test_a_consent_withdrawal_an_admin_records_is_the_persons_answer(site: Site, boss: httpx.Client) -> None:
    name = person(site, "rita")
    uid = user_id(site, boss, name)
    with closing(browser(site.gw)) as mine:
        assert login(mine, name).status_code in (302, 303)
        granted = mine.post(
            "/.gateway/api/consents",
            json={"purpose": "newsletter", "decision": "granted"},
            headers={**JSON, "x-csrftoken": csrf(mine)},
        )
        assert granted.status_code == 200, granted.text
        assert "newsletter" not in granted.json()["optout"]

        done = ok(
            choice(
                site, boss, uid, "withdraw-consent", purpose="newsletter", verified_by="phone", reason="call"
            )
        )
        assert (done["kind"], done["status"]) == ("consent_withdrawal", "completed")
        now = my_choices(mine)
        [answer] = [a for a in now["answers"] if a["purpose"] == "newsletter"]
        assert (answer["decision"], answer["method"]) == ("withdrawn", "admin:boss")
        assert "newsletter" in now["optout"]
    decisions = sql(
        site,
        "SELECT c.decision FROM consent_records c JOIN users u ON u.id = c.user_id "
        "WHERE u.username = :name ORDER BY c.id",
        name=name,
    )
    assert [d for (d,) in decisions] == ["granted", "withdrawn"]
    rows = [(kind, status) for _, kind, subject, status in register_rows(site) if subject == name]
    assert rows == [("consent_withdrawal", "completed")]
    [noted] = [
        e for e in audited(site, boss, "withdraw_consent") if e["details"].get("request") == done["ref"]
    ]
    assert (noted["subject"], noted["details"]["reason"]) == (name, "call")


def test_the_user_page_offers_both_with_the_configured_purposes(site: Site, boss: httpx.Client) -> None:
    page = boss.get(f"{site.admin_url}/users/carol")
    assert page.status_code == 200, page.text
    html = page.text
    object_form = html[html.index('id="object-form"') : html.index("</form>", html.index('id="object-form"'))]
    assert "/object" in object_form
    assert 'value="geolocation"' in object_form
    assert 'value="policy_analytics"' in object_form
    assert 'value="newsletter"' not in object_form
    withdraw_form = html[
        html.index('id="withdraw-form"') : html.index("</form>", html.index('id="withdraw-form"'))
    ]
    assert "/withdraw-consent" in withdraw_form
    assert 'value="newsletter"' in withdraw_form
    assert 'value="geolocation"' not in withdraw_form


# -- who may use it, and bad input -----------------------------------------------------------------------

ACTIONS = [
    ("object", {"purpose": "policy_analytics", "verified_by": "x", "reason": "r"}),
    ("withdraw-consent", {"purpose": "newsletter", "verified_by": "x", "reason": "r"}),
]


@pytest.mark.parametrize(("action", "body"), ACTIONS)
def test_without_a_session_401_for_a_non_admin_403_and_nothing_changes(
    site: Site, boss: httpx.Client, carol: httpx.Client, action: str, body: dict[str, Any]
) -> None:
    uid = user_id(site, boss, "carol")
    before = state(site)
    assert_error(choice(site, None, uid, action, **body), 401, "authentication-required")
    # Carol recording a choice for herself through the admin API is still not an admin.
    assert_error(choice(site, carol, uid, action, **body), 403, "admin-role-required")
    assert state(site) == before


@pytest.mark.peer
@pytest.mark.parametrize(("action", "body"), ACTIONS)
def test_another_origin_or_a_form_is_refused_and_nothing_changes(
    site: Site, boss: httpx.Client, action: str, body: dict[str, Any]
) -> None:
    path = f"/api/privacy/users/{user_id(site, boss, 'carol')}/{action}"
    before = state(site)
    evil = api(site, boss, "POST", path, json=body, headers={"Origin": "http://evil.example"})
    assert_error(evil, 403, "cross-origin-refused")
    cross = api(site, boss, "POST", path, json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert_error(cross, 403, "cross-origin-refused")
    assert_error(api(site, boss, "POST", path, data=body), 415, "unsupported-media-type")
    assert state(site) == before


@pytest.mark.peer
def test_bad_input_is_a_4xx_that_changes_nothing(site: Site, boss: httpx.Client) -> None:
    uid = user_id(site, boss, "carol")
    good = {"verified_by": "x", "reason": "r"}
    cases: list[tuple[str, int, dict[str, Any], int, str]] = [
        ("object", uid, {"purpose": "marketing", **good}, 422, "unknown-purpose"),
        ("object", uid, {"purpose": "newsletter", **good}, 409, "not-objectable"),
        ("withdraw-consent", uid, {"purpose": "geolocation", **good}, 409, "not-consent-based"),
        ("withdraw-consent", uid, {"purpose": "x" * 65, **good}, 400, "bad-request"),
        ("object", uid, {"purpose": "", **good}, 400, "bad-request"),
        ("object", uid, {"purpose": "geolocation", "verified_by": "x"}, 400, "bad-request"),
        ("object", uid, {"purpose": "geolocation", "verified_by": "x", "reason": " \t"}, 400, "bad-request"),
        ("object", uid, {"purpose": "geolocation", "verified_by": "", "reason": "r"}, 400, "bad-request"),
        ("object", uid, {"purpose": "geolocation", **good, "law": "hipaa"}, 400, "unknown-law"),
        ("object", uid, {"purpose": "geolocation", **good, "extra": 1}, 400, "bad-request"),
        ("withdraw-consent", 999999, {"purpose": "newsletter", **good}, 404, "unknown-account"),
    ]
    before = state(site)
    for action, target, body, status, error in cases:
        assert_error(choice(site, boss, target, action, **body), status, error)
    assert state(site) == before
    # Refusals found after the body was read are in the trail, with why.
    refused = {e["details"].get("error") for e in audited(site, boss, "object") if e["outcome"] == "failure"}
    assert {"unknown-purpose", "not-objectable", "unknown-law"} <= refused
    refused = {
        e["details"].get("error")
        for e in audited(site, boss, "withdraw_consent")
        if e["outcome"] == "failure"
    }
    assert {"not-consent-based", "unknown-account"} <= refused


def test_the_api_is_documented(site: Site, boss: httpx.Client) -> None:
    schema = ok(api(site, boss, "GET", "/api/schema/openapi.json"))
    for action in ("object", "withdraw-consent"):
        operation = schema["paths"][f"/api/privacy/users/{{user_id}}/{action}"]["post"]
        assert "privacy" in operation["tags"]
    body = schema["components"]["schemas"]["PurposeChange"]
    assert set(body["required"]) == {"purpose", "verified_by", "reason"}
