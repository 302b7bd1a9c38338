"""The control app's CSRF check: Litestar's double-submit cookie, with tokens keyed by the keyring.

Litestar's :class:`~litestar.middleware.csrf.CSRFMiddleware` signs its tokens with one secret, fixed
when the app is built, and takes any cookie it finds on a safe method as it is. The gateway derived
that secret from the keyring's active key, so a keyring rotation and a restart ended every CSRF cookie
browsers held: the sign-in page kept rendering the old token, every form answered 403 "the form has
expired", and reloading changed nothing (an attack run). And a worker started after a rotation (a
respawn) derived another secret than the workers still running, so the answer depended on which worker
served.

Here a token names the keyring key it was made under: ``<kid>.<64 hex random><64 hex HMAC>``, the HMAC
being Litestar's (:func:`~litestar.middleware.csrf.generate_csrf_hash`) under a secret derived from
that key (``keyring.derive(b"gateway csrf v1", kid=…)``, as before). So:

* new tokens are made under the active key; a token under any key the keyring still holds is accepted,
  whichever worker or replica made it. A key id this process does not know makes the keyring read its
  file again (:meth:`~gateway.crypto.keyring.Keyring.derive`, at most once a second), so a worker that
  loaded the file before a rotation accepts the tokens of a worker started after it;
* a token without a key id (issued before this format) is checked under every key the keyring holds;
* a token under a key marked compromised is not accepted: whoever has the key can make them;
* on a safe method (GET, HEAD, OPTIONS) a cookie that verifies under none of them (forged, or made
  under a key no longer held) is replaced with a fresh one, which the page renders in its forms: a
  reload fixes an expired form.

Everything else is Litestar's: the cookie's attributes, the ``x-csrftoken`` header or ``_csrf_token``
form field on unsafe methods, the opt-out (``exclude_from_csrf``), the 403. The middleware runs only in
the control app (the ``/.gateway/`` pages), not on static files or the other public resources; its cost
is one HMAC-SHA256 of 64 bytes per page view, two per form post (the derived secrets are cached).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from secrets import compare_digest
from typing import TYPE_CHECKING, Any, Final

from litestar.config.csrf import CSRFConfig
from litestar.enums import RequestEncodingType, ScopeType
from litestar.exceptions import PermissionDeniedException
from litestar.middleware import DefineMiddleware
from litestar.middleware._utils import should_bypass_middleware
from litestar.middleware.csrf import CSRF_SECRET_BYTES, CSRFMiddleware
from litestar.utils.scope.state import ScopeState

from gateway.crypto.keyring import Keyring, KeyringError
from gateway.identity.cookies import CSRF_COOKIE

if TYPE_CHECKING:
    from litestar import Request
    from litestar.types import ASGIApp, Receive, Scope, Send

__all__ = ["CSRF_INFO", "CSRFTokens", "KeyringCSRFMiddleware", "csrf_middleware"]

#: The keyring's ``derive`` label of the CSRF secrets (unchanged: tokens issued before still verify).
CSRF_INFO: Final = b"gateway csrf v1"
_NONCE_CHARS: Final = CSRF_SECRET_BYTES * 2
_MAC_CHARS: Final = 64  # hex SHA-256
_FORMS: Final = frozenset({RequestEncodingType.URL_ENCODED, RequestEncodingType.MULTI_PART})


class CSRFTokens:
    """Makes and checks the CSRF tokens under one keyring (see the module docstring)."""

    __slots__ = ("_keyed", "_keyring")

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        # kid -> an HMAC keyed with its secret, copied for each token. A key id always names the same
        # key bytes (the keyring refuses a file that changes one), so nothing here goes stale.
        self._keyed: dict[str, hmac.HMAC] = {}

    def _mac(self, kid: str, nonce: str) -> str:
        """``generate_csrf_hash(nonce, secret)`` under key ``kid``'s CSRF secret (as the gateway derived
        it before tokens named their key); KeyringError if the keyring, its file included, has no ``kid``."""
        keyed = self._keyed.get(kid)
        if keyed is None:
            secret = hmac.new(self._keyring.derive(CSRF_INFO, kid=kid), b"csrf", hashlib.sha256).hexdigest()
            keyed = self._keyed[kid] = hmac.new(secret.encode(), digestmod=hashlib.sha256)
        mac = keyed.copy()
        mac.update(nonce.encode())
        return mac.hexdigest()

    def issue(self) -> str:
        """A new token under the keyring's active key."""
        kid = self._keyring.active_id
        nonce = secrets.token_hex(CSRF_SECRET_BYTES)
        return f"{kid}.{nonce}{self._mac(kid, nonce)}"

    def nonce_of(self, token: object) -> str | None:
        """The random part of ``token`` if it verifies under a key the keyring holds (not one marked
        compromised), else None."""
        if not isinstance(token, str) or not token.isascii():
            return None
        kid, dot, signed = token.rpartition(".")
        if len(signed) != _NONCE_CHARS + _MAC_CHARS:
            return None
        nonce, mac = signed[:_NONCE_CHARS], signed[_NONCE_CHARS:]
        if dot:
            candidates: tuple[str, ...] | frozenset[str] = (kid,)
        else:
            # Issued before tokens named their key: any key still held may have made it.
            candidates = self._keyring.key_ids
        compromised = self._keyring.compromised
        for candidate in candidates:
            if candidate in compromised:
                continue
            try:
                expected = self._mac(candidate, nonce)
            except KeyringError:
                return None
            if compare_digest(mac, expected):
                return nonce
        return None


