"""The registry documents replicas share: every published version, kept in the store.

A gateway that loads a newer registry (from its file on SIGHUP, or from the Admin RPC) publishes
it here; every replica's monitor reads the highest version each interval and loads it if it is
newer than its own, so replicas converge on one version within one interval without anyone
copying files to each host. A version is stored once: publishing a version already stored with
other bytes is refused by the caller (`gateway.core.registry.successor`) and by the primary key.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.store.port import StoredRegistry
from gateway.store.steps import QueryOne, Statement, Steps


def latest() -> Steps[StoredRegistry | None]:
    """The highest version stored, or None if none was ever published."""
    row = yield from QueryOne("SELECT version, digest, document FROM registry_documents"
                              " ORDER BY version DESC LIMIT 1", (), StoredRegistry)
    return None if row is None else StoredRegistry(row.version, bytes(row.digest), bytes(row.document))


def latest_version() -> Steps[int]:
    """The highest version stored (0: none): what the monitor reads every interval."""
    row = yield from QueryOne("SELECT COALESCE(MAX(version), 0) AS version FROM registry_documents", (), _Version)
    return 0 if row is None else int(row.version)


def publish(document: StoredRegistry, stored_at_us: int) -> Steps[StoredRegistry]:
    """Store `document` unless its version is stored already; returns what the store holds under
    that version (the caller compares digests: the same bytes, or a conflict). Version 0 (a
    document without a version: development) is replaced instead: it has no lifecycle to keep."""
    yield from Statement(
        "INSERT INTO registry_documents (version, digest, document, stored_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (version) DO UPDATE SET digest = excluded.digest, document = excluded.document,"
        " stored_at = excluded.stored_at WHERE registry_documents.version = 0",
        (document.version, document.digest, document.document, stored_at_us))
    row = yield from QueryOne("SELECT version, digest, document FROM registry_documents WHERE version = ?",
                              (document.version,), StoredRegistry)
    assert row is not None  # inserted just now, or there before
    return StoredRegistry(row.version, bytes(row.digest), bytes(row.document))


class _Version(NamedTuple):
    version: int
