"""Address blocks hold wherever they are promised: with threat detection off, and on the admin listener
for the block-list files. Both were gaps an attack run found: ``gateway incident block-ip`` reported a
block the data plane never applied while ``threat.enabled`` was false, and the console answered an
address a feed listed."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.integration.harness import (
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)


def test_a_block_from_the_cli_applies_with_threat_detection_off(tmp_path: Path) -> None:
    with run_echo() as echo:
        config = gateway_config(
            tmp_path,
            free_port(),
            [echo_route(echo)],
            threat={"enabled": False},
            trusted_proxies=["127.0.0.1/32"],
        )
        with run_gateway(tmp_path, config) as gw:

            def status(ip: str) -> int:
                return httpx.get(f"{gw.url}/page", headers={"X-Forwarded-For": ip}, timeout=10).status_code

            assert status("203.0.113.7") == 200
            done = run_cli(
                "incident", "block-ip", "203.0.113.7", "--for", "10m", "--config", str(gw.config_path)
            )
            assert done.returncode == 0, done.stdout + done.stderr
            wait_until(lambda: status("203.0.113.7") == 403, timeout=10, what="the block applied")
            assert status("203.0.113.8") == 200  # the control: only that address


def test_the_admin_listener_refuses_an_address_a_block_list_file_holds(tmp_path: Path) -> None:
    feed = tmp_path / "feed.txt"
    feed.write_text("# a threat feed\n192.0.2.128/25\n")
    admin_port = free_port()
    with run_echo() as echo:
        config = gateway_config(
            tmp_path,
            free_port(),
            [echo_route(echo)],
            threat={"block_lists": [str(feed)]},
            trusted_proxies=["127.0.0.1/32"],
            admin={"listen": f"127.0.0.1:{admin_port}"},
        )
        with run_gateway(tmp_path, config):

            def admin(ip: str) -> httpx.Response:
                return httpx.get(
                    f"http://127.0.0.1:{admin_port}/api/incidents",
                    headers={"X-Forwarded-For": ip, "Accept": "application/json"},
                    timeout=10,
                )

            def up() -> bool:
                try:
                    return admin("198.51.100.1").status_code == 401
                except httpx.ConnectError:
                    return False  # the admin listener is still starting

            wait_until(up, timeout=30, what="the admin listener")
            refused = admin("192.0.2.200")
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"] == "ip-blocked"
