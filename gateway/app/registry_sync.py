"""The registry's lifecycle in a running gateway: load newer versions, share them, converge.

Three ways a newer version arrives: the configured file re-read on SIGHUP, a document (or the
file) through `Admin.ReloadRegistry`, and another replica having published one to the store. A
version loaded from the first two is published to the store (`gateway.store.registry_documents`)
before it is put in force here; every replica's monitor reads the store's highest version each
interval and loads it if newer, so all replicas converge within one interval. A version never
goes back (REGISTRY_OLDER) and one version number never names two documents
(REGISTRY_VERSION_REUSED). A version that drops or changes one of this gateway's own signing
keys is refused: the gateway could not sign with a key the registry no longer vouches for.

At start-up the file and the store are reconciled: a newer file is published, a newer stored
version wins over an older file (and says so in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from gateway.core.registry import LiveRegistry, Registry, RegistryError, Reloaded, successor
from gateway.core.signing import LocalSigner
from gateway.service.metrics import Metrics
from gateway.store import Store, StoredRegistry

log = logging.getLogger("gateway.app.registry")


class RegistrySync:
    """Keeps one replica's registry current and shares what it loads through the store."""

    def __init__(self, *, live: LiveRegistry, store: Store, path: Path, signers: Sequence[LocalSigner],
                 metrics: Metrics) -> None:
        self._live = live
        self._store = store
        self._path = path
        self._signers = tuple(signers)
        self._metrics = metrics

    @property
    def live(self) -> LiveRegistry:
        return self._live

    async def start(self) -> None:
        """Reconcile the file's version (in force now) with the store's, once the store is open.

        Raises:
            RegistryError: the store holds the file's version with other contents
                (REGISTRY_VERSION_REUSED), or a newer stored version drops this gateway's keys.
            StoreUnavailable: the store cannot be read.
        """
        stored = await self._store.latest_registry()
        current = self._live.current
        if stored is None or stored.version < current.version or (
                stored.version == 0 == current.version and stored.digest != current.digest):
            await self._publish(current, self._document(current))  # an unversioned file replaces version 0
        elif stored.version > current.version:
            log.warning("the registry file is older than the version in the store: using the store's",
                        extra={"fields": {"file_version": current.version, "version": stored.version}})
            self._adopt(Registry.from_json(stored.document), "store")
        elif stored.digest != current.digest:
            raise RegistryError(f"registry version {current.version} in {self._path} differs from version "
                                f"{stored.version} in the store: publish the change as version {stored.version + 1}",
                                reason="REGISTRY_VERSION_REUSED")
        self._metrics.registry_version.set(self._live.current.version)

    def _document(self, registry: Registry) -> bytes:
        data = self._path.read_bytes()
        if Registry.from_json(data).digest != registry.digest:
            raise RegistryError(f"{self._path} changed since it was read: reload it", reason="REGISTRY_INVALID")
        return data

    async def reload_file(self) -> Reloaded:
        """Re-read the configured file and load it if it is a newer version.

        Raises:
            RegistryError: unreadable or inconsistent (REGISTRY_INVALID), older (REGISTRY_OLDER),
                or the same version with other contents (REGISTRY_VERSION_REUSED).
            StoreUnavailable: the store cannot be written.
        """
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            raise RegistryError(f"cannot read registry {self._path}: {exc.strerror or exc}") from exc
        return await self.reload(data, source=str(self._path))

    async def reload(self, data: bytes, *, source: str) -> Reloaded:
        """Load the registry document `data` if it is a newer version; see `reload_file`."""
        try:
            candidate = Registry.from_json(data)
            self._check_own_keys(candidate)
            changed = successor(self._live.current, candidate)
            if changed:
                await self._publish(candidate, data)
                self._adopt(candidate, source)
        except RegistryError as exc:
            self._metrics.registry_reloads.labels("refused").inc()
            log.error("registry reload refused", extra={"fields": {"source": source, "reason": exc.reason,
                                                                   "error": str(exc)[:300]}})
            raise
        self._metrics.registry_reloads.labels("loaded" if changed else "unchanged").inc()
        return Reloaded(self._live.current, changed)

    async def poll(self) -> None:
        """Load the store's highest version if it is newer than ours (each monitor interval).

        A stored version this gateway cannot use is logged and counted, and ours stays in force.
        """
        version = await self._store.latest_registry_version()
        if version <= self._live.current.version:
            return
        stored = await self._store.latest_registry()
        if stored is None:
            return
        try:
            candidate = Registry.from_json(stored.document)
            self._check_own_keys(candidate)
            self._adopt(candidate, "store")
        except RegistryError as exc:
            self._metrics.registry_reloads.labels("refused").inc()
            log.error("registry version in the store refused", extra={"fields": {
                "version": stored.version, "reason": exc.reason, "error": str(exc)[:300]}})
            return
        self._metrics.registry_reloads.labels("loaded").inc()

    async def _publish(self, registry: Registry, data: bytes) -> None:
        stored = await self._store.publish_registry(StoredRegistry(registry.version, registry.digest, data))
        if stored.digest != registry.digest:
            raise RegistryError(f"registry version {registry.version} is already in the store with other contents: "
                                f"publish the change as a higher version", reason="REGISTRY_VERSION_REUSED")

    def _adopt(self, candidate: Registry, source: str) -> None:
        previous = self._live.current.version
        if self._live.replace(candidate):
            self._metrics.registry_version.set(candidate.version)
            log.info("registry loaded", extra={"fields": {"version": candidate.version, "previous": previous,
                                                          "source": source, "sha256": candidate.digest.hex()}})

    def _check_own_keys(self, candidate: Registry) -> None:
        for signer in self._signers:
            key = candidate.gateway_keys.get(signer.key_id)
            if key is None or key.public_pem() != signer.verifying_key().public_pem():
                raise RegistryError(f"registry version {candidate.version} does not list this gateway's signing key "
                                    f"{signer.key_id} as configured: keep it (with a not_after to retire it)",
                                    reason="REGISTRY_INVALID")

