"""What users install: the built wheel, installed from the lock file as the Dockerfile does, must run.

The rest of the suite imports the checkout, so it cannot see a wheel that lacks a package: that is how
an image that failed at start-up (``No module named 'admin'``) once shipped. Here the Dockerfile's
build stage is replayed without Docker (no engine runs on these machines): the same files copied into
an empty folder, the same two ``uv sync`` commands into a fresh virtualenv, then ``gateway serve`` from
that virtualenv, outside the checkout, with the admin listener on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import ROOT, free_port, stop, wait_for_port, wait_until

# The Dockerfile's build stage, command for command; the test fails if the Dockerfile says otherwise.
SYNC_DEPENDENCIES = "uv sync --frozen --no-dev --no-install-project"
SYNC_PROJECT = "uv sync --frozen --no-dev --no-editable"
COPIED = ("pyproject.toml", "uv.lock", "README.md", "LICENSE", "gateway", "admin")


def _uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(found).exists(), "uv is installed by `make install` (into .tools/ when missing)"
    return found


def test_the_dockerfile_build_stage_is_what_this_test_replays() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"RUN {SYNC_DEPENDENCIES}" in dockerfile
    assert f"RUN {SYNC_PROJECT}" in dockerfile
    copied = {
        word.rstrip("/")
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for word in line.split()[1:-1]
    }
    assert copied == set(COPIED)


@pytest.mark.slow
def test_the_installed_wheel_serves_with_its_admin_listener(tmp_path: Path) -> None:
    src, venv = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    for name in COPIED:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, src / name)
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_LINK_MODE": "copy",
        "UV_PYTHON": sys.executable,
    }
    for command in (SYNC_DEPENDENCIES, SYNC_PROJECT):
        done = subprocess.run(
            [_uv(), *command.split()[1:]], cwd=src, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
    # Installed, not linked back to a source folder: remove the copy to be sure.
    shutil.rmtree(src)
    site = next(venv.glob("lib/python*/site-packages"))
    assert (site / "admin" / "app.py").exists()
    assert (site / "gateway" / "web" / "templates" / "login.html").exists()
    # The pages' scripts, the CSRF reader base.html loads before them included.
    for script in ("csrf.js", "webauthn.js", "choices.js"):
        assert (site / "gateway" / "web" / "static" / script).exists(), script
    assert not (site / "tests").exists()

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port, admin_port = free_port(), free_port()
    config = {
        "listen": f"127.0.0.1:{port}",
        "public_url": f"http://127.0.0.1:{port}",
        "data_dir": str(run_dir / "data"),
        "session": {"insecure_cookies": True},
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "routes": [{"name": "app", "host": "127.0.0.1", "upstreams": ["http://127.0.0.1:9"]}],
    }
    (run_dir / "gateway.yaml").write_text(yaml.safe_dump(config))
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    with (run_dir / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "gateway"), "serve", "--config", "gateway.yaml"],
            cwd=run_dir,
            env=clean_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, proc=proc, timeout=60)

        def answers(url: str) -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until(lambda: answers(f"http://127.0.0.1:{port}/.gateway/health"), timeout=60, what="health")
        wait_until(lambda: answers(f"http://127.0.0.1:{admin_port}/health"), timeout=60, what="admin")
        login = urllib.request.urlopen(f"http://127.0.0.1:{port}/.gateway/login", timeout=5)
        assert b"<form" in login.read()  # templates and static files came with the wheel
    finally:
        stop(proc)
        log_text = (run_dir / "gateway.log").read_text(errors="replace")
    assert "ModuleNotFoundError" not in log_text, log_text
