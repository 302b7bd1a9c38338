"""The words of incident response that callers list before they touch a store: severities and the
account actions. Kept apart from the modules that use them so that ``gateway``'s parser can offer them
as choices without importing the stores (``gateway.response.cases`` pulls in the database, the threat
package and the account service: over a second for every command)."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = ["SEVERITIES", "AccountAction"]

SEVERITIES: Final = ("low", "medium", "high", "critical")


class AccountAction(StrEnum):
    """What an action does to every affected account."""

    REVOKE_SESSIONS = "revoke-sessions"
    FORCE_PASSWORD_CHANGE = "force-password-change"  # noqa: S105 - an action name
    RESET_MFA = "reset-mfa"
    DISABLE = "disable"
