"""Secrets out of the effective configuration before an admin sees it (the Settings page, ``/api/settings``).

Three independent tests; any one of them masks a value. A false positive costs one value on a page;
a false negative puts a credential on every admin's screen, in screenshots and in browser history, so
the rules lean towards masking:

1. **Origin.** A value the config file builds from ``${env:NAME}`` or ``${file:PATH}`` is what the
   loader itself treats as a secret (:mod:`gateway.settings.compose` never prints one). The file is
   composed again (the loader's first pass only), which says which keys hold references and what the
   references resolve to. Every occurrence of a resolved value is masked wherever it appears (so a
   password inside a database URL goes and the host stays), and a key whose resolved value cannot be
   found in the loaded one is masked whole.
2. **Name.** ``client_secret``, a sink's ``token``, a header named ``Authorization`` or ``X-Api-Key``:
   :func:`gateway.observe.redact.is_secret_name`, except the few settings whose name only sounds
   secret (:data:`_NOT_SECRET`).
3. **Shape.** Credentials in URLs (``user:password@``, secret query parameters, token-like path
   segments, and everything after the host of a webhook URL, which is itself the credential), and
   strings that look like keys (:func:`gateway.observe.redact.looks_secret`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import msgspec

from gateway.audit.erasable import pseudonym_of
from gateway.errors import ConfigError
from gateway.observe.redact import is_secret_name, looks_secret
from gateway.settings.compose import compose, read_document
from gateway.settings.report import KeyPath, Report
from gateway.settings.schema import Settings

__all__ = ["MASK", "MaskedSettings", "mask_person", "mask_settings", "render_path"]

#: What a masked value (or the masked part of one) is replaced with.
MASK: Final = "[masked]"
# Settings whose names only sound secret: they name a cookie, an authentication method, a file.
_NOT_SECRET: Final = frozenset({"cookie_name", "token_endpoint_auth", "key", "keyring"})
# The two reference kinds compose.py resolves, as they appear in Meta.secret ("${env:A}, ${file:b}").
_REFERENCE: Final = re.compile(r"\$\{(env|file):([^}]*)\}")
# Resolved values shorter than this are masked at their own key only: a two-letter secret replaced
# everywhere would blank unrelated text.
_MIN_EVERYWHERE: Final = 4


@dataclass(frozen=True, slots=True)
class MaskedSettings:
    """The configuration as plain JSON values with secrets replaced by :data:`MASK`."""

    document: dict[str, Any]
    # Key paths (``storage.url``, ``logging.sinks[0].token``) of every value masked in whole or part.
    masked: list[str]
    # Anything the admin should know about how far the masking could see (e.g. an unreadable file).
    notes: list[str] = field(default_factory=list)


def render_path(path: KeyPath) -> str:
    """``("logging", "sinks", 0, "token")`` → ``logging.sinks[0].token``."""
    out = ""
    for segment in path:
        out += f"[{segment}]" if isinstance(segment, int) else (f".{segment}" if out else segment)
    return out


def mask_settings(
    settings: Settings, *, source: str, environ: Mapping[str, str] | None = None
) -> MaskedSettings:
    """The effective ``settings`` with every secret masked.

    Args:
        settings: The configuration in force.
        source: The config file it was loaded from (read again for the secrets' origins).
        environ: Where ``${env:NAME}`` looks names up; ``os.environ`` when omitted.
    """
    notes: list[str] = []
    origins, secrets = _origins(source, os.environ if environ is None else environ, notes)
    masker = _Masker(origins, sorted(secrets, key=len, reverse=True))
    document = masker.walk(msgspec.to_builtins(settings, enc_hook=_plain), ())
    if not isinstance(document, dict):  # pragma: no cover - Settings is a struct: always a mapping
        raise TypeError("settings did not convert to a mapping")
    return MaskedSettings(document, sorted(set(masker.masked)), notes)


def mask_person(name: str) -> str:
    """A person's username or address as a list of many people shows it: enough to tell rows apart
    and recognise a name one knows, not to read names off a screen or a screenshot.

    ``alice`` → ``a•••e``, ``alice@example.com`` → ``a•••@example.com`` (the domain names no one),
    ``bo`` → ``b•••``. An erasure pseudonym (``[erased:…]``) names no one and is kept, as is "".
    The page about one person (a privacy request's) shows the name in full.
    """
    if not name or pseudonym_of(name) is not None:
        return name
    local, at, domain = name.partition("@")
    if at:
        return f"{local[:1]}•••@{domain}"
    return f"{name[:1]}•••{name[-1]}" if len(name) > 3 else f"{name[:1]}•••"


def _plain(value: object) -> object:
    # Duration (seconds) and ByteSize (bytes) subclass float and int, which msgspec will not guess.
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    raise NotImplementedError(f"cannot show a {type(value).__name__} setting")


def _origins(source: str, environ: Mapping[str, str], notes: list[str]) -> tuple[set[KeyPath], set[str]]:
    """The key paths built from references, and the values the references resolve to."""
    base_dir = Path(source).absolute().parent
    report = Report(source=source)
    try:
        compose(read_document(source), report, base_dir=base_dir, environ=environ)
    except ConfigError:
        notes.append(
            "The config file cannot be read again, so values from ${env:…} and ${file:…} references are "
            "masked by their names and shapes only."
        )
        return set(), set()
    paths: set[KeyPath] = set()
    secrets: set[str] = set()
    for path, meta in report.meta.items():
        if meta.secret is None:
            continue
        paths.add(path)
        for kind, arg in _REFERENCE.findall(meta.secret):
            value = _resolve(kind, arg, base_dir, environ)
            if value:
                secrets.add(value)
    return paths, secrets


def _resolve(kind: str, arg: str, base_dir: Path, environ: Mapping[str, str]) -> str | None:
    # As compose.py resolves them: the environment, or a file's text without its final newline.
    if kind == "env":
        return environ.get(arg)
    try:
        content = Path(os.path.normpath(base_dir / arg)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return content.removesuffix("\n").removesuffix("\r")


class _Masker:
    def __init__(self, origins: set[KeyPath], secrets: Iterable[str]) -> None:
        self.origins = origins
        self.secrets = list(secrets)
        self.masked: list[str] = []

    def walk(self, value: object, path: KeyPath) -> object:
        if isinstance(value, dict):
            return {str(k): self.walk(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list | tuple):  # to_builtins keeps tuples as tuples
            return [self.walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and value:
            masked = self.text(value, path)
            if masked != value:
                self.masked.append(render_path(path))
            return masked
        return value

    def text(self, value: str, path: KeyPath) -> str:
        name = next((s for s in reversed(path) if isinstance(s, str)), "")
        if is_secret_name(name) and name not in _NOT_SECRET:
            return MASK
        masked = value
        for secret in self.secrets:
            if secret in masked and (len(secret) >= _MIN_EVERYWHERE or path in self.origins):
                masked = masked.replace(secret, MASK)
        if path in self.origins and MASK not in masked:
            return MASK  # a reference whose value is not found as such: the whole value
        if "://" in masked:
            return _mask_url(masked, webhook="webhook" in name.lower())
        if masked.startswith("/"):
            # A file path: only segments that look like keys.
            return "/".join(MASK if looks_secret(part) else part for part in masked.split("/"))
        return MASK if looks_secret(masked) else masked


def _mask_url(url: str, *, webhook: bool) -> str:
    try:
        parts = urlsplit(url)
        _ = parts.port  # a malformed port raises here
    except ValueError:
        return MASK if looks_secret(url) else url
    netloc = _mask_netloc(parts.netloc)
    if webhook and (parts.path.strip("/") or parts.query):
        # The URL of a webhook is its credential (Slack, Teams, …): only where it goes stays visible.
        path, query, fragment = f"/{MASK}", "", ""
    else:
        path = "/".join(MASK if looks_secret(unquote_plus(p)) else p for p in parts.path.split("/"))
        query = _mask_query(parts.query)
        fragment = MASK if parts.fragment and looks_secret(parts.fragment) else parts.fragment
    masked = (parts.scheme, netloc, path, query, fragment)
    # Rebuilt only when something changed: urlunsplit may respell what it does not need to touch.
    return url if masked == tuple(parts) else urlunsplit(masked)


def _mask_netloc(netloc: str) -> str:
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, _password = userinfo.partition(":")
    # A user name is who connects and stays; the password is the secret. A user name alone in a URL
    # is usually a token (https://<token>@host).
    return f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"


def _mask_query(query: str) -> str:
    if not query:
        return ""
    pairs = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        secret = is_secret_name(unquote_plus(name)) or looks_secret(unquote_plus(value or name))
        pairs.append((f"{name}={MASK}" if sep else MASK) if secret else pair)
    return "&".join(pairs)
