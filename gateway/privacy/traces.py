"""What the fast state keeps about a person by name, and when it goes.

Short-lived keys name a person: the sign-in failure counters (``reg:<name>``, the threat detector's
``threat:c:bf:<name>`` and ``threat:c:mfa:<name>``, for minutes) and the position of their last sign-in
(``threat:geo:<name>``: latitude, longitude, time and address, kept for the impossible-travel window,
a day by default). An attack run found all of them after an erasure, and the position after an
objection to geolocation and after a restriction; a new account of the erased person's name then
drew an impossible-travel incident from the erased person's address. So:

* an erasure deletes every one of them (:func:`forget_person`);
* a restriction, a closure, an objection to ``geolocation`` and a withdrawn consent to it delete the
  position (:func:`forget_location`), which the detector also never writes for such a person.

The counters kept by address and name (spraying) and a known browser's own failure counter
(``reg:<name>|device:<id>``) cannot be found by the name alone and go with their window (minutes).
"""

from __future__ import annotations

import logging

from gateway.identity.regulation import KEY_PREFIX
from gateway.privacy.purposes import GEOLOCATION
from gateway.store.fast import FastState, StateUnavailable
from gateway.threat.detector import location_key, person_keys

__all__ = ["forget_location", "forget_person", "forget_purpose"]

logger = logging.getLogger("gateway.privacy")


async def forget_person(fast: FastState | None, username: str, email: str | None = None) -> None:
    """Delete every key that names the person (an erasure)."""
    names = [username, *([email] if email else [])]
    await _delete(fast, *person_keys(username), *(KEY_PREFIX + n for n in names))


async def forget_location(fast: FastState | None, username: str) -> None:
    """Delete the position of the person's last sign-in."""
    await _delete(fast, location_key(username))


async def forget_purpose(fast: FastState | None, username: str, purpose: str) -> None:
    """Delete what was kept for ``purpose`` now that the person objected to it or withdrew consent."""
    if purpose == GEOLOCATION:
        await forget_location(fast, username)


async def _delete(fast: FastState | None, *keys: str) -> None:
    if fast is None:
        return
    try:
        await fast.delete(*keys)
    except StateUnavailable:
        # Each key ends with its window anyway (a day at most); the change itself is made. The log
        # does not name the person (it may be an erasure).
        logger.warning(
            "the fast state did not answer: %d short-lived key(s) of a person stay until they expire",
            len(keys),
        )
