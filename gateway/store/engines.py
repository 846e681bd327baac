"""Which storage engine a configuration names, and the store it makes."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias, TypeVar

from gateway.core.sla import Sla
from gateway.store import Store, postgres, sqlite
from gateway.store.base import Operation
from gateway.store.postgres import PostgresConfig, PostgresStore
from gateway.store.sqlite import SQLiteConfig, SQLiteStore

StoreConfig: TypeAlias = SQLiteConfig | PostgresConfig
T = TypeVar("T")


def store_config(value: str) -> StoreConfig:
    """`postgresql://…` (or `postgres://…`) names a PostgreSQL database; anything else a SQLite file."""
    if value.startswith(("postgresql://", "postgres://")):
        return PostgresConfig(url=value)
    return SQLiteConfig(path=Path(value))


def make_store(config: StoreConfig, clock: Callable[[], dt.datetime], sla: Sla) -> Store:
    if isinstance(config, PostgresConfig):
        return PostgresStore(config, clock, sla)
    return SQLiteStore(config, clock, sla)


async def read_snapshot(config: StoreConfig, operation: Operation[T]) -> T:
    """Run a read-only operation on one consistent snapshot of the store `config` names, beside
    any gateway using it, without migrating it. Raises StoreUnavailable."""
    if isinstance(config, PostgresConfig):
        return await postgres.snapshot_of(config, operation)
    return await asyncio.to_thread(sqlite.snapshot_of, config.path, operation)
