"""Start an echo app and a gateway set up for the locust scenarios, then run locust against it.

::

    python -m loadtests.scenarios [--scenarios SignedInBrowsing,Anonymous] [--users 20] [--run-time 30s]
    python -m loadtests.scenarios --all --run-time 60s         # every scenario at once, policy churn too

The gateway gets: one route on ``127.0.0.1`` (``mfa: none``, nothing public), ``trusted_proxies:
[127.0.0.1/32]`` for forward-auth, a policy allowing signed-in users everywhere except ``/admin/*`` and
``/private/*``, insecure (plain-HTTP) cookies and no admin listener. Accounts are created with
``gateway user add … --password-stdin``; TOTP is enrolled by the scenario itself through the account
pages. locust's CSV statistics go to ``loadtests/results/locust_*.csv``; the exit code is locust's
(non-zero when any request failed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from loadtests import measure as m

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
ALL = (
    "SignedInBrowsing",
    "MixedAllowedDenied",
    "Anonymous",
    "PasswordTotpSignIn",
    "ForwardAuth",
    "PolicyChurn",
)
PASSWORD = "locust password for the scenarios"  # a throwaway account in a temp dir
POLICY = """\
p, authenticated, *, /*, *, allow
p, authenticated, *, /admin/*, *, deny
p, authenticated, *, /private/*, *, deny
"""
# The churn alternates with this one: a new version, same answers for the scenarios' paths.
POLICY_B = POLICY + "p, auditors, *, /reports/*, GET, allow\n"


def config(tmp: Path, port: int, echo_port: int) -> dict[str, object]:
    (tmp / "policy-a.csv").write_text(POLICY)
    (tmp / "policy-b.csv").write_text(POLICY_B)
    return {
        "public_url": f"http://127.0.0.1:{port}",
        "listen": f"127.0.0.1:{port}",
        "data_dir": str(tmp / "data"),
        "admin": {"listen": None},
        "trusted_proxies": ["127.0.0.1/32"],
        "policy": {"file": str(tmp / "policy-a.csv"), "poll_interval": "1s"},
        "session": {"insecure_cookies": True},
        "routes": [
            {
                "name": "app",
                "host": "127.0.0.1",
                "path": "/",
                "upstreams": [f"http://127.0.0.1:{echo_port}"],
                "mfa": "none",
            }
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.scenarios", description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="SignedInBrowsing", help=f"comma-separated: {', '.join(ALL)}")
    parser.add_argument("--all", action="store_true", help="every scenario at once")
    parser.add_argument("--users", type=int, default=10, help="locust users (spawned at once)")
    parser.add_argument("--totp-users", type=int, default=4, help="accounts for PasswordTotpSignIn")
    parser.add_argument("--run-time", default="30s")
    args = parser.parse_args(argv)
    scenarios = list(ALL) if args.all else [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := set(scenarios) - set(ALL):
        parser.error(f"unknown scenarios {sorted(unknown)}")

    tmp = Path(tempfile.mkdtemp(prefix="gw-locust-"))
    children = m.Children()
    try:
        echo_port, port = m.free_port(), m.free_port()
        echo = children.spawn("echo", m.granian_argv("gateway.echo:app", echo_port), tmp / "echo.log")
        m.wait_ready(echo, echo_port, 20)
        (tmp / "data").mkdir()
        conf = tmp / "gateway.yaml"
        conf.write_text(yaml.safe_dump(config(tmp, port, echo_port), sort_keys=False))
        gw = children.spawn(
            "gateway", [sys.executable, "-m", "gateway", "serve", "--config", str(conf)], tmp / "gateway.log"
        )
        m.wait_ready(gw, port, 40)
        totp_users = [f"totp{i}" for i in range(args.totp_users)] if "PasswordTotpSignIn" in scenarios else []
        for name in ["load", *totp_users]:
            m.add_user(conf, name, PASSWORD)
        RESULTS.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LOADTEST_CONFIG": str(conf),
            "LOADTEST_PASSWORD": PASSWORD,
            "LOADTEST_USER": "load",
            "LOADTEST_TOTP_USERS": ",".join(totp_users),
            "LOADTEST_POLICIES": f"{tmp / 'policy-b.csv'},{tmp / 'policy-a.csv'}",
        }
        argv_locust = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "--host",
            f"http://127.0.0.1:{port}",
            "-u",
            str(max(args.users, len(scenarios))),
            "-r",
            str(max(args.users, len(scenarios))),
            "--run-time",
            args.run_time,
            "--only-summary",
            "--csv",
            str(RESULTS / "locust"),
            "--stop-timeout",
            "5",
            *scenarios,
        ]
        print(
            f"gateway on http://127.0.0.1:{port} (logs in {tmp}); running locust: {' '.join(scenarios)}",
            file=sys.stderr,
        )
        return subprocess.run(argv_locust, env=env, cwd=ROOT, check=False).returncode
    except m.MeasureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
