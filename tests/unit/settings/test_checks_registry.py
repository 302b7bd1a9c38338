"""The check registry: every subsystem's check runs, exactly once, so a new check cannot be forgotten."""

from __future__ import annotations

import importlib
import pkgutil

from gateway.settings import checks
from gateway.settings.checks import CHECKS, Check


def _published_checks() -> list[Check]:
    found: list[Check] = []
    for info in pkgutil.iter_modules(checks.__path__):
        module = importlib.import_module(f"{checks.__name__}.{info.name}")
        found.extend(getattr(module, name) for name in module.__all__ if name.startswith("check_"))
    return found


def test_every_published_check_is_registered_once() -> None:
    published = _published_checks()
    assert published, "no check modules found"
    missing = [f"{check.__module__}.{check.__qualname__}" for check in published if check not in CHECKS]
    assert not missing, f"add these to CHECKS in gateway/settings/checks/__init__.py: {missing}"
    assert len(CHECKS) == len(set(CHECKS)), "a check is registered twice"
    assert set(CHECKS) == set(published), "CHECKS names a function its module does not publish"
