"""The Settings page's masking (admin.console.masking): no secret of a real config survives, by origin,
by name or by shape, and what is not secret stays readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from admin.console.masking import MASK, mask_settings
from gateway.settings.loader import load_settings
from gateway.settings.schema import LoggingSettings, LogSink, Settings, StorageSettings, ThreatSettings

DB_PASSWORD = "pg-Pa55word-7f3k"
CLIENT_SECRET = "oidc-client-secret-Zq81"
SINK_TOKEN = "sink-token-plain-in-file-x9"
HEADER_KEY = "upstream-api-key-L0ng-R4nd0m-vAlue"
WEBHOOK_TOKEN = "XyZ123abcDEF456ghiJKL789"
REDIS_PASSWORD = "r3dis-secret"
SHORT = "abc"

CONFIG = f"""\
public_url: https://gw.example.com
data_dir: ./data
storage:
  url: postgresql+asyncpg://gateway:${{env:PG_PASSWORD}}@db.internal:5432/gateway
state:
  redis_url: redis://:{REDIS_PASSWORD}@redis.internal:6379/0
identity_providers:
  - name: corp
    issuer: https://login.example.com
    client_id: gateway
    client_secret: ${{file:secrets/client_secret}}
logging:
  sinks:
    - type: stdout
    - type: http
      url: https://logs.example.com/ingest
      token: {SINK_TOKEN}
      headers:
        X-Custom: ${{env:SHORT_SECRET}}
threat:
  webhook_url: https://hooks.example.com/services/T000/B000/{WEBHOOK_TOKEN}
routes:
  - name: app
    host: app.example.com
    upstreams: [http://10.0.0.5:8080]
    request_headers:
      X-Api-Key: {HEADER_KEY}
      X-Team: platform
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "client_secret").write_text(CLIENT_SECRET + "\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    return path


ENV = {"PG_PASSWORD": DB_PASSWORD, "SHORT_SECRET": SHORT}


def test_no_secret_of_the_config_survives(config_file: Path) -> None:
    settings = load_settings(config_file, environ=ENV)
    masked = mask_settings(settings, source=str(config_file), environ=ENV)
    text = json.dumps(masked.document)
    for secret in (DB_PASSWORD, CLIENT_SECRET, SINK_TOKEN, HEADER_KEY, WEBHOOK_TOKEN, REDIS_PASSWORD):
        assert secret not in text, secret
    doc = masked.document
    # The parts around a secret stay readable.
    assert doc["storage"]["url"] == f"postgresql+asyncpg://gateway:{MASK}@db.internal:5432/gateway"
    assert doc["state"]["redis_url"] == f"redis://:{MASK}@redis.internal:6379/0"
    assert doc["threat"]["webhook_url"] == f"https://hooks.example.com/{MASK}"
    sink = doc["logging"]["sinks"][1]
    assert sink["url"] == "https://logs.example.com/ingest"
    assert sink["token"] == MASK
    # A short secret from a reference is masked where it is, whatever its key is called.
    assert sink["headers"] == {"X-Custom": MASK}
    route = doc["routes"][0]
    assert route["request_headers"] == {"X-Api-Key": MASK, "X-Team": "platform"}
    assert doc["identity_providers"][0]["client_secret"] == MASK
    # Not secrets: names that only sound like one, hosts, paths, defaults.
    assert route["upstreams"] == ["http://10.0.0.5:8080"]
    assert doc["session"]["cookie_name"] == "__Host-gateway_session"
    assert doc["identity_providers"][0]["client_id"] == "gateway"
    assert doc["data_dir"] == str(config_file.parent / "data")
    assert doc["public_url"] == "https://gw.example.com"
    assert set(masked.masked) >= {
        "storage.url", "state.redis_url", "threat.webhook_url", "logging.sinks[1].token",
        "logging.sinks[1].headers.X-Custom", "routes[0].request_headers.X-Api-Key",
        "identity_providers[0].client_secret",
    }  # fmt: skip
    assert masked.notes == []


def test_an_unreadable_config_file_is_said_and_names_and_shapes_still_mask(config_file: Path) -> None:
    settings = load_settings(config_file, environ=ENV)
    config_file.unlink()
    masked = mask_settings(settings, source=str(config_file), environ=ENV)
    assert masked.notes
    assert "cannot be read again" in masked.notes[0]
    text = json.dumps(masked.document)
    for secret in (CLIENT_SECRET, SINK_TOKEN, HEADER_KEY, WEBHOOK_TOKEN, REDIS_PASSWORD, DB_PASSWORD):
        assert secret not in text, secret


def test_urls_keep_where_they_go_and_lose_their_credentials() -> None:
    # Built directly: the loader's checks refuse some of these shapes, the masking must not rely on it.
    settings = Settings(
        public_url="https://gw.example.com",
        storage=StorageSettings(url="postgresql://svc@db/gw?password=hunter2-secret&sslmode=require"),
        logging=LoggingSettings(
            sinks=(LogSink(type="http", url=f"https://{WEBHOOK_TOKEN}@logs.example.com/in?index=gw"),)
        ),
        threat=ThreatSettings(webhook_url="https://hooks.example.com/"),
    )
    doc = mask_settings(settings, source="/nonexistent/gateway.yaml", environ={}).document
    # A user name alone is usually a token (https://<token>@host): masked too.
    assert doc["storage"]["url"] == f"postgresql://{MASK}@db/gw?password={MASK}&sslmode=require"
    assert doc["logging"]["sinks"][0]["url"] == f"https://{MASK}@logs.example.com/in?index=gw"
    # A webhook URL without a path has nothing to hide.
    assert doc["threat"]["webhook_url"] == "https://hooks.example.com/"
