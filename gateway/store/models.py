"""Relational schema: the declarative base and the tables every deployment has.

Every schema change here needs an Alembic revision in ``gateway/store/migrations/versions/``; the test
suite compares this metadata with the migrated database on SQLite and PostgreSQL and fails on any
difference. Later domains (users, credentials, policies, audit trail) get their own module that
imports :class:`Base` and is imported by ``gateway.store.migrations.env`` so autogenerate sees it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from sqlalchemy import CheckConstraint, DateTime, Integer, MetaData, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["NAMING_CONVENTION", "Base", "Instance", "KvSetting", "UTCDateTime"]

#: Constraint names spelled out, so SQLite and PostgreSQL get the same names and a later migration
#: can drop or alter a constraint by name (SQLite batch mode needs names to find them at all).
NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zone type and hands back naive values, which
    this type reads as the UTC they were written in. Naive datetimes are refused on the way in: a naive
    value is local time of an unknown machine, and guessing would shift audit timestamps silently.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalize to UTC before storing; refuse naive datetimes."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: pass a timezone-aware value")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime whatever the backend gave back."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base for every table of the gateway."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # ``str`` is TEXT rather than VARCHAR: same type on both backends, no arbitrary length limits.
    type_annotation_map = {  # noqa: RUF012  (SQLAlchemy reads this class attribute by name)
        str: Text(),
        datetime: UTCDateTime(),
    }


class Instance(Base):
    """This deployment's birth certificate: one row, written at first start, read by readiness checks.

    The ``id = 1`` check makes a second row impossible, so concurrent first starts of several
    workers cannot disagree about when the instance was created: the losers' inserts fail.
    """

    __tablename__ = "instance"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime]
    schema_note: Mapped[str]


class KvSetting(Base):
    """A small persistent fact (e.g. which signing key is active), keyed by name."""

    __tablename__ = "kv_settings"

    key: Mapped[str] = mapped_column(primary_key=True)
    value: Mapped[str]
    updated_at: Mapped[datetime]
