"""The request class of both Litestar apps (the worker's control app and the admin app).

msgspec raises ``UnicodeDecodeError`` for invalid UTF-8 *inside* a JSON string (``{"policy": "\\xff"}``),
not the ``DecodeError`` Litestar turns into a 400, so such a body reached the catch-all handler as a
500 with a traceback in the log, on every JSON endpoint, the sign-in ones included (an attack run).
A multipart form part that is not valid UTF-8, or names a charset Python does not know, failed the
same way, in the CSRF middleware, before any handler: every form of the sign-in and the portal
answered 500 to anyone (a fuzzing run). Each is a malformed request like any other: 400, nothing
changed, and (on the admin app) an ``admin.refused`` record, through the apps' ``ValidationException``
handlers.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import FormMultiDict
from litestar.exceptions import ValidationException

__all__ = ["GatewayRequest"]


class GatewayRequest(Request[Any, Any, Any]):
    """A request whose body Litestar's parsers cannot decode as text is a client error."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except UnicodeDecodeError as exc:
            raise ValidationException(
                "The request body is not valid UTF-8 JSON; nothing was changed.",
            ) from exc

    async def form(self) -> FormMultiDict:
        try:
            return await super().form()
        except (UnicodeDecodeError, LookupError) as exc:
            raise ValidationException(
                "The form is not valid UTF-8 text (or names a charset this server does not read); "
                "nothing was changed.",
            ) from exc
