"""The access log's ECS ``url.domain`` (no port) and ``url.port`` from the Host the client sent."""

from __future__ import annotations

import pytest

from gateway.observe.access import AccessEntry
from gateway.observe.record import RequestKind, RequestRecord


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("app.example.com", {"domain": "app.example.com"}),
        ("app.example.com:8443", {"domain": "app.example.com", "port": 8443}),
        ("127.0.0.1:8080", {"domain": "127.0.0.1", "port": 8080}),
        ("[2001:db8::1]:8443", {"domain": "2001:db8::1", "port": 8443}),
        ("[2001:db8::1]", {"domain": "2001:db8::1"}),
        ("app.example.com:99999", {"domain": "app.example.com"}),  # not a port: left out
        ("app.example.com:x", {"domain": "app.example.com"}),
        ("", {}),
    ],
)
def test_domain_and_port(host: str, url: dict[str, object]) -> None:
    record = RequestRecord(
        at=0.0, kind=RequestKind.HTTP, route="app", path="/", host=host, status=200, bytes_out=5
    )
    doc = AccessEntry(record).document()
    assert {k: v for k, v in doc["url"].items() if k != "path"} == url
    assert doc["http"]["response"] == {"status_code": 200, "body": {"bytes": 5}}
