"""Whether a command's change reached the running gateways, or only the store.

A change the CLI makes (a policy import, a revoked session or token, a lifted block, a lockdown) is
committed first and then announced on the fast state's broadcast; the stores treat a failed announcement
as best effort (the change is made, and every worker finds it by polling within a second). An operator
who revokes a token during an incident must still learn that the running gateways were not told at once:
:class:`AnnouncementWatch` sees every broadcast the command sends, and :func:`open_store
<gateway.cli.harness.open_store>` turns a failed one into :class:`Unannounced` (exit 3, one line that
says what was stored and how soon the gateways find it themselves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.settings.schema import Settings
    from gateway.store.fast import FastState

__all__ = ["AnnouncementWatch", "Unannounced", "backstop_seconds"]


class Unannounced(Exception):
    """The command's change is stored, but its broadcast to the running gateways failed."""


class AnnouncementWatch:
    """A fast state that remembers the broadcasts that failed; everything else is the wrapped state's.

    Delegates by attribute (the CLI uses a handful of the state's methods, each implementation has a
    few of its own); only ``publish`` is watched.
    """

    __slots__ = ("_inner", "failures")

    def __init__(self, inner: FastState) -> None:
        self._inner = inner
        # (channel, the error's text) of each broadcast that raised, in order.
        self.failures: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def publish(self, channel: str, message: bytes) -> None:
        """The wrapped ``publish``; a failure is remembered and raised on as it was."""
        try:
            await self._inner.publish(channel, message)
        except Exception as exc:
            self.failures.append((channel, str(exc) or type(exc).__name__))
            raise

    def verdict(self, settings: Settings) -> Unannounced | None:
        """The error to end the command with, or None when every broadcast went out."""
        if not self.failures:
            return None
        channels = ", ".join(sorted({channel for channel, _ in self.failures}))
        return Unannounced(
            f"the change is stored, but announcing it to the running gateways failed ({channels}: "
            f"{self.failures[-1][1]}); each gateway finds it by itself within {backstop_seconds(settings):g}s. "
            "Check the state store (state.redis_url, or the node's state file) before relying on it"
        )


def backstop_seconds(settings: Settings) -> float:
    """The longest a running gateway takes to find a change whose broadcast it never heard.

    The policy version poll, the lockdown switch's re-read, and the one second the session and token
    caches and the shared block list trust a copy.
    """
    return max(float(settings.policy.poll_interval), float(settings.lockdown.refresh_interval), 1.0)
