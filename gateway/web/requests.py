"""The request class of both Litestar apps (the worker's control app and the admin app).

msgspec raises ``UnicodeDecodeError`` for invalid UTF-8 *inside* a JSON string (``{"policy": "\\xff"}``),
not the ``DecodeError`` Litestar turns into a 400, so such a body reached the catch-all handler as a
500 with a traceback in the log, on every JSON endpoint, the sign-in ones included (an attack run).
It is a malformed request like any other: 400, nothing changed, and (on the admin app) an
``admin.refused`` record, through the apps' ``ValidationException`` handlers.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import ValidationException

__all__ = ["GatewayRequest"]


class GatewayRequest(Request[Any, Any, Any]):
    """A request whose JSON body with invalid UTF-8 in a string is a client error."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except UnicodeDecodeError as exc:
            raise ValidationException(
                "The request body is not valid UTF-8 JSON; nothing was changed.",
            ) from exc
