"""The live configuration as the gateway's pages and the admin API read it.

The data plane's snapshot (:class:`gateway.pipeline.snapshot.Snapshot`) is the one implementation; a
reload replaces it whole. The pages and the admin API sit below the pipeline, so they see it through
these two protocols: what one configuration offers them, and the holder whose ``current`` is the
configuration in force. A handler reads ``current`` once per request (dependency injection does it
for them) and uses that one object to the end, so a reload never mixes two configurations in one
answer.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gateway.settings.schema import Settings
from gateway.settings.trusted import TrustedProxies

__all__ = ["CurrentConfig", "LiveConfig"]


# Runtime-checkable: Litestar checks the type of what a provider injects.
@runtime_checkable
class CurrentConfig(Protocol):
    """One configuration, with what is derived from it once."""

    @property
    def settings(self) -> Settings: ...

    @property
    def public_url(self) -> str:
        """``settings.public_url`` without its trailing ``/``."""
        ...

    @property
    def cookie_name(self) -> str:
        """The session cookie's name (``__Host-`` prefixed over HTTPS)."""
        ...

    @property
    def trusted(self) -> TrustedProxies: ...

    @property
    def source(self) -> str:
        """The config file it was loaded from."""
        ...

    @property
    def generation(self) -> int:
        """1 at start-up, one more at each reload."""
        ...

    @property
    def loaded_at(self) -> float:
        """When it was loaded (Unix time)."""
        ...


class LiveConfig(Protocol):
    """Holds the configuration in force; a reload swaps it."""

    @property
    def current(self) -> CurrentConfig: ...
