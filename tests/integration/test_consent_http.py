"""Consent at sign-in and objections, against a real gateway (embedded default, one worker).

The config adds a consent purpose (``newsletter``, version 1) to the gateway's own two. A browser
played by httpx signs in and is sent to the consent page before the app; refusing still reaches the
app. The JSON API shows the refusal, grants it, and refuses bad input with a 4xx that changes nothing.
Bumping the notice's version and reloading (SIGHUP) asks again at the next sign-in. An objection to
``policy_analytics`` keeps the objector's next requests out of ``decision_samples`` while another
user's requests land there.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, browser, csrf, login, post_form

JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}
NOTICE = "We send a monthly mail about new features.\n\nUnsubscribe with one click."
DEFAULTS: list[dict[str, Any]] = [
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
]


def purposes(newsletter_version: int) -> list[dict[str, Any]]:
    newsletter = {"name": "newsletter", "title": "Product newsletter", "notice": NOTICE}
    return [*DEFAULTS, {**newsletter, "basis": "consent", "version": newsletter_version}]


@dataclass
class Site:
    gw: Gateway
    db_path: Path

    def user(self, prefix: str) -> str:
        name = f"{prefix}{secrets.token_hex(3)}"
        add_user(self.gw.config_path, name, PASSWORD)
        return name

    def rows(self, query: str, *args: object) -> list[sqlite3.Row]:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(query, args).fetchall()

    def sampled_paths(self, user: str) -> set[str]:
        rows = self.rows("SELECT principals, path FROM decision_samples")
        return {r["path"] for r in rows if f"user:{user}" in r["principals"].split()}

    def consent_rows(self) -> int:
        return int(self.rows("SELECT count(*) AS n FROM consent_records")[0]["n"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("consent")
    with run_echo() as echo:
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "127.0.0.1", "path": "/", "upstreams": [echo.url], "mfa": "none"}
        ]
        config = gateway_config(
            tmp,
            free_port(),
            routes,
            session={"insecure_cookies": True},
            # One worker: its decision sample is flushed in the order the requests were made.
            server={"workers": 1},
            privacy={"purposes": purposes(1)},
        )
        with run_gateway(tmp, config) as gw:
            yield Site(gw, tmp / "data" / "gateway.db")


def api(client: httpx.Client, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    if body is None:
        return client.get(path, headers=JSON)
    return client.post(path, json=body, headers={**JSON, "x-csrftoken": csrf(client)})


def sign_in_to_consent(site: Site, client: httpx.Client, user: str, rd: str) -> str:
    """Sign in with ``rd``; return the consent page the browser is sent to (asserting it is one)."""
    resp = login(client, user, rd=rd)
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    parts = urlsplit(location)
    assert parts.path == "/.gateway/consent", location
    assert parse_qs(parts.query)["rd"] == [rd]
    return location


def test_asked_at_sign_in_refusing_still_reaches_the_app(site: Site) -> None:
    user = site.user("ann")
    app = f"{site.gw.url}/hello?x=1"
    with browser(site.gw) as client:
        location = sign_in_to_consent(site, client, user, app)
        page = client.get(location, headers=HTML)
        assert page.status_code == 200
        assert "Product newsletter" in page.text
        assert "We send a monthly mail about new features." in page.text
        assert "Unsubscribe with one click." in page.text
        assert "Notice version 1" in page.text
        assert 'name="answer-newsletter" value="granted"' in page.text
        assert 'name="answer-newsletter" value="refused"' in page.text
        # Legitimate-interest purposes are not asked: they are objected to, not consented to.
        assert "Access pattern sample" not in page.text
        # No answer is not an answer: the page again, nothing recorded.
        again = post_form(client, "/.gateway/consent", {"rd": app})
        assert again.status_code == 400
        assert "Choose" in again.text
        assert site.consent_rows() == 0
        done = post_form(client, "/.gateway/consent", {"rd": app, "answer-newsletter": "refused"})
        assert done.status_code == 303
        assert done.headers["location"] == app
        reached = client.get(done.headers["location"], headers=JSON)
        assert reached.status_code == 200
        assert reached.json()["target"] == "/hello?x=1"
        assert ["x-gateway-user", user] in reached.json()["headers"]
        state = api(client, "/.gateway/api/consents").json()
    assert state["pending"] == []
    [answer] = state["answers"]
    assert (answer["purpose"], answer["decision"], answer["version"], answer["current"]) == (
        "newsletter",
        "refused",
        1,
        True,
    )
    assert answer["method"] == "sign-in prompt"
    assert state["optout"] == ["newsletter"]
    [event] = site.rows(
        "SELECT * FROM audit_events WHERE kind = 'privacy.consent.refused' AND subject = ?", user
    )
    assert event["actor"] == f"user:{user}"
    assert "monthly" not in event["details"]
    # Answered: the next sign-in goes straight on.
    with browser(site.gw) as client:
        resp = login(client, user, rd=app)
        assert resp.status_code == 302
        assert resp.headers["location"] == app


def _assertion_claims(echoed: dict[str, Any]) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in echoed["headers"]}
    payload = headers["x-gateway-assertion"].split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_the_api_grants_withdraws_and_refuses_bad_input(site: Site) -> None:
    user = site.user("ben")
    with browser(site.gw) as client:
        sign_in_to_consent(site, client, user, f"{site.gw.url}/")
        before = api(client, "/.gateway/api/consents").json()
        assert [p["purpose"] for p in before["pending"]] == ["newsletter"]
        assert "newsletter" in before["optout"]
        granted = api(client, "/.gateway/api/consents", {"purpose": "newsletter", "decision": "granted"})
        assert granted.status_code == 200, granted.text
        assert granted.json()["optout"] == []
        assert granted.json()["pending"] == []
        rows = site.consent_rows()
        state = api(client, "/.gateway/api/consents").json()
        bad: list[tuple[str, dict[str, Any], int, str]] = [
            ("/.gateway/api/consents", {"purpose": "nope", "decision": "granted"}, 422, "unknown-purpose"),
            ("/.gateway/api/consents", {"purpose": "newsletter", "decision": "maybe"}, 400, ""),
            (
                "/.gateway/api/consents",
                {"purpose": "geolocation", "decision": "granted"},
                409,
                "not-consent-based",
            ),
            ("/.gateway/api/objections", {"purpose": "newsletter", "object": True}, 409, "not-objectable"),
            ("/.gateway/api/objections", {"purpose": "nope", "object": True}, 422, "unknown-purpose"),
            ("/.gateway/api/objections", {"purpose": "geolocation"}, 400, ""),
        ]
        for path, body, status, reason in bad:
            resp = api(client, path, body)
            assert resp.status_code == status, (body, resp.text)
            if reason:
                assert reason in resp.text, resp.text
        # Without the CSRF header nothing is recorded either.
        forged = client.post(
            "/.gateway/api/consents", json={"purpose": "newsletter", "decision": "withdrawn"}, headers=JSON
        )
        assert forged.status_code == 403
        assert site.consent_rows() == rows
        assert api(client, "/.gateway/api/consents").json() == state
        # Refused bad input registered nothing; the withdrawal is a right exercised: in the register.
        assert site.rows("SELECT * FROM privacy_requests WHERE subject = ?", user) == []
        granted_view = client.get("/", headers=JSON).json()
        withdrawn = api(client, "/.gateway/api/consents", {"purpose": "newsletter", "decision": "withdrawn"})
        assert withdrawn.json()["optout"] == ["newsletter"]
        # The app learns it with the next request, in the assertion it verifies (an attack run saw
        # nothing change in what the app received).
        assert "optout" not in _assertion_claims(granted_view)
        assert _assertion_claims(client.get("/", headers=JSON).json())["optout"] == ["newsletter"]
        [request] = site.rows("SELECT * FROM privacy_requests WHERE subject = ?", user)
        assert (request["kind"], request["status"], request["channel"]) == (
            "consent_withdrawal",
            "completed",
            "portal",
        )
        assert "newsletter" in request["details"]
    with httpx.Client(base_url=site.gw.url) as anonymous:
        assert anonymous.get("/.gateway/api/consents", headers=JSON).status_code == 401


def test_a_new_version_of_the_notice_is_asked_at_the_next_sign_in(site: Site) -> None:
    user = site.user("cat")
    app = f"{site.gw.url}/"
    with browser(site.gw) as client:
        sign_in_to_consent(site, client, user, app)
        done = post_form(client, "/.gateway/consent", {"rd": app, "answer-newsletter": "granted"})
        assert done.headers["location"] == app
    config = {**site.gw.config, "privacy": {"purposes": purposes(2)}}
    site.gw.rewrite_config(config)
    site.gw.sighup()
    try:
        with browser(site.gw) as client:
            # The API reads the configuration in force: pending again once the reload applied.
            login(client, user, rd=app)
            wait_until(
                lambda: (
                    [p["version"] for p in api(client, "/.gateway/api/consents").json()["pending"]] == [2]
                ),
                what="version 2 of the notice in force",
            )
        with browser(site.gw) as client:
            location = sign_in_to_consent(site, client, user, app)
            page = client.get(location, headers=HTML)
            assert "Notice version 2" in page.text
            done = post_form(client, "/.gateway/consent", {"rd": app, "answer-newsletter": "granted"})
            assert done.headers["location"] == app
            answers = api(client, "/.gateway/api/consents").json()["answers"]
            assert [(a["version"], a["decision"]) for a in answers] == [(2, "granted")]
    finally:
        site.gw.rewrite_config({**site.gw.config, "privacy": {"purposes": purposes(1)}})
        site.gw.sighup()
    versions = [
        r["version"]
        for r in site.rows(
            "SELECT version FROM consent_records JOIN users ON users.id = consent_records.user_id "
            "WHERE users.username = ? ORDER BY consent_records.id",
            user,
        )
    ]
    assert versions == [1, 2]


def test_an_objection_keeps_the_next_requests_out_of_the_decision_sample(site: Site) -> None:
    objector, other = site.user("dan"), site.user("eve")
    token = secrets.token_hex(4)
    with browser(site.gw) as mine, browser(site.gw) as theirs:
        # Unanswered consent notices do not hold the app back: both go straight to it.
        sign_in_to_consent(site, mine, objector, f"{site.gw.url}/")
        sign_in_to_consent(site, theirs, other, f"{site.gw.url}/")
        assert mine.get(f"/before-{token}", headers=JSON).status_code == 200
        wait_until(
            lambda: f"/before-{token}" in site.sampled_paths(objector),
            timeout=40,
            what="the objector's request before objecting in the sample",
        )
        objected = api(mine, "/.gateway/api/objections", {"purpose": "policy_analytics", "object": True})
        assert objected.status_code == 200, objected.text
        assert objected.json()["objections"] == ["policy_analytics"]
        assert "policy_analytics" in objected.json()["optout"]
        for _ in range(3):
            assert mine.get(f"/after-{token}", headers=JSON).status_code == 200
        # Made after the objector's: in the sample, it proves the objector's would be there by now.
        assert theirs.get(f"/other-{token}", headers=JSON).status_code == 200
        wait_until(
            lambda: f"/other-{token}" in site.sampled_paths(other),
            timeout=40,
            what="the other user's request in the sample",
        )
        assert f"/after-{token}" not in site.sampled_paths(objector)
        [event] = site.rows(
            "SELECT * FROM audit_events WHERE kind = 'privacy.objection.added' AND subject = ?", objector
        )
        assert re.search(r'"purpose": ?"policy_analytics"', event["details"])
        [request] = site.rows("SELECT * FROM privacy_requests WHERE subject = ?", objector)
        assert (request["kind"], request["status"]) == ("objection", "completed")


def test_the_api_is_in_the_reference(site: Site) -> None:
    schema = httpx.get(f"{site.gw.url}/.gateway/api/schema/openapi.json", timeout=30).json()
    paths = schema["paths"]
    assert set(paths["/.gateway/api/consents"]) >= {"get", "post"}
    assert "post" in paths["/.gateway/api/objections"]
    assert "withdrawal" in paths["/.gateway/api/consents"]["post"]["description"]
    assert "not-objectable" in paths["/.gateway/api/objections"]["post"]["description"]
    decision = schema["components"]["schemas"]["ConsentChange"]["properties"]["decision"]
    assert set(decision["enum"]) == {"granted", "refused", "withdrawn"}
    reference = httpx.get(f"{site.gw.url}/.gateway/api/schema", headers=HTML, timeout=30)
    assert "/.gateway/api/objections" in reference.text
    assert "as easy as giving" in reference.text
