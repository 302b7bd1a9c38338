"""Config file → frozen, validated :class:`~gateway.settings.schema.Settings`.

The loader works in four passes, and each pass reports every problem it finds (not just the first),
naming the key path and the line, so an operator fixes a file in one round trip:

1. **Compose** (:mod:`~gateway.settings.compose`). YAML → plain values that keep their lines; duplicate
   keys, aliases and foreign tags are refused; ``${env:NAME}`` and ``${file:PATH}`` are resolved, and
   the values they produce are never printed in an error.
2. **Shape** (:mod:`~gateway.settings.walker`). Each value is checked against the schema's types, so
   that all type errors, unknown keys (with a "did you mean") and missing keys are reported together.
3. **Convert** (:mod:`~gateway.settings.walker`, :mod:`~gateway.settings.paths`). ``msgspec.convert``
   builds the frozen structs; relative paths are made absolute against the config file's directory, so
   the same file works from any working directory.
4. **Meaning** (:mod:`~gateway.settings.checks`, one module per subsystem). URLs, hostnames, ports,
   CIDRs, unique names, reserved identity headers, readable TLS files, sane timeouts.

Every problem becomes one line of the :class:`~gateway.errors.ConfigError` report
(:mod:`~gateway.settings.report`), sorted by line::

    gateway.yaml:14: routes[1] (name: wiki).mfa: expected one of none, required, webauthn or a mapping
    {require, max_age}; got "sometimes"
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from gateway.settings.checks import run_checks
from gateway.settings.compose import compose, read_document
from gateway.settings.paths import resolve_paths
from gateway.settings.report import Report
from gateway.settings.schema import Settings
from gateway.settings.walker import build_settings, walk

__all__ = [
    "ACCEPTED_ENV",
    "load_accepted",
    "load_settings",
    "parse_settings",
    "pin_accepted",
    "read_settings",
]


#: Set by ``gateway serve`` for its processes: a private file holding the text of the config the
#: running gateway last accepted. A worker granian starts again after a crash reads that text, not the
#: file on disk, which may hold a change every worker refused (it would serve it: a route made public
#: by a refused reload was public on the replacement) or an edit in progress (the replacement would fail
#: to start, again and again, until granian gave up and the whole gateway stopped).
ACCEPTED_ENV: Final = "GATEWAY_ACCEPTED_CONFIG"


def read_settings(path: str | Path) -> tuple[str, Settings]:
    """:func:`load_settings`, also returning the text it read (to :func:`pin_accepted` once applied)."""
    text = read_document(path)
    return text, parse_settings(text, source=str(path), base_dir=Path(path).absolute().parent)


def load_accepted(path: str | Path) -> Settings:
    """The settings a process of a running gateway starts with: the text the gateway last accepted for
    ``path`` (see :data:`ACCEPTED_ENV`), or the file itself outside ``gateway serve``."""
    pinned = os.environ.get(ACCEPTED_ENV)
    if not pinned:
        return load_settings(path)
    try:
        text = Path(pinned).read_text(encoding="utf-8")
    except FileNotFoundError:
        return load_settings(path)
    return parse_settings(text, source=str(path), base_dir=Path(path).absolute().parent)


def pin_accepted(text: str) -> None:
    """Record ``text`` as the config the running gateway accepted (no-op outside ``gateway serve``).
    Written beside the old copy and renamed over it, mode 0600 (it may hold secrets inline)."""
    pinned = os.environ.get(ACCEPTED_ENV)
    if not pinned:
        return
    target = Path(pinned)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_settings(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and return the settings in the YAML file at ``path``.

    Args:
        path: The config file. Relative paths inside it (``data_dir``, TLS files, ``${file:…}``
            secrets, a relative SQLite URL) resolve against the file's directory.
        environ: Where ``${env:NAME}`` looks names up; ``os.environ`` when omitted.

    Returns:
        Frozen settings, with every filesystem path absolute.

    Raises:
        ConfigError: The file is missing, unreadable or invalid. ``str(err)`` is the full report,
            one ``file:line: key.path: problem`` line per problem.
    """
    text = read_document(path)
    return parse_settings(text, source=str(path), base_dir=Path(path).absolute().parent, environ=environ)


def parse_settings(
    text: str,
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Validate config text and return the settings.

    Args:
        text: The YAML document.
        source: The name errors start with, usually the file's path.
        base_dir: Where relative paths resolve; the current directory when omitted.
        environ: Where ``${env:NAME}`` looks names up; ``os.environ`` when omitted.

    Returns:
        Frozen settings, with every filesystem path absolute.

    Raises:
        ConfigError: The text is not a valid config; ``str(err)`` is the full report.
    """
    base = Path(os.path.abspath(base_dir if base_dir is not None else Path.cwd()))
    report = Report(source=source)
    data = compose(text, report, base_dir=base, environ=os.environ if environ is None else environ)
    shaped = walk(report, data, (), Settings)
    report.raise_if_any()
    settings = resolve_paths(build_settings(report, shaped), base)
    run_checks(settings, report)
    report.raise_if_any()
    return settings
