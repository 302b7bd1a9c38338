"""Where an address is, from a MaxMind-format database (GeoLite2 / GeoIP2 City or compatible).

Only ``location.latitude`` and ``location.longitude`` are read. The file is re-opened when its path
or modification time changes (databases are replaced weekly by ``geoipupdate``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import maxminddb

__all__ = ["GeoLocator", "distance_km"]

logger = logging.getLogger("gateway.threat")

_EARTH_RADIUS_KM = 6371.0


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (latitude, longitude) points (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class GeoLocator:
    """Looks addresses up in one database file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime = -1.0
        self._reader: Any = None

    def _current(self) -> Any:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError as exc:
            logger.error("GeoIP database %s cannot be read: %s", self.path, exc.strerror)
            return self._reader
        if mtime != self._mtime:
            try:
                reader = maxminddb.open_database(self.path)
            except (OSError, ValueError) as exc:
                logger.error("GeoIP database %s cannot be opened: %s", self.path, exc)
                return self._reader
            old, self._reader, self._mtime = self._reader, reader, mtime
            if old is not None:
                old.close()
        return self._reader

    def locate(self, ip: str) -> tuple[float, float] | None:
        """(latitude, longitude) of ``ip``, or None if unknown (private, unlisted, no database)."""
        reader = self._current()
        if reader is None:
            return None
        try:
            record = reader.get(ip)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        location = record.get("location")
        if not isinstance(location, dict):
            return None
        lat, lon = location.get("latitude"), location.get("longitude")
        if not isinstance(lat, int | float) or not isinstance(lon, int | float):
            return None
        return float(lat), float(lon)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
