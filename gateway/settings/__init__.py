"""Configuration: the file's schema and the loader that validates it into frozen settings."""

from gateway.settings.schema import *  # noqa: F403
from gateway.settings.schema import __all__ as _schema_all

__all__ = list(_schema_all)