class KeyringCSRFMiddleware(CSRFMiddleware):
    """Litestar's CSRF middleware with :class:`CSRFTokens`: tokens under any held key verify, and a
    safe method replaces a cookie that does not (``config.secret`` is not used)."""

    def __init__(self, app: ASGIApp, config: CSRFConfig, tokens: CSRFTokens) -> None:
        super().__init__(app, config)
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Litestar's check (``CSRFMiddleware.__call__``), with the cookie verified on safe methods too."""
        if scope["type"] != ScopeType.HTTP or should_bypass_middleware(
            scope=scope,
            scopes=self.scopes,
            exclude_opt_key=self.config.exclude_from_csrf_key,
            exclude_path_pattern=self.exclude,
        ):
            await self.app(scope, receive, send)
            return
        request: Request[Any, Any, Any] = scope["litestar_app"].request_class(scope=scope, receive=receive)
        cookie = request.cookies.get(self.config.cookie_name)
        state = ScopeState.from_scope(scope)
        if request.method in self.config.safe_methods:
            if cookie is not None and self.tokens.nonce_of(cookie) is not None:
                state.csrf_token = cookie
                await self.app(scope, receive, send)
                return
            # None, or one no key here made (forged, or under a key no longer held): a new one,
            # rendered in the page's forms and set as the cookie.
            token = state.csrf_token = self.tokens.issue()
            await self.app(scope, receive, self.create_send_wrapper(send=send, token=token, csrf_cookie=None))
            return
        submitted: Any = request.headers.get(self.config.header_name)
        if not submitted and request.content_type[0] in _FORMS:
            submitted = (await request.form()).get("_csrf_token")
        if isinstance(submitted, str) and cookie is not None and self._csrf_tokens_match(submitted, cookie):
            state.csrf_token = submitted
            await self.app(scope, receive, send)
            return
        raise PermissionDeniedException("CSRF token verification failed")

    def _decode_csrf_token(self, token: str) -> str | None:
        return self.tokens.nonce_of(token)


def csrf_middleware(keyring: Keyring, *, insecure_cookies: bool) -> DefineMiddleware:
    """The control app's CSRF middleware (for ``Litestar(middleware=[…])``, instead of ``csrf_config``)."""
    config = CSRFConfig(
        # Never used (tokens are keyed by the keyring); random, so nothing could sign with it if it were.
        secret=secrets.token_hex(32),
        cookie_name=CSRF_COOKIE.name(insecure=insecure_cookies),
        cookie_secure=not insecure_cookies,
        cookie_samesite="lax",
        header_name="x-csrftoken",
    )
    return DefineMiddleware(KeyringCSRFMiddleware, config=config, tokens=CSRFTokens(keyring))
