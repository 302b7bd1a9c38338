"""The gateway's error tree. Each error knows its HTTP status and a stable reason id.

The reason id is what the error page, the JSON body and the access log all carry, so an operator can
grep one identifier from a user's screenshot to the log line.

    GatewayError                        (500 internal)
    ├── ConfigError                     not an HTTP error: the config file is invalid (names key and line)
    ├── BadRequest                      400
    │   ├── BadPath                     400 path is ambiguous or malformed (invariant 1)
    │   └── BadHeaders                  400 header block malformed
    ├── HeadersTooLarge                 431
    ├── BodyTooLarge                    413
    ├── NoRoute                         404 no route for this host and path
    ├── AuthenticationRequired          401 sign-in needed
    ├── Forbidden                       403 denied by policy
    ├── UpstreamError                   502 upstream failed (connection refused, reset, bad response)
    ├── UpstreamTimeout                 504 upstream too slow
    └── ServiceUnavailable              503 no healthy upstream / store unreachable
        ├── store.db.StoreUnavailable       the database cannot be reached (converted at the boundary)
        ├── store.fast.StateUnavailable     Redis cannot be reached (converted at the boundary)
        └── store.migrate.SchemaOutdated    the schema is not at the revision this release needs

The storage errors live beside the code that raises them, so the error tree here stays free of
storage imports; they are ServiceUnavailable subclasses, so every caller fails closed with a 503.

What a client is told: ``detail`` is for the log and the operator. For a client error (4xx) it is
written for the person in front of the page and is shown as it is; a server-side failure (5xx) often
carries backend text (``ConnectionRefusedError: [Errno 111]``, driver messages, internal addresses),
so pages and JSON bodies show ``public_detail`` instead: the class's plain ``public_message``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationRequired",
    "BadHeaders",
    "BadPath",
    "BadRequest",
    "BodyTooLarge",
    "ConfigError",
    "Forbidden",
    "GatewayError",
    "HeadersTooLarge",
    "NoRoute",
    "ServiceUnavailable",
    "UpstreamError",
    "UpstreamTimeout",
]


class GatewayError(Exception):
    """Base class. ``status`` is the HTTP answer; ``reason`` a stable machine-readable id."""

    status: int = 500
    reason: str = "internal-error"
    title: str = "Something went wrong"
    # What a client may read about a server-side failure (never the detail: see the module docstring).
    public_message: str = "The gateway could not complete this request."

    def __init__(self, detail: str = "", *, reason: str | None = None, location: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if reason is not None:
            self.reason = reason
        # Where a browser should go instead (sign-in, MFA): it gets a 302 there, API clients the error.
        self.location = location

    @property
    def public_detail(self) -> str:
        """The message a page or JSON body may show: the detail of a 4xx, a fixed sentence for a 5xx.

        A 5xx detail is often a backend's own text (exception names, errno, addresses of internal
        servers): it tells an attacker what runs behind the gateway and when it is down, and a user
        nothing they can act on. It belongs in the log, which the request id shown with it leads to.
        """
        return self.detail if self.status < 500 else self.public_message


class ConfigError(GatewayError):
    """The configuration is invalid. ``str(err)`` is the full human-readable report."""

    reason = "config-invalid"
    title = "Configuration error"


class BadRequest(GatewayError):
    status = 400
    reason = "bad-request"
    title = "Bad request"


class BadPath(BadRequest):
    reason = "bad-path"
    title = "Ambiguous or malformed path"


class BadHeaders(BadRequest):
    reason = "bad-headers"
    title = "Malformed request headers"


class HeadersTooLarge(GatewayError):
    status = 431
    reason = "headers-too-large"
    title = "Request headers too large"


class BodyTooLarge(GatewayError):
    status = 413
    reason = "body-too-large"
    title = "Request body too large"


class NoRoute(GatewayError):
    status = 404
    reason = "no-route"
    title = "Not found"


class AuthenticationRequired(GatewayError):
    status = 401
    reason = "authentication-required"
    title = "Sign-in required"


class Forbidden(GatewayError):
    status = 403
    reason = "forbidden"
    title = "Access denied"


class UpstreamError(GatewayError):
    status = 502
    reason = "upstream-error"
    title = "Bad gateway"
    public_message = "The application behind the gateway did not answer properly."


class UpstreamTimeout(GatewayError):
    status = 504
    reason = "upstream-timeout"
    title = "Gateway timeout"
    public_message = "The application took too long to answer."


class ServiceUnavailable(GatewayError):
    status = 503
    reason = "unavailable"
    title = "Service unavailable"
    public_message = "This service is unavailable right now; try again in a minute."
