"""A session store outage never opens anything and never signs anyone out (invariant 2)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.integration.harness import echo_route, free_port, gateway_config, run_echo, run_gateway


def test_unreachable_session_store_is_a_503_that_keeps_the_cookie(tmp_path: Path) -> None:
    with run_echo() as echo:
        port = free_port()
        route = echo_route(echo, public_paths=[], mfa="required")
        config = gateway_config(
            tmp_path,
            port,
            [route],
            state={"redis_url": "redis://127.0.0.1:1/0"},
            session={"insecure_cookies": True},
        )
        with run_gateway(tmp_path, config) as gw:
            cookies = {"gateway_session": "a-session-id-the-store-cannot-check"}
            api = httpx.get(f"{gw.url}/private", cookies=cookies, timeout=30)
            page = httpx.get(
                f"{gw.url}/private", cookies=cookies, headers={"accept": "text/html"}, timeout=30
            )
    # Not access (the upstream would have answered 200 with its JSON), not a sign-in redirect.
    assert api.status_code == 503, api.text
    assert json.loads(api.text)["error"] == "state-unavailable"
    assert page.status_code == 503
    assert "text/html" in page.headers["content-type"]
    # The cookie is kept: no Set-Cookie clearing it, so the user is still signed in once Redis is back.
    assert "set-cookie" not in api.headers
    assert "set-cookie" not in page.headers
