"""The drill node's configuration: a copy of the live file that can never reach the live deployment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.backup.drill import Check, DrillReport, node_config
from gateway.backup.manifest import BackupError
from gateway.settings.loader import load_settings

LIVE = """\
public_url: https://gw.example.test
listen: 0.0.0.0:443
data_dir: /srv/gateway
keyring: /etc/gateway/keyring.json
storage: {url: "sqlite+aiosqlite:////srv/gateway/other.db"}
state: {redis_url: "redis://10.0.0.5:6379/0"}
tls: {certificate: /etc/gateway/cert.pem, key: /etc/gateway/key.pem}
admin: {listen: "127.0.0.1:9443"}
session: {idle_timeout: 2h}
logging:
  sinks: [{type: webhook, url: "https://siem.example.test/hook"}]
backup: {targets: [/mnt/nas/gw], keep_daily: 3, ledger: /var/lib/gateway/account-ledger.jsonl}
routes:
  - {name: app, host: app.example.test, upstreams: ["http://10.0.0.9:8000"]}
"""


def test_the_copy_replaces_everything_that_reaches_live_state(tmp_path: Path) -> None:
    live = tmp_path / "gateway.yaml"
    live.write_text(LIVE)
    data = tmp_path / "drill" / "data"
    keyring = tmp_path / "keyring.json"

    doc = node_config(live, data, 41234, keyring)

    assert doc["data_dir"] == str(data)
    assert doc["listen"] == "127.0.0.1:41234"
    assert doc["public_url"] == "http://127.0.0.1:41234"
    assert doc["keyring"] == str(keyring)
    assert "tls" not in doc
    assert "url" not in doc["storage"]
    assert "redis_url" not in doc["state"]
    assert doc["admin"]["listen"] is None
    assert doc["session"] == {"idle_timeout": "2h", "insecure_cookies": True}
    assert doc["logging"]["sinks"] == [{"type": "stdout"}]
    # Its own account ledger: what the drill changes is never made again on the live deployment.
    assert doc["backup"] == {
        "targets": [],
        "keep_daily": 3,
        "directory": str(data / "backups"),
        "ledger": str(data / "account-ledger.jsonl"),
    }
    # Everything else is the live file's, and the copy is a valid configuration.
    assert doc["routes"] == yaml.safe_load(LIVE)["routes"]
    copy = tmp_path / "drill.yaml"
    copy.write_text(yaml.safe_dump(doc))
    settings = load_settings(copy)
    assert settings.data_dir == str(data)
    assert settings.state.redis_url is None
    assert settings.storage.url is None


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    live = tmp_path / "gateway.yaml"
    live.write_text("- just a list\n")
    with pytest.raises(BackupError):
        node_config(live, tmp_path / "data", 1, tmp_path / "k")


def _verdicts(*checks: Check) -> bool:
    return DrillReport(backup_id="b", backup_path="/b", checks=list(checks)).passed


def test_a_report_passes_only_when_every_step_ran_and_passed() -> None:
    assert not _verdicts()
    first_four = [Check(name, True, "ok") for name in ("verify", "restore", "start", "sign_in")]
    assert not _verdicts(*first_four)  # the audit chain was never checked
    assert _verdicts(*first_four, Check("audit_chain", True, "ok"))
    report = DrillReport(
        backup_id="b", backup_path="/b", checks=[*first_four, Check("audit_chain", True, "")]
    )
    assert report.as_dict()["outcome"] == "success"
    report.checks[2] = Check("start", False, "not ready")
    doc = report.as_dict()
    assert (doc["outcome"], doc["checks_failed"], doc["problem"]) == ("failure", ["start"], "not ready")
