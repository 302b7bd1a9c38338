"""The replica registry's table: one row per running gateway process, refreshed by its heartbeat."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base

__all__ = ["ReplicaRow"]


class ReplicaRow(Base):
    """What one process last said about itself (``gateway.observe.replicas``)."""

    __tablename__ = "replicas"

    # host:pid:random, unique per process start.
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    # "worker" or "admin".
    role: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime]
    ready: Mapped[bool] = mapped_column(Boolean)
    policy_version: Mapped[int] = mapped_column(Integer)
    config_generation: Mapped[int] = mapped_column(Integer)
