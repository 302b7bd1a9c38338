"""Settings read once at start are refused by a reload (``gateway.root.reload``): a re-attack run had a
reload to a missing keyring accepted, and the next worker crash took the whole gateway down; a new
public_url reached half the workers' issuer; a renamed session cookie stopped being kept from apps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from gateway.identity.cookies import own_cookie_names
from gateway.root.reload import _restart_only_change
from gateway.settings.loader import load_settings
from gateway.settings.schema import SessionSettings, Settings
from tests.unit.web.worker import worker_config


def _settings(tmp_path: Path, name: str, **overrides: Any) -> Settings:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(worker_config(tmp_path, **overrides)))
    return load_settings(path)


@pytest.mark.parametrize(
    ("key", "overrides"),
    [
        ("keyring", {"keyring": "/nonexistent/keyring.json"}),
        ("public_url", {"public_url": "http://login.test:8080"}),
        ("backup.ledger", {"backup": {"ledger": "/elsewhere/ledger.jsonl"}}),
        ("session.cookie_name", {"session": {"insecure_cookies": True, "cookie_name": "gw2"}}),
    ],
)
def test_a_setting_read_once_at_start_is_refused_by_a_reload(
    tmp_path: Path, key: str, overrides: dict[str, Any]
) -> None:
    old = _settings(tmp_path, "old")
    new = _settings(tmp_path, "new", **overrides)
    refused = _restart_only_change(old, new)
    assert refused is not None
    assert f"'{key}'" in refused
    assert _restart_only_change(old, _settings(tmp_path, "same")) is None


def test_the_default_session_cookie_is_kept_from_apps_whatever_the_name_now() -> None:
    """Browsers of a deployment that renamed its cookie still send the old one: a live session id."""
    settings = msgspec.structs.replace(SessionSettings(), cookie_name="__Host-gw2")
    assert {"__Host-gw2", "__Host-gateway_session", "gateway_session"} <= own_cookie_names(settings)
