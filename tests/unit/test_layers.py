"""The floors of docs/architecture.md hold: the import-linter contract in pyproject.toml is kept.

Run in the suite (not only in `make lint`) so CI fails on a new upward import; the contract's own
ignore list names the cycles still to be taken apart.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_layering_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Every contract in pyproject.toml was checked and kept (the floors, the CLI's inner layers, …).
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"{len(contracts)} kept, 0 broken" in done.stdout, done.stdout
