"""The suspended-record index's upkeep, a round every `[automatic] upkeep_interval_seconds` on every
replica (each round's writes are small transactions that replicas may run at once):

- enrollments that waited their whole retention period lapse: they stop waiting and their keys
  are dropped (`transfer_gateway_enrollments_lapsed_total`);
- entries still keyed under another secret than the current one are keyed again under it, read
  afresh from the signed message each came in (so this works even once the old secret is gone):
  what makes a rotation finish (`transfer_gateway_index_rekeyed_total`);
- the index's size, by kind and key id, is read into `transfer_gateway_index_entries`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError

from gateway.core.personkeys import PersonKeys
from gateway.service.metrics import Metrics
from gateway.store import StaleEntry, Store
from mitransfer.v1 import automatic_pb2, envelope_pb2, types_pb2

log = logging.getLogger("gateway.app.indexkeeper")


def person_of(entry: StaleEntry) -> types_pb2.Person | None:
    """The person of an index entry, from the signed message it came in (verified when accepted);
    None if it cannot be read (never expected: logged, and the entry stays as it is)."""
    try:
        signed = envelope_pb2.SignedMessage.FromString(entry.signed_message)
        if signed.kind == envelope_pb2.MESSAGE_KIND_SUSPENDED_RECORD:
            return automatic_pb2.SuspendedRecord.FromString(signed.payload).person
        if signed.kind == envelope_pb2.MESSAGE_KIND_ENROLLMENT:
            return automatic_pb2.Enrollment.FromString(signed.payload).person
    except DecodeError:
        pass
    return None


class IndexKeeper:
    def __init__(self, *, store: Store, keys: PersonKeys | None, metrics: Metrics, clock: Callable[[], dt.datetime],
                 batch: int) -> None:
        self._store = store
        self._keys = keys
        self._metrics = metrics
        self._clock = clock
        self._batch = batch

    async def keep_once(self) -> tuple[int, int]:
        """One round; (enrollments lapsed, entries keyed again)."""
        lapsed = await self._store.lapse_enrollments(self._clock(), self._batch)
        self._metrics.enrollments_lapsed.inc(lapsed)
        rekeyed = 0
        if self._keys is not None:
            for entry in await self._store.stale_index_entries(self._keys.current, self._batch):
                person = person_of(entry)
                if person is None:
                    log.error("index entry unreadable", extra={"fields": {"kind": entry.kind, "id": entry.entry_id}})
                    continue
                if await self._store.rekey_index_entry(entry, self._keys.key(person)):
                    rekeyed += 1
            self._metrics.index_rekeyed.inc(rekeyed)
        self._metrics.observe_index(await self._store.index_counts(),
                                    None if self._keys is None else self._keys.current)
        return lapsed, rekeyed

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.keep_once()
            except Exception:
                log.exception("index upkeep failed")
            await asyncio.sleep(interval)
