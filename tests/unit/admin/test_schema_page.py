"""The admin listener's API reference renders under its own strict CSP (it was blank with Redoc from a CDN)."""

from __future__ import annotations

import re

from tests.unit.admin.test_app import Admin, admin  # noqa: F401 - the fixture is found by name


async def test_the_admin_api_reference_is_server_rendered(admin: Admin) -> None:  # noqa: F811
    resp = await admin.call("GET", "/api/schema", headers={"Accept": "text/html"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    # The listener allows nothing to load (default-src 'none'): the page is complete HTML on its own.
    assert resp.headers["content-security-policy"].startswith("default-src 'none'")
    assert "/api/policy/explain" in resp.text
    assert re.findall(r'(?:href|src)="(?:https?:)?//', resp.text) == []
    yaml_schema = await admin.call("GET", "/api/schema/openapi.yaml")
    assert yaml_schema.status_code == 200
    assert "/api/policy/explain" in yaml_schema.text


async def test_the_api_reference_needs_the_admin_session(admin: Admin) -> None:  # noqa: F811
    assert (await admin.client.get("/api/schema")).status_code == 401
