"""Which storage engine a configuration names, and the store it makes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from gateway.core.sla import Sla
from gateway.store import Store
from gateway.store.postgres import PostgresConfig, PostgresStore
from gateway.store.sqlite import SQLiteConfig, SQLiteStore

StoreConfig: TypeAlias = SQLiteConfig | PostgresConfig


def store_config(value: str) -> StoreConfig:
    """`postgresql://…` (or `postgres://…`) names a PostgreSQL database; anything else a SQLite file."""
    if value.startswith(("postgresql://", "postgres://")):
        return PostgresConfig(url=value)
    return SQLiteConfig(path=Path(value))


def make_store(config: StoreConfig, clock: Callable[[], dt.datetime], sla: Sla) -> Store:
    if isinstance(config, PostgresConfig):
        return PostgresStore(config, clock, sla)
    return SQLiteStore(config, clock, sla)
