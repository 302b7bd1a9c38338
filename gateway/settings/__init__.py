"""Configuration: the file's schema and the loader that validates it into frozen settings."""

from gateway.settings.loader import load_settings, parse_settings
from gateway.settings.schema import *  # noqa: F403
from gateway.settings.schema import __all__ as _schema_all

__all__ = [*_schema_all, "load_settings", "parse_settings"]
