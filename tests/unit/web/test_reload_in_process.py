"""A reload in a started worker hands the accepted configuration to what keeps part of it outside the
live snapshot: the session store's lifetimes and the process-wide NAT64 prefixes (gateway.root.reload's
appliers). Both are read on paths that do not look at the snapshot, so a reload that forgot them would
say "success" and change nothing."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.root.start import Role, start
from gateway.settings.loader import load_settings
from gateway.threat.addresses import counted_as, use_nat64_prefixes
from tests.unit.web.worker import worker_config

TRANSLATED = "2001:db8:64::c000:207"  # 192.0.2.7 behind a translator at 2001:db8:64::/96


async def test_a_reload_applies_the_session_lifetimes_and_the_nat64_prefixes(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(worker_config(tmp_path)))
    running = await start(path, load_settings(path), role=Role.WORKER)
    try:
        sessions = running.services.identity.sessions
        assert (sessions._idle, sessions._lifetime) == (1800.0, 43200.0)
        assert counted_as(TRANSLATED) == "2001:db8:64::/64"
        path.write_text(
            yaml.safe_dump(
                worker_config(
                    tmp_path,
                    session={"insecure_cookies": True, "idle_timeout": "5m", "lifetime": "1h"},
                    threat={"nat64_prefixes": ["2001:db8:64::/96"]},
                )
            )
        )
        assert await running.reload()
        assert (sessions._idle, sessions._lifetime) == (300.0, 3600.0)
        assert counted_as(TRANSLATED) == "192.0.2.7"
    finally:
        await running.close()
        use_nat64_prefixes(())  # process-wide: the next test starts without them
