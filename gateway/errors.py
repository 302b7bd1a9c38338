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

from enum import StrEnum

__all__ = [
    "AuthenticationRequired",
    "BadHeaders",
    "BadPath",
    "BadRequest",
    "BodyTooLarge",
    "ConfigError",
    "ErrorReason",
    "Forbidden",
    "GatewayError",
    "HeadersTooLarge",
    "NoRoute",
    "ServiceUnavailable",
    "UpstreamError",
    "UpstreamTimeout",
]


class ErrorReason(StrEnum):
    """The reason ids of the errors in this module and of the data plane's own refusals.

    The values are on the wire (error pages, JSON bodies, ``X-Gateway-Reason``) and in the access
    log, where operators and SIEM rules match them: never rename one. A policy decision carries
    :class:`gateway.authz.decision.Reason` instead; errors of other packages (storage, identity)
    name their own ids beside their classes.
    """

    INTERNAL_ERROR = "internal-error"
    CONFIG_INVALID = "config-invalid"
    BAD_REQUEST = "bad-request"
    BAD_PATH = "bad-path"
    BAD_HEADERS = "bad-headers"
    # Request smuggling guards (RFC 9112 §6): ambiguous framing, a malformed or cut-short body.
    BAD_FRAMING = "bad-framing"
    BAD_BODY = "bad-body"
    HEADERS_TOO_LARGE = "headers-too-large"
    BODY_TOO_LARGE = "body-too-large"
    BODY_TIMEOUT = "body-timeout"
    NO_ROUTE = "no-route"
    AUTHENTICATION_REQUIRED = "authentication-required"
    FORBIDDEN = "forbidden"
    MFA_REQUIRED = "mfa-required"
    PASSWORD_CHANGE_REQUIRED = "password-change-required"  # noqa: S105 - a reason id, not a password
    UNTRUSTED_PROXY = "untrusted-proxy"
    IP_BLOCKED = "ip-blocked"
    UPSTREAM_ERROR = "upstream-error"
    UPSTREAM_TIMEOUT = "upstream-timeout"
    UNAVAILABLE = "unavailable"
    # An emergency lockdown closed the route (gateway/pipeline/lockdown.py): 503 with Retry-After.
    LOCKDOWN = "lockdown"
    # Bearer authentication (gateway/pipeline/bearer.py, RFC 6750 §3.1): a missing, malformed, unknown,
    # expired or revoked token (401), or one not valid for the route (403).
    INVALID_TOKEN = "invalid-token"  # noqa: S105 - a reason id, not a token
    INSUFFICIENT_SCOPE = "insufficient-scope"
    # A streamed answer or a WebSocket cut off once access ended (gateway/pipeline/watch.py).
    ACCESS_ENDED = "access-ended"


class GatewayError(Exception):
    """Base class. ``status`` is the HTTP answer; ``reason`` a stable machine-readable id."""

    status: int = 500
    reason: str = ErrorReason.INTERNAL_ERROR
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

    reason: str = ErrorReason.CONFIG_INVALID
    title = "Configuration error"


class BadRequest(GatewayError):
    status = 400
    reason: str = ErrorReason.BAD_REQUEST
    title = "Bad request"


class BadPath(BadRequest):
    reason: str = ErrorReason.BAD_PATH
    title = "Ambiguous or malformed path"


class BadHeaders(BadRequest):
    reason: str = ErrorReason.BAD_HEADERS
    title = "Malformed request headers"


class HeadersTooLarge(GatewayError):
    status = 431
    reason: str = ErrorReason.HEADERS_TOO_LARGE
    title = "Request headers too large"


class BodyTooLarge(GatewayError):
    status = 413
    reason: str = ErrorReason.BODY_TOO_LARGE
    title = "Request body too large"


class BodyTimeout(GatewayError):
    """The client stopped sending its request body for longer than ``limits.body_timeout`` (408). The
    connection closes, as after any incomplete body: the rest may still come and must not be read as a
    request of its own."""

    status = 408
    reason: str = ErrorReason.BODY_TIMEOUT
    title = "Request body too slow"


class NoRoute(GatewayError):
    status = 404
    reason: str = ErrorReason.NO_ROUTE
    title = "Not found"


class AuthenticationRequired(GatewayError):
    status = 401
    reason: str = ErrorReason.AUTHENTICATION_REQUIRED
    title = "Sign-in required"


class Forbidden(GatewayError):
    status = 403
    reason: str = ErrorReason.FORBIDDEN
    title = "Access denied"


class UpstreamError(GatewayError):
    status = 502
    reason: str = ErrorReason.UPSTREAM_ERROR
    title = "Bad gateway"
    public_message = "The application behind the gateway did not answer properly."


class UpstreamTimeout(GatewayError):
    status = 504
    reason: str = ErrorReason.UPSTREAM_TIMEOUT
    title = "Gateway timeout"
    public_message = "The application took too long to answer."


class ServiceUnavailable(GatewayError):
    status = 503
    reason: str = ErrorReason.UNAVAILABLE
    title = "Service unavailable"
    public_message = "This service is unavailable right now; try again in a minute."
