"""What the portal's privacy page and its JSON twin share: who is asking, and the recent-factor rule.

A person exercising a right in the portal is verified by their signed-in session. The rights that
disclose or change everything (the export, rectification, restriction, closure and erasure) also need
a second factor used within ``mfa.reauth_max_age``: a browser left signed in, or a stolen session
cookie, must not take the account's data, change the email it signs in with, or end the account. The
register records that verification in words (``verified_by``), with the time of the factor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from gateway.clock import span_words
from gateway.errors import ErrorReason, Forbidden
from gateway.identity.models import User
from gateway.identity.sessions import Session
from gateway.services import IdentityServices
from gateway.settings.current import CurrentConfig
from gateway.web import flows
from gateway.web.flows import AnyRequest

__all__ = [
    "PAGE",
    "CrossSiteRequest",
    "RecentFactorRequired",
    "Requester",
    "refuse_cross_site",
    "requester",
    "signed_in",
    "step_up_location",
    "when",
]

#: The portal's privacy page: where a step-up returns to, and where its forms send the browser back.
PAGE: Final = "/.gateway/account/privacy"


def when(at: float) -> str:
    """A Unix time as the portal shows times (minutes, UTC)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def step_up_location(back: str, need: str = "any") -> str:
    """The second-factor page (asking for ``need``: ``any`` factor or a ``webauthn`` one), returning to
    ``back`` (a path on this host) afterwards."""
    return f"/.gateway/mfa?need={need}&rd={quote(back, safe='')}"


class RecentFactorRequired(Forbidden):
    """The right needs a second factor used recently (403 ``mfa-required``; browsers go to the MFA page).

    The same reason id as an unfinished sign-in, so a script handles both the same way: use the
    second factor, then call again.
    """

    title = "Confirm it's you first"

    def __init__(self, max_age: float, *, back: str = PAGE) -> None:
        """Build the refusal.

        Args:
            max_age: ``mfa.reauth_max_age`` in seconds, to say how recent the factor must be.
            back: Where a browser returns after the second factor.
        """
        super().__init__(
            f"Use your second factor again first: this needs one used within the last {span_words(max_age)}.",
            reason=ErrorReason.MFA_REQUIRED,
            location=step_up_location(back),
        )


@dataclass(frozen=True, slots=True)
class Requester:
    """The signed-in person and how the portal verified them, as the register records it."""

    session: Session
    user: User
    verified_by: str

    @property
    def actor(self) -> str:
        """Who acts, for the audit trail."""
        return f"user:{self.user.username}"


async def signed_in(
    request: AnyRequest, config: CurrentConfig, identity: IdentityServices
) -> tuple[Session, User] | None:
    """The request's session and its account, or None (no session, or the account is gone)."""
    signed = await flows.current(request, config, identity)
    if signed.session is None:
        return None
    user = await identity.accounts.get(signed.session.user_id)
    if user is None:
        return None
    return signed.session, user


def requester(session: Session, user: User, config: CurrentConfig, identity: IdentityServices) -> Requester:
    """The requester, verified by this session's recent second factor.

    Raises:
        RecentFactorRequired: The session's newest second factor is older than ``mfa.reauth_max_age``.
    """
    at = session.second_factor_at
    if at is None or not flows.is_fresh(session, config, identity.clock):
        raise RecentFactorRequired(float(config.settings.mfa.reauth_max_age))
    return Requester(session, user, f"signed-in session with a second factor at {when(at)}")


# What Fetch Metadata says of a request a person made on the gateway's own pages (or typed).
_OWN_SITE: Final = frozenset({"same-origin", "none"})
_AS_PAGE: Final = frozenset({"document", "empty"})


class CrossSiteRequest(Forbidden):
    """A right exercised from another site's page (403): see :func:`refuse_cross_site`."""

    reason: str = "cross-site-request"
    title = "Not from another site"


def refuse_cross_site(request: AnyRequest) -> None:
    """403 for a request a browser says came from another origin's page, or was not asked for as a
    page or a fetch (an ``<img>``, a ``<script>``).

    The export is a GET (a download link that works without script) and records an access request,
    kept three years: a link on another site, followed by a browser that sends the session cookie on a
    top-level navigation (``SameSite=Lax``), recorded one the person never asked for (an attack run);
    ``<img>`` tags on an application's page of the same site (``same-site``, the cookie sent too) did so
    three times and used up the person's exports for the hour (a re-attack run). So only ``same-origin``
    and ``none`` (typed, a bookmark) pass, as a page (``document``) or a fetch (``empty``). Every current
    browser sends both headers; scripts and older browsers do not, and are answered as before.
    """
    site = request.headers.get("sec-fetch-site")
    dest = request.headers.get("sec-fetch-dest")
    if (site is not None and site not in _OWN_SITE) or (dest is not None and dest not in _AS_PAGE):
        raise CrossSiteRequest(
            "This download was asked for from another page than your privacy page; use the button there."
        )
