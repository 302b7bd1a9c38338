"""The names under which the control app injects its services into handlers (Litestar DI).

A handler declares a parameter with one of these types and gets the part, provided once for the whole
app in :func:`gateway.web.app.dependencies`; the parameter's name is the dependency's name::

    async def portal(request: Request[...], config: Config, identity: Identity) -> Template: ...
"""

from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency, Provide

from gateway.crypto.signing import SigningKeys
from gateway.privacy.service import Privacy as PrivacyService
from gateway.services import IdentityServices, ReadinessReport
from gateway.settings.current import CurrentConfig
from gateway.threat.lockdown import NewPasskeys

__all__ = ["Config", "Identity", "Passkeys", "Privacy", "Readiness", "Signing", "constant"]

#: ``config``: the configuration in force, read once per request.
Config: TypeAlias = NamedDependency[CurrentConfig]
#: ``identity``: the sign-in services.
Identity: TypeAlias = NamedDependency[IdentityServices]
#: ``signing``: the assertion signing keys (the JWK Set).
Signing: TypeAlias = NamedDependency[SigningKeys]
#: ``readiness``: this replica's readiness report.
Readiness: TypeAlias = NamedDependency[ReadinessReport]
#: ``privacy``: the data-subject rights, the request register and legal holds.
Privacy: TypeAlias = NamedDependency[PrivacyService]
#: ``passkeys``: whether a lockdown holds back a new passkey.
Passkeys: TypeAlias = NamedDependency[NewPasskeys]


def constant(value: object) -> Provide:
    """A dependency that is the same object for every request (a started service)."""

    def provide() -> object:
        return value

    return Provide(provide, use_cache=True, sync_to_thread=False)
