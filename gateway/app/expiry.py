"""Expiry gauges: seconds until every signing key's window ends and every certificate's notAfter.

Per owner (the gateway, each platform), `signing_coverage` is what the alert watches: the time
until the owner has no key left to sign with. A planned rotation (old key ending, new one already
listed without an end, or ending later) does not shorten it; an owner whose only keys are about
to end does.

Read each monitor interval, so an alert can fire weeks before a key or certificate runs out
(deploy/prometheus/rules: TransferKeyExpiringSoon, TransferCertificateExpiringSoon). Keys come
from the registry in force (a reload changes them; labels of keys no longer listed are removed);
certificates are the gateway's server chain, its client CA bundle and, from the identity step,
each client certificate seen since start.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence

from cryptography import x509

from gateway.core.registry import LiveRegistry
from gateway.service.metrics import Metrics

GATEWAY_OWNER = "gateway"


class ExpiryGauges:
    """Keeps `transfer_gateway_key_expiry_seconds` and `transfer_gateway_certificate_expiry_seconds`."""

    def __init__(self, *, metrics: Metrics, registry: LiveRegistry, server: Sequence[x509.Certificate],
                 ca: Sequence[x509.Certificate],
                 clients: Callable[[], Iterable[tuple[str, x509.Certificate]]] = lambda: ()) -> None:
        self._metrics = metrics
        self._registry = registry
        self._fixed = [("server", GATEWAY_OWNER, c) for c in server[:1]] + [("ca", GATEWAY_OWNER, c) for c in ca]
        self._clients = clients
        self._key_labels: set[tuple[str, str]] = set()
        self._owners: set[str] = set()

    async def __call__(self, now: dt.datetime) -> None:
        self.observe(now)

    def observe(self, now: dt.datetime) -> None:
        registry = self._registry.current
        owned = [(GATEWAY_OWNER, key) for key in registry.gateway_keys.values()]
        owned += [(platform.id, key) for platform in registry.platforms.values() for key in platform.keys.values()]
        labels: set[tuple[str, str]] = set()
        latest: dict[str, dt.datetime | None] = {}  # owner → latest end among its keys (None: one has none)
        for owner, key in owned:
            ends = key.window.ends()
            if owner not in latest:
                latest[owner] = ends
            elif (known := latest[owner]) is not None:
                latest[owner] = None if ends is None else max(known, ends)
            if ends is None:
                continue
            labels.add((owner, key.key_id))
            self._metrics.key_expiry.labels(owner, key.key_id).set((ends - now).total_seconds())
        for gone in self._key_labels - labels:
            self._metrics.key_expiry.remove(*gone)
        self._key_labels = labels
        owners = {owner for owner, end in latest.items() if end is not None}
        for owner in owners:
            end = latest[owner]
            assert end is not None
            self._metrics.signing_coverage.labels(owner).set((end - now).total_seconds())
        for gone_owner in self._owners - owners:
            self._metrics.signing_coverage.remove(gone_owner)
        self._owners = owners
        certificates = [*self._fixed, *(("client", owner, c) for owner, c in self._clients())]
        for role, owner, certificate in certificates:
            self._metrics.certificate_expiry.labels(role, owner, f"{certificate.serial_number:x}").set(
                (certificate.not_valid_after_utc - now).total_seconds())
