"""Settings: the effective configuration, read-only, every secret masked (``/settings``, ``/api/settings``).

"Effective" is the configuration in force in this process: the file as loaded at start-up or at the
last reload, with every default filled in and relative paths made absolute. Secrets are masked by
where they came from, by their names and by their shapes (:mod:`admin.console.masking`); nothing
here changes the configuration (edit the file and reload, SIGHUP).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, get
from litestar.response import Template

from admin.console.masking import MASK, mask_settings, render_path
from admin.console.render import PAGE_OPT, page
from gateway.settings.report import KeyPath
from gateway.web.deps import Config

__all__ = ["HANDLERS", "SettingsView", "settings_view"]


class SettingsView(msgspec.Struct, kw_only=True):
    """The configuration in force, secrets replaced by ``[masked]``."""

    source: str
    generation: int
    loaded_at: datetime
    settings: dict[str, Any]
    # Key paths of the values masked in whole or part (``storage.url``, ``logging.sinks[0].token``).
    masked: list[str]
    notes: list[str]


async def settings_view(config: Config) -> SettingsView:
    """What the Settings page and ``GET /api/settings`` show."""
    # Reads the config file again (and ${file:} secrets) for the secrets' origins: off the loop.
    masked = await asyncio.to_thread(mask_settings, config.settings, source=config.source)
    return SettingsView(
        source=config.source,
        generation=config.generation,
        loaded_at=datetime.fromtimestamp(config.loaded_at, UTC),
        settings=masked.document,
        masked=masked.masked,
        notes=masked.notes,
    )


@get("/api/settings", cache=False, tags=["settings"])
async def settings_json(config: Config) -> SettingsView:
    """The effective configuration of this process, read-only: defaults filled in, paths absolute.

    Secrets are replaced by ``[masked]``: values from ``${env:…}`` / ``${file:…}`` references, values
    of secret-named keys (client secrets, tokens, credential headers), passwords and tokens in URLs,
    webhook URLs' paths, and anything that looks like a key. ``masked`` lists where.
    """
    return await settings_view(config)


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    value: str
    kind: str  # "text", "null", "bool", "number", "empty", "masked"


@dataclass(frozen=True, slots=True)
class Group:
    title: str
    rows: list[Row]


def _scalar(value: object) -> tuple[str, str]:
    if value is None:
        return "null", "null"
    if isinstance(value, bool):
        return ("true" if value else "false"), "bool"
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value), "number"
    text = str(value)
    return text, "masked" if MASK in text else "text"


def _rows(value: object, path: KeyPath, out: list[Row]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _rows(item, (*path, str(key)), out)
    elif isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        for index, item in enumerate(value):
            _rows(item, (*path, index), out)
    elif isinstance(value, list | dict):
        shown = ", ".join(_scalar(v)[0] for v in value) if isinstance(value, list) else ""
        masked = any(MASK in str(v) for v in value) if isinstance(value, list) else False
        out.append(
            Row(render_path(path), shown or "none", "masked" if masked else ("text" if shown else "empty"))
        )
    else:
        text, kind = _scalar(value)
        out.append(Row(render_path(path), text, kind))


def groups(document: dict[str, Any]) -> list[Group]:
    """The document as one table per top-level section (plain top-level values together first)."""
    general: list[Row] = []
    found: list[Group] = []
    for key, value in document.items():
        if (
            isinstance(value, dict | list)
            and value
            and (isinstance(value, dict) or any(isinstance(v, dict) for v in value))
        ):
            rows: list[Row] = []
            _rows(value, (key,), rows)
            # Inside a section's table, keys are relative to it: ".sinks[0].type" reads as "sinks[0].type".
            found.append(
                Group(key, [Row(r.key.removeprefix(key).removeprefix("."), r.value, r.kind) for r in rows])
            )
        else:
            _rows(value, (key,), general)
    return [Group("general", general), *found]


@get("/settings", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def settings_page(request: Request[Any, Any, Any], config: Config) -> Template:
    view = await settings_view(config)
    return page(
        request, "settings.html", title="Settings", section="settings", view=view,
        groups=groups(view.settings),
    )  # fmt: skip


HANDLERS = (settings_json, settings_page)
