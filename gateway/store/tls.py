"""What the stores share about TLS: telling a failed certificate check apart from an outage.

A refused certificate is a configuration problem (the wrong CA, a host name the certificate does not
carry), not a server that is down: waiting does not fix it, so start-up refuses with a message that
says so, where an unreachable server would only make the gateway report itself not ready.
"""

from __future__ import annotations

import ssl

__all__ = ["verification_failure"]


def verification_failure(exc: BaseException) -> str | None:
    """The reason a TLS handshake in ``exc``'s chain refused the server's certificate, if one did.

    Drivers wrap the ``ssl`` error (redis-py in a ``ConnectionError`` with the text only, SQLAlchemy
    in a ``DBAPIError``), so the chain is followed through ``__cause__`` and ``__context__``, and a
    wrapper's text that carries OpenSSL's verdict counts too.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current.reason or current).rstrip(".")
        text = str(current)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return text.partition("CERTIFICATE_VERIFY_FAILED]")[2].strip() or text
        current = current.__cause__ or current.__context__
    return None
